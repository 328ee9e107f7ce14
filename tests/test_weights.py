"""Tests of the U-Net boundary weight map (napari_unet.weights)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.synthetic import make_touching_nuclei
from napari_unet.weights import boundary_weight_map, separate_touching_objects

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --- reference ------------------------------------------------------------------
# The straightforward method, kept here so that the tests do not depend on
# benchmarks/: one full-image distance transform per object, two smallest per pixel.


def reference_weight_map(labels, w0=10.0, sigma=5.0, class_weights="balanced", radius=np.inf):
    target = separate_touching_objects(labels)
    foreground = target > 0
    if class_weights is None:
        weights = np.ones(target.shape)
    else:
        if isinstance(class_weights, str):
            counts = [np.count_nonzero(~foreground), np.count_nonzero(foreground)]
            present = sum(c > 0 for c in counts)
            class_weights = [target.size / (present * c) if c else 0.0 for c in counts]
        weights = np.where(foreground, float(class_weights[1]), float(class_weights[0]))
    ids = np.unique(target)
    ids = ids[ids > 0]
    if ids.size < 2:
        return weights
    distances = np.stack([ndi.distance_transform_edt(target != i) for i in ids])
    d1, d2 = np.partition(distances, 1, axis=0)[:2]
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[d1 + d2 > radius] = 0.0
    weights[~foreground] += border[~foreground]
    return weights


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    labels = make_touching_nuclei((128, 128), n_nuclei=14, seed=3)[1]
    # The test is only meaningful if some nuclei really touch.
    assert separate_touching_objects(labels).astype(bool).sum() < labels.astype(bool).sum()
    return labels


def float32_slack(weights: np.ndarray) -> float:
    """One float32 step at the largest weight: the rounding of the float32 result."""
    return float(np.spacing(np.float32(weights.max())))


# --- separate_touching_objects --------------------------------------------------


def test_separate_cuts_a_gap_between_touching_rectangles():
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[2:8, 1:6] = 1
    labels[3:9, 6:11] = 2  # shares an edge with object 1 (columns 5 and 6)
    assert ndi.label(labels > 0, structure=EIGHT_CONNECTED)[1] == 1
    before = labels.copy()

    separated = separate_touching_objects(labels)

    np.testing.assert_array_equal(labels, before)  # input not modified
    assert separated.dtype == labels.dtype
    assert ndi.label(separated > 0, structure=EIGHT_CONNECTED)[1] == 2
    # Only the pixels along the shared edge were removed, from both objects.
    assert not separated[:, 5].any() and not separated[:, 6].any()
    np.testing.assert_array_equal(separated[:, :5], labels[:, :5])
    np.testing.assert_array_equal(separated[:, 7:], labels[:, 7:])


def test_separate_cuts_diagonal_contact():
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:3, 1:3] = 4
    labels[3:5, 3:5] = 9  # touches object 4 through a corner only
    separated = separate_touching_objects(labels)
    assert separated[2, 2] == 0 and separated[3, 3] == 0
    assert ndi.label(separated > 0, structure=EIGHT_CONNECTED)[1] == 2


def test_separate_leaves_non_touching_objects_unchanged():
    labels = np.zeros((12, 12), dtype=np.uint16)
    labels[1:5, 1:5] = 3
    labels[1:5, 6:10] = 65000  # one background column in between
    labels[7:11, 2:9] = 7
    separated = separate_touching_objects(labels)
    np.testing.assert_array_equal(separated, labels)
    assert separated is not labels


# --- boundary_weight_map against the reference -------------------------------------


@pytest.mark.parametrize(
    ("w0", "sigma", "class_weights"),
    [
        (10.0, 5.0, "balanced"),
        (10.0, 5.0, None),
        (10.0, 5.0, (0.3, 2.5)),
        (20.0, 2.0, "balanced"),
        (4.0, 8.0, None),
    ],
)
def test_matches_per_instance_reference(nuclei, w0, sigma, class_weights):
    weights = boundary_weight_map(nuclei, w0=w0, sigma=sigma, class_weights=class_weights)
    expected = reference_weight_map(nuclei, w0=w0, sigma=sigma, class_weights=class_weights)
    assert weights.dtype == np.float32
    assert weights.shape == nuclei.shape
    assert np.abs(weights - expected).max() <= 1e-4
    # The border term is really there: the cut between touching nuclei leaves
    # background pixels with d1 + d2 = 3 (1 pixel to one side, 2 to the other).
    class_only = reference_weight_map(nuclei, w0=0.0, class_weights=class_weights)
    assert (expected - class_only).max() >= w0 * np.exp(-9 / (2 * sigma**2)) - 1e-9


@pytest.mark.parametrize("radius", [2.0, 6.5, 12.5])
def test_radius_drops_the_border_term_where_d1_plus_d2_exceeds_it(nuclei, radius):
    weights = boundary_weight_map(nuclei, w0=10.0, sigma=5.0, class_weights=None, radius=radius)
    expected = reference_weight_map(nuclei, 10.0, 5.0, class_weights=None, radius=radius)
    assert np.abs(weights - expected).max() <= 1e-4


def test_default_radius_is_within_1e_6_of_the_exact_map(nuclei):
    for w0, sigma in [(10.0, 5.0), (10.0, 2.0), (3.0, 7.0)]:
        default = boundary_weight_map(nuclei, w0=w0, sigma=sigma)
        exact = boundary_weight_map(nuclei, w0=w0, sigma=sigma, radius=np.inf)
        assert np.abs(default - exact).max() <= 1e-6 + float32_slack(exact)


def test_a_small_radius_changes_the_map(nuclei):
    default = boundary_weight_map(nuclei)
    small = boundary_weight_map(nuclei, radius=4.0)
    assert np.abs(default - small).max() > 1.0
    # Below 2 no background pixel qualifies (d1, d2 >= 1): only w_c is left.
    np.testing.assert_array_equal(
        boundary_weight_map(nuclei, radius=1.5, class_weights=None), np.ones(nuclei.shape)
    )


# --- hand-checked values -----------------------------------------------------------


def test_midpoint_between_two_lines_matches_the_formula():
    labels = np.zeros((15, 21), dtype=np.int32)
    labels[2:13, 4] = 1  # two single-pixel-wide vertical lines, 12 columns apart
    labels[2:13, 16] = 2
    w0, sigma = 10.0, 4.0
    weights = boundary_weight_map(labels, w0=w0, sigma=sigma, class_weights=None)
    # Midpoint (7, 10): 6 pixels from each line.
    assert weights[7, 10] == pytest.approx(1.0 + w0 * np.exp(-((6 + 6) ** 2) / (2 * sigma**2)))
    # (7, 7): 3 and 9 pixels away.
    assert weights[7, 7] == pytest.approx(1.0 + w0 * np.exp(-((3 + 9) ** 2) / (2 * sigma**2)))
    # (0, 10), above the line ends: sqrt(2**2 + 6**2) from each.
    d = np.hypot(2, 6)
    assert weights[0, 10] == pytest.approx(1.0 + w0 * np.exp(-((2 * d) ** 2) / (2 * sigma**2)))
    assert weights[7, 4] == 1.0  # object pixels get w_c only


def test_touching_squares_get_the_border_weight_in_the_gap():
    labels = np.zeros((9, 12), dtype=np.int32)
    labels[2:7, 1:6] = 1
    labels[2:7, 6:11] = 2
    weights = boundary_weight_map(labels, w0=10.0, sigma=5.0, class_weights=None)
    separated = separate_touching_objects(labels)
    assert not separated[:, 5:7].any() and separated[2:7, 4].all() and separated[2:7, 7].all()
    # The cut columns 5 and 6 are 1 pixel from one object and 2 from the other.
    expected = 1 + 10 * np.exp(-((1 + 2) ** 2) / (2 * 5.0**2))
    np.testing.assert_allclose(weights[2:7, 5:7], expected, rtol=1e-6)
    assert weights.max() == pytest.approx(expected)


def test_a_single_object_gets_class_weights_only():
    labels = np.zeros((16, 16), dtype=np.int32)
    labels[4:9, 4:9] = 1
    weights = boundary_weight_map(labels, class_weights=(0.5, 2.0), radius=np.inf)
    np.testing.assert_array_equal(weights, np.where(labels > 0, 2.0, 0.5).astype(np.float32))


def test_objects_that_vanish_when_separated_leave_class_weights_only():
    # A checkerboard of two ids: every object pixel touches the other object.
    labels = (np.indices((6, 6)).sum(axis=0) % 2 + 1).astype(np.int32)
    assert not separate_touching_objects(labels).any()
    np.testing.assert_array_equal(boundary_weight_map(labels), np.ones((6, 6), np.float32))


def test_balanced_class_weights_average_to_one_and_favour_the_rarer_class():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:6, 2:6] = 1  # 16 object pixels, 384 background
    weights = boundary_weight_map(labels, w0=0.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[3, 3] == pytest.approx(400 / (2 * 16))
    assert weights[15, 15] == pytest.approx(400 / (2 * 384))
    assert weights[3, 3] > weights[15, 15]


def test_balanced_class_weights_on_the_separated_target(nuclei):
    weights = boundary_weight_map(nuclei, w0=0.0)
    target = separate_touching_objects(nuclei)
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)
    assert len(np.unique(weights)) == 2
    rarer = (target > 0) if (target > 0).mean() < 0.5 else (target == 0)
    assert weights[rarer].min() > weights[~rarer].max()


# --- ids ------------------------------------------------------------------------


def test_sparse_big_ids_give_the_same_map_as_small_ones():
    small = np.zeros((24, 30), dtype=np.uint32)
    small[3:10, 3:12] = 1
    small[12:20, 12:26] = 2
    small[3:10, 12:20] = 1  # touches object 2 along a corner region
    big = small.copy()
    big[small == 1] = 5
    big[small == 2] = 4_000_000_000
    expected = boundary_weight_map(small)
    np.testing.assert_array_equal(boundary_weight_map(big), expected)
    np.testing.assert_array_equal(boundary_weight_map(big.astype(np.int64)), expected)
    mid = np.where(small == 2, 65000, np.where(small == 1, 7, 0)).astype(np.uint16)
    np.testing.assert_array_equal(boundary_weight_map(mid), expected)


# --- input checks ---------------------------------------------------------------


def _two_objects() -> np.ndarray:
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 2
    return labels


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.ones((2, 8, 8), dtype=np.int32), ValueError, "labels must be a 2D label image"),
        (np.ones((8, 8), dtype=np.float32), TypeError, "labels must have an integer dtype"),
        (np.ones((8, 8), dtype=bool), TypeError, "labels is a boolean mask"),
        (-np.ones((8, 8), dtype=np.int32), ValueError, "labels contains negative values"),
        (np.zeros((8, 8), dtype=np.int32), ValueError, "labels contains no objects"),
    ],
)
def test_bad_labels_are_rejected(labels, error, match):
    with pytest.raises(error, match=match):
        boundary_weight_map(labels)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.ones((2, 8, 8), dtype=np.int32), ValueError, "labels must be a 2D label image"),
        (np.ones((8, 8), dtype=np.float64), TypeError, "labels must have an integer dtype"),
        (np.ones((8, 8), dtype=bool), TypeError, "labels is a boolean mask"),
        (-np.ones((8, 8), dtype=np.int8), ValueError, "labels contains negative values"),
    ],
)
def test_separate_rejects_bad_labels(labels, error, match):
    with pytest.raises(error, match=match):
        separate_touching_objects(labels)


def test_separate_accepts_an_empty_label_image():
    labels = np.zeros((5, 5), dtype=np.int32)
    np.testing.assert_array_equal(separate_touching_objects(labels), labels)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be a finite positive number"),
        ({"sigma": -2.0}, ValueError, "sigma must be a finite positive number"),
        ({"w0": -1.0}, ValueError, "w0 must be a finite zero or positive number"),
        ({"w0": "10"}, TypeError, "w0 must be a number"),
        ({"radius": 0.0}, ValueError, "radius must be positive"),
        ({"radius": np.nan}, ValueError, "radius must be positive"),
        ({"radius": "far"}, TypeError, "radius must be a positive number"),
        ({"class_weights": "inverse"}, ValueError, "class_weights must be 'balanced', None"),
        ({"class_weights": 2.0}, TypeError, "class_weights must be 'balanced', None"),
        ({"class_weights": (1.0, 2.0, 3.0)}, ValueError, "exactly two numbers"),
        ({"class_weights": (1.0, -2.0)}, ValueError, r"class_weights\[1\] \(foreground\)"),
        ({"class_weights": ("a", 1.0)}, TypeError, r"class_weights\[0\] \(background\)"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        boundary_weight_map(_two_objects(), **kwargs)
