"""Tiled versus whole-image inference throughput, measured as a ratio in one run.

The tiled pass (overlap-tile with mirrored borders, the default automatic tile
choice) is compared with one forward pass of the same network over the whole
mirror-padded image, on random images of 1024^2 and 2048^2 pixels. Both use
the default network (depth 4, 16 base channels), float32, channels_last and
torch.inference_mode. The two run one after the other ``--repeats`` times, so that
each repeat gives a ratio measured under the same load; the table gives the
median and range. Goal: tiled >= 0.9x the whole-image throughput.

Usage: python benchmarks/inference.py [--sizes 1024 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _report import add_device_argument, describe_device, spread

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


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    add_device_argument(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    predictor = ModelPredictor(model, args.device, "fp32")
    config = InferenceConfig(device=args.device, precision="fp32")
    print(describe_device(args.device))
    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"{n}; throughput ratio = whole-image seconds / tiled seconds, per repeat")
    print("| image | tile (output) | whole-image s | tiled s | tiled Mpx/s | tiled / whole |")
    print("|---|---|---:|---:|---:|---:|")
    warm_up = np.zeros((512, 512), np.float32)  # first-call allocations stay out of the timings
    whole_image(predictor, warm_up)
    predict(model, warm_up, task="semantic", config=config)
    for size in args.sizes:
        image = np.random.default_rng(0).random((size, size)).astype(np.float32)
        tile = choose_tile_shape(size, size, model.config, config.max_tile_pixels)
        whole, tiled = [], []
        for _ in range(args.repeats):
            whole.append(seconds(lambda image=image: whole_image(predictor, image)))
            tiled.append(
                seconds(lambda image=image: predict(model, image, task="semantic", config=config))
            )
        ratios = [w / t for w, t in zip(whole, tiled, strict=True)]
        print(
            f"| {size}x{size} | {tile[0]}x{tile[1]} | {spread(whole, 2)} | {spread(tiled, 2)} | "
            f"{size * size / statistics.median(tiled) / 1e6:.2f} | {spread(ratios, 2)}x |"
        )


if __name__ == "__main__":
    main()
