"""Tasks: targets, weights and labelling of each head, on constructed images."""

import numpy as np
import pytest

from _instances import three_class_maps
from napari_unet.tasks import (
    INSTANCE_HEADS,
    PaperInstances,
    Postprocess,
    Semantic,
    ThreeClassInstances,
    get_task,
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
    for task in (PaperInstances(), ThreeClassInstances()):
        _, weights = task.targets(touching_pair, region)
        assert (weights[~region] == 0).all() and (weights[region] > 0).all()


@pytest.mark.parametrize("head", ["paper", "three-class"])
def test_two_touching_objects_stay_two(head, touching_pair):
    task = get_task(head)
    if head == "paper":
        target, _ = task.targets(touching_pair)
        maps = target[None].astype(np.float32)
    else:
        maps = three_class_maps(touching_pair)
    labels = task.label_plane(maps, Postprocess(threshold=0.5, seed_threshold=0.6))
    assert labels.max() == 3
    assert labels[20, 18] != labels[20, 32]


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
