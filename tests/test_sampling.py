"""Training tiles: image, target and weights warped together and aligned."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_unet.augment import AugmentConfig
from napari_unet.model import UNetConfig
from napari_unet.sampling import make_sampler, prepare_training_data
from napari_unet.training import TrainConfig

MODEL = UNetConfig(depth=2, base_channels=4)
#: Geometry only: no gray-value changes, so tiles can be compared with a plain warp.
NO_GRAY = {"gamma": (1.0, 1.0), "gain": (1.0, 1.0), "offset": 0.0, "noise": 0.0}


def sampler_for(image, labels, seed=0, **augment):
    data = prepare_training_data([(image, labels)])
    config = TrainConfig(depth=2, base_channels=4, tile_size=92, augment=AugmentConfig(**augment))
    return data, make_sampler(data, MODEL, 92, config, seed)


def test_image_target_and_weights_stay_aligned():
    """An image that is its own labels: every warped tile still agrees with its target."""
    labels = np.zeros((160, 160), np.int32)
    rows, cols = np.mgrid[:160, :160]
    for number, (row, col) in enumerate([(40, 40), (40, 110), (110, 70), (120, 130)], start=1):
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= 22**2] = number
    image = (labels > 0).astype(np.float32) * 100 + 10
    _, sampler = sampler_for(image, labels, **NO_GRAY)
    offset = (sampler.input_size - sampler.output_size) // 2
    inner = slice(offset, offset + sampler.output_size)
    for _ in range(10):
        tile, target, weights = sampler.draw()
        # Normalised: background 0, objects 1; a pixel off an edge (where nearest and cubic
        # interpolation may fall on either side) is clearly one or the other.
        inside = ndi.binary_erosion(tile[0, inner, inner] > 0.5, iterations=2)
        outside = ndi.binary_erosion(tile[0, inner, inner] < 0.5, iterations=2)
        assert (target[inside] > 0).all() and (target[outside] == 0).all()
        assert weights.shape == target.shape and (weights > 0).all()
