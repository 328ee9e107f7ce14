"""Straightforward reference implementations of the U-Net weight map, for the benchmark.

They follow eq. 2 of Ronneberger et al. (2015) literally and make no attempt at
speed; :func:`napari_unet.weights.boundary_weight_map` is checked against them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_unet.weights import separate_touching_objects


def class_weight_map(target: np.ndarray, class_weights) -> np.ndarray:
    """Return w_c for the separated target (``"balanced"``, None or a pair)."""
    foreground = target > 0
    if class_weights is None:
        return np.ones(target.shape)
    if isinstance(class_weights, str):
        counts = [np.count_nonzero(~foreground), np.count_nonzero(foreground)]
        present = sum(c > 0 for c in counts)
        class_weights = [target.size / (present * c) if c else 0.0 for c in counts]
    return np.where(foreground, float(class_weights[1]), float(class_weights[0]))


def per_instance_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_weights="balanced"
) -> np.ndarray:
    """Exact map: one full-image distance transform per object, two smallest per pixel."""
    target = separate_touching_objects(labels)
    weights = class_weight_map(target, class_weights)
    ids = np.unique(target)
    ids = ids[ids > 0]
    if ids.size < 2:
        return weights
    distances = np.stack([ndi.distance_transform_edt(target != i) for i in ids])
    two_smallest = np.partition(distances, 1, axis=0)[:2]
    border = w0 * np.exp(-((two_smallest[0] + two_smallest[1]) ** 2) / (2 * sigma**2))
    background = target == 0
    weights[background] += border[background]
    return weights


def all_pairs_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_weights="balanced"
) -> np.ndarray:
    """Exact map by brute force: every background pixel against every object pixel."""
    target = separate_touching_objects(labels)
    weights = class_weight_map(target, class_weights)
    ids = np.unique(target)
    ids = ids[ids > 0]
    if ids.size < 2:
        return weights
    background = np.argwhere(target == 0).astype(np.float64)
    nearest = np.empty((ids.size, len(background)))
    for k, i in enumerate(ids):
        points = np.argwhere(target == i).astype(np.float64)
        for start in range(0, len(background), 4096):
            chunk = background[start : start + 4096]
            squared = ((chunk[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
            nearest[k, start : start + 4096] = np.sqrt(squared.min(axis=1))
    two_smallest = np.partition(nearest, 1, axis=0)[:2]
    border = w0 * np.exp(-((two_smallest[0] + two_smallest[1]) ** 2) / (2 * sigma**2))
    weights[target == 0] += border
    return weights
