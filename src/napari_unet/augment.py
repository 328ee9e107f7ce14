"""Data augmentation of Ronneberger et al. (2015), section 3.1, for training tiles.

The U-Net paper trains on very few annotated images and relies on strong
augmentation: "shift and rotation invariance as well as robustness to
deformations and gray value variations". Its key ingredient is a smooth elastic
deformation: "random displacement vectors on a coarse 3 by 3 grid. The
displacements are sampled from a Gaussian distribution with 10 pixels standard
deviation. Per-pixel displacements are then computed using bicubic
interpolation."

This module provides

- :func:`random_displacement_field`: the paper's smooth displacement field,
- :func:`warp`: the single place where arrays are resampled at given
  coordinates (elastic deformation, rotation and shift combined),
- :func:`elastic_deform`: one field applied jointly to an image, its labels and
  its weight map,
- :func:`random_flip_rotate`: one of the 8 symmetries of the square,
- :func:`gray_value_jitter`: gamma, gain, offset and noise on the image,
- :class:`AugmentConfig` and :func:`augment`: all of the above in one call.

Arrays follow the package convention: the spatial axes are the last two; an
image is ``(H, W)`` or channels-first ``(C, H, W)``, labels and weight maps are
``(H, W)``. Randomness is always passed in as ``rng``.

Examples
--------
>>> import numpy as np
>>> from napari_unet.augment import AugmentConfig, augment
>>> from napari_unet.synthetic import make_touching_nuclei
>>> image, labels = make_touching_nuclei((64, 64), n_nuclei=4, seed=0)
>>> out_image, out_labels, _ = augment(image / image.max(), labels, rng=0)
>>> out_image.shape, out_image.dtype, out_labels.dtype
((64, 64), dtype('float32'), dtype('int32'))
>>> set(np.unique(out_labels)) <= set(np.unique(labels))
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet._validation import (
    as_rng,
    check_array,
    check_image,
    check_labels,
    check_positive,
    check_same_shape,
)

__all__ = [
    "AugmentConfig",
    "augment",
    "elastic_deform",
    "gray_value_jitter",
    "random_displacement_field",
    "random_flip_rotate",
    "warp",
]

#: Boundary modes accepted by :func:`warp`, by what fills positions outside the array.
_MODES = frozenset({"mirror", "nearest", "constant"})
#: The same modes in :func:`torch.nn.functional.grid_sample`'s terms.
_TORCH_PADDING = {"mirror": "reflection", "nearest": "border", "constant": "zeros"}
#: Interpolation orders of :func:`warp` and the grid_sample modes computing them.
_TORCH_MODES = {1: "bilinear", 3: "bicubic"}


# ---------------------------------------------------------------------------
# Displacement field
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _cubic_interpolation_matrix(length: int, grid: int) -> np.ndarray:
    """Return the ``(length, grid)`` matrix that interpolates ``grid`` nodes to ``length`` pixels.

    The nodes sit at ``k * (length - 1) / (grid - 1)`` for ``k = 0 .. grid - 1``
    (first node on the first pixel, last node on the last pixel). Column ``k``
    is the interpolating cubic B-spline (mirror boundary) through the ``k``-th
    unit vector, so the matrix is exact at the nodes and every row sums to 1.
    The result is read-only because it is shared through the cache.
    """
    positions = np.linspace(0.0, grid - 1.0, length)[np.newaxis]
    unit_vectors = np.eye(grid)
    matrix = np.stack(
        [
            ndi.map_coordinates(unit_vectors[k], positions, order=3, mode="mirror")
            for k in range(grid)
        ],
        axis=1,
    )
    matrix.setflags(write=False)
    return matrix


def _check_shape(shape: object) -> tuple[int, int]:
    if isinstance(shape, (str, bytes)):
        raise TypeError(f"shape must be a pair of integers (height, width), got {shape!r}.")
    try:
        values = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"shape must be a pair of integers (height, width), got {shape!r}."
        ) from None
    if len(values) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise ValueError(
            f"shape must be two positive integers (height, width), got {shape!r}; "
            f"pass the last two axes of the image, e.g. image.shape[-2:]."
        )
    return int(values[0]), int(values[1])


def _check_grid(grid: object, name: str = "grid") -> int:
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)):
        raise TypeError(f"{name} must be an integer (nodes per axis), got {type(grid).__name__}.")
    if grid < 2:
        raise ValueError(
            f"{name} must be at least 2 nodes per axis (the paper uses 3), got {grid}."
        )
    return int(grid)


def random_displacement_field(
    shape: tuple[int, int],
    *,
    std: float = 10.0,
    grid: int = 3,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw a smooth random displacement field as in the U-Net paper.

    A ``(2, grid, grid)`` array of displacements is drawn from a normal
    distribution with standard deviation ``std`` pixels, as
    ``rng.normal(0.0, std, size=(2, grid, grid))``. The nodes are spread evenly
    from the first to the last pixel of each axis (corners to corners) and the
    displacements are interpolated to every pixel with a separable cubic
    spline (bicubic interpolation), which passes exactly through the drawn
    values at the nodes. Ronneberger et al. (2015) use ``grid=3`` and
    ``std=10``.

    The interpolation is linear in the node values, so it is computed as
    ``A_rows @ G @ A_cols.T`` with one cached ``(length, grid)`` matrix per
    axis; drawing a field for a 572 x 572 tile takes well under a millisecond.

    Parameters
    ----------
    shape : tuple of int
        Height and width of the field (the last two axes of the image).
    std : float
        Standard deviation of the node displacements, in pixels (>= 0). Zero
        gives an all-zero field.
    grid : int
        Number of nodes per axis (>= 2).
    rng : numpy.random.Generator or int or None
        Source of randomness; the same seed gives the same field.

    Returns
    -------
    numpy.ndarray of float32, shape ``(2, H, W)``
        Row displacement (``[0]``) and column displacement (``[1]``) of every
        pixel.

    Examples
    --------
    >>> import numpy as np
    >>> field = random_displacement_field((101, 101), std=10.0, grid=3, rng=0)
    >>> field.shape, field.dtype
    ((2, 101, 101), dtype('float32'))

    At the nodes the field equals the drawn displacements:

    >>> nodes = np.random.default_rng(0).normal(0.0, 10.0, size=(2, 3, 3))
    >>> np.allclose(field[:, ::50, ::50], nodes, atol=1e-4)
    True
    >>> float(np.abs(random_displacement_field((8, 8), std=0.0, rng=0)).max())
    0.0
    """
    height, width = _check_shape(shape)
    std = check_positive(std, "std", allow_zero=True)
    grid = _check_grid(grid)
    rng = as_rng(rng)
    nodes = rng.normal(0.0, std, size=(2, grid, grid))
    rows = _cubic_interpolation_matrix(height, grid)
    cols = _cubic_interpolation_matrix(width, grid)
    # (H, g) @ (2, g, g) @ (g, W) -> (2, H, W)
    return (rows @ nodes @ cols.T).astype(np.float32)


