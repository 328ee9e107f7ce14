r"""Scores that compare a predicted instance segmentation with the true one.

Label images are non-negative integer arrays of any number of axes (a 2D image
or a stack), with 0 for background and one id per object. Ids need not be
contiguous and may be large (``uint32``, ``uint64``): every function works on
the ids that occur in the images and never allocates an array indexed by the
largest id.

Two families of scores are provided:

* Object matching (:func:`match_instances`, :func:`average_precision`): true
  and predicted objects are paired one-to-one when their intersection over
  union (IoU) is **strictly greater** than a threshold, the convention of the
  2018 Data Science Bowl. The average precision of one threshold is then
  :math:`\mathrm{AP} = \mathrm{TP} / (\mathrm{TP} + \mathrm{FP} + \mathrm{FN})`.
* The Rand error of the ISBI 2012 challenge (:func:`rand_error`), which scores
  how pixels are grouped and needs no object matching.

Examples
--------
>>> import numpy as np
>>> from napari_unet.metrics import average_precision, match_instances, rand_error
>>> true = np.array([[1, 1, 0, 2, 2],
...                  [1, 1, 0, 2, 2]])
>>> pred = np.array([[5, 5, 0, 0, 0],
...                  [5, 5, 0, 0, 0]])
>>> match_instances(true, pred)
Matching(threshold=0.5, n_true=2, n_pred=1, tp=1, fp=0, fn=1, mean_matched_iou=1.0)
>>> average_precision(true, pred)
0.5
>>> rand_error(true, pred)  # the missed object is one segment of 0s: same grouping
0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from napari_unet._validation import check_array, check_labels

__all__ = ["Matching", "average_precision", "iou", "match_instances", "rand_error"]


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _check_label_pair(true_labels: object, pred_labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Check two label images of the same shape and return them as arrays."""
    arrays = []
    for value, name in ((true_labels, "true_labels"), (pred_labels, "pred_labels")):
        array = check_array(value, name)
        if array.ndim == 0:
            raise ValueError(
                f"{name} must be a label image with at least one axis, got a scalar "
                f"array; pass the whole image."
            )
        arrays.append(check_labels(array, name, ndim=(array.ndim,), require_objects=False))
    true, pred = arrays
    if true.shape != pred.shape:
        raise ValueError(
            f"true_labels has shape {true.shape} but pred_labels has shape {pred.shape}; "
            f"they must have the same shape (one label per pixel in both)."
        )
    return true, pred


def _check_threshold(threshold: object) -> float:
    """Return ``threshold`` as a float if it lies in [0, 1)."""
    if isinstance(threshold, bool) or not isinstance(
        threshold, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"threshold must be a number in [0, 1), got {type(threshold).__name__}.")
    value = float(threshold)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"threshold must be in [0, 1) because a pair is matched when its IoU is "
            f"strictly greater than the threshold, got {value}. Use e.g. 0.5, or "
            f"0.95 for a strict score."
        )
    return value


# ---------------------------------------------------------------------------
# Contingency table
# ---------------------------------------------------------------------------


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """Renumber object ids 1..N when they reach the pixel count (e.g. 64-bit hashes).

    Tables indexed by id (areas, per-object maxima) would otherwise be sized by
    the largest id: ids near 2**40 would allocate terabytes. Smaller ids are
    returned as they are; 0 (background) stays 0.
    """
    if int(labels.max(initial=0)) < labels.size:
        return labels
    values, inverse = _relabel(labels.ravel())
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    return inverse if values[0] == 0 else inverse + 1


