"""Fine-tuning the shipped model: the peak learning rate, and recalibrating its labelling.

Training from a converged model with a fresh optimiser at the rate that suits a
new model can undo part of what the model knew (session 12: 20 minutes of
fine-tuning on DSB stage 1 train ended below the zero-shot score). This sweeps
the peak learning rate of fine-tuning from the pretrained ``nuclei`` model on
two annotated problems of the kind a user brings, each trained on rows 0-255
and scored on rows 256-511:

- ``nuclei``: the DSB 2018 nuclei image as it is;
- ``dim``: the same image brought to a dim 8-bit frame with shot noise
  (``dim.py``: background about 1.5 gray levels, nuclei about 15 above it).

A fine-tuned model keeps the labelling it came with unless settings calibrated
on the held-out rows 205-255 (16 nuclei) score better there by more than
``1 / sqrt(n)`` (:func:`napari_unet.calibration.calibrate`). Each run also
reports what recalibrating freely would have done: the held-out gain of the best
settings over the kept ones, and their difference on rows 256-511, the data a
margin for that rule can be judged by.

Each table row is the median (min-max) of ``--repeats`` seeds; the zero-shot
score of the shipped model is the first row.

Usage: python benchmarks/fine_tuning.py [--minutes 2] [--repeats 3]
       [--rates 1e-3 3e-4 1e-4] [--problems nuclei dim]
"""

from __future__ import annotations

import argparse

import numpy as np
from _data import add_data_argument, data_directory, read_nuclei
from _report import add_device_argument, describe_device, print_instance_table
from dim import BACKGROUND, SIGNAL, dim_frame
from pretrained import segment
from training import SPLIT, score

from napari_unet import InferenceConfig, TrainConfig, predict
from napari_unet._generators import run_to_end
from napari_unet.registry import DEFAULT_START, load_model
from napari_unet.scaling import object_areas
from napari_unet.training import HOLD_OUT_FRACTION, calibrate_on, train_generator

#: The rows the training run holds out for calibration (as ``training._hold_out`` cuts them).
HELD_OUT = slice(round(SPLIT * (1 - HOLD_OUT_FRACTION)), SPLIT)


def fine_tune(frame, labels, shipped, minutes: float, rate: float, seed: int, device: str):
    """Fine-tune on rows 0-255; score rows 256-511 as trained and with free recalibration."""
    config = TrainConfig(minutes=minutes, steps=None, seed=seed, device=device, learning_rate=rate)
    generator = train_generator([(frame[:SPLIT], labels[:SPLIT])], config, initial=shipped)
    result = run_to_end(generator, lambda event: None)
    checkpoint, task = result.checkpoint, result.checkpoint.task
    prediction = predict(
        result.model,
        frame[SPLIT:],
        config=InferenceConfig(device=device),
        return_probabilities=True,
        **checkpoint.inference_settings(),
    )
    maps = task.tile_maps(np.asarray(prediction.probabilities))
    truth = labels[SPLIT:]
    scores = {**score(truth, prediction.labels), "steps": result.steps}
    held_out = (frame[:SPLIT][None].astype(np.float32), labels[:SPLIT], HELD_OUT)
    free = calibrate_on(
        result.model,
        task,
        [held_out],
        object_areas(labels[:SPLIT]),
        checkpoint.normalization,
        checkpoint.object_area,
        device=device,
        start=shipped.postprocess,
    )
    scale = prediction.scales[0]  # the sizes apply at the scale the objects were found at
    kept = score(truth, task.label_plane(maps, shipped.postprocess.at_scale(scale)))["ap50"]
    recalibrated = score(truth, task.label_plane(maps, free.postprocess.at_scale(scale)))["ap50"]
    print(
        f"  seed {seed}: AP@0.5 {scores['ap50']:.3f}, {scores['n_pred']} objects, "
        f"{result.steps} steps; held-out AP@0.5 shipped labelling {free.default_score:.3f}, "
        f"best {free.score:.3f} ({free.score - free.default_score:+.3f}); rows 256-511 "
        f"shipped labelling {kept:.3f}, best of the held-out rows {recalibrated:.3f} "
        f"({recalibrated - kept:+.3f})",
        flush=True,
    )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    parser.add_argument(
        "--problems", nargs="+", choices=("nuclei", "dim"), default=["nuclei", "dim"]
    )
    add_device_argument(parser)
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    problems = {"nuclei": image, "dim": dim_frame(image, SIGNAL, BACKGROUND, seed=0)}
    shipped = load_model(DEFAULT_START)
    print(describe_device(args.device))
    for name in args.problems:
        frame = problems[name]
        zero = score(
            labels[SPLIT:], segment(shipped, shipped.build_model(), frame[SPLIT:], args.device)
        )
        table = {f"{name}: {DEFAULT_START!r} zero-shot": [zero]}
        for rate in args.rates:
            print(f"{name}, peak learning rate {rate:g}", flush=True)
            table[f"{name}: fine-tuned {args.minutes:g} min, peak rate {rate:g}"] = [
                fine_tune(frame, labels, shipped, args.minutes, rate, seed, args.device)
                for seed in range(args.repeats)
            ]
        print()
        print_instance_table(table)
        print(flush=True)


if __name__ == "__main__":
    main()