# ---------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------


def _check_order(order: object, name: str = "order") -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(
            f"{name} must be an integer interpolation order, got {type(order).__name__}."
        )
    if order not in (0, 1, 3):
        raise ValueError(
            f"{name} must be 0 (nearest, for labels), 1 (linear) or 3 (cubic), got {order}."
        )
    return int(order)


def warp(
    array: np.ndarray,
    coordinates: np.ndarray,
    *,
    order: int,
    mode: str = "mirror",
) -> np.ndarray:
    """Sample an image, labels or weight map at given (row, column) coordinates.

    Output pixel ``(i, j)`` takes the value of ``array`` at the (fractional)
    position ``coordinates[:, i, j]``: the nearest pixel (``order=0``, exact
    for labels of any dtype), linear interpolation (1) or bicubic
    interpolation (3; Keys' cubic convolution with a = -0.75, as in most image
    software), the last two by :func:`torch.nn.functional.grid_sample`, which
    reads only the pixels it needs (a tile from a large image costs no more
    than from a small one) and is several times faster than a cubic spline.
    The coordinates may combine any elastic deformation, rotation and shift;
    for a channels-first ``(C, H, W)`` array every channel is sampled at the
    same coordinates.

    Parameters
    ----------
    array : numpy.ndarray, shape ``(H, W)`` or ``(C, H, W)``
        Values to sample: an image, a label image or a weight map.
    coordinates : numpy.ndarray, shape ``(2, h, w)``
        Row (``[0]``) and column (``[1]``) position in ``array`` of every
        output pixel. ``h, w`` may differ from ``H, W``.
    order : int
        0 (nearest; use it for labels so that no new ids appear), 1 (linear;
        weight maps) or 3 (cubic; images).
    mode : str
        What positions outside ``array`` read: ``"mirror"`` (the default)
        reflects about the border pixels, which suits microscopy tiles;
        ``"nearest"`` repeats the border pixel; ``"constant"`` reads zeros.

    Returns
    -------
    numpy.ndarray, shape ``(h, w)`` or ``(C, h, w)``
        With ``order=0`` the dtype of ``array`` is kept; otherwise float32.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[0, 1], [2, 3]], dtype=np.int32)
    >>> rows, cols = np.indices((2, 2), dtype=np.float32)
    >>> warp(labels, np.stack([rows, 1 - cols]), order=0)  # mirror left-right
    array([[1, 0],
           [3, 2]], dtype=int32)
    >>> image = np.arange(4, dtype=np.float32).reshape(2, 2)
    >>> warp(image, np.array([[[0.5]], [[0.5]]]), order=1)
    array([[1.5]], dtype=float32)
    """
    if isinstance(array, np.ndarray) and array.dtype == bool:
        raise TypeError(
            "array is a boolean mask; convert it to integers first (mask.astype(numpy.uint8))."
        )
    array = check_image(array, "array", ndim=(2, 3))
    coordinates = check_array(coordinates, "coordinates")
    if coordinates.ndim != 3 or coordinates.shape[0] != 2:
        raise ValueError(
            f"coordinates must have shape (2, h, w) (row and column of every output "
            f"pixel), got {coordinates.shape}."
        )
    if coordinates.dtype.kind not in "fiu":
        raise TypeError(f"coordinates must be numeric, got dtype {coordinates.dtype}.")
    if coordinates.dtype.kind == "f" and not np.isfinite(coordinates).all():
        raise ValueError("coordinates contain NaN or infinite values.")
    order = _check_order(order)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}.")
    if order == 0:
        return _nearest(array, coordinates, mode)
    return _interpolate(array, coordinates, order, mode)