def _relabel(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted distinct values of ``flat`` and each element's index into them.

    ``ids[inverse]`` equals ``flat``. When the largest value is smaller than the
    number of elements, a lookup table of that size (so never larger than the
    image) replaces the sort done by ``numpy.unique``.
    """
    if flat.size and int(flat.max()) < flat.size:
        values = flat.astype(np.intp, copy=False)
        present = np.bincount(values) > 0
        ids = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.intp) - 1
        return ids.astype(flat.dtype), lookup[values]
    ids, inverse = np.unique(flat, return_inverse=True)
    return ids, inverse.reshape(-1).astype(np.intp, copy=False)


@dataclass(frozen=True)
class _Table:
    """Sparse contingency table of two labelings of the same pixels.

    Entry ``k`` says that ``counts[k]`` pixels have label ``row_ids[rows[k]]`` in
    the first labeling and ``col_ids[cols[k]]`` in the second. Only non-zero
    entries are stored.
    """

    row_ids: np.ndarray
    col_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray

    @property
    def row_sizes(self) -> np.ndarray:
        return np.bincount(self.rows, weights=self.counts, minlength=self.row_ids.size)

    @property
    def col_sizes(self) -> np.ndarray:
        return np.bincount(self.cols, weights=self.counts, minlength=self.col_ids.size)


def _contingency(first: np.ndarray, second: np.ndarray) -> _Table:
    """Count the pixels of every (first label, second label) pair that occurs."""
    row_ids, row_index = _relabel(first.reshape(-1))
    col_ids, col_index = _relabel(second.reshape(-1))
    n_cols = col_ids.size
    codes = row_index * n_cols + col_index
    n_cells = row_ids.size * n_cols
    if n_cells <= max(codes.size, 1 << 16):
        # Few distinct labels: a dense count over all cells is cheapest.
        counts = np.bincount(codes, minlength=n_cells)
        cells = np.flatnonzero(counts)
        counts = counts[cells]
    else:
        cells, counts = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(cells, n_cols)
    return _Table(row_ids, col_ids, rows, cols, counts.astype(np.int64))


# ---------------------------------------------------------------------------
# IoU and object matching
# ---------------------------------------------------------------------------


def iou(mask_a: object, mask_b: object) -> float:
    r"""Intersection over union (Jaccard index) of two masks.

    .. math:: \mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|}

    Parameters
    ----------
    mask_a, mask_b : array_like
        Masks of the same shape: boolean, or numbers where any non-zero value is
        inside the mask.

    Returns
    -------
    float
        The IoU in [0, 1]; 1.0 when both masks are empty.

    Raises
    ------
    TypeError
        If a mask is not boolean or numeric.
    ValueError
        If the shapes differ or a floating-point mask holds NaN.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1, 1, 1, 0]], dtype=bool)
    >>> b = np.array([[0, 1, 1, 1]], dtype=bool)
    >>> iou(a, b)  # 2 shared pixels out of 4
    0.5
    >>> iou(np.zeros((2, 2)), np.zeros((2, 2)))
    1.0
    """
    masks = []
    for value, name in ((mask_a, "mask_a"), (mask_b, "mask_b")):
        array = check_array(value, name)
        if not (
            array.dtype == bool
            or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)
        ):
            raise TypeError(f"{name} must be a boolean or numeric mask, got dtype {array.dtype}.")
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            raise ValueError(f"{name} contains NaN; a mask pixel must be inside or outside.")
        masks.append(array.astype(bool, copy=False))
    a, b = masks
    if a.shape != b.shape:
        raise ValueError(
            f"mask_a has shape {a.shape} but mask_b has shape {b.shape}; "
            f"they must have the same shape."
        )
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def _ratio(numerator: float, denominator: float, *, both_empty: bool) -> float:
    """Divide, giving 1.0 for 0/0 when neither image has objects and 0.0 otherwise."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator) / float(denominator)


