"""Input checks shared by the public functions of the compute core.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the
parameter and says what to do, so that the napari widgets and the command line
can show the message to the user as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Turn ``rng`` (a Generator, a seed or None) into a ``numpy.random.Generator``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"rng must be a numpy.random.Generator, an integer seed or None, got {type(rng).__name__}."
    )


def check_array(value: object, name: str) -> np.ndarray:
    """Return ``value`` as an ndarray or raise a ``TypeError`` naming ``name``."""
    if isinstance(value, np.ndarray):
        return value
    # Accept array-likes that numpy can view without a copy surprise (lists, dask
    # chunks already computed, ...) but reject scalars and strings.
    if isinstance(value, (str, bytes)) or np.isscalar(value) or value is None:
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}.")
    return np.asarray(value)


def check_image(
    image: object,
    name: str = "image",
    *,
    ndim: Sequence[int] = (2,),
) -> np.ndarray:
    """Check that ``image`` is a finite, real-valued array with an allowed number of axes.

    Parameters
    ----------
    image : array_like
        The image to check.
    name : str
        Parameter name used in error messages.
    ndim : sequence of int
        Allowed numbers of dimensions.

    Returns
    -------
    numpy.ndarray
        The image as an array (not copied when it already was one).
    """
    array = check_array(image, name)
    if array.ndim not in tuple(ndim):
        allowed = " or ".join(f"{n}D" for n in ndim)
        raise ValueError(
            f"{name} must be {allowed}, got an array of shape {array.shape} "
            f"({array.ndim}D). Select a single 2D plane or reshape the data."
        )
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(
            f"{name} must hold integer or floating-point intensities, got dtype {array.dtype}."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    check_finite(array, name)
    return array


class NonFiniteImageError(ValueError):
    """An image holds NaN or infinite values, which the network cannot use."""

    def __init__(self, name: str = "The image") -> None:
        super().__init__(
            f"{name} holds NaN or infinite values; replace them (for example with the "
            "background intensity, or 0) and try again."
        )


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise :class:`NonFiniteImageError` naming ``name`` if a float ``array`` has NaN or inf."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise NonFiniteImageError(name)


def check_labels(
    labels: object,
    name: str = "labels",
    *,
    ndim: Sequence[int] = (2,),
    require_objects: bool = True,
) -> np.ndarray:
    """Check that ``labels`` is a non-negative integer label image.

    Parameters
    ----------
    labels : array_like
        The label image: 0 is background, every other value one object (or class).
    name : str
        Parameter name used in error messages.
    ndim : sequence of int
        Allowed numbers of dimensions.
    require_objects : bool
        Raise when the image holds no non-zero label.

    Returns
    -------
    numpy.ndarray
        The labels as an array (not copied when it already was one).
    """
    array = check_array(labels, name)
    if array.ndim not in tuple(ndim):
        allowed = " or ".join(f"{n}D" for n in ndim)
        raise ValueError(f"{name} must be a {allowed} label image, got shape {array.shape}.")
    if array.dtype == bool:
        raise TypeError(
            f"{name} is a boolean mask; give each object its own integer id "
            f"(e.g. skimage.measure.label(mask))."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must have an integer dtype (0 = background, 1, 2, ... = objects), "
            f"got {array.dtype}. Convert it with labels.astype(numpy.int32) if the "
            f"values are whole numbers."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(
            f"{name} contains negative values (minimum {array.min()}); use 0 for "
            f"background and positive ids for objects."
        )
    if require_objects and not array.any():
        raise ValueError(
            f"{name} contains no objects (all pixels are 0); paint or load at least "
            f"one labelled object."
        )
    return array


def check_same_shape(
    first: np.ndarray, second: np.ndarray, first_name: str, second_name: str
) -> None:
    """Raise a ``ValueError`` unless the last two (spatial) axes of both arrays agree."""
    if first.shape[-2:] != second.shape[-2:]:
        raise ValueError(
            f"{first_name} has shape {first.shape} but {second_name} has shape "
            f"{second.shape}; their height and width (last two axes) must be equal."
        )


def check_whole_number(value: object, name: str, low: int, high: int) -> int:
    """Return ``value`` if it is an integer (not a bool) from ``low`` to ``high``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}.")
    return int(value)


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and positive (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or positive" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value}.")
    return value
