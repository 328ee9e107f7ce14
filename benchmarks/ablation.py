"""Ablation of the paper's ideas on the nuclei time-to-accuracy task.

Same task as benchmarks/training.py (train on rows 0-255 of dsb2018-nuclei for
a wall-clock budget on the CPU, score rows 256-511), with one idea of
Ronneberger et al. (2015) switched off at a time:

- no boundary weight term: w0 = 0 (only the class-balancing weights remain);
- no elastic deformation: elastic_std = 0 (rotations, flips and gray-value
  changes stay);
- "same" padding: zero-padded 3x3 convolutions instead of valid ones (the
  overlap-tile inference then crops a margin of each tile).

Usage: python benchmarks/ablation.py [--data-dir ../shared/data] [--minutes 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics

from _data import add_data_argument, data_directory, read_nuclei
from _report import spread
from training import run

from napari_unet.augment import AugmentConfig

VARIANTS = {
    "paper (valid convolutions, w0 = 10, elastic deformation)": {},
    "no boundary weight term (w0 = 0)": {"w0": 0.0},
    "no elastic deformation": {"augment": AugmentConfig(elastic_std=0.0)},
    "same padding (384x384 tiles)": {"padding": "same", "tile_size": 384},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (seeds 0..N-1)")
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    results = {
        name: [run(image, labels, args.minutes, seed, **settings) for seed in range(args.repeats)]
        for name, settings in VARIANTS.items()
    }
    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"\n{args.minutes:g} CPU minutes per run; {n} per variant")
    print("| variant | steps | AP@0.5 | AP@0.75 | touching pairs apart |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        cells = [spread([r[key] for r in runs]) for key in ("ap50", "ap75", "apart")]
        steps = statistics.median(r["steps"] for r in runs)
        print(f"| {name} | {steps:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