@dataclass(frozen=True)
class Matching:
    r"""Result of a one-to-one matching of true and predicted objects.

    Parameters
    ----------
    threshold : float
        IoU threshold used; a pair is matched only if its IoU is greater.
    n_true, n_pred : int
        Number of objects in the true and in the predicted labels.
    tp : int
        True positives: matched pairs.
    fp : int
        False positives: predicted objects without a match, ``n_pred - tp``.
    fn : int
        False negatives: true objects without a match, ``n_true - tp``.
    mean_matched_iou : float
        Mean IoU of the matched pairs (0.0 when nothing is matched).
    matched_true_ids, matched_pred_ids : numpy.ndarray
        Ids of the matched pairs, the ``k``-th true id matched with the ``k``-th
        predicted id, sorted by true id. Read-only; not part of equality.
    matched_ious : numpy.ndarray
        IoU of each matched pair. Read-only; not part of equality.

    Notes
    -----
    The ratios below are 0/0 when there are no objects to count; they are then
    1.0 if neither image has objects and 0.0 otherwise.

    * ``precision`` = TP / (TP + FP)
    * ``recall`` = TP / (TP + FN)
    * ``f1`` = 2 TP / (2 TP + FP + FN)
    * ``average_precision`` = TP / (TP + FP + FN) (Data Science Bowl 2018)
    * ``panoptic_quality`` = (sum of matched IoUs) / (TP + FP / 2 + FN / 2)
      (Kirillov et al. 2019), which is ``mean_matched_iou * f1``.

    Examples
    --------
    >>> import numpy as np
    >>> true = np.array([[1, 1, 2, 2, 3, 3]])
    >>> pred = np.array([[1, 1, 2, 2, 2, 2]])  # objects 2 and 3 merged
    >>> m = match_instances(true, pred)
    >>> m.tp, m.fp, m.fn
    (1, 1, 2)
    >>> m.precision, m.recall, m.average_precision
    (0.5, 0.3333333333333333, 0.25)
    >>> m.matched_true_ids.tolist(), m.matched_pred_ids.tolist()
    ([1], [1])
    """

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float
    matched_true_ids: np.ndarray = field(repr=False, compare=False)
    matched_pred_ids: np.ndarray = field(repr=False, compare=False)
    matched_ious: np.ndarray = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("matched_true_ids", "matched_pred_ids", "matched_ious"):
            array = np.array(getattr(self, name))  # a private, read-only copy
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @property
    def _both_empty(self) -> bool:
        return self.n_true == 0 and self.n_pred == 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP): share of predicted objects that are matched."""
        return _ratio(self.tp, self.tp + self.fp, both_empty=self._both_empty)

    @property
    def recall(self) -> float:
        """TP / (TP + FN): share of true objects that are found."""
        return _ratio(self.tp, self.tp + self.fn, both_empty=self._both_empty)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN): harmonic mean of precision and recall."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, both_empty=self._both_empty)

    @property
    def average_precision(self) -> float:
        """TP / (TP + FP + FN): the Data Science Bowl 2018 score at this threshold."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, both_empty=self._both_empty)

    @property
    def panoptic_quality(self) -> float:
        """Sum of matched IoUs / (TP + FP/2 + FN/2)."""
        return _ratio(
            float(np.sum(self.matched_ious)),
            self.tp + 0.5 * (self.fp + self.fn),
            both_empty=self._both_empty,
        )


