r"""Pixel-wise loss weights of the U-Net paper (Ronneberger, Fischer & Brox 2015, eq. 2).

The U-Net is trained with a weighted cross-entropy. The weight map

.. math::

    w(x) = w_c(x) + w_0 \exp\left(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\right)

balances the class frequencies with :math:`w_c` and forces the network to learn
the thin background gaps between touching objects with the second term, where
:math:`d_1` and :math:`d_2` are the distances to the border of the nearest and
the second-nearest object. Touching objects are first separated by a one-pixel
background gap (:func:`separate_touching_objects`), and the weight map is
computed on that separated target, so the gap pixels get the largest weights.

Examples
--------
>>> import numpy as np
>>> from napari_unet.weights import boundary_weight_map, separate_touching_objects
>>> labels = np.zeros((7, 9), dtype=np.int32)
>>> labels[2:5, 1:4] = 1
>>> labels[2:5, 4:8] = 2
>>> target = separate_touching_objects(labels)
>>> target[3]
array([0, 1, 1, 0, 0, 2, 2, 2, 0], dtype=int32)
>>> weights = boundary_weight_map(labels, w0=10.0, sigma=5.0)
>>> bool(weights[3, 3] > weights[0, 0] > weights[3, 6])
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_unet._validation import check_labels, check_positive

__all__ = ["boundary_weight_map", "separate_touching_objects"]

logger = logging.getLogger(__name__)

#: The default ``radius`` keeps every weight within this much of the exact map.
_DEFAULT_TOLERANCE = 1e-6


def separate_touching_objects(labels: np.ndarray) -> np.ndarray:
    """Cut a one-pixel background gap between objects that touch.

    Every object pixel whose 3x3 (8-connected) neighbourhood holds a different
    non-zero id is set to background, so touching objects are no longer
    8-connected to each other. Objects that touch nothing are unchanged.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (H, W)
        Instance labels: 0 is background, every other value one object.

    Returns
    -------
    numpy.ndarray, shape (H, W)
        A copy of ``labels`` (same dtype) with the touching pixels set to 0.

    Raises
    ------
    TypeError
        If ``labels`` is not an integer array.
    ValueError
        If ``labels`` is not 2D or holds negative values.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[1, 1, 2, 2, 0, 0],
    ...                    [1, 1, 2, 2, 0, 3],
    ...                    [0, 0, 0, 0, 0, 3]], dtype=np.uint8)
    >>> separate_touching_objects(labels)
    array([[1, 0, 0, 2, 0, 0],
           [1, 0, 0, 2, 0, 3],
           [0, 0, 0, 0, 0, 3]], dtype=uint8)
    """
    labels = check_labels(labels, "labels", require_objects=False)
    return _separate(labels)


def _separate(labels: np.ndarray) -> np.ndarray:
    """Compute :func:`separate_touching_objects` on checked labels."""
    # Compare each pixel with its right, lower, lower-right and lower-left
    # neighbours (the other four of the 8-neighbourhood are the same pairs seen
    # from the other side) and mark both pixels of every pair of different
    # object ids. Four whole-array passes: no loop over pixels or objects.
    objects = labels != 0
    touching = np.zeros(labels.shape, dtype=bool)
    whole, head, tail = slice(None), slice(None, -1), slice(1, None)
    for first, second in (
        ((whole, head), (whole, tail)),  # left-right
        ((head, whole), (tail, whole)),  # up-down
        ((head, head), (tail, tail)),  # diagonal
        ((head, tail), (tail, head)),  # anti-diagonal
    ):
        differ = labels[first] != labels[second]
        differ &= objects[first]
        differ &= objects[second]
        touching[first] |= differ
        touching[second] |= differ
    separated = labels.copy()
    separated[touching] = 0
    return separated


def _default_radius(w0: float, sigma: float) -> float:
    """Return the radius beyond which the border term is below ``1e-6``.

    Parameters
    ----------
    w0 : float
        Weight of the border term (``w0 >= 0``).
    sigma : float
        Width of the border term in pixels (``sigma > 0``).

    Returns
    -------
    float
        ``sigma * sqrt(2 * ln(w0 / 1e-6))``, or 0 when ``w0 <= 1e-6`` (then the
        border term is below ``1e-6`` everywhere).

    Examples
    --------
    >>> round(_default_radius(10.0, 5.0), 2)
    28.39
    """
    if w0 <= _DEFAULT_TOLERANCE:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / _DEFAULT_TOLERANCE))


def boundary_weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    *,
    radius: float | None = None,
) -> np.ndarray:
    r"""Compute the U-Net loss weight map of an instance label image (eq. 2 of the paper).

    .. math::

        w(x) = w_c(x) + w_0 \exp\left(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\right)

    The map is computed on the separated target
    ``t = separate_touching_objects(labels)``: pixels where objects touch are
    background in ``t`` and get the high border weight. :math:`d_1(x)` and
    :math:`d_2(x)` are the Euclidean distances (between pixel centres, as in
    :func:`scipy.ndimage.distance_transform_edt`) from ``x`` to the nearest and
    the second-nearest object of ``t``. As in Fig. 3d of the paper, the border
    term is added on background pixels of ``t`` only; object pixels get
    :math:`w_c` alone. With fewer than two objects the border term is 0.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (H, W)
        Instance labels: 0 is background, every other value one object. Ids need
        not be contiguous (7 and 65000, or uint32 ids near ``2**32``, are fine).
    w0 : float
        Weight of the border term, ``>= 0`` (the paper uses 10).
    sigma : float
        Width of the border term in pixels, ``> 0`` (the paper uses about 5).
    class_weights : {"balanced"} or sequence of two float or None
        :math:`w_c`, the weight of each class in ``t`` (background ``t == 0``,
        foreground ``t > 0``):

        - ``"balanced"``: class ``k`` weighs ``n_pixels / (n_classes * n_k)``,
          where ``n_classes`` counts the classes present, so :math:`w_c` averages
          to 1 over the image and the rarer class weighs more;
        - ``(background, foreground)``: two non-negative weights;
        - ``None``: :math:`w_c = 1` everywhere.
    radius : float, optional
        Cut-off distance of the border term, in pixels (``> 0``). The border
        term is only evaluated at pixels where ``d1 + d2 <= radius`` and is 0
        elsewhere, so objects farther than ``radius`` from a pixel never
        contribute to its weight. This is what makes the map fast: each object
        is looked at only in a window of about ``radius`` pixels around it, and
        objects with no neighbour within ``radius`` are skipped. Where the term
        is dropped it is below ``w0 * exp(-radius**2 / (2 * sigma**2))``, so the
        map differs from the exact one by at most that much. The default, None,
        uses ``radius = sigma * sqrt(2 * ln(w0 / 1e-6))`` (about 28 pixels for
        ``w0=10, sigma=5``), which keeps every weight within ``1e-6`` of the
        exact map (plus the float32 rounding of the result). ``numpy.inf``
        gives the exact map, at the cost of one full-image distance transform
        per object; any radius above ``2 * (H + W)`` does the same.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        The weight of each pixel.

    Raises
    ------
    TypeError
        If ``labels`` is not an integer array, or ``class_weights`` or a number
        has the wrong type.
    ValueError
        If ``labels`` is not 2D, holds negative values or no object, if
        ``w0 < 0``, ``sigma <= 0``, ``radius <= 0``, or ``class_weights`` is not
        one of the accepted forms.

    See Also
    --------
    separate_touching_objects : The target on which the map is computed.

    References
    ----------
    .. [1] O. Ronneberger, P. Fischer and T. Brox, "U-Net: Convolutional
       Networks for Biomedical Image Segmentation", MICCAI 2015, eq. 2.

    Examples
    --------
    Two 3x3 squares whose facing columns are 4 pixels apart: at the pixel halfway
    between them, ``d1 = d2 = 2``.

    >>> import numpy as np
    >>> labels = np.zeros((9, 11), dtype=np.int32)
    >>> labels[3:6, 1:4] = 1
    >>> labels[3:6, 7:10] = 2
    >>> weights = boundary_weight_map(labels, w0=10.0, sigma=2.0, class_weights=None)
    >>> round(float(weights[4, 5]), 4)  # 1 + 10 * exp(-(2 + 2)**2 / (2 * 2**2))
    2.3534
    >>> float(weights[4, 2])  # object pixels get w_c only
    1.0
    """
    labels = check_labels(labels, "labels")
    w0 = check_positive(w0, "w0", allow_zero=True)
    sigma = check_positive(sigma, "sigma")
    weight_of_class = _check_class_weights(class_weights)
    if radius is None:
        radius = _default_radius(w0, sigma)
    else:
        radius = _check_radius(radius)

    # No two distances in the image add up to more than 2 * (H + W): a larger
    # radius (numpy.inf included) changes nothing.
    radius = min(radius, 2.0 * sum(labels.shape))
    target = _separate(labels)
    background = target == 0
    weights = _class_weight_map(background, weight_of_class)
    if w0 == 0 or radius < 2:
        # A background pixel is at least 1 pixel from every object, so
        # d1 + d2 >= 2 > radius everywhere.
        return weights

    total = _distance_sum(target, radius)
    border = np.square(total)
    border *= np.float32(-0.5 / sigma**2)
    np.exp(border, out=border)
    border *= np.float32(w0)
    near = total <= radius
    near &= background
    np.add(weights, border, out=weights, where=near)
    return weights


def _check_class_weights(class_weights: object) -> tuple[float, float] | str | None:
    """Return ``"balanced"``, None or a (background, foreground) pair of floats."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights == "balanced":
            return "balanced"
        raise ValueError(
            f"class_weights must be 'balanced', None or two numbers (background, "
            f"foreground), got the string {class_weights!r}."
        )
    if not isinstance(class_weights, (Sequence, np.ndarray)):
        raise TypeError(
            f"class_weights must be 'balanced', None or a sequence of two numbers "
            f"(background, foreground), got {type(class_weights).__name__}."
        )
    if len(class_weights) != 2:
        raise ValueError(
            f"class_weights must hold exactly two numbers (background, foreground), "
            f"got {len(class_weights)}."
        )
    return (
        check_positive(class_weights[0], "class_weights[0] (background)", allow_zero=True),
        check_positive(class_weights[1], "class_weights[1] (foreground)", allow_zero=True),
    )


