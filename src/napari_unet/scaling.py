"""Object size: a model knows the size of the objects it learnt; images are brought to it.

A U-Net learns objects at the sizes it was shown. A model trained on one
experiment fragments objects much larger than those and merges or drops much
smaller ones, and data sets that mix magnifications (the Data Science Bowl's
nuclei span 57 to 7,900 pixels in median area from one field to the next)
defeat any single set of labelling sizes. So, as cellpose does with its cell
diameter, a model keeps its *object area*, and an image to segment is
resampled by the factor that brings its objects to that area; the maps are
resampled back to the image's own grid and labelled there, with the size
limits scaled to match (:meth:`~napari_unet.tasks.Postprocess.at_scale`).
A new model's training planes are used as they are (resampling them to one
size measured worse on DSB 2018 than learning from all scales; see
docs/benchmarks.md). A model that is fine-tuned keeps its object area: the new
training planes are brought to it as images to segment are, so the network
goes on learning at the scale it knows and its labelling sizes stay valid.

The rule, in one place:

- a plane's object area is the area of the object that holds its median
  object pixel (:func:`typical_area`: a median weighted by area, which
  specks of noise in a prediction barely move);
- the model's object area is the median over its training planes of each
  plane's object area;
- a factor within ``2**±DEADBAND`` (0.84-1.19) is taken as 1, so the images
  of the experiment a model was trained on are segmented as they are;
- factors are limited to ``[1 / MAX_FACTOR, MAX_FACTOR]``;
- the object size of an image is either given (a diameter in pixels) or
  estimated: the image is segmented at its own scale (a fine-tuned model: at
  the scale its training images were brought to, from their own object area,
  ``Checkpoint.source_object_area``), the object area of what is found gives
  the factor, and the image is segmented again at that factor if it lies
  outside the dead band (three passes at most).

Examples
--------
>>> from napari_unet.scaling import model_object_area, scale_factor
>>> model_object_area([100.0, 120.0, None, 90.0])
100.0
>>> scale_factor(100.0, 400.0)   # objects a quarter of the model's area: doubled
2.0
>>> scale_factor(380.0, 400.0)   # within the dead band: as they are
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEADBAND",
    "MAX_FACTOR",
    "area_of_diameter",
    "diameter_of_area",
    "median_object_area",
    "model_object_area",
    "object_areas",
    "resize_image",
    "resize_labels",
    "resize_maps",
    "scale_factor",
    "scaled_shape",
    "typical_area",
]

#: Planes whose factor is within 2**±DEADBAND are used as they are.
DEADBAND = 0.25
#: The largest enlargement or reduction of an image.
MAX_FACTOR = 4.0


def object_areas(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixel areas of the objects of an instance label plane.

    With ``mask``, only objects wholly inside the annotated region count.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.intp))
    if mask is not None:
        counts[np.unique(labels[~np.asarray(mask, bool)])] = 0
    counts[:1] = 0
    return counts[counts > 0]


def median_object_area(labels: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Return the :func:`typical_area` of a label plane's objects (None if none)."""
    return typical_area(object_areas(labels, mask))


def typical_area(areas: np.ndarray) -> float | None:
    """Return the area of the object that holds the median object pixel (None if none).

    Weighted by area, so that specks of noise in a prediction, many but small,
    barely move it: half of the objects' pixels lie in objects at most this
    large.

    >>> import numpy as np
    >>> typical_area(np.array([40, 40, 10, 10, 10]))
    40.0
    """
    areas = np.sort(np.asarray(areas))
    if not areas.size:
        return None
    half = np.searchsorted(np.cumsum(areas), areas.sum() / 2.0)
    return float(areas[half])


def model_object_area(plane_areas: Sequence[float]) -> float:
    """Return a model's object area: the median of its training planes' object areas."""
    areas = [area for area in plane_areas if area]
    if not areas:
        raise ValueError("No plane has objects; the model's object size is unknown.")
    return float(np.median(areas))


def scale_factor(object_area: float | None, model_area: float | None) -> float:
    """Linear factor that brings objects of ``object_area`` to ``model_area``.

    1.0 when either is unknown or the factor is within the dead band.
    """
    if not object_area or not model_area:
        return 1.0
    factor = math.sqrt(model_area / object_area)
    if abs(math.log2(factor)) < DEADBAND:
        return 1.0
    return float(np.clip(factor, 1.0 / MAX_FACTOR, MAX_FACTOR))


def diameter_of_area(area: float) -> float:
    """Diameter of the disc of ``area`` pixels."""
    return 2.0 * math.sqrt(area / math.pi)


def area_of_diameter(diameter: float) -> float:
    """Area of the disc of ``diameter`` pixels."""
    return math.pi * (diameter / 2.0) ** 2


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, int]:
    """Return the ``(H, W)`` of a plane resampled by ``factor`` (at least 1x1)."""
    height, width = shape[-2:]
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample a ``(C, H, W)`` float image to ``(C, *shape)``, linearly.

    Reductions are smoothed first, so fine texture does not alias.
    """
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    target = (image.shape[0], *shape)
    smaller = shape[0] < image.shape[-2] or shape[1] < image.shape[-1]
    return resize(
        image,
        target,
        order=1,
        mode="reflect",
        anti_aliasing=smaller,  # a Gaussian of (1 / factor - 1) / 2 px: none on channels
        preserve_range=True,
    ).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample an ``(H, W)`` label (or mask) plane to ``shape`` by nearest neighbour.

    Ids are kept as they are; objects much smaller than a pixel of the new grid
    may vanish.
    """
    labels = np.asarray(labels)
    rows = np.minimum(
        ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp),
        labels.shape[0] - 1,
    )
    cols = np.minimum(
        ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp),
        labels.shape[1] - 1,
    )
    return labels[np.ix_(rows, cols)]


def resize_maps(maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample ``(K, h, w)`` probability maps to ``(K, *shape)``, linearly."""
    return resize_image(maps, shape)
