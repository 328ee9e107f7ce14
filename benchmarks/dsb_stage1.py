"""Instances on DSB 2018 stage 1: train on stage 1 train, score the fluorescence test images.

Trains as ``napari-unet train`` does by default (fine-tuning the shipped ``nuclei``
model; ``--new`` or another ``--head``: a new network) for ``--minutes`` of wall-clock time on
the single-channel fluorescence images of ``dsb2018-stage1-train`` (a fixed
random subset of ``--train-images``; the labelling is calibrated on training
planes, as a user without a validation image gets it), then segments the
single-channel fluorescence images of ``dsb2018-stage1-test`` (49 fields, never
used for training or tuning) and reports AP@0.5, AP@0.75 (each the mean over
images, as in the Data Science Bowl), touching pairs kept apart and the number
of objects against the truth, without and with test-time augmentation (its cost is
the segmentation time of the test images). The Otsu + distance-transform watershed baseline
of ``training.py`` runs on the same images.

Usage: python benchmarks/dsb_stage1.py [--minutes 20] [--repeats 1] [--head three-class] [--new]
       [--train-images 200] [--no-tta] [--save benchmark-output/dsb]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from _data import add_data_argument, data_directory
from _report import add_device_argument, describe_device, spread
from training import otsu_watershed, score

from napari_unet import InferenceConfig, TrainConfig, predict
from napari_unet.checkpoint import save_checkpoint
from napari_unet.io import read_image
from napari_unet.registry import DEFAULT_START, default_start, load_model
from napari_unet.training import train


def fluorescence(folder) -> list[str]:
    """Ids of the single-channel fluorescence fields of a DSB folder (sorted)."""
    summary = json.loads((folder / "summary.json").read_text())
    return sorted(
        key
        for key, info in summary.items()
        if info["channels"] == 1 and info["modality"].startswith("fluorescence")
    )


def read_field(folder, key: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        read_image(folder / "images" / f"{key}.tif"),
        read_image(folder / "labels" / f"{key}.tif", labels=True),
    )


def segmenter(result, config: InferenceConfig):
    """Return ``image -> labels`` for a training result, with its checkpoint's labelling."""
    checkpoint = result.checkpoint

    def segment(image):
        return predict(
            result.model,
            image,
            config=config,
            **checkpoint.inference_settings(),
        ).labels

    return segment


def evaluate(fields, segment) -> dict[str, float]:
    """Mean AP@0.5 / AP@0.75 over the fields, pairs apart and object counts pooled."""
    results = [score(truth, segment(image)) for image, truth in fields]
    pairs = sum(r["n_pairs"] for r in results)
    return {
        "ap50": float(np.mean([r["ap50"] for r in results])),
        "ap75": float(np.mean([r["ap75"] for r in results])),
        "apart": sum(r["apart"] * r["n_pairs"] for r in results) / max(pairs, 1),
        "n_pred": sum(r["n_pred"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--head", default="three-class")
    parser.add_argument(
        "--new", action="store_true", help=f"a new network instead of fine-tuning {DEFAULT_START!r}"
    )
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument(
        "--test-images", type=int, default=None, help="score only the first N (a quick check)"
    )
    parser.add_argument(
        "--save", type=Path, default=None, help="save each seed's model as SAVE-seed<N>.pt"
    )
    parser.add_argument(
        "--no-tta", action="store_true", help="skip the test-time augmentation row (8x slower)"
    )
    add_device_argument(parser)
    args = parser.parse_args()
    data = data_directory(args.data_dir)
    train_folder, test_folder = data / "dsb2018-stage1-train", data / "dsb2018-stage1-test"
    keys = fluorescence(train_folder)
    chosen = np.random.default_rng(0).permutation(len(keys))[: args.train_images]
    pairs = [read_field(train_folder, keys[i]) for i in sorted(chosen)]
    test = [read_field(test_folder, key) for key in fluorescence(test_folder)[: args.test_images]]
    n_true = sum(len(np.unique(truth)) - 1 for _, truth in test)
    print(describe_device(args.device))
    print(f"training on {len(pairs)} of {len(keys)} fluorescence fields; testing on {len(test)}")

    base = evaluate(test, lambda image: otsu_watershed(image, 5))
    start_name = None if args.new else default_start("instances")
    initial = load_model(start_name) if start_name is not None else None
    if initial is not None and initial.head != args.head:
        initial, start_name = None, None  # another head: a new network, as the CLI does
    print(f"starting from {start_name!r}" if initial is not None else "a new network")
    rows = []
    for seed in range(args.repeats):
        config = TrainConfig(
            head=args.head, minutes=args.minutes, steps=None, seed=seed, device=args.device
        )
        start = time.perf_counter()
        result = train(pairs, config, initial=initial)
        checkpoint = result.checkpoint
        if args.save is not None:
            save_checkpoint(args.save.with_name(f"{args.save.stem}-seed{seed}.pt"), checkpoint)
        print(
            f"  seed {seed}: {result.steps} steps in {time.perf_counter() - start:.0f} s; "
            f"{checkpoint.postprocess}",
            flush=True,
        )
        for tta in (False,) if args.no_tta else (False, True):
            segment = segmenter(result, InferenceConfig(device=args.device, tta=tta))
            start = time.perf_counter()
            scores = evaluate(test, segment)
            scores.update(
                seed=seed, tta=tta, steps=result.steps, seconds=time.perf_counter() - start
            )
            print(f"    TTA {tta}: {scores}", flush=True)
            rows.append(scores)

    print(f"\n{len(test)} fluorescence fields of stage 1 test, {n_true} true nuclei")
    print("| method | steps | AP@0.5 | AP@0.75 | touching pairs apart | objects | segment s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| Otsu + distance-transform watershed | - | {base['ap50']:.3f} | {base['ap75']:.3f} | "
        f"{base['apart']:.3f} | {base['n_pred']} | - |"
    )
    for tta in sorted({r["tta"] for r in rows}):
        group = [r for r in rows if r["tta"] == tta]
        steps = statistics.median(r["steps"] for r in group)
        print(
            f"| U-Net {args.head}{', TTA' if tta else ''}, {args.minutes:g} min"
            f"{f', from {start_name}' if start_name else ''} | {steps:.0f} | "
            + " | ".join(spread([r[key] for r in group]) for key in ("ap50", "ap75", "apart"))
            + f" | {statistics.median(r['n_pred'] for r in group):.0f}"
            + f" | {statistics.median(r['seconds'] for r in group):.0f} |"
        )


if __name__ == "__main__":
    main()
