"""Constructed instance images shared by the task and calibration tests."""

import numpy as np

from napari_unet.tasks import ThreeClassInstances


def disk(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def touching_pair_labels():
    """Two discs of radius 8 that touch along a vertical line, and a lone disc."""
    shape = (48, 64)
    labels = np.zeros(shape, np.int32)
    labels[disk(shape, (20, 18), 8)] = 1
    second = disk(shape, (20, 32), 8) & (np.mgrid[: shape[0], : shape[1]][1] >= 25)
    labels[second] = 2
    labels[disk(shape, (38, 52), 6)] = 3
    return labels


def three_class_maps(labels, interior_holes=None):
    """The maps a perfect three-class network would give for ``labels``."""
    target, _ = ThreeClassInstances().targets(labels)
    foreground = (target > 0).astype(np.float32)
    interior = (target == 1).astype(np.float32)
    if interior_holes is not None:
        interior[interior_holes] = 0.0
    return np.stack([foreground, interior])


def membrane_maps() -> np.ndarray:
    """Three cells in a row between two membranes; the small middle one has no seed."""
    columns = np.arange(60)
    # Foreground: 1 in the cells, dipping to 0 at the membranes' centres (columns 20, 30).
    foreground = np.clip(np.minimum(abs(columns - 20), abs(columns - 30)) / 3.0, 0, 1)
    interior = np.where((columns < 15) | (columns > 35), 1.0, 0.0)  # the middle cell: none
    return np.stack([np.tile(foreground, (10, 1)), np.tile(interior, (10, 1))]).astype(np.float32)