def _check_radius(radius: object) -> float:
    """Return ``radius`` as a positive float (``numpy.inf`` allowed)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"radius must be a positive number, numpy.inf or None, got {type(radius).__name__}."
        )
    radius = float(radius)
    if not radius > 0:  # also catches NaN
        raise ValueError(
            f"radius must be positive (a distance in pixels), numpy.inf for the exact "
            f"map, or None for the default, got {radius}."
        )
    return radius


def _class_weight_map(
    background: np.ndarray, weight_of_class: tuple[float, float] | str | None
) -> np.ndarray:
    """Return the float32 map of :math:`w_c` given the background mask of the target."""
    if weight_of_class is None:
        return np.ones(background.shape, dtype=np.float32)
    if weight_of_class == "balanced":
        n_background = int(np.count_nonzero(background))
        counts = (n_background, background.size - n_background)
        present = sum(count > 0 for count in counts)
        weight_of_class = tuple(
            background.size / (present * count) if count else 0.0 for count in counts
        )
    background_weight, foreground_weight = weight_of_class
    return np.where(background, np.float32(background_weight), np.float32(foreground_weight))


def _compact_labels(target: np.ndarray) -> np.ndarray:
    """Return ``target`` with ids small enough for ``find_objects`` (relabelled if sparse)."""
    max_id = int(target.max())
    if max_id <= target.size:
        return target
    # Ids are sparse (there are at most target.size of them): number them 1..N so
    # that no array or list of length max_id is made.
    ids, inverse = np.unique(target, return_inverse=True)
    inverse = inverse.reshape(target.shape)
    if ids[0] != 0:
        inverse += 1
    return inverse


def _distance_sum(target: np.ndarray, radius: float) -> np.ndarray:
    """Return ``d1 + d2`` as float32, exact wherever the exact sum is ``<= radius``.

    ``d1`` and ``d2`` are the distances to the nearest and second-nearest object
    of ``target``. Where the exact sum is larger than ``radius`` the result may
    be larger than exact, but it is still larger than ``radius``; where fewer
    than two objects were looked at, it is larger than ``2 * (H + W)``, which no
    two distances in the image add up to.

    Why this holds: each object is looked at only in the region where it can
    matter (see :func:`_regions_that_matter`); there its distance is exact, as
    the distance transform's input holds the whole object. Ignoring an object
    at a pixel can only make the two smallest distances larger.

    The running two smallest are kept as exact integer squared distances, from
    the feature transform, and the square roots are taken once at the end.
    """
    height, width = target.shape
    # No two distances in the image add up to more than this: a larger radius
    # (numpy.inf included) changes nothing.
    radius = min(radius, 2.0 * (height + width))
    # Pixels that see fewer than two objects keep a squared distance whose root
    # is larger than any radius, so that they drop out of ``total <= radius``.
    square_type = np.int32 if 2 * (height + width) < 46_000 else np.int64
    unseen = np.iinfo(square_type).max
    nearest = np.full(target.shape, unseen, dtype=square_type)
    second = np.full(target.shape, unseen, dtype=square_type)

    compact = _compact_labels(target)
    boxes = ndi.find_objects(compact)
    present = [(index + 1, box) for index, box in enumerate(boxes) if box is not None]
    # Inclusive pixel bounds of each box: first row, last row, first col, last col.
    bounds = np.array(
        [(box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1) for _, box in present],
        dtype=np.int64,
    ).reshape(-1, 4)
    regions = _regions_that_matter(bounds, radius, target.shape)
    rows = np.arange(height, dtype=square_type)[:, None]
    cols = np.arange(width, dtype=square_type)[None, :]
    skipped = 0
    for (label, _), (k0, k1, l0, l1), (top, bottom, left, right) in zip(
        present, bounds.tolist(), regions.tolist(), strict=True
    ):
        if top > bottom or left > right:
            skipped += 1
            continue
        # The feature transform's input must hold the whole object, so that the
        # nearest object pixel is exact; it is used in the region only.
        in0, jn0 = min(top, k0), min(left, l0)
        window = compact[in0 : max(bottom, k1) + 1, jn0 : max(right, l1) + 1]
        feature = ndi.distance_transform_edt(
            window != label, return_distances=False, return_indices=True
        )
        inner = (slice(top - in0, bottom - in0 + 1), slice(left - jn0, right - jn0 + 1))
        # Squared distance to the nearest pixel of the object, in image coordinates.
        step_rows = feature[0][inner] + (in0 - rows[top : bottom + 1])
        step_cols = feature[1][inner] + (jn0 - cols[:, left : right + 1])
        square = np.multiply(step_rows, step_rows, dtype=square_type)
        square += np.multiply(step_cols, step_cols, dtype=square_type)
        # Running two smallest, in place.
        near1 = nearest[top : bottom + 1, left : right + 1]
        near2 = second[top : bottom + 1, left : right + 1]
        farther = np.maximum(near1, square)
        np.minimum(near1, square, out=near1)
        np.minimum(near2, farther, out=near2)
    logger.debug(
        "boundary weights: %d objects, %d skipped (no neighbour within radius %.1f)",
        len(present),
        skipped,
        radius,
    )
    total = np.sqrt(nearest, dtype=np.float32)
    total += np.sqrt(second, dtype=np.float32)
    return total


def _regions_that_matter(
    bounds: np.ndarray, radius: float, shape: tuple[int, int], chunk: int = 512
) -> np.ndarray:
    """Return, for each object box, the inclusive box of pixels where it can matter.

    ``bounds`` holds one row ``(first row, last row, first col, last col)`` per
    object. Object ``k`` matters at a background pixel ``x`` only if
    ``d(x, k) + d(x, j) <= radius`` for another object ``j``. Then

    - ``j`` is a neighbour of ``k``: their boxes are at most ``radius`` apart;
    - ``d(x, k) <= radius - 1``, as ``d(x, j) >= 1``;
    - along each axis, the distances of ``x`` to both boxes add up to at most
      ``radius``, so, e.g., its row is at least ``(r0[k] + r0[j] - radius) / 2``.

    The result has rows ``(top, bottom, left, right)``; an object without a
    neighbour gets an empty box (``top > bottom``). Objects are compared in
    chunks of ``chunk`` so that memory stays ``O(chunk * n_objects)``.
    """
    height, width = shape
    r0, r1, c0, c1 = bounds.T
    reach = max(height, width)
    if radius - 1.0 < reach:
        reach = math.floor(radius - 1.0)
    regions = np.empty_like(bounds)
    regions[:, 0] = np.maximum(r0 - reach, 0)
    regions[:, 1] = np.minimum(r1 + reach, height - 1)
    regions[:, 2] = np.maximum(c0 - reach, 0)
    regions[:, 3] = np.minimum(c1 + reach, width - 1)
    big = np.iinfo(np.int64).max // 4
    for start in range(0, len(bounds), chunk):
        rows = slice(start, start + chunk)
        row_gap = np.maximum(r0[None, :] - r1[rows, None], r0[rows, None] - r1[None, :])
        col_gap = np.maximum(c0[None, :] - c1[rows, None], c0[rows, None] - c1[None, :])
        np.maximum(row_gap, 0, out=row_gap)
        np.maximum(col_gap, 0, out=col_gap)
        neighbour = row_gap * row_gap + col_gap * col_gap <= radius * radius
        index = np.arange(start, start + neighbour.shape[0])
        neighbour[index - start, index] = False
        # Union over the neighbours of the per-pair bounds (an empty union gives
        # an empty box).
        low_r0 = np.where(neighbour, r0[None, :], big).min(axis=1)
        high_r1 = np.where(neighbour, r1[None, :], -big).max(axis=1)
        low_c0 = np.where(neighbour, c0[None, :], big).min(axis=1)
        high_c1 = np.where(neighbour, c1[None, :], -big).max(axis=1)
        top = np.ceil(0.5 * (r0[rows] + low_r0 - radius)).astype(np.int64)
        bottom = np.floor(0.5 * (r1[rows] + high_r1 + radius)).astype(np.int64)
        left = np.ceil(0.5 * (c0[rows] + low_c0 - radius)).astype(np.int64)
        right = np.floor(0.5 * (c1[rows] + high_c1 + radius)).astype(np.int64)
        block = regions[rows]  # a view: updated in place
        np.maximum(block[:, 0], top, out=block[:, 0])
        np.minimum(block[:, 1], bottom, out=block[:, 1])
        np.maximum(block[:, 2], left, out=block[:, 2])
        np.minimum(block[:, 3], right, out=block[:, 3])
    return regions