def _nearest(array: np.ndarray, coordinates: np.ndarray, mode: str) -> np.ndarray:
    """Nearest-pixel sampling by indexing: exact for every dtype, no new values."""
    indices, outside = [], np.zeros(coordinates.shape[1:], dtype=bool)
    for axis, size in zip(coordinates, array.shape[-2:], strict=True):
        index = np.rint(axis).astype(np.int64)
        if mode == "constant":
            outside |= (index < 0) | (index >= size)
            index = np.clip(index, 0, size - 1)
        elif mode == "nearest" or size == 1:
            index = np.clip(index, 0, size - 1)
        else:  # mirror about the border pixels: period 2 (size - 1)
            index = np.abs(index) % (2 * (size - 1))
            index = np.where(index >= size, 2 * (size - 1) - index, index)
        indices.append(index)
    out = array[..., indices[0], indices[1]]
    if mode == "constant":
        out[..., outside] = 0
    return out


def _interpolate(array: np.ndarray, coordinates: np.ndarray, order: int, mode: str) -> np.ndarray:
    """Linear or bicubic sampling by ``grid_sample`` (align_corners: pixel centres at +-1)."""
    import torch
    from torch.nn.functional import grid_sample

    height, width = array.shape[-2:]
    # grid_sample takes (x, y) = (column, row), scaled to [-1, 1] over the pixel centres.
    grid = np.empty((1, *coordinates.shape[1:], 2), dtype=np.float32)
    np.multiply(coordinates[1], 2.0 / max(width - 1, 1), out=grid[0, ..., 0], casting="unsafe")
    np.multiply(coordinates[0], 2.0 / max(height - 1, 1), out=grid[0, ..., 1], casting="unsafe")
    grid -= 1.0
    channels = array if array.ndim == 3 else array[np.newaxis]
    values = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]
    with torch.no_grad():
        out = grid_sample(
            values,
            torch.from_numpy(grid),
            mode=_TORCH_MODES[order],
            padding_mode=_TORCH_PADDING[mode],
            align_corners=True,
        )[0].numpy()
    return out if array.ndim == 3 else out[0]


