import itertools

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error
from skimage.morphology import disk, erosion

from napari_unet.metrics import Matching, average_precision, iou, match_instances, rand_error
from napari_unet.synthetic import make_touching_nuclei


@pytest.fixture(scope="module")
def nuclei():
    _, labels = make_touching_nuclei((128, 128), n_nuclei=14, seed=3)
    return labels


def perturb(labels):
    """Erode the objects, merge the two first touching ones and drop one."""
    pred = erosion(labels, disk(1))
    horizontal = np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()])
    touching = horizontal[:, (horizontal.min(axis=0) > 0) & (horizontal[0] != horizontal[1])]
    assert touching.size, "the fixture must contain touching nuclei"
    a, b = touching[:, 0]
    pred[labels == b] = a
    dropped = next(i for i in np.unique(labels) if i not in (0, a, b))
    pred[labels == dropped] = 0
    return pred


def row(*values):
    return np.array([values])


def square(shape, top, left, size, value=1):
    labels = np.zeros(shape, dtype=np.int32)
    labels[top : top + size, left : left + size] = value
    return labels


# --- iou -------------------------------------------------------------------


def test_iou_hand_computed():
    a = row(1, 1, 1, 1, 0, 0).astype(bool)
    b = row(0, 0, 1, 1, 1, 0).astype(bool)
    assert iou(a, b) == pytest.approx(2 / 5)
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    # Non-zero values of any dtype are inside the mask.
    assert iou(a.astype(np.uint8) * 7, b.astype(float) * 0.3) == pytest.approx(2 / 5)
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


# --- hand-computed matchings ----------------------------------------------


def test_identical_labelings_score_perfectly(nuclei):
    m = match_instances(nuclei, nuclei, threshold=0.9)
    n = len(np.unique(nuclei)) - 1
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (n, 0, 0, n, n)
    assert m.mean_matched_iou == 1.0
    assert m.precision == m.recall == m.f1 == m.average_precision == m.panoptic_quality == 1.0
    assert average_precision(nuclei, nuclei, threshold=0.95) == 1.0
    assert rand_error(nuclei, nuclei) == 0.0
    assert rand_error(nuclei, nuclei, foreground_restricted=False) == 0.0


def test_one_missed_object():
    true = row(1, 1, 2, 2, 0, 3, 3, 0, 4, 4, 5, 5)
    pred = row(1, 1, 2, 2, 0, 3, 3, 0, 0, 0, 5, 5)
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn) == (4, 0, 1)
    assert m.average_precision == pytest.approx(4 / 5)
    assert (m.precision, m.recall) == (1.0, pytest.approx(4 / 5))
    assert m.f1 == pytest.approx(8 / 9)
    assert average_precision(true, pred) == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    ("pred", "expected", "true_ids", "pred_ids"),
    [
        # Equal halves: IoU = 5/10 each, not > 0.5.
        (row(1, 1, 1, 1, 1, 2, 2, 2, 2, 2), (0, 2, 1), [], []),
        # Unequal halves: IoU 6/10 and 4/10.
        (row(8, 8, 8, 8, 8, 8, 9, 9, 9, 9), (1, 1, 0), [1], [8]),
    ],
)
def test_split_object(pred, expected, true_ids, pred_ids):
    true = row(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn) == expected
    assert m.matched_true_ids.tolist() == true_ids
    assert m.matched_pred_ids.tolist() == pred_ids


@pytest.mark.parametrize(
    ("true", "expected", "ap"),
    [
        (row(1, 1, 1, 1, 2, 2, 2, 2), (0, 1, 2), 0.0),  # IoU 4/8 with both
        (row(1, 1, 1, 1, 1, 1, 2, 2), (1, 0, 1), 0.5),  # IoU 6/8 and 2/8
    ],
)
def test_merged_objects(true, expected, ap):
    pred = row(3, 3, 3, 3, 3, 3, 3, 3)
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn) == expected
    assert m.average_precision == ap


