"""Dim fields of one DSB 2018 experiment: train on three frames, segment the others.

The failure of issue 12 on dim images came from 8-bit frames whose background
sits at 0-6 gray levels and whose nuclei are only about 15 levels brighter,
with some twenty large nuclei a frame. ``dsb2018-stage1-train`` holds such an
experiment: the 360x360 single-channel fluorescence fields whose median nucleus
is at most ``--contrast`` gray levels above the median background. This
benchmark trains on the first ``--train-fields`` of them (sorted by id) for
``--minutes`` and segments the rest, as a user who annotated three frames of a
dim experiment would.

Rows: the settings before issue 12 (the paper's head, fixed labelling
thresholds, no calibration) and each ``--head`` with the labelling calibrated
on the training annotations. AP@0.5 and AP@0.75 are means over the test frames;
touching pairs and objects are pooled.

Usage: python benchmarks/dim_fields.py [--minutes 5] [--repeats 3] [--before-repeats 1]
       [--head three-class distance]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _data import add_data_argument, data_directory
from _report import add_device_argument, describe_device, print_instance_table
from dsb_stage1 import evaluate, read_field, segmenter
from training import otsu_watershed

from napari_unet import InferenceConfig, TrainConfig
from napari_unet.training import train

SHAPE = [360, 360]


def dim_fields(folder, contrast: float) -> list[str]:
    """Ids of the 360x360 fluorescence fields whose nuclei are at most ``contrast`` levels up."""
    summary = json.loads((folder / "summary.json").read_text())
    chosen = []
    for key in sorted(summary):
        info = summary[key]
        if info["channels"] != 1 or info["shape"] != SHAPE:
            continue
        image, labels = read_field(folder, key)
        objects = labels > 0
        background = float(np.median(image[~objects]))
        if background <= 6 and float(np.median(image[objects])) - background <= contrast:
            chosen.append(key)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--before-repeats", type=int, default=1, help="seeds of the 'before' row (0 skips it)"
    )
    parser.add_argument("--head", nargs="+", default=["three-class"], help="heads to compare")
    parser.add_argument("--train-fields", type=int, default=3)
    parser.add_argument("--contrast", type=float, default=20.0, help="gray levels, see above")
    add_device_argument(parser)
    args = parser.parse_args()
    folder = data_directory(args.data_dir) / "dsb2018-stage1-train"
    keys = dim_fields(folder, args.contrast)
    fields = [read_field(folder, key) for key in keys]
    pairs, test = fields[: args.train_fields], fields[args.train_fields :]
    background = np.concatenate([image[truth == 0] for image, truth in test])
    nuclei = np.concatenate([image[truth > 0] for image, truth in test])
    n_true = sum(len(np.unique(truth)) - 1 for _, truth in test)
    print(describe_device(args.device))
    print(
        f"{len(keys)} dim fields: training on {len(pairs)}, testing on {len(test)} "
        f"({n_true} nuclei); test background mean {background.mean():.1f} (99th percentile "
        f"{np.percentile(background, 99):.0f}), nuclei mean {nuclei.mean():.1f} gray levels",
        flush=True,
    )
    settings = {"before (paper head, fixed thresholds)": {"head": "paper", "calibrate": False}}
    settings.update({f"{head} head, calibrated": {"head": head} for head in args.head})
    table = {"Otsu + distance-transform watershed": [
        evaluate(test, lambda image: otsu_watershed(image, 5))
    ]}  # fmt: skip
    for name, extra in settings.items():
        repeats = args.before_repeats if name.startswith("before") else args.repeats
        table[name] = []
        for seed in range(repeats):
            config = TrainConfig(
                minutes=args.minutes, steps=None, seed=seed, device=args.device, **extra
            )
            result = train(pairs, config)
            segment = segmenter(result, InferenceConfig(device=args.device))
            scores = {**evaluate(test, segment), "steps": result.steps}
            print(f"  {name}, seed {seed}: {scores}; {result.checkpoint.postprocess}", flush=True)
            table[name].append(scores)

    print(f"\n{args.minutes:g} CPU minutes; median (min-max) of the runs; {n_true} true nuclei")
    print_instance_table(table)


if __name__ == "__main__":
    main()