# ---------------------------------------------------------------------------
# Joint transforms of image, labels and weights
# ---------------------------------------------------------------------------


def _check_triplet(
    image: object, labels: object, weights: object
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validate an image with optional labels and weights sharing its height and width."""
    image = check_image(image, "image", ndim=(2, 3))
    if labels is not None:
        labels = check_labels(labels, "labels", require_objects=False)
        check_same_shape(image, labels, "image", "labels")
    if weights is not None:
        weights = check_image(weights, "weights", ndim=(2,))
        check_same_shape(image, weights, "image", "weights")
        if weights.min() < 0:
            raise ValueError(
                f"weights must be zero or positive, got a minimum of {weights.min()}; "
                f"a loss weight map cannot be negative."
            )
    return image, labels, weights


def elastic_deform(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    std: float = 10.0,
    grid: int = 3,
    image_order: int = 3,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Deform an image, its labels and its weight map with one smooth random field.

    The displacement field of :func:`random_displacement_field` (a ``grid`` x
    ``grid`` grid of N(0, ``std``^2) displacements, bicubically
    interpolated; the paper uses 3 x 3 and 10 pixels) is added to the identity
    coordinates, and all arrays are resampled at these coordinates with
    :func:`warp`, mirroring at the borders: the image with cubic (or linear)
    interpolation, the labels with nearest-neighbour interpolation (no new
    ids appear) and the weight map linearly, clipped at zero.

    Parameters
    ----------
    image : numpy.ndarray, shape ``(H, W)`` or ``(C, H, W)``
        Image to deform; all channels get the same deformation.
    labels : numpy.ndarray of int, shape ``(H, W)``, optional
        Label image (may be all background).
    weights : numpy.ndarray, shape ``(H, W)``, optional
        Non-negative pixel weights of the loss.
    std : float
        Standard deviation of the grid displacements, in pixels (>= 0).
    grid : int
        Number of grid nodes per axis (>= 2).
    image_order : int
        Interpolation of the image: 3 (cubic, default), 1 (linear, faster) or 0
        (nearest).
    rng : numpy.random.Generator or int or None
        Source of randomness.

    Returns
    -------
    image : numpy.ndarray of float32
        The deformed image, same shape as the input.
    labels : numpy.ndarray or None
        The deformed labels with the input dtype, or None.
    weights : numpy.ndarray of float32 or None
        The deformed weights (>= 0), or None.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_unet.synthetic import make_touching_nuclei
    >>> image, labels = make_touching_nuclei((96, 96), n_nuclei=6, seed=0)
    >>> weights = np.ones(labels.shape, dtype=np.float32)
    >>> out_image, out_labels, out_weights = elastic_deform(image, labels, weights, rng=0)
    >>> out_image.dtype, out_labels.dtype, out_weights.dtype
    (dtype('float32'), dtype('int32'), dtype('float32'))
    >>> set(np.unique(out_labels)) <= set(np.unique(labels))
    True
    """
    image, labels, weights = _check_triplet(image, labels, weights)
    image_order = _check_order(image_order, "image_order")
    field = random_displacement_field(image.shape[-2:], std=std, grid=grid, rng=rng)
    height, width = image.shape[-2:]
    # Identity grid + field, built by broadcasting instead of numpy.indices.
    field[0] += np.arange(height, dtype=np.float32)[:, np.newaxis]
    field[1] += np.arange(width, dtype=np.float32)[np.newaxis, :]
    coordinates = field

    out_image = warp(image, coordinates, order=image_order).astype(np.float32, copy=False)
    out_labels = None if labels is None else warp(labels, coordinates, order=0)
    out_weights = None
    if weights is not None:
        out_weights = warp(weights, coordinates, order=1)
        np.maximum(out_weights, 0.0, out=out_weights)
    return out_image, out_labels, out_weights


def random_flip_rotate(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply one random symmetry of the square to an image, its labels and weights.

    For square arrays the symmetry is drawn uniformly from the 8 elements of
    the dihedral group (rotations by 0, 90, 180 and 270 degrees, each with or
    without a mirror). Non-square arrays only get the 4 symmetries that keep
    their shape (identity, up-down flip, left-right flip, 180-degree
    rotation). The same symmetry acts on the last two axes of all arrays.

    Parameters
    ----------
    image : numpy.ndarray, shape ``(H, W)`` or ``(C, H, W)``
        Image to transform.
    labels : numpy.ndarray of int, shape ``(H, W)``, optional
        Label image.
    weights : numpy.ndarray, shape ``(H, W)``, optional
        Pixel weights.
    rng : numpy.random.Generator or int or None
        Source of randomness.

    Returns
    -------
    image, labels, weights : numpy.ndarray or None
        C-contiguous copies with the input dtypes; None where the input was
        None.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> out, _, _ = random_flip_rotate(image, rng=1)
    >>> out.shape, out.flags["C_CONTIGUOUS"]
    ((2, 3), True)
    >>> sorted(out.ravel().tolist()) == sorted(image.ravel().tolist())
    True
    """
    image, labels, weights = _check_triplet(image, labels, weights)
    rng = as_rng(rng)
    height, width = image.shape[-2:]
    if height == width:
        index = int(rng.integers(8))
        quarter_turns, mirror = index % 4, index >= 4
    else:
        index = int(rng.integers(4))
        quarter_turns, mirror = 2 * (index % 2), index >= 2

    def transform(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        array = np.rot90(array, quarter_turns, axes=(-2, -1))
        if mirror:
            array = array[..., ::-1]
        return array.copy(order="C")

    return transform(image), transform(labels), transform(weights)


# ---------------------------------------------------------------------------
# Gray values
# ---------------------------------------------------------------------------


def _check_range(value: object, name: str) -> tuple[float, float]:
    """Return ``value`` as a ``(low, high)`` pair of positive floats with low <= high."""
    message = (
        f"{name} must be a (low, high) pair of positive numbers with low <= high, "
        f"got {value!r}; use (1.0, 1.0) to switch it off."
    )
    try:
        low, high = value  # type: ignore[misc]
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
        raise ValueError(message)
    return low, high


def _log_uniform(low: float, high: float, rng: np.random.Generator) -> float:
    """Draw from a log-uniform distribution on [low, high] (exactly low when equal)."""
    return low * (high / low) ** rng.random()


def gray_value_jitter(
    image: np.ndarray,
    *,
    gamma: tuple[float, float] = (0.5, 2.0),
    gain: tuple[float, float] = (0.5, 2.0),
    offset: float = 0.1,
    noise: float = 0.05,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Randomly vary the gray values of a normalised image.

    Ronneberger et al. (2015) ask for robustness to "gray value variations"
    without giving numbers; this function draws

    1. a gamma, log-uniform in ``gamma``, applied to the image rescaled to
       [0, 1] by its minimum and maximum and then mapped back to its original
       range (so negative values are fine, and a constant image is left
       alone);
    2. a gain, log-uniform in ``gain``, that multiplies the image;
    3. an offset from N(0, ``offset``^2) that is added;
    4. Gaussian pixel noise whose standard deviation is uniform in
       [0, ``noise``].

    The defaults suit images normalised to about 0..1 (e.g. by percentiles).
    For a ``(C, H, W)`` image the same parameters act on all channels, and the
    gamma uses each channel's own minimum and maximum.

    Parameters
    ----------
    image : numpy.ndarray, shape ``(H, W)`` or ``(C, H, W)``
        Normalised image.
    gamma : tuple of float
        Range ``(low, high)`` of the gamma exponent (positive).
    gain : tuple of float
        Range ``(low, high)`` of the multiplicative gain (positive).
    offset : float
        Standard deviation of the additive offset (>= 0).
    noise : float
        Largest standard deviation of the pixel noise (>= 0).
    rng : numpy.random.Generator or int or None
        Source of randomness.

    Returns
    -------
    numpy.ndarray of float32
        The jittered image, same shape as the input.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(4, 4)
    >>> out = gray_value_jitter(image, rng=0)
    >>> out.shape, out.dtype, bool(np.isfinite(out).all())
    ((4, 4), dtype('float32'), True)
    >>> same = gray_value_jitter(image, gamma=(1, 1), gain=(1, 1), offset=0, noise=0)
    >>> bool(np.array_equal(same, image))
    True
    """
    image = check_image(image, "image", ndim=(2, 3))
    gamma = _check_range(gamma, "gamma")
    gain = _check_range(gain, "gain")
    offset = check_positive(offset, "offset", allow_zero=True)
    noise = check_positive(noise, "noise", allow_zero=True)
    rng = as_rng(rng)

    out = image.astype(np.float32)  # always a copy, safe to modify in place
    exponent = _log_uniform(*gamma, rng)
    if exponent != 1.0:
        channels = out if out.ndim == 3 else out[np.newaxis]
        for channel in channels:
            low, high = channel.min(), channel.max()
            span = high - low
            if span > 0:
                unit = np.clip((channel - low) / span, 0.0, 1.0)
                channel[...] = unit**exponent * span + low
    out *= np.float32(_log_uniform(*gain, rng))
    out += np.float32(rng.normal(0.0, offset))
    sigma = rng.uniform(0.0, noise)
    if sigma > 0:
        out += np.float32(sigma) * rng.standard_normal(out.shape, dtype=np.float32)
    return out


# ---------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the training augmentation (Ronneberger et al. 2015, section 3.1).

    Parameters
    ----------
    elastic_std : float
        Standard deviation of the elastic grid displacements, in pixels (paper:
        10). 0 switches the elastic deformation off.
    elastic_grid : int
        Number of elastic grid nodes per axis (paper: 3), at least 2.
    flip_rotate : bool
        Apply a random flip / 90-degree rotation.
    gamma : tuple of float
        Log-uniform range of the gamma exponent; ``(1.0, 1.0)`` for none.
    gain : tuple of float
        Log-uniform range of the intensity gain; ``(1.0, 1.0)`` for none.
    offset : float
        Standard deviation of the additive intensity offset (>= 0).
    noise : float
        Largest standard deviation of the Gaussian pixel noise (>= 0).
    image_order : int
        Interpolation of the image in the elastic deformation: 3 (cubic) or 1
        (linear, faster).

    Examples
    --------
    >>> AugmentConfig().elastic_std, AugmentConfig().elastic_grid
    (10.0, 3)
    >>> AugmentConfig.none().is_identity
    True
    >>> AugmentConfig(elastic_grid=1)
    Traceback (most recent call last):
    ...
    ValueError: elastic_grid must be at least 2 nodes per axis (the paper uses 3), got 1.
    """

    elastic_std: float = 10.0
    elastic_grid: int = 3
    flip_rotate: bool = True
    gamma: tuple[float, float] = (0.5, 2.0)
    gain: tuple[float, float] = (0.5, 2.0)
    offset: float = 0.1
    noise: float = 0.05
    image_order: int = 3

    def __post_init__(self) -> None:
        # Normalise in place (frozen dataclass): plain floats, ints and tuples.
        set_ = functools.partial(object.__setattr__, self)
        set_("elastic_std", check_positive(self.elastic_std, "elastic_std", allow_zero=True))
        set_("elastic_grid", _check_grid(self.elastic_grid, "elastic_grid"))
        if not isinstance(self.flip_rotate, (bool, np.bool_)):
            raise TypeError(
                f"flip_rotate must be True or False, got {type(self.flip_rotate).__name__}."
            )
        set_("flip_rotate", bool(self.flip_rotate))
        set_("gamma", _check_range(self.gamma, "gamma"))
        set_("gain", _check_range(self.gain, "gain"))
        set_("offset", check_positive(self.offset, "offset", allow_zero=True))
        set_("noise", check_positive(self.noise, "noise", allow_zero=True))
        order = _check_order(self.image_order, "image_order")
        if order not in (1, 3):
            raise ValueError(
                f"image_order must be 1 (linear) or 3 (cubic) for images, got {order}."
            )
        set_("image_order", order)

    @classmethod
    def none(cls) -> AugmentConfig:
        """Return a configuration that leaves the data unchanged.

        Returns
        -------
        AugmentConfig
            No elastic deformation, flip or rotation, and no gray-value change.

        Examples
        --------
        >>> AugmentConfig.none().flip_rotate
        False
        """
        return cls(
            elastic_std=0.0,
            flip_rotate=False,
            gamma=(1.0, 1.0),
            gain=(1.0, 1.0),
            offset=0.0,
            noise=0.0,
        )

    @property
    def is_identity(self) -> bool:
        """True when this configuration changes nothing (see :meth:`none`)."""
        return (
            self.elastic_std == 0.0
            and not self.flip_rotate
            and self.gamma == (1.0, 1.0)
            and self.gain == (1.0, 1.0)
            and self.offset == 0.0
            and self.noise == 0.0
        )

    def gray_values(
        self, image: np.ndarray, rng: np.random.Generator | int | None = None
    ) -> np.ndarray:
        """Apply :func:`gray_value_jitter` with this configuration's ranges."""
        return gray_value_jitter(
            image,
            gamma=self.gamma,
            gain=self.gain,
            offset=self.offset,
            noise=self.noise,
            rng=rng,
        )


def augment(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    config: AugmentConfig | None = AugmentConfig(),
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Augment a training tile: flip/rotate, elastic deformation, then gray values.

    The steps run in this order: :func:`random_flip_rotate` (when
    ``config.flip_rotate``), :func:`elastic_deform` (when
    ``config.elastic_std > 0``; paper: 3 x 3 grid, 10 pixels) on all arrays,
    and :func:`gray_value_jitter` on the image only.

    Parameters
    ----------
    image : numpy.ndarray, shape ``(H, W)`` or ``(C, H, W)``
        Normalised image (about 0..1).
    labels : numpy.ndarray of int, shape ``(H, W)``, optional
        Label image.
    weights : numpy.ndarray, shape ``(H, W)``, optional
        Non-negative pixel weights of the loss.
    config : AugmentConfig, optional
        Settings; the default ``AugmentConfig()`` is the paper's augmentation
        (None means the same). ``AugmentConfig.none()`` leaves the data
        unchanged.
    rng : numpy.random.Generator or int or None
        Source of randomness.

    Returns
    -------
    image : numpy.ndarray of float32
        The augmented image.
    labels : numpy.ndarray or None
        The transformed labels (input dtype), or None.
    weights : numpy.ndarray of float32 or None
        The transformed weights, or None.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> same, _, _ = augment(image, config=AugmentConfig.none(), rng=0)
    >>> bool(np.array_equal(same, image))
    True
    >>> out, _, _ = augment(image, config=AugmentConfig(), rng=0)
    >>> out.shape, bool(np.array_equal(out, image))
    ((32, 32), False)
    """
    if config is None:
        config = AugmentConfig()
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}.")
    image, labels, weights = _check_triplet(image, labels, weights)
    rng = as_rng(rng)

    if config.flip_rotate:
        image, labels, weights = random_flip_rotate(image, labels, weights, rng=rng)
    if config.elastic_std > 0:
        image, labels, weights = elastic_deform(
            image,
            labels,
            weights,
            std=config.elastic_std,
            grid=config.elastic_grid,
            image_order=config.image_order,
            rng=rng,
        )
    else:
        image = image.astype(np.float32)
        labels = None if labels is None else labels.copy()
        weights = None if weights is None else weights.astype(np.float32)
    return config.gray_values(image, rng), labels, weights