def test_shifted_square_around_threshold():
    true = square((40, 40), 10, 10, 10)
    # Shift by d columns: IoU = (10 - d) / (10 + d).
    assert match_instances(true, square((40, 40), 10, 13, 10)).tp == 1  # 7/13 = 0.538
    assert match_instances(true, square((40, 40), 10, 14, 10)).tp == 0  # 6/14 = 0.429
    m = match_instances(true, square((40, 40), 10, 13, 10))
    assert m.mean_matched_iou == pytest.approx(7 / 13)
    assert match_instances(true, square((40, 40), 10, 14, 10), threshold=0.42).tp == 1


def test_threshold_is_strict():
    true = row(1, 1, 1, 1, 1, 1, 1, 1, 0, 0)
    pred = row(0, 0, 2, 2, 2, 2, 2, 2, 2, 2)  # IoU exactly 6/10
    assert iou(true, pred) == 0.6
    assert match_instances(true, pred, threshold=0.6).tp == 0
    assert match_instances(true, pred, threshold=0.6 - 1e-9).tp == 1
    assert match_instances(true, pred, threshold=0.3).tp == 1
    assert match_instances(true, pred, threshold=0.0).tp == 1


def test_no_objects():
    empty = np.zeros((4, 5), dtype=np.uint8)
    some = square((4, 5), 1, 1, 2, value=3)
    m = match_instances(empty, empty)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred, m.mean_matched_iou) == (0, 0, 0, 0, 0, 0.0)
    assert m.precision == m.recall == m.f1 == m.average_precision == 1.0
    assert average_precision(empty, empty) == 1.0
    m = match_instances(empty, some)
    assert (m.tp, m.fp, m.fn) == (0, 1, 0)
    assert (m.precision, m.recall, m.average_precision) == (0.0, 0.0, 0.0)
    m = match_instances(some, empty)
    assert (m.tp, m.fp, m.fn) == (0, 0, 1)
    assert average_precision(some, empty) == 0.0


def test_stack_of_images_is_matched_as_a_whole():
    first = row(1, 1, 2, 2, 0, 0)
    second = row(3, 3, 3, 0, 4, 4)
    true = np.stack([first, second])
    pred = np.stack([first, row(5, 5, 5, 0, 0, 0)])
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (3, 0, 1, 4, 3)
    assert m.matched_true_ids.tolist() == [1, 2, 3]
    assert m.matched_pred_ids.tolist() == [1, 2, 5]


def test_matching_result_is_frozen_and_consistent(nuclei):
    pred = perturb(nuclei)
    m = match_instances(nuclei, pred, threshold=0.3)
    assert isinstance(m, Matching)
    assert m.fp == m.n_pred - m.tp and m.fn == m.n_true - m.tp
    assert m.matched_true_ids.shape == m.matched_pred_ids.shape == m.matched_ious.shape == (m.tp,)
    assert np.all(m.matched_ious > 0.3)
    assert m.mean_matched_iou == pytest.approx(m.matched_ious.mean())
    assert m.panoptic_quality == pytest.approx(m.mean_matched_iou * m.f1)
    for t, p, value in zip(m.matched_true_ids, m.matched_pred_ids, m.matched_ious, strict=True):
        assert iou(nuclei == t, pred == p) == pytest.approx(value)
    with pytest.raises(ValueError, match="read-only"):
        m.matched_ious[0] = 0.0
    with pytest.raises(AttributeError):
        m.tp = 0


# --- invariances -------------------------------------------------------------


