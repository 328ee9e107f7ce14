"""Whether correcting a result and training again makes the model better (issue 16).

A biologist's loop on one experiment, the eight 512x640 fluorescence fields of
``dsb2018-stage1-test`` (as ``widget_calibration.py``): annotate the two fields
with the most nuclei, train ``--minutes`` (the default start: fine-tuning
``nuclei``), segment the third, correct that result, and train again from the
model on all three fields for ``--again`` minutes. Each model is scored on the
other five fields (AP@0.5, mean over the fields).

The correction is the one the Correct objects dock and a brush make: every
predicted object that matches no true nucleus (IoU <= 0.5) is deleted, and every
true nucleus without a match is painted in over whatever was there; matched
objects keep their predicted outlines. The control trains the first model the
same ``--again`` minutes on the first two fields only: the same compute without
the corrected field.

Usage: python benchmarks/correction_loop.py [--minutes 2] [--again 1] [--repeats 3]
       [--again-learning-rate 1e-4]
"""

from __future__ import annotations

import argparse

import numpy as np
from _data import add_data_argument, data_directory, experiment_fields
from _report import add_device_argument, describe_device, spread
from dsb_stage1 import evaluate, read_field, segmenter

from napari_unet import InferenceConfig, TrainConfig
from napari_unet.metrics import match_instances
from napari_unet.registry import DEFAULT_START, load_model
from napari_unet.training import train


def corrected(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Return the result after the user's fixes, and how many were deleted and painted."""
    matching = match_instances(truth, prediction, 0.5)
    result = prediction.astype(np.int32)
    wrong = np.setdiff1d(np.unique(prediction)[1:], matching.matched_pred_ids)
    result[np.isin(result, wrong)] = 0
    missed = np.setdiff1d(np.unique(truth)[1:], matching.matched_true_ids)
    next_id = int(result.max()) + 1
    for offset, true_id in enumerate(missed):
        result[truth == true_id] = next_id + offset
    return result, len(wrong), len(missed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=2.0, help="first training")
    parser.add_argument("--again", type=float, default=1.0, help="training after correcting")
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--again-learning-rate",
        type=float,
        default=None,
        help="peak learning rate of the second training (default: the package's, 1e-3 for Adam)",
    )
    add_device_argument(parser)
    args = parser.parse_args()
    folder = data_directory(args.data_dir) / "dsb2018-stage1-test"
    keys = experiment_fields(folder)
    annotated = [read_field(folder, key) for key in keys[:2]]
    to_correct = read_field(folder, keys[2])
    held_out = [read_field(folder, key) for key in keys[3:]]
    print(describe_device(args.device))
    print(
        f"annotated {', '.join(k[:8] for k in keys[:2])}; corrected {keys[2][:8]}; scored on "
        f"{', '.join(k[:8] for k in keys[3:])}"
    )
    config = InferenceConfig(device=args.device)
    rows: dict[str, list[dict]] = {"first model": [], "corrected field added": [], "control": []}
    for seed in range(args.repeats):

        def again(pairs, start, seed=seed):
            budget = TrainConfig(
                minutes=args.again,
                steps=None,
                seed=seed,
                device=args.device,
                learning_rate=args.again_learning_rate,
            )
            return train(pairs, budget, initial=start.checkpoint)

        first = train(
            annotated,
            TrainConfig(minutes=args.minutes, steps=None, seed=seed, device=args.device),
            initial=load_model(DEFAULT_START),
        )
        image, truth = to_correct
        result = segmenter(first, config)(image)
        fixed, deleted, painted = corrected(result, truth)
        models = {
            "first model": first,
            "corrected field added": again([*annotated, (image, fixed)], first),
            "control": again(annotated, first),
        }
        for name, model in models.items():
            scores = evaluate(held_out, segmenter(model, config))
            rows[name].append(scores)
            print(
                f"  seed {seed}, {name}: AP@0.5 {scores['ap50']:.3f}, {scores['n_pred']} "
                f"objects ({model.steps} steps)",
                flush=True,
            )
        print(f"    the correction: {deleted} objects deleted, {painted} painted in", flush=True)

    n_true = sum(len(np.unique(t)) - 1 for _, t in held_out)
    print(f"\n{len(held_out)} held-out fields, {n_true} nuclei; median (min-max) of the seeds")
    print("| model | AP@0.5 | AP@0.75 | objects |")
    print("|---|---:|---:|---:|")
    for name, results in rows.items():
        print(
            f"| {name} | {spread([r['ap50'] for r in results])} | "
            f"{spread([r['ap75'] for r in results])} | "
            f"{int(np.median([r['n_pred'] for r in results]))} |"
        )


if __name__ == "__main__":
    main()
