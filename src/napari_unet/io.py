"""Reading and writing image files for the command line: TIFF, PNG and zarr.

TIFF files are read with :mod:`tifffile` (the first series: a 2D image, a
stack of planes or an RGB image), PNG files with :mod:`imageio` (as
scikit-image does). Writes are atomic: the file is written to a temporary
file beside its destination and renamed over it, so an interrupted run never
leaves a half-written output behind.

Images larger than memory are opened without reading their pixels by
:func:`open_image` (a zarr array) and :func:`open_image_dask` (a dask array):
zarr stores, OME-Zarr images (the full-resolution level) and TIFF files (read
through :mod:`tifffile`'s zarr interface, one strip or tile at a time).

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
from typing import Any

import numpy as np

from napari_unet._atomic import atomic_destination

__all__ = [
    "IMAGE_SUFFIXES",
    "LAZY_SUFFIXES",
    "check_label_dtype",
    "is_zarr_store",
    "open_image",
    "open_image_dask",
    "read_image",
    "write_tiff",
]

logger = logging.getLogger(__name__)

#: File name endings the command line reads (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
#: File name endings :func:`open_image` opens lazily (besides zarr folders of any name).
LAZY_SUFFIXES = (".zarr", ".tif", ".tiff")
#: How to install the optional packages for large images.
LARGE_DATA_EXTRA = 'pip install "napari-unet-segmentation[distributed]"'


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


def declared_shape(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], int]:
    """Return the shape and bytes per value a TIFF or PNG file declares, without its pixels.

    What :func:`read_image` will allocate can be checked before it does
    (a 2 KB TIFF may declare 40000 x 40000 pixels).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                bands = len(image.getbands())
                itemsize = 2 if image.mode.startswith("I;16") else 1
                shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
                return shape, itemsize
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(int(s) for s in series.shape), int(np.dtype(series.dtype).itemsize)
    except Exception as error:  # unreadable headers are reported by read_image itself
        logger.debug("Could not read the header of %s: %s", path, error)
        return (0,), 1


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


# -- large images, opened lazily ----------------------------------------------------------


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a folder holding a zarr array or group (zarr v2 or v3).

    Examples
    --------
    >>> import tempfile
    >>> is_zarr_store(tempfile.mkdtemp())
    False
    """
    path = Path(path)
    if not path.is_dir():
        return False
    return any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open a large image without reading its pixels; return a zarr array.

    Parameters
    ----------
    path : str or path-like
        One of:

        * a zarr array (a folder, zarr format 2 or 3);
        * an OME-Zarr image (a zarr group with ``multiscales`` metadata, OME-NGFF
          0.4 or 0.5, also inside a ``bioformats2raw`` layout): its first dataset,
          the full resolution, is opened;
        * a zarr group holding exactly one array;
        * a TIFF file: its first series (full resolution), read through
          :func:`tifffile.imread` with ``aszarr=True``, one strip or tile at a time.

    Returns
    -------
    zarr.Array
        The image; slicing it reads only the chunks it touches.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not one of the above (a PNG file, a folder that is not a
        zarr store, a zarr group with several arrays and no multiscales
        metadata); the message says what to give instead.
    ImportError
        If zarr is not installed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, zarr
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "image.zarr"
    >>> zarr.open_array(str(path), mode="w", shape=(64, 48), chunks=(32, 32), dtype="u2").shape
    (64, 48)
    >>> open_image(path).shape
    (64, 48)
    """
    zarr = _import_zarr()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file or folder: {path}.")
    if path.is_dir():
        if not is_zarr_store(path):
            raise ValueError(
                f"{path} is a folder but not a zarr store (it has no zarr.json, .zarray or "
                f".zgroup); give a zarr store, an OME-Zarr image or a TIFF file."
            )
        array = _image_in_zarr(zarr.open(str(path), mode="r"), path)
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            store = tifffile.imread(path, aszarr=True, series=0, level=0)
            array = zarr.open(store, mode="r")
        except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
            raise ValueError(
                f"{path} is not a readable TIFF image ({type(error).__name__}: {error})."
            ) from error
    else:
        raise ValueError(
            f"{path}: {path.suffix or 'this file'!r} files cannot be opened without reading "
            f"them whole; give a zarr store, an OME-Zarr image or a TIFF file (or convert "
            f"the image to one)."
        )
    logger.info("Opened %s lazily: shape %s, dtype %s", path, array.shape, array.dtype)
    return array


def open_image_dask(path: str | os.PathLike[str]) -> Any:
    """Open a large image as a dask array (see :func:`open_image` for what it reads).

    The dask array's chunks are the zarr (or TIFF) chunks; napari shows it
    without loading it into memory.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import zarr
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "image.zarr"
    >>> _ = zarr.open_array(str(path), mode="w", shape=(64, 48), chunks=(32, 32), dtype="u2")
    >>> open_image_dask(path).chunksize
    (32, 32)
    """
    import dask.array as da

    return da.from_zarr(open_image(path))


def _import_zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise ImportError(
            f"Reading and writing large images needs zarr; install it with {LARGE_DATA_EXTRA}."
        ) from None
    return zarr


def _image_in_zarr(node: Any, path: Path) -> Any:
    """Return the image array of a zarr array or group (OME-Zarr: the full resolution)."""
    zarr = _import_zarr()
    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)  # OME-NGFF 0.5 nests its metadata under "ome"
    members = set(node.group_keys()) | set(node.array_keys())
    if "bioformats2raw.layout" in ome and "0" in members:
        return _image_in_zarr(node["0"], path / "0")
    multiscales = ome.get("multiscales")
    if multiscales:
        try:
            dataset = str(multiscales[0]["datasets"][0]["path"])
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(
                f"{path}: the OME-Zarr multiscales metadata names no dataset ({error})."
            ) from error
        level = node[dataset]
        if not isinstance(level, zarr.Array):
            raise ValueError(f"{path}: the OME-Zarr dataset {dataset!r} is not an array.")
        return level
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    if not arrays:
        raise ValueError(
            f"{path} is a zarr group without arrays or OME-Zarr multiscales metadata; give "
            f"the path of the image array inside it."
        )
    raise ValueError(
        f"{path} is a zarr group with {len(arrays)} arrays ({', '.join(arrays)}) and no "
        f"OME-Zarr multiscales metadata; give the path of the array to segment, e.g. "
        f"{path / arrays[0]}."
    )