def test_label_permutation_and_sparse_ids_do_not_change_the_result(nuclei):
    pred = perturb(nuclei)
    rng = np.random.default_rng(0)

    def remap(labels, new_ids):
        ids = np.unique(labels)
        lookup = dict(zip(ids[ids > 0].tolist(), new_ids, strict=True))
        out = np.zeros(labels.shape, dtype=np.asarray(new_ids).dtype)
        for old, new in lookup.items():
            out[labels == old] = new
        return out

    def n_objects(labels):
        return len(np.unique(labels)) - 1

    variants = [
        (
            remap(nuclei, rng.permutation(n_objects(nuclei)) + 1),
            remap(pred, rng.permutation(n_objects(pred)) + 1),
        ),
        (
            remap(
                nuclei,
                rng.choice(2**32 - 1, n_objects(nuclei), replace=False).astype(np.uint32) + 1,
            ),
            remap(
                pred, rng.choice(2**32 - 1, n_objects(pred), replace=False).astype(np.uint32) + 1
            ),
        ),
        (
            remap(nuclei, np.uint64(2**62) + np.arange(n_objects(nuclei), dtype=np.uint64) * 7919),
            remap(pred, np.uint64(2**63) + np.arange(n_objects(pred), dtype=np.uint64)),
        ),
    ]
    for threshold in (0.1, 0.5, 0.8):
        reference = match_instances(nuclei, pred, threshold)
        assert 0 < reference.tp < reference.n_true
        for true_v, pred_v in variants:
            m = match_instances(true_v, pred_v, threshold)
            assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (
                reference.tp,
                reference.fp,
                reference.fn,
                reference.n_true,
                reference.n_pred,
            )
            assert np.sort(m.matched_ious) == pytest.approx(np.sort(reference.matched_ious))
            assert m.mean_matched_iou == pytest.approx(reference.mean_matched_iou)
    reference_error = rand_error(nuclei, pred)
    assert reference_error > 0
    for true_v, pred_v in variants:
        assert rand_error(true_v, pred_v) == pytest.approx(reference_error, abs=1e-12)


# --- one-to-one matching below 0.5 ------------------------------------------


def test_low_threshold_uses_one_to_one_optimal_matching():
    # true A = [0, 10), B = [10, 20); pred Y = [0, 4), X = [4, 14).
    # IoU(A, X) = 6/14, IoU(A, Y) = 4/10, IoU(B, X) = 4/16: every pair exceeds 0.2.
    # Counting pairs would give 3 matches for 2 objects; greedy matching by highest IoU
    # takes (A, X) and leaves 1 match. The optimum is (A, Y) and (B, X).
    true = np.array([[1] * 10 + [2] * 10])
    pred = np.array([[7] * 4 + [8] * 10 + [0] * 6])
    m = match_instances(true, pred, threshold=0.2)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.matched_true_ids.tolist() == [1, 2]
    assert m.matched_pred_ids.tolist() == [7, 8]
    assert m.matched_ious == pytest.approx([4 / 10, 4 / 16])
    # Above 0.25 the (B, X) pair no longer qualifies; the best single pair is kept.
    m = match_instances(true, pred, threshold=0.3)
    assert (m.tp, m.matched_true_ids.tolist(), m.matched_pred_ids.tolist()) == (1, [1], [8])


