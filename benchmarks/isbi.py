"""ISBI 2012 EM segmentation: train on slices 00-14, evaluate on 15-19, on the CPU.

The data set of the U-Net paper (Arganda-Carreras et al. 2015; Cardona et al.
2010): 512x512 serial-section EM slices whose masks are 255 inside cells and 0
on membranes. Every cell (a 4-connected component of 255) is an object, so the
default model trains in instances mode with the paper's boundary weight map
on the membranes between cells, for a wall-clock budget, as cells that tile the
image (``tessellate``: its labelling is calibrated on the Rand error of the
grown cells); the five held-out slices are then segmented with overlap-tile
inference and scored, with the cells as found and grown over the membranes:

- pixel error: share of pixels whose cell/membrane class is wrong;
- foreground-restricted Rand error (the challenge's main score, computed as
  ``skimage.metrics.adapted_rand_error``) of the predicted cells against the
  true cells, averaged over the five slices.

The paper reports a Rand error of 0.0382 on the challenge's own 30-slice test
set, after 10 hours of training on a GPU with the 64-channel network; here the
small network trains for minutes on two CPU cores and is scored on five of the
training slices held out, so the figures are not comparable one to one.

Usage: python benchmarks/isbi.py [--data-dir ../shared/data] [--minutes 5 20] [--repeats 1]
       [--save benchmark-output/isbi]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _data import add_data_argument, data_directory
from _report import add_device_argument, describe_device, spread
from scipy import ndimage as ndi

from napari_unet import InferenceConfig, TrainConfig, predict, train
from napari_unet.checkpoint import save_checkpoint
from napari_unet.io import read_image
from napari_unet.metrics import rand_error

TRAIN = range(0, 15)
TEST = range(15, 20)


def read_isbi(directory) -> tuple[np.ndarray, np.ndarray]:
    """Return the 20 slices and their cells as instance labels (0 on membranes)."""
    folder = directory / "isbi2012"
    images, cells = [], []
    for index in range(20):
        image_path = folder / "images" / f"{index:02d}.png"
        label_path = folder / "labels" / f"{index:02d}.png"
        if not image_path.is_file() or not label_path.is_file():
            sys.exit(f"{image_path} or {label_path} is missing; the ISBI benchmark needs them.")
        images.append(read_image(image_path))
        cells.append(ndi.label(read_image(label_path) > 0)[0].astype(np.int32))
    return np.stack(images), np.stack(cells)


def run(
    images: np.ndarray,
    cells: np.ndarray,
    minutes: float,
    seed: int,
    device: str,
    head: str,
    save: Path | None = None,
) -> dict[str, float]:
    """Train on slices 00-14 for ``minutes``, score slices 15-19.

    The cells are scored as predicted and grown over the membranes so that they
    tile the image.
    """
    config = TrainConfig(
        head=head, tessellate=True, minutes=minutes, steps=None, seed=seed, device=device
    )
    result = train([(images[list(TRAIN)], cells[list(TRAIN)])], config)
    checkpoint = result.checkpoint
    if save is not None:
        save_checkpoint(save.with_name(f"{save.stem}-{minutes:g}min-seed{seed}.pt"), checkpoint)
    truth = cells[list(TEST)]
    scores: dict[str, float] = {"steps": result.steps}
    for name, settings in (
        ("", dataclasses.replace(checkpoint.postprocess, tessellate=False)),
        ("tessellated ", checkpoint.postprocess),
    ):
        start = time.perf_counter()
        prediction = predict(
            result.model,
            images[list(TEST)],
            config=InferenceConfig(device=device),
            **{**checkpoint.inference_settings(), "postprocess": settings},
        )
        scores[f"{name}segment_s"] = time.perf_counter() - start
        predicted = np.asarray(prediction.labels)
        scores[f"{name}pixel"] = float(np.mean((predicted > 0) != (truth > 0)))
        scores[f"{name}rand"] = statistics.mean(
            rand_error(true, pred) for true, pred in zip(truth, predicted, strict=True)
        )
    print(f"  {head}, {minutes:g} min, seed {seed}: {scores}; {checkpoint.postprocess}", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per budget (seeds 0..N-1)")
    parser.add_argument("--head", default="three-class", help="instance head")
    parser.add_argument(
        "--save", type=Path, default=None, help="save each model as SAVE-<M>min-seed<N>.pt"
    )
    add_device_argument(parser)
    args = parser.parse_args()
    images, cells = read_isbi(data_directory(args.data_dir))
    print(describe_device(args.device))
    runs = {
        minutes: [
            run(images, cells, minutes, seed, args.device, args.head, args.save)
            for seed in range(args.repeats)
        ]
        for minutes in args.minutes
    }
    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"\nslices 15-19; {n}")
    print(
        "| training | steps | pixel error | Rand error (foreground-restricted) | "
        "Rand error, cells tessellated | segment s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for minutes, results in runs.items():
        steps = statistics.median(r["steps"] for r in results)
        print(
            f"| {args.head}, {minutes:g} CPU min | {steps:.0f} | "
            + " | ".join(
                spread([r[key] for r in results], 4)
                for key in ("pixel", "rand", "tessellated rand")
            )
            + f" | {statistics.median(r['segment_s'] for r in results):.1f} |"
        )


if __name__ == "__main__":
    main()
