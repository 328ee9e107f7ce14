"""Reading and writing image files for the command line: TIFF and PNG.

TIFF files are read with :mod:`tifffile` (the first series: a 2D image, a
stack of planes or an RGB image), PNG files with :mod:`imageio` (as
scikit-image does). Writes are atomic: the file is written to a temporary
file beside its destination and renamed over it, so an interrupted run never
leaves a half-written output behind.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> from napari_unet.io import read_image, write_tiff
>>> path = pathlib.Path(tempfile.mkdtemp()) / "labels.tif"
>>> write_tiff(path, np.arange(12, dtype=np.uint16).reshape(3, 4))
>>> read_image(path, labels=True).shape
(3, 4)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from napari_unet._atomic import atomic_destination

__all__ = ["IMAGE_SUFFIXES", "check_label_dtype", "read_image", "write_tiff"]

logger = logging.getLogger(__name__)

#: File name endings the command line reads (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def read_image(path: str | os.PathLike[str], *, labels: bool = False) -> np.ndarray:
    """Read a TIFF or PNG file into a numpy array.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff`` file (2D, a stack of 2D planes, or RGB) or a
        ``.png`` file (grey, 16-bit grey, RGB, RGBA or palette).
    labels : bool
        The file holds a label image: a palette PNG is read as its palette
        indices (the label ids) instead of being converted to RGB, and the
        result must be a single-channel integer image (see
        :func:`check_label_dtype`).

    Returns
    -------
    numpy.ndarray
        The pixels. The alpha channel of an RGBA image is dropped, so RGB and
        RGBA files give the same 3-channel ``(..., H, W, 3)`` array.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a TIFF or PNG file, cannot be decoded, or (with
        ``labels=True``) is not a single-channel integer image. The message
        names the file.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give an image file.")
        raise FileNotFoundError(f"No such file: {path}.")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; give a TIFF (.tif, .tiff) or "
            f"PNG (.png) file."
        )
    try:
        if suffix == ".png":
            array, rgb = _read_png(path, labels)
        else:
            array, rgb = _read_tiff(path)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(
            f"{path} is not a readable {suffix[1:].upper()} image "
            f"({type(error).__name__}: {error})."
        ) from error
    if rgb and array.shape[-1] == 4:
        logger.info("%s: dropping the alpha channel of an RGBA image", path)
        array = array[..., :3]
    if labels:
        check_label_dtype(array, path, rgb=rgb)
    logger.info("Read %s: shape %s, dtype %s", path, array.shape, array.dtype)
    return array


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """Return the first series of a TIFF file and whether it is RGB(A)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("the file holds no image")
        series = tif.series[0]
        array = series.asarray()
        # "S" (samples) last is interleaved RGB(A), as photographs and RGB exports are.
        rgb = series.axes.endswith("S") and array.shape[-1] in (3, 4)
    return np.asarray(array), rgb


def _read_png(path: Path, labels: bool) -> tuple[np.ndarray, bool]:
    """Return the pixels of a PNG file and whether it is RGB(A)."""
    import imageio.v3 as iio
    from PIL import Image

    with Image.open(path) as image:
        palette = image.mode in ("P", "PA")
    # A palette label image stores the ids as palette indices.
    array = iio.imread(path, mode="P") if (labels and palette) else iio.imread(path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = array[..., 0]
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    return array, rgb


def check_label_dtype(
    array: np.ndarray, path: str | os.PathLike[str], *, rgb: bool = False
) -> None:
    """Raise a ``ValueError`` naming ``path`` unless ``array`` is an integer label image.

    Parameters
    ----------
    array : numpy.ndarray
        The label image read from ``path``.
    path : str or path-like
        Its file, for the message.
    rgb : bool
        The file was stored as an RGB(A) image.

    Examples
    --------
    >>> import numpy as np
    >>> check_label_dtype(np.zeros((2, 2), np.uint16), "labels.tif")
    >>> check_label_dtype(np.zeros((2, 2), np.float32), "labels.tif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: labels.tif: labels must be an integer image (...), got float32; ...
    """
    if rgb:
        raise ValueError(
            f"{path}: labels are an RGB image of shape {array.shape}; save the labels as a "
            f"single-channel integer image (0 = background, 1, 2, ... = objects or classes)."
        )
    if array.dtype == bool:
        raise ValueError(
            f"{path}: labels are a binary mask; give each object its own integer id "
            f"(e.g. with skimage.measure.label) and save them as an integer image."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{path}: labels must be an integer image (0 = background, 1, 2, ... = objects "
            f"or classes), got {array.dtype}; save the labels with an integer type."
        )
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise ValueError(
            f"{path}: labels contain negative values (minimum {array.min()}); use 0 for "
            f"background and positive ids."
        )


def write_tiff(path: str | os.PathLike[str], array: np.ndarray, *, axes: str | None = None) -> None:
    """Write ``array`` to a TIFF file atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or path-like
        Destination; an existing file is replaced.
    array : numpy.ndarray
        The data, written with its dtype and shape.
    axes : str, optional
        Axis letters stored in the file's metadata (e.g. ``"CYX"``).

    Raises
    ------
    IsADirectoryError
        If ``path`` is a folder.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    import tifffile

    metadata = {"axes": axes} if axes is not None else {}
    with atomic_destination(path, "out.tif") as temporary:
        # photometric="minisblack": never let tifffile take a 3-plane array for RGB.
        tifffile.imwrite(temporary, array, photometric="minisblack", metadata=metadata)
    logger.info("Wrote %s: shape %s, dtype %s", path, array.shape, array.dtype)
