"""The shipped pretrained nuclei model: zero-shot scores and fine-tuning against from scratch.

- zero-shot on the 2018 Data Science Bowl stage 1 *test* set (never used in
  pretraining, which read ``dsb2018-stage1-train`` only): AP@0.5, AP@0.75 and the
  DSB metric (mean over IoU 0.5, 0.55, ..., 0.95 of TP / (TP + FP + FN)), per
  field and averaged, on the one-channel fields (the RGB stained-tissue fields
  are outside the model's intended use) and on their fluorescence subset;
- the nuclei image (rows 256-511): zero-shot, and after 1, 2 and 5 CPU minutes
  of training on rows 0-255 from the pretrained model and from scratch (same
  budget, seed and settings).

Usage: python benchmarks/pretrained.py [--model nuclei] [--minutes 1 2 5] [--repeats 1]
       [--skip-dsb] [--starts scratch pretrained]
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from _data import add_data_argument, data_directory, read_nuclei
from _report import add_device_argument, describe_device, spread
from training import SPLIT, run, score

from napari_unet import InferenceConfig, predict
from napari_unet.io import read_image
from napari_unet.metrics import average_precision
from napari_unet.registry import load_model

DSB_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def segment(checkpoint, model, image, device: str) -> np.ndarray:
    return predict(
        model,
        image,
        config=InferenceConfig(device=device),
        **checkpoint.inference_settings(),
    ).labels


def dsb_scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    aps = [average_precision(truth, labels, threshold=float(t)) for t in DSB_THRESHOLDS]
    return {"ap50": aps[0], "ap75": aps[5], "dsb": float(np.mean(aps))}


def zero_shot_dsb(checkpoint, folder, device: str) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    keys = sorted(key for key, info in summary.items() if info["channels"] == 1)
    model = checkpoint.build_model()
    rows = {"one-channel": [], "fluorescence": []}
    for key in keys:
        image = read_image(folder / "images" / f"{key}.tif")
        truth = read_image(folder / "labels" / f"{key}.tif", labels=True)
        scores = dsb_scores(truth, segment(checkpoint, model, image, device))
        rows["one-channel"].append(scores)
        if summary[key]["modality"].startswith("fluorescence"):
            rows["fluorescence"].append(scores)
    print(f"\nDSB 2018 stage 1 test, zero-shot ({len(summary)} fields in all)")
    print("| fields | n | AP@0.5 | AP@0.75 | DSB mean AP (IoU 0.5:0.95) |")
    print("|---|---:|---:|---:|---:|")
    for name, scores in rows.items():
        means = [np.mean([s[k] for s in scores]) for k in ("ap50", "ap75", "dsb")]
        print(f"| {name} | {len(scores)} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--model", default="nuclei", help="a model name or file")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=1, help="seeds 0..N-1 per budget")
    parser.add_argument("--skip-dsb", action="store_true", help="only the nuclei image")
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=("scratch", "pretrained"),
        default=["scratch", "pretrained"],
        help="which starting points to train from at each budget",
    )
    add_device_argument(parser)
    args = parser.parse_args()
    data = data_directory(args.data_dir)
    checkpoint = load_model(args.model)
    print(describe_device(args.device))
    print(f"model {args.model!r}: {checkpoint.metadata.get('steps', '?')} steps (last chunk)")
    if not args.skip_dsb:
        zero_shot_dsb(checkpoint, data / "dsb2018-stage1-test", args.device)

    image, labels = read_nuclei(data)
    zero = score(
        labels[SPLIT:], segment(checkpoint, checkpoint.build_model(), image[SPLIT:], args.device)
    )
    n_true = len(np.unique(labels[SPLIT:])) - 1
    rows = [("pretrained, zero-shot", 0.0, [zero])]
    for minutes in args.minutes:
        for name, initial in (("from scratch", None), ("fine-tuned from pretrained", checkpoint)):
            if ("scratch" if initial is None else "pretrained") not in args.starts:
                continue
            results = [
                run(image, labels, minutes, seed, args.device, initial=initial)
                for seed in range(args.repeats)
            ]
            rows.append((name, minutes, results))
    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"\nnuclei image rows 256-511, {n_true} true nuclei; {n}")
    print("| start | CPU min on rows 0-255 | AP@0.5 | AP@0.75 | touching pairs apart | objects |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, minutes, results in rows:
        print(
            f"| {name} | {minutes:g} | "
            + " | ".join(spread([r[k] for r in results], 3) for k in ("ap50", "ap75", "apart"))
            + f" | {statistics.median(r['n_pred'] for r in results):.0f} |"
        )


if __name__ == "__main__":
    main()
