"""Masks understood: binary and 0/255 masks, labels without background, implausible classes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.label_kinds import check_semantic_values, read_labels, to_instances
from napari_unet.sampling import prepare_training_data
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.training import TrainConfig, TrainingMessage, train_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def separate_nuclei():
    """12 discs that do not touch (so their mask's regions are the objects), and an image."""
    rows, cols = np.mgrid[0:128, 0:128]
    labels = np.zeros((128, 128), np.int32)
    for number, (r, c) in enumerate(np.ndindex(3, 4), start=1):
        labels[(rows - 20 - 40 * r) ** 2 + (cols - 16 - 32 * c) ** 2 <= 100] = number
    rng = np.random.default_rng(0)
    image = (labels > 0) * 200.0 + rng.normal(20.0, 5.0, labels.shape)
    return image.astype(np.float32), labels


@pytest.mark.parametrize("value", [1, 255])
def test_a_binary_mask_is_taken_as_its_regions(value):
    image, labels = separate_nuclei()
    mask = np.where(labels > 0, value, 0).astype(np.uint8)
    reading = read_labels(mask)
    assert (reading.kind, reading.value) == ("binary mask", value)
    assert reading.regions == labels.max()
    converted = to_instances(mask)
    assert converted.max() == labels.max() and np.array_equal(converted > 0, labels > 0)
    assert mask.max() == value  # the user's array is not touched
    data = prepare_training_data([(image, mask)], task="three-class")
    assert data.object_areas.size == labels.max()  # objects, not one
    assert any("binary mask" in note and f"0 and {value}" in note for note in data.notes)


def test_a_membrane_mask_becomes_cells():
    """EM-style: cells 255, membranes of one pixel 0; diagonal contacts do not merge."""
    mask = np.full((9, 9), 255, np.uint8)
    mask[4, :] = 0
    mask[:, 4] = 0
    cells = to_instances(mask)
    assert cells.max() == 4 and (cells[4] == 0).all()


def test_labels_without_background():
    _, labels = separate_nuclei()
    shifted = labels + 1  # background saved as 1
    reading = read_labels(shifted)
    assert reading.kind == "no background" and reading.value == 1 and reading.convertible
    assert "covers" in reading.describe("my labels")
    converted = to_instances(shifted, reading)
    assert np.array_equal(converted > 0, labels > 0)
    # Cells that tile the image, none dominant, are taken as they are.
    tiles = np.arange(16).reshape(4, 4).repeat(8, 0).repeat(8, 1) + 1
    reading = read_labels(tiles)
    assert reading.kind == "no background" and not reading.convertible
    assert reading.describe("tiles") is None
    assert to_instances(tiles) is tiles


def test_plain_instances_and_stacks_are_left_alone():
    _, labels = make_touching_nuclei((96, 96), 8, seed=1)
    assert read_labels(labels).kind == "instances"
    assert to_instances(labels) is labels
    assert read_labels(np.zeros((5, 5), int)).kind == "empty"
    # One blob per plane of a stack: a mask of one object each, not a binary mask.
    stack = np.zeros((2, 8, 8), np.uint8)
    stack[:, 2:5, 2:5] = 255
    assert read_labels(stack).kind == "instances"
    stack[1, 6:, 6:] = 255
    assert read_labels(stack).kind == "binary mask"
    assert to_instances(stack)[1].max() == 2


def test_semantic_mode_refuses_a_0_255_mask_with_what_to_do():
    image, labels = separate_nuclei()
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    with pytest.raises(ValueError, match=r"use instances mode.*relabel them as 1, 2"):
        prepare_training_data([(image, mask)], task="semantic")
    check_semantic_values(np.array([0, 1, 2, 3]), "classes")  # plausible: no error
    check_semantic_values(np.array([1, 3]), "classes")


def test_training_on_a_mask_says_so_and_learns_the_objects():
    image, labels = separate_nuclei()
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    config = TrainConfig(steps=2, depth=2, base_channels=4, tile_size=92)
    events = train_generator([(image, mask)], config)
    messages = []
    try:
        while True:
            event = next(events)
            if isinstance(event, TrainingMessage):
                messages.append(event.text)
    except StopIteration as stop:
        result = stop.value
    assert any("pair 1 labels are a binary mask" in text for text in messages)
    assert result.checkpoint.metadata["calibration"] is not None  # calibrated on objects
