"""Tasks: targets, weights and labelling of each head, on constructed images."""

from dataclasses import replace

import numpy as np
import pytest

from _instances import membrane_maps, three_class_maps
from napari_unet.tasks import (
    INSTANCE_HEADS,
    DistanceInstances,
    PaperInstances,
    Postprocess,
    Semantic,
    ThreeClassInstances,
    get_task,
    normalised_border_distance,
    task_for,
)


def test_names_and_lookup():
    assert task_for("instances").name == INSTANCE_HEADS[0]
    assert isinstance(task_for("instances", "paper"), PaperInstances)
    assert isinstance(get_task("semantic"), Semantic)
    with pytest.raises(ValueError, match="Unknown instance head"):
        task_for("instances", "semantic")
    with pytest.raises(ValueError, match="no instance head"):
        task_for("semantic", "paper")


def test_three_class_targets_mark_boundaries_between_touching_objects(touching_pair):
    target, weights = ThreeClassInstances().targets(touching_pair, w0=10, sigma=3)
    assert set(np.unique(target)) == {0, 1, 2}
    # Where the two discs meet, both sides are boundary; object centres are interior.
    contact = (touching_pair[:, 1:] == 2) & (touching_pair[:, :-1] == 1)
    rows, cols = np.nonzero(contact)
    assert (target[rows, cols] == 2).all() and (target[rows, cols + 1] == 2).all()
    assert target[20, 18] == 1 and target[38, 52] == 1
    # The paper's border term: the contact weighs more than a lone object's edge.
    assert weights[rows, cols].min() > weights[38, 46] > 0


def test_targets_respect_the_annotated_region(touching_pair):
    region = np.zeros(touching_pair.shape, bool)
    region[:, :30] = True
    for task in (PaperInstances(), ThreeClassInstances(), DistanceInstances()):
        _, weights = task.targets(touching_pair, region)
        assert (weights[~region] == 0).all() and (weights[region] > 0).all()


def distance_maps(labels, dips=None):
    """The maps a perfect distance network would give for ``labels``."""
    distance = normalised_border_distance(labels)
    if dips is not None:
        distance[dips] *= 0.3
    return np.stack([(labels > 0).astype(np.float32), distance])


@pytest.mark.parametrize("head", ["paper", "three-class", "distance"])
def test_two_touching_objects_stay_two(head, touching_pair):
    task = get_task(head)
    if head == "paper":
        target, _ = task.targets(touching_pair)
        maps = target[None].astype(np.float32)
    elif head == "distance":
        maps = distance_maps(touching_pair)
    else:
        maps = three_class_maps(touching_pair)
    labels = task.label_plane(maps, Postprocess(threshold=0.5, seed_threshold=0.6))
    assert labels.max() == 3
    assert labels[20, 18] != labels[20, 32]
    if head != "paper":  # no gap to cut: every object pixel is labelled, as annotated
        assert ((labels > 0) == (touching_pair > 0)).all()


def test_distance_targets_encode_the_class_and_the_normalised_distance(touching_pair):
    task = DistanceInstances()
    target, weights = task.targets(touching_pair, w0=10, sigma=3)
    assert ((target > 0) == (touching_pair > 0)).all()
    distance = (target - 1).clip(min=0) / 1000
    # Every object's most central pixel is 1, whatever its size; its outermost pixels are low.
    for label in (1, 2, 3):
        assert distance[touching_pair == label].max() == 1.0
    contact = (touching_pair[:, 1:] == 2) & (touching_pair[:, :-1] == 1)
    rows, cols = np.nonzero(contact)
    assert distance[rows, cols].max() < 0.2 and distance[rows, cols + 1].max() < 0.2
    assert weights[rows, cols].min() > weights[38, 46] > 0


def test_distance_loss_prefers_the_true_distance(touching_pair):
    import torch

    task = DistanceInstances()
    target, weights = task.targets(touching_pair)
    target_t, weights_t = torch.from_numpy(target)[None], torch.from_numpy(weights)[None]
    truth = np.concatenate([[1 - (touching_pair > 0)], distance_maps(touching_pair)])
    truth = torch.from_numpy(truth.astype(np.float32).clip(0.02, 0.98))[None]
    flat = truth.clone()
    flat[:, 2] = 0.5  # right classes, no idea of the distance
    right = task.loss(task.logits_from(truth), target_t, weights_t)
    vague = task.loss(task.logits_from(flat), target_t, weights_t)
    assert torch.isfinite(right) and right < vague
    # activate undoes logits_from: kept outputs score like the network's logits.
    assert torch.allclose(task.activate(task.logits_from(truth)), truth, atol=1e-5)


