"""Inference in float32 against bfloat16 autocast on a trained model: speed and labels.

Trains the default model (three-class head) for ``--steps`` on rows 0-255 of the
DSB 2018 nuclei image (or loads ``--model``), then, in one run:

- throughput: segments a 2048x2048 mosaic of the nuclei image in float32 and with
  bfloat16 autocast, alternating, ``--repeats`` times (output megapixels per
  second, and per core);
- labels: segments rows 256-511 both ways and reports how many foreground pixels
  agree (pixels foreground in either result) and AP@0.5 against the truth.

Issue 13's rule: ``precision="auto"`` may use bf16 for inference where the CPU has
bf16 instructions if the foreground agrees on >= 99.9% of the pixels, the AP is the
same and the speed-up is worth it.

Usage: python benchmarks/inference_precision.py [--steps 300] [--repeats 3] [--model MODEL.pt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _data import add_data_argument, data_directory, read_nuclei
from _report import spread
from training import SPLIT

from napari_unet import InferenceConfig, TrainConfig, predict
from napari_unet.checkpoint import load_model_file
from napari_unet.device import cpu_has_amx, cpu_has_bf16
from napari_unet.metrics import average_precision
from napari_unet.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--model", type=Path, help="a trained model instead of training one")
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    if args.model is not None:
        checkpoint = load_model_file(args.model)
    else:
        config = TrainConfig(steps=args.steps, seed=0, device="cpu", precision="fp32")
        checkpoint = train([(image[:SPLIT], labels[:SPLIT])], config).checkpoint
    model = checkpoint.build_model()
    cores = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {cores} threads ({os.cpu_count()} CPUs), "
        f"bf16 in hardware: {cpu_has_bf16()}, AMX: {cpu_has_amx()}; "
        f"{checkpoint.task.name} head, {checkpoint.metadata.get('steps', '?')} steps"
    )

    def segment(pixels, precision):
        return predict(
            model,
            pixels,
            config=InferenceConfig(device="cpu", precision=precision),
            **checkpoint.inference_settings(),
        ).labels

    reps = -(-args.size // image.shape[0])
    mosaic = np.ascontiguousarray(np.tile(image, (reps, reps))[: args.size, : args.size])
    segment(mosaic[:512, :512], "fp32")  # warm-up
    segment(mosaic[:512, :512], "bf16")
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in seconds:
            start = time.perf_counter()
            segment(mosaic, precision)
            seconds[precision].append(time.perf_counter() - start)
    megapixels = args.size**2 / 1e6
    ratios = [f / b for f, b in zip(seconds["fp32"], seconds["bf16"], strict=True)]

    test, truth = image[SPLIT:], labels[SPLIT:]
    results = {precision: segment(test, precision) for precision in seconds}
    fp32, bf16 = (results[p] > 0 for p in ("fp32", "bf16"))
    agreement = float((fp32 == bf16)[fp32 | bf16].mean())
    print(f"{args.size}x{args.size} mosaic, median (min-max) of {args.repeats}")
    print("| precision | seconds | output Mpx/s | Mpx/s per core | AP@0.5 rows 256-511 | objects |")
    print("|---|---:|---:|---:|---:|---:|")
    for precision, values in seconds.items():
        rate = megapixels / statistics.median(values)
        print(
            f"| {precision} | {spread(values, 2)} | {rate:.3f} | {rate / cores:.3f} | "
            f"{average_precision(truth, results[precision], 0.5):.3f} | "
            f"{int(results[precision].max())} |"
        )
    print(f"bf16 / fp32 throughput: {spread(ratios, 2)}x")
    print(f"foreground pixels that agree (of those foreground in either): {agreement:.3%}")


if __name__ == "__main__":
    main()
