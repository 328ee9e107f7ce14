"""Tiled versus whole-image inference throughput, measured as a ratio in one run.

The tiled pass (overlap-tile with mirrored borders, the default automatic tile
choice) is compared with one forward pass of the same network over the whole
mirror-padded image, on random images of 1024^2 and 2048^2 pixels. Both use
the default network (depth 4, 16 base channels), float32, channels_last and
torch.inference_mode. Goal: tiled >= 0.9x the whole-image throughput.

Usage: python benchmarks/inference.py [--sizes 1024 2048] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_unet.inference import InferenceConfig, ModelPredictor, choose_tile_shape, predict
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization


def whole_image(predictor: ModelPredictor, image: np.ndarray) -> np.ndarray:
    config = predictor.config
    border = config.border
    height, width = image.shape
    padded_h, padded_w = config.input_shape_for((height, width))
    low, high = Normalization().statistics(image[None])
    normalised = Normalization.apply(image[None], low, high)
    padded = np.pad(
        normalised,
        ((0, 0), (border, padded_h - height - border), (border, padded_w - width - border)),
        mode="reflect",
    )
    return predictor(padded)[:, :height, :width]


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    predictor = ModelPredictor(model, "cpu", "fp32")
    config = InferenceConfig(device="cpu", precision="fp32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| image | tile (output) | whole-image s | tiled s | tiled Mpx/s | tiled / whole |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        image = np.random.default_rng(0).random((size, size)).astype(np.float32)
        tile = choose_tile_shape(size, size, model.config, config.max_tile_pixels)
        whole = best_time(lambda image=image: whole_image(predictor, image), args.repeats)
        tiled = best_time(
            lambda image=image: predict(model, image, mode="semantic", config=config),
            args.repeats,
        )
        print(
            f"| {size}x{size} | {tile[0]}x{tile[1]} | {whole:.2f} | {tiled:.2f} | "
            f"{size * size / tiled / 1e6:.2f} | {whole / tiled:.2f}x |"
        )


if __name__ == "__main__":
    main()