def brute_force(true, pred, threshold):
    """Largest number of one-to-one pairs with IoU > threshold, then largest IoU sum."""
    true_ids = [i for i in np.unique(true) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    scores = {(i, j): iou(true == i, pred == j) for i in true_ids for j in pred_ids}
    best = (0, 0.0)
    k = min(len(true_ids), len(pred_ids))
    for chosen in itertools.permutations(pred_ids + [None] * k, len(true_ids)):
        pairs = [scores[i, j] for i, j in zip(true_ids, chosen, strict=True) if j is not None]
        pairs = [s for s in pairs if s > threshold]
        best = max(best, (len(pairs), sum(pairs)))
    return best


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.35, 0.5, 0.7])
def test_matching_is_optimal_on_random_cases(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    for _ in range(15):
        true = rng.integers(0, 5, size=(4, 5))
        pred = np.repeat(rng.integers(0, 5, size=(4, 3)), 2, axis=1)[:, :5]
        m = match_instances(true, pred, threshold)
        n_pairs, total = brute_force(true, pred, threshold)
        assert m.tp == n_pairs
        assert float(np.sum(m.matched_ious)) == pytest.approx(total)
        assert (
            len(set(m.matched_true_ids.tolist())) == len(set(m.matched_pred_ids.tolist())) == m.tp
        )


# --- Rand error --------------------------------------------------------------


def test_rand_error_hand_computed():
    true = row(1, 1, 2, 2)
    # Merge: 4 ordered pairs together in both, 12 in pred, 4 in true -> V = 8 / 16.
    assert rand_error(true, row(3, 3, 3, 3)) == 0.5
    # Split into singletons: V = 0 / (0 + 4).
    assert rand_error(true, row(5, 6, 7, 8)) == 1.0
    # Relabelled but identical grouping.
    assert rand_error(true, row(9, 9, 4, 4)) == 0.0
    # No two counted pixels share a segment in either image.
    assert rand_error(row(1, 2, 3), row(4, 5, 6)) == 0.0


def test_rand_error_foreground_restriction():
    true = row(0, 0, 1, 1)
    pred = row(0, 0, 0, 0)
    # Only the two true-foreground pixels count, and pred groups them together.
    assert rand_error(true, pred) == 0.0
    # All pixels count: pairs together are 4 in both, 12 in pred, 4 in true.
    assert rand_error(true, pred, foreground_restricted=False) == 0.5
    # Predicted background is an ordinary segment: it merges the two true objects.
    assert rand_error(row(1, 1, 2, 2), row(0, 0, 0, 0)) == 0.5


def test_rand_error_matches_skimage_on_random_labels():
    rng = np.random.default_rng(42)
    for shape, n_true, n_pred in [((30, 40), 4, 6), ((3, 20, 20), 8, 3), ((50,), 3, 3)]:
        true = rng.integers(0, n_true, size=shape)
        pred = rng.integers(0, n_pred, size=shape).astype(np.uint16)
        expected = adapted_rand_error(true, pred)[0]
        assert rand_error(true, pred) == pytest.approx(expected, abs=1e-9)
        expected_all = adapted_rand_error(true, pred, ignore_labels=())[0]
        assert rand_error(true, pred, foreground_restricted=False) == pytest.approx(
            expected_all, abs=1e-9
        )


def test_rand_error_matches_skimage_on_nuclei(nuclei):
    eroded = erosion(nuclei, disk(1))
    for pred in (eroded, perturb(nuclei), np.where(nuclei > 0, 1, 0)):
        expected = adapted_rand_error(nuclei, pred)[0]
        assert expected > 0.01
        assert rand_error(nuclei, pred) == pytest.approx(expected, abs=1e-9)
        assert rand_error(nuclei, pred, foreground_restricted=False) == pytest.approx(
            adapted_rand_error(nuclei, pred, ignore_labels=())[0], abs=1e-9
        )


# --- input checks ------------------------------------------------------------


@pytest.mark.parametrize("function", [match_instances, average_precision, rand_error])
def test_bad_label_images(function):
    good = np.ones((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match=r"true_labels has shape \(4, 4\) but pred_labels"):
        function(good, np.ones((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match=r"same shape"):
        function(good, np.ones((1, 4, 4), dtype=np.int32))
    with pytest.raises(TypeError, match="true_labels must have an integer dtype"):
        function(good.astype(np.float32), good)
    with pytest.raises(TypeError, match="pred_labels is a boolean mask"):
        function(good, good > 0)
    with pytest.raises(ValueError, match="pred_labels contains negative values"):
        function(good, -good)
    with pytest.raises(ValueError, match="true_labels must be a label image"):
        function(np.array(1), good)
    with pytest.raises(TypeError, match="true_labels must be a numpy array"):
        function(None, good)


@pytest.mark.parametrize("function", [match_instances, average_precision])
def test_bad_threshold(function):
    labels = np.ones((3, 3), dtype=np.int32)
    for bad in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
            function(labels, labels, threshold=bad)
    for bad in ("0.5", None, True):
        with pytest.raises(TypeError, match="threshold must be a number"):
            function(labels, labels, threshold=bad)


def test_bad_rand_error_inputs():
    empty = np.zeros((3, 3), dtype=np.int32)
    some = np.ones((3, 3), dtype=np.int32)
    with pytest.raises(
        ValueError, match=r"true_labels contains no objects.*foreground_restricted=False"
    ):
        rand_error(empty, some)
    assert rand_error(empty, some, foreground_restricted=False) == 0.0
    with pytest.raises(TypeError, match="foreground_restricted must be True or False"):
        rand_error(some, some, foreground_restricted="yes")


def test_bad_masks():
    with pytest.raises(
        ValueError, match=r"mask_a has shape \(2, 2\) but mask_b has shape \(2, 3\)"
    ):
        iou(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(TypeError, match="mask_b must be a boolean or numeric mask"):
        iou(np.ones(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="mask_a contains NaN"):
        iou(np.array([np.nan, 1.0]), np.ones(2))
