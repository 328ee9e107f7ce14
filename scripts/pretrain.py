"""Pretrain the shipped nuclei model on the 2018 Data Science Bowl stage 1 training set.

Reproducible and resumable, for one background run on a CPU:

- data: the single-channel fields of ``dsb2018-stage1-train`` (fluorescence and
  brightfield, one channel). The 107 RGB fields are stained tissue (H&E-like
  histology): another modality with three channels, which a one-channel model
  cannot take without a colour conversion that would change what the network
  sees; they are left out. 5% of the fields (a fixed draw) are held out as the
  validation split: they are scored after every chunk and calibrate the
  labelling at the end; the test set is never read here.
- training: the package's default model and head (``TrainConfig``), for a
  wall-clock budget, by default in one run (one learning-rate schedule). With
  ``--chunk-minutes`` the budget is cut into chunks, each saved with a JSON log
  before the next begins, so an interrupted run resumes from the last finished
  chunk (``--resume``); each chunk continues from the previous chunk's model
  but restarts Adam and the schedule (a warm restart), which cost accuracy in
  the first pretraining (docs/models/nuclei.md).
- the end: the labelling is calibrated on the validation split and the model is
  saved as ``OUT/nuclei.pt``, with the log in its metadata.

Progress, with the time left, is printed every minute.

Usage: python scripts/pretrain.py [--data-dir ../shared/data] [--minutes 75]
       [--chunk-minutes MIN] [--out pretrain-output] [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
#: Share of the training fields held out for validation and calibration.
VALIDATION_SHARE = 0.05
#: Calibration looks at this many validation fields (labelling is cheap, the network is not).
CALIBRATION_FIELDS = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--minutes", type=float, default=75.0, help="total training budget")
    parser.add_argument(
        "--chunk-minutes",
        type=float,
        default=None,
        help="save (and warm-restart) after each chunk; default: one chunk, the whole budget",
    )
    parser.add_argument("--out", type=Path, default=Path("pretrain-output"))
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--max-fields", type=int, default=None, help="train on the first N fields (a quick check)"
    )
    return parser.parse_args(argv)


def single_channel_fields(folder: Path) -> list[str]:
    """Ids of the one-channel fields (fluorescence and brightfield), sorted."""
    summary = json.loads((folder / "summary.json").read_text())
    return sorted(key for key, info in summary.items() if info["channels"] == 1)


def read_fields(folder: Path, keys: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    from napari_unet.io import read_image

    return [
        (
            read_image(folder / "images" / f"{key}.tif"),
            read_image(folder / "labels" / f"{key}.tif", labels=True),
        )
        for key in keys
    ]


def split(keys: list[str]) -> tuple[list[str], list[str]]:
    """Return the training and the validation fields (a fixed 5% draw is held out)."""
    order = np.random.default_rng(0).permutation(len(keys))
    n_validation = max(1, round(VALIDATION_SHARE * len(keys)))
    held = set(order[:n_validation].tolist())
    train = [key for i, key in enumerate(keys) if i not in held]
    validation = [key for i, key in enumerate(keys) if i in held]
    return train, validation


def validation_ap(checkpoint, fields) -> float:
    """Mean AP@0.5 over the validation fields with the checkpoint's labelling."""
    from napari_unet import InferenceConfig, predict
    from napari_unet.metrics import match_instances

    model = checkpoint.build_model()
    scores = []
    for image, truth in fields:
        labels = predict(
            model,
            image,
            config=InferenceConfig(device="cpu"),
            **checkpoint.inference_settings(),
        ).labels
        scores.append(match_instances(truth, labels, 0.5).average_precision)
    return float(np.mean(scores))


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a crash leaves the previous file)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.chunk_minutes = args.chunk_minutes or args.minutes
    from dataclasses import replace

    from napari_unet._generators import run_to_end
    from napari_unet.checkpoint import load_checkpoint, save_checkpoint
    from napari_unet.training import (
        TrainConfig,
        TrainingProgress,
        calibrate_on,
        train_generator,
    )

    data = args.data_dir if args.data_dir.is_absolute() else REPOSITORY / args.data_dir
    folder = data / "dsb2018-stage1-train"
    if not (folder / "summary.json").is_file():
        sys.exit(f"{folder / 'summary.json'} not found: pass --data-dir with the shared data.")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path, last_path = args.out / "log.json", args.out / "last.pt"
    log = {"minutes": args.minutes, "chunk_minutes": args.chunk_minutes, "chunks": []}
    initial = None
    if args.resume:
        if not last_path.is_file() or not log_path.is_file():
            sys.exit(f"Nothing to resume in {args.out}: run without --resume first.")
        log = json.loads(log_path.read_text())
        initial = load_checkpoint(last_path)
    elif last_path.exists():
        sys.exit(f"{last_path} exists: pass --resume to continue it, or another --out.")

    keys = single_channel_fields(folder)
    train_keys, validation_keys = split(keys)
    train_keys = train_keys[: args.max_fields]
    pairs = read_fields(folder, train_keys)
    validation = read_fields(folder, validation_keys)
    print(
        f"{len(keys)} one-channel fields: {len(pairs)} for training, {len(validation)} for "
        f"validation; {args.minutes:g} min in chunks of {args.chunk_minutes:g}",
        flush=True,
    )
    log.update(
        train_fields=len(pairs),
        validation_fields=validation_keys,
        command=" ".join(["python", "scripts/pretrain.py", *(argv or sys.argv[1:])]),
    )
    done = sum(chunk["minutes"] for chunk in log["chunks"])
    start = time.perf_counter()
    while done < args.minutes - 1e-6:
        minutes = min(args.chunk_minutes, args.minutes - done)
        number = len(log["chunks"])
        config = TrainConfig(
            minutes=minutes, steps=None, seed=number, calibrate=False, device=args.device
        )
        events = train_generator(pairs, config, initial=initial)
        last_print = time.perf_counter()

        def report(event, done=done, number=number):
            nonlocal last_print
            if isinstance(event, TrainingProgress) and time.perf_counter() - last_print > 60:
                last_print = time.perf_counter()
                left = args.minutes - done - event.elapsed / 60
                print(
                    f"  chunk {number + 1}: step {event.step}, loss {event.loss:.4f}, "
                    f"{left:.0f} min left",
                    flush=True,
                )

        result = run_to_end(events, report)
        initial = result.checkpoint
        save_checkpoint(last_path, initial)
        done += minutes
        total_steps = sum(chunk["steps"] for chunk in log["chunks"]) + result.steps
        ap = validation_ap(initial, validation)
        log["chunks"].append(
            {
                "minutes": minutes,
                "steps": result.steps,
                "total_steps": total_steps,
                "loss": float(np.mean(result.losses[-200:])) if result.losses else None,
                "validation_ap50": ap,
                "wall_s": round(time.perf_counter() - start),
            }
        )
        write_json(log_path, log)
        print(
            f"chunk {number + 1} done: {total_steps} steps, validation AP@0.5 {ap:.3f} "
            f"(default labelling), {args.minutes - done:.0f} min left",
            flush=True,
        )

    checkpoint = initial
    planes = [
        (image[None].astype(np.float32), labels, slice(None))
        for image, labels in validation[:CALIBRATION_FIELDS]
    ]
    calibration = calibrate_on(
        checkpoint.build_model(),
        checkpoint.task,
        planes,
        np.array([]),
        checkpoint.normalization,
        checkpoint.object_area,
        device="cpu",
    )
    checkpoint = replace(
        checkpoint,
        postprocess=calibration.postprocess,
        metadata={
            **checkpoint.metadata,
            "pretraining": log,
            "calibration": {
                "score": calibration.score,
                "default_score": calibration.default_score,
                "metric": calibration.metric,
                "planes": calibration.n_planes,
                "on": f"{calibration.n_planes} validation fields of dsb2018-stage1-train",
            },
        },
    )
    log["calibrated"] = calibration.postprocess.to_dict()
    log["validation_ap50_calibrated"] = validation_ap(checkpoint, validation)
    write_json(log_path, log)
    save_checkpoint(args.out / "nuclei.pt", checkpoint)
    print(
        f"calibrated on {calibration.n_planes} validation fields: {calibration.postprocess}; "
        f"validation AP@0.5 {log['validation_ap50_calibrated']:.3f}; "
        f"saved {args.out / 'nuclei.pt'}",
        flush=True,
    )


if __name__ == "__main__":
    main()