def _assign(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Pick a one-to-one subset of candidate pairs: as many as possible, then best total score.

    ``rows[k]``, ``cols[k]`` is candidate ``k`` with score ``scores[k]`` in (0, 1].
    Returns the indices of the chosen candidates. The candidate graph is split
    into connected components; each component with more than one candidate is
    solved exactly with ``scipy.optimize.linear_sum_assignment``.
    """
    if rows.size == 0:
        return np.zeros(0, dtype=np.intp)
    _, row_local = np.unique(rows, return_inverse=True)
    _, col_local = np.unique(cols, return_inverse=True)
    n_rows = int(row_local.max()) + 1
    n_nodes = n_rows + int(col_local.max()) + 1
    graph = sparse.coo_matrix(
        (np.ones(rows.size), (row_local, col_local + n_rows)), shape=(n_nodes, n_nodes)
    )
    _, component_of_node = connected_components(graph, directed=False)
    component = component_of_node[row_local]
    order = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.diff(component[order], prepend=-1))
    chosen = []
    for group in np.split(order, starts[1:]):
        if group.size == 1:
            chosen.append(group)
            continue
        group_rows, r = np.unique(rows[group], return_inverse=True)
        group_cols, c = np.unique(cols[group], return_inverse=True)
        # Weight 1 per pair plus a score bonus whose total stays below 1/2, so that
        # the assignment first maximises the number of pairs, then their score.
        bonus_scale = 2.0 * min(group_rows.size, group_cols.size)
        weights = np.zeros((group_rows.size, group_cols.size))
        weights[r, c] = 1.0 + scores[group] / bonus_scale
        candidate = np.full(weights.shape, -1, dtype=np.intp)
        candidate[r, c] = group
        best_r, best_c = linear_sum_assignment(weights, maximize=True)
        picked = candidate[best_r, best_c]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def match_instances(true_labels: object, pred_labels: object, threshold: float = 0.5) -> Matching:
    """Match true and predicted objects one-to-one by their IoU.

    The IoU of every pair of overlapping objects is read from a sparse
    contingency table of the two images. A pair can be matched only if its IoU
    is **strictly greater** than ``threshold`` (the Data Science Bowl 2018
    convention). For ``threshold >= 0.5`` these pairs are already one-to-one,
    since an object cannot overlap two disjoint objects each by more than half
    of their union. For ``threshold < 0.5`` an object may qualify with several
    partners; the matching then has the largest possible number of pairs, and
    among those the largest total IoU (``scipy.optimize.linear_sum_assignment``,
    solved separately on each connected group of candidate pairs).

    Parameters
    ----------
    true_labels : array_like of int
        Ground-truth label image: 0 is background, each positive id one object.
    pred_labels : array_like of int
        Predicted label image of the same shape.
    threshold : float
        IoU that a pair must exceed to be matched, in [0, 1).

    Returns
    -------
    Matching
        Counts of matched (``tp``) and unmatched (``fp``, ``fn``) objects, the
        matched pairs and the scores derived from them.

    Raises
    ------
    TypeError
        If a label image is not integer-valued, or ``threshold`` is not a number.
    ValueError
        If the shapes differ, a label is negative or ``threshold`` is outside [0, 1).

    See Also
    --------
    average_precision : The Data Science Bowl score, TP / (TP + FP + FN).

    Examples
    --------
    An object split in two by the prediction: its larger half still has an IoU
    of 6/9 with it, the smaller half is a false positive.

    >>> import numpy as np
    >>> true = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    >>> pred = np.array([[7, 7, 7, 7, 7, 7, 9, 9, 9, 0]])
    >>> m = match_instances(true, pred)
    >>> m.tp, m.fp, m.fn, round(m.mean_matched_iou, 3)
    (1, 1, 0, 0.667)
    >>> match_instances(true, pred, threshold=0.7).tp
    0
    """
    true, pred = _check_label_pair(true_labels, pred_labels)
    threshold = _check_threshold(threshold)

    table = _contingency(true, pred)
    true_ids, pred_ids = table.row_ids, table.col_ids
    n_true = int(np.count_nonzero(true_ids))
    n_pred = int(np.count_nonzero(pred_ids))

    overlap = (true_ids[table.rows] != 0) & (pred_ids[table.cols] != 0)
    rows, cols, intersection = table.rows[overlap], table.cols[overlap], table.counts[overlap]
    union = table.row_sizes[rows] + table.col_sizes[cols] - intersection
    pair_iou = intersection / union
    candidate = pair_iou > threshold
    rows, cols, pair_iou = rows[candidate], cols[candidate], pair_iou[candidate]
    if threshold < 0.5:
        keep = _assign(rows, cols, pair_iou)
        rows, cols, pair_iou = rows[keep], cols[keep], pair_iou[keep]
    # Table entries are sorted by (true, pred), so the pairs are sorted by true id.

    tp = int(rows.size)
    return Matching(
        threshold=threshold,
        n_true=n_true,
        n_pred=n_pred,
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        mean_matched_iou=float(pair_iou.mean()) if tp else 0.0,
        matched_true_ids=true_ids[rows],
        matched_pred_ids=pred_ids[cols],
        matched_ious=pair_iou.astype(np.float64),
    )


def average_precision(true_labels: object, pred_labels: object, threshold: float = 0.5) -> float:
    r"""Average precision at one IoU threshold, as in the 2018 Data Science Bowl.

    .. math:: \mathrm{AP}(t) = \frac{\mathrm{TP}(t)}{\mathrm{TP}(t) + \mathrm{FP}(t)
              + \mathrm{FN}(t)}

    where a true and a predicted object form a true positive when they are
    matched one-to-one with an IoU strictly greater than :math:`t`
    (:func:`match_instances`), FP counts the unmatched predicted objects and FN
    the unmatched true ones. This is the definition used by the Data Science
    Bowl 2018 and by StarDist (which calls it ``accuracy``); the competition
    score is its mean over :math:`t = 0.5, 0.55, \dots, 0.95`.

    Parameters
    ----------
    true_labels : array_like of int
        Ground-truth label image: 0 is background, each positive id one object.
    pred_labels : array_like of int
        Predicted label image of the same shape.
    threshold : float
        IoU that a pair must exceed to be matched, in [0, 1).

    Returns
    -------
    float
        AP in [0, 1]; 1.0 when neither image has objects, 0.0 when only one has.

    Raises
    ------
    TypeError
        If a label image is not integer-valued, or ``threshold`` is not a number.
    ValueError
        If the shapes differ, a label is negative or ``threshold`` is outside [0, 1).

    Examples
    --------
    Four true objects, three found exactly and one missed:

    >>> import numpy as np
    >>> true = np.array([[1, 1, 2, 2, 3, 3, 4, 4]])
    >>> pred = np.array([[1, 1, 2, 2, 3, 3, 0, 0]])
    >>> average_precision(true, pred)
    0.75
    >>> average_precision(np.zeros((3, 3), int), np.zeros((3, 3), int))
    1.0
    """
    return match_instances(true_labels, pred_labels, threshold).average_precision


# ---------------------------------------------------------------------------
# Rand error
# ---------------------------------------------------------------------------


def rand_error(
    true_labels: object, pred_labels: object, *, foreground_restricted: bool = True
) -> float:
    r"""Rand error of the ISBI 2012 challenge, one minus the Rand F-score.

    Let :math:`n_{ij}` be the number of counted pixels with predicted label
    :math:`i` and true label :math:`j`, :math:`s_i = \sum_j n_{ij}` and
    :math:`t_j = \sum_i n_{ij}` the segment sizes. Counting pairs of distinct
    pixels that lie in the same segment,

    .. math::

        V^{\mathrm{Rand}} = \frac{2 \sum_{ij} n_{ij}(n_{ij} - 1)}
            {\sum_i s_i (s_i - 1) + \sum_j t_j (t_j - 1)},
        \qquad \text{error} = 1 - V^{\mathrm{Rand}}.

    :math:`V^{\mathrm{Rand}}` is the harmonic mean of the Rand split score
    (pairs together in both / pairs together in the truth) and merge score
    (pairs together in both / pairs together in the prediction) of
    Arganda-Carreras et al. (2015). Their formula writes it with the joint
    distribution :math:`p_{ij} = n_{ij} / N` as
    :math:`2 \sum p_{ij}^2 / (\sum s_i^2 + \sum t_j^2)`, which counts a pixel
    paired with itself; the two forms differ by :math:`O(1/\text{segment size})`.
    The distinct-pair form used here is that of
    ``skimage.metrics.adapted_rand_error(true, pred)[0]`` (and of the SNEMI3D
    and Fiji ``adaptedRandIndexStats3D`` scripts), which this function matches.

    Parameters
    ----------
    true_labels : array_like of int
        Ground-truth label image: 0 is background, each positive id one segment.
    pred_labels : array_like of int
        Predicted label image of the same shape.
    foreground_restricted : bool
        If True (the ISBI 2012 score), count only pixels whose *true* label is
        non-zero; a predicted 0 there is an ordinary segment (all such pixels
        are grouped together). If False, count every pixel and treat the
        background of both images as an ordinary segment.

    Returns
    -------
    float
        The Rand error in [0, 1]; 0 means the two images group the counted
        pixels identically. It is 0 as well when no two counted pixels share a
        segment in either image (for instance a single counted pixel).

    Raises
    ------
    TypeError
        If a label image is not integer-valued.
    ValueError
        If the shapes differ, a label is negative, or ``foreground_restricted``
        is True and ``true_labels`` has no objects (then no pixel is counted).

    References
    ----------
    .. [1] Arganda-Carreras I, Turaga SC, Berger DR, et al. (2015). Crowdsourcing
           the creation of image segmentation algorithms for connectomics.
           Front. Neuroanat. 9:142. :doi:`10.3389/fnana.2015.00142`

    Examples
    --------
    Two true segments merged by the prediction: of the 12 ordered pairs of
    distinct pixels the prediction puts together, only 4 are together in the
    truth, so :math:`V = 2 \cdot 4 / (4 + 12) = 0.5`.

    >>> import numpy as np
    >>> true = np.array([[1, 1, 2, 2]])
    >>> pred = np.array([[3, 3, 3, 3]])
    >>> rand_error(true, pred)
    0.5
    >>> rand_error(true, np.array([[5, 5, 9, 9]]))
    0.0
    """
    true, pred = _check_label_pair(true_labels, pred_labels)
    if not isinstance(foreground_restricted, (bool, np.bool_)):
        raise TypeError(
            f"foreground_restricted must be True or False, got "
            f"{type(foreground_restricted).__name__}."
        )
    if foreground_restricted:
        counted = true != 0
        if not counted.any():
            raise ValueError(
                "true_labels contains no objects, so the foreground-restricted Rand "
                "error counts no pixel; pass foreground_restricted=False to score "
                "every pixel."
            )
        true, pred = true[counted], pred[counted]

    table = _contingency(pred, true)
    counts = table.counts.astype(np.float64)
    pred_sizes, true_sizes = table.row_sizes, table.col_sizes
    together_both = float(np.dot(counts, counts - 1.0))
    together_pred = float(np.dot(pred_sizes, pred_sizes - 1.0))
    together_true = float(np.dot(true_sizes, true_sizes - 1.0))
    denominator = together_pred + together_true
    if denominator == 0:
        # Every segment is a single pixel in both images: they agree on all pairs.
        return 0.0
    return 1.0 - 2.0 * together_both / denominator