def test_a_distance_map_with_dips_stays_one_object(touching_pair):
    """Dips in one object's distance cut its centre into seeds; the size prior mends it."""
    lone = np.where(touching_pair == 3, 1, 0).astype(np.int32)
    dips = np.zeros(lone.shape, bool)
    dips[38, 40:64] = True
    dips[30:46, 52] = True
    maps = distance_maps(lone, dips)
    task = DistanceInstances()
    fragmented = task.label_plane(maps, Postprocess(threshold=0.5, seed_threshold=0.4))
    assert fragmented.max() > 1
    mended = task.label_plane(
        maps, Postprocess(threshold=0.5, seed_threshold=0.4, min_seed_size=int(lone.sum()) // 5)
    )
    assert mended.max() == 1 and ((mended > 0) == (lone > 0)).all()


def test_a_textured_object_stays_one_object(touching_pair):
    """Holes in an object's interior probability split its seed; the size prior mends it."""
    lone = np.where(touching_pair == 3, 1, 0).astype(np.int32)
    holes = np.zeros(lone.shape, bool)
    holes[38, 46:59] = True  # a line through the interior cuts its seed in two
    holes[34:43, 52] = True  # and a second one: four pieces
    maps = three_class_maps(lone, holes)
    task = ThreeClassInstances()
    fragmented = task.label_plane(maps, Postprocess(threshold=0.5, seed_threshold=0.5))
    assert fragmented.max() > 1
    area = int(lone.sum())
    mended = task.label_plane(
        maps, Postprocess(threshold=0.5, seed_threshold=0.5, min_seed_size=area // 3)
    )
    assert mended.max() == 1
    assert ((mended > 0) == (lone > 0)).all()


def test_min_seed_size_never_loses_foreground():
    """A mask component whose seeds are all too small is still one object."""
    foreground = np.zeros((20, 20), np.float32)
    foreground[5:15, 5:15] = 1.0
    interior = np.zeros_like(foreground)
    interior[9:11, 9:11] = 1.0  # a 4-pixel seed
    labels = ThreeClassInstances().label_plane(
        np.stack([foreground, interior]),
        Postprocess(threshold=0.5, seed_threshold=0.5, min_seed_size=10),
    )
    assert labels.max() == 1 and (labels[5:15, 5:15] == 1).all()


def test_tessellate_grows_objects_over_the_whole_image(touching_pair):
    target, _ = PaperInstances().targets(touching_pair)
    labels = PaperInstances().label_plane(
        target[None].astype(np.float32),
        Postprocess(threshold=0.5, seed_threshold=0.8, tessellate=True),
    )
    assert (labels > 0).all() and labels.max() == 3


def test_tessellate_keeps_a_seedless_cell_and_meets_at_the_membranes():
    """Tessellating grows the objects found; it does not give a cell to a neighbour."""
    maps = membrane_maps()
    task = ThreeClassInstances()
    settings = Postprocess(threshold=0.5, seed_threshold=0.5, tessellate=True)
    labels = task.label_plane(maps, settings)
    as_found = task.label_plane(maps, replace(settings, tessellate=False))
    assert labels.max() == as_found.max() == 3
    assert (labels > 0).all()
    assert ((labels == as_found) | (as_found == 0)).all()  # grown, not changed
    # Neighbours meet at the centre of each membrane (where the foreground is lowest).
    row = labels[5]
    assert row[19] != row[21] and row[29] != row[31]
    assert len(set(row[21:30])) == 1


def test_blockwise_seed_filter_matches_one_block(touching_pair):
    from napari_unet.postprocess import label_instances

    maps = three_class_maps(touching_pair)
    rng = np.random.default_rng(0)
    maps[1] *= rng.uniform(0.6, 1.0, maps[1].shape).astype(np.float32)
    kwargs = {"seed_map": maps[1], "threshold": 0.5, "seed_threshold": 0.7, "min_seed_size": 5}
    whole = label_instances(maps[0], **kwargs)
    blocks = label_instances(maps[0], block_shape=(16, 16), halo=64, **kwargs)
    assert whole.max() == blocks.max()
    # Same partition up to a renumbering.
    pairs = {(a, b) for a, b in zip(whole.ravel(), blocks.ravel(), strict=True)}
    assert len(pairs) == whole.max() + 1


def test_postprocess_round_trips_and_checks():
    settings = Postprocess(threshold=0.4, seed_threshold=0.7, min_seed_size=12, min_size=3)
    assert Postprocess.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="min_size"):
        Postprocess(min_size=-1)
    with pytest.raises(ValueError, match="tessellate needs"):
        Postprocess(seed_threshold=None, tessellate=True)
    with pytest.raises(TypeError):
        Postprocess.from_dict({"threshold": 0.5, "unknown": 1})


def test_semantic_labels_per_tile():
    probabilities = np.array([[[0.2, 0.7]], [[0.8, 0.3]]], np.float32)
    assert Semantic().tile_labels(probabilities).tolist() == [[2, 1]]
    with pytest.raises(TypeError):
        Semantic().label_plane(probabilities)
