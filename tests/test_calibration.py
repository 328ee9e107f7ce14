"""Calibration of the labelling settings on constructed cases with a known best."""

import numpy as np
import pytest

from _instances import membrane_maps, three_class_maps
from napari_unet.calibration import calibrate
from napari_unet.metrics import rand_error
from napari_unet.tasks import PaperInstances, Postprocess, ThreeClassInstances


def test_calibration_picks_the_known_best_threshold(touching_pair):
    """Boundaries at 0.5 join the pair's seeds below a seed threshold of 0.5, not from it."""
    maps = three_class_maps(touching_pair)
    # Seeds are the pixels above the seed threshold: from 0.5 on, the contact
    # (interior probability 0.5) is no seed and the two discs stay apart.
    target, _ = ThreeClassInstances().targets(touching_pair)
    maps[1][target == 2] = 0.5
    maps[1][target == 1] = 0.9
    task = ThreeClassInstances()
    start = Postprocess(threshold=0.5, seed_threshold=0.3)
    merged = task.label_plane(maps, start)
    assert merged.max() == 2
    # Ten such planes: 30 objects, enough for a gain of a third to count even
    # against settings calibrated before (1 / sqrt(30) = 0.18).
    best = calibrate(task, [maps] * 10, [touching_pair] * 10, start=start, prefer_start=True)
    assert best.default_score < 1.0 and best.score == 1.0 and not best.kept_start
    assert best.postprocess.seed_threshold >= 0.5
    assert best.n_objects == 30


def test_a_gain_within_the_noise_of_few_objects_keeps_calibrated_settings(touching_pair):
    """On one plane (three objects) the same gain is chance: calibrated settings stay."""
    maps = three_class_maps(touching_pair)
    target, _ = ThreeClassInstances().targets(touching_pair)
    maps[1][target == 2] = 0.5
    maps[1][target == 1] = 0.9
    start = Postprocess(threshold=0.5, seed_threshold=0.3)
    best = calibrate(ThreeClassInstances(), [maps], [touching_pair], start=start, prefer_start=True)
    assert best.kept_start and best.postprocess == start
    assert best.score == best.default_score < 1.0
    # Settings no annotation chose (a task's defaults) give way to any better one.
    plain = calibrate(ThreeClassInstances(), [maps], [touching_pair], start=start)
    assert not plain.kept_start and plain.score == 1.0


def test_calibration_drops_speckle_with_the_size_prior(touching_pair):
    """Small bright specks in the background are objects until the smallest size rises."""
    foreground = (touching_pair > 0).astype(np.float32)
    rng = np.random.default_rng(0)
    for row, col in rng.integers(2, 46, size=(12, 2)):
        if not foreground[row - 1 : row + 2, col - 1 : col + 2].any():
            foreground[row : row + 2, col : col + 2] = 0.95  # a 4-pixel speck
    task = PaperInstances()
    start = Postprocess(threshold=0.5, seed_threshold=0.9)
    # The touching pair shares one foreground: separate it by a dip at the contact.
    contact = (touching_pair[:, 1:] == 2) & (touching_pair[:, :-1] == 1)
    rows, cols = np.nonzero(contact)
    foreground[rows, cols] = foreground[rows, cols + 1] = 0.6
    best = calibrate(task, [foreground[None]], [touching_pair], start=start)
    assert best.default_score < 0.5 and best.score == 1.0
    assert best.postprocess.min_size > 4


def test_tessellated_cells_are_calibrated_on_the_rand_error():
    """Cells that tile the image are scored as EM segmentations are: by the Rand error."""
    maps = membrane_maps()
    columns = np.arange(maps.shape[2])
    truth = np.tile(np.where(columns < 20, 1, np.where(columns < 30, 2, 3)), (10, 1))
    truth[:, [20, 30]] = 0  # the membranes
    maps[0][:, 21:30] = 0.0  # the middle cell is missed: its neighbours grow over it
    task = ThreeClassInstances()
    best = calibrate(task, [maps], [truth], start=Postprocess(seed_threshold=0.5, tessellate=True))
    assert best.metric == "1 - Rand error" and best.postprocess.tessellate
    labels = task.label_plane(maps, best.postprocess)
    assert (labels > 0).all()
    assert best.score == pytest.approx(1 - rand_error(truth, labels))
    assert best.score != pytest.approx(2 / 3)  # what AP@0.5 would give (2 of 3 cells)


def test_calibration_needs_an_instance_task_and_matching_inputs(touching_pair):
    from napari_unet.tasks import Semantic

    maps = three_class_maps(touching_pair)
    with pytest.raises(ValueError, match="instance tasks"):
        calibrate(Semantic(), [maps], [touching_pair])
    with pytest.raises(ValueError, match="one truth per map"):
        calibrate(ThreeClassInstances(), [maps], [])


def test_objects_cut_by_the_edge_of_a_held_out_part_are_not_scored():
    """Held-out rows begin inside an object: its piece is neither found nor missed."""
    from napari_unet.training import _cut_objects

    labels = np.zeros((20, 40), np.int32)
    labels[2:8, 2:8] = 1  # above the held-out rows
    labels[8:14, 12:18] = 2  # cut in two by their first row, 10
    labels[12:18, 24:30] = 3  # wholly inside
    rows = slice(10, 20)
    cut = _cut_objects(labels, rows)
    np.testing.assert_array_equal(cut, labels[rows] == 2)
    assert _cut_objects(labels, slice(0, 20)) is None  # the image's own edge cuts nothing

    truth = labels[rows]
    foreground = (truth == 3).astype(np.float32)  # the cut piece is missed
    foreground[0:2, 14:17] = 1.0  # and something small found in its place
    start = Postprocess(threshold=0.5, seed_threshold=0.9)
    plain = calibrate(PaperInstances(), [foreground[None]], [truth], start=start)
    assert plain.default_score == pytest.approx(1 / 3)  # one found, one missed, one false
    ignoring = calibrate(PaperInstances(), [foreground[None]], [truth], start=start, ignore=[cut])
    assert ignoring.default_score == 1.0 and ignoring.n_objects == 1
