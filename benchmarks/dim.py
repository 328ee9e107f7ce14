"""Dim, low-contrast nuclei: a few gray levels over a near-black background, with shot noise.

Reproduces the failure of issue 12 (background speckle becoming hundreds of
objects) from shared data: the DSB 2018 nuclei image is scaled so that the
background sits at about 1-2 gray levels and the nuclei about ``--signal``
levels above it, then Poisson (shot) noise is drawn and the result stored as
8-bit, as a dim camera frame would be. Train on rows 0-255 for ``--minutes``,
segment rows 256-511, score against the true nuclei.

Training rows: the settings before issue 12 (the paper's head, fixed labelling
thresholds, no calibration), a new three-class model with its labelling
calibrated on the training annotations, and the pretrained ``nuclei`` model
fine-tuned the same way (what the Train widget does by default). Two rows
without training: ``nuclei`` as shipped, with the frame smoothed as every
noisy image is (``Normalization.smooth_noisy``) and, for comparison, without.

Usage: python benchmarks/dim.py [--minutes 5] [--repeats 3] [--before-repeats 1] [--signal 15]
       [--rows zero-shot scratch pretrained]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
from _data import add_data_argument, data_directory, read_nuclei
from _report import add_device_argument, describe_device, print_instance_table
from pretrained import segment
from training import SPLIT, run, score

from napari_unet.normalization import Normalization
from napari_unet.registry import DEFAULT_START, load_model

#: Gray levels of a nucleus above the background, and the mean background level.
SIGNAL, BACKGROUND = 15.0, 1.5


def dim_frame(image: np.ndarray, signal: float, background: float, seed: int) -> np.ndarray:
    """Scale ``image`` to ``background + signal * contrast`` gray levels, with shot noise."""
    low, high = np.percentile(image, (1, 99.8))
    contrast = np.clip((image.astype(np.float64) - low) / (high - low), 0, 1)
    counts = np.random.default_rng(seed).poisson(background + signal * contrast)
    return np.clip(counts, 0, 255).astype(np.uint8)


def zero_shot(frame: np.ndarray, labels: np.ndarray, smooth: bool, device: str) -> dict:
    """Score the shipped model on rows 256-511, with the noisy-plane smoothing on or off."""
    checkpoint = load_model(DEFAULT_START)
    checkpoint = replace(
        checkpoint, normalization=replace(checkpoint.normalization, smooth_noisy=smooth)
    )
    labelled = segment(checkpoint, checkpoint.build_model(), frame[SPLIT:], device)
    return score(labels[SPLIT:], labelled)


ROWS = {
    "zero-shot": f"{DEFAULT_START!r} as shipped, no training (the frame smoothed)",
    "not smoothed": f"{DEFAULT_START!r} as shipped, the frame not smoothed",
    "before": "before (paper head, fixed thresholds, not smoothed)",
    "scratch": "a new model (three-class head, calibrated)",
    "pretrained": f"fine-tuned from {DEFAULT_START!r} (the Train widget's default)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--signal", type=float, default=SIGNAL, help="gray levels of a nucleus")
    parser.add_argument(
        "--background", type=float, default=BACKGROUND, help="mean background level"
    )
    parser.add_argument(
        "--before-repeats", type=int, default=1, help="seeds of the 'before' row (0 skips it)"
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--no-smoothing",
        action="store_true",
        help="train and segment the 'scratch' and 'pretrained' rows without smoothing the frame",
    )
    add_device_argument(parser)
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    frame = dim_frame(image, args.signal, args.background, seed=0)
    background = frame[labels == 0]
    print(describe_device(args.device))
    print(
        f"dim frame: background mean {background.mean():.1f} (99th percentile "
        f"{np.percentile(background, 99):.0f}), nuclei mean {frame[labels > 0].mean():.1f} "
        f"gray levels; {len(np.unique(labels[SPLIT:])) - 1} true nuclei in rows 256-511"
    )
    # Before issue 12 nothing was smoothed either.
    unsmoothed = Normalization(smooth_noisy=False)
    smoothed = unsmoothed if args.no_smoothing else Normalization()
    shipped = load_model(DEFAULT_START)
    settings = {
        "before": {"head": "paper", "calibrate": False, "normalization": unsmoothed},
        "scratch": {"normalization": smoothed},
        "pretrained": {"initial": replace(shipped, normalization=smoothed)},
    }
    table = {}
    for row in args.rows:
        if row in ("zero-shot", "not smoothed"):
            table[ROWS[row]] = [zero_shot(frame, labels, row == "zero-shot", args.device)]
            continue
        repeats = args.before_repeats if row == "before" else args.repeats
        if repeats:
            table[ROWS[row]] = [
                run(frame, labels, args.minutes, seed, args.device, **settings[row])
                for seed in range(repeats)
            ]
    print(f"\n{args.minutes:g} CPU minutes; median (min-max) of the runs")
    print_instance_table(table)


if __name__ == "__main__":
    main()
