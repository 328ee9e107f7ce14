"""Training time-to-accuracy on the DSB 2018 nuclei image, on the CPU.

Train the default model (depth 4, 16 base channels, Adam, instances mode with
the paper's weight map) on rows 0-255 of ``dsb2018-nuclei`` for a wall-clock
budget of 1, 2 and 5 minutes, then segment rows 256-511 (never seen in
training) and score them against the true nuclei:

- AP@0.5 and AP@0.75: TP / (TP + FP + FN) at IoU thresholds 0.5 and 0.75
  (the Data Science Bowl score);
- touching pairs kept apart: of the pairs of true nuclei that touch each
  other, the share whose two nuclei are both matched (IoU >= 0.5, one-to-one)
  to two distinct predicted objects.

Baseline in the same table: Otsu threshold + distance-transform watershed
(scikit-image), its one parameter (the minimum distance between markers)
chosen on the training rows. Goal (issue 5): AP@0.5 >= 0.90 within 5 CPU
minutes.

Usage: python benchmarks/training.py [--data-dir ../shared/data] [--minutes 1 2 5]
       [--repeats 1] [--plot docs/images/training-time-to-accuracy.png] [--head three-class ...]
       [--precision auto|fp32|bf16] [--tile-size PX] [--tta]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _data import add_data_argument, data_directory, read_nuclei
from _report import add_device_argument, describe_device, spread
from scipy import ndimage as ndi

from napari_unet import InferenceConfig, TrainConfig, average_precision, predict
from napari_unet._generators import run_to_end
from napari_unet.metrics import match_instances
from napari_unet.training import TrainingProgress, train_generator

SPLIT = 256


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of ids whose objects share an edge (4-connectivity)."""
    pairs = set()
    for first, second in (
        (labels[1:, :], labels[:-1, :]),
        (labels[:, 1:], labels[:, :-1]),
    ):
        touching = (first != second) & (first > 0) & (second > 0)
        for a, b in zip(first[touching].tolist(), second[touching].tolist(), strict=True):
            pairs.add((min(a, b), max(a, b)))
    return pairs


def score(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    matching = match_instances(true, pred, threshold=0.5)
    matched = set(matching.matched_true_ids.tolist())
    pairs = touching_pairs(true)
    kept_apart = sum(a in matched and b in matched for a, b in pairs)
    return {
        "ap50": matching.average_precision,
        "ap75": average_precision(true, pred, threshold=0.75),
        "apart": kept_apart / max(len(pairs), 1),
        "n_pairs": len(pairs),
        "n_pred": matching.n_pred,
    }


def otsu_watershed(image: np.ndarray, min_distance: int) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), sigma=1, preserve_range=True)
    mask = smooth > threshold_otsu(smooth)
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndi.label(mask)[0])
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def baseline(image: np.ndarray, labels: np.ndarray) -> tuple[int, dict[str, float]]:
    """Pick min_distance on the training rows, score it on the evaluation rows."""
    train_image, train_labels = image[:SPLIT], labels[:SPLIT]
    best = max(
        (3, 5, 7, 9, 11, 15),
        key=lambda d: average_precision(train_labels, otsu_watershed(train_image, d)),
    )
    return best, score(labels[SPLIT:], otsu_watershed(image[SPLIT:], best))


def run(
    image: np.ndarray,
    labels: np.ndarray,
    minutes: float,
    seed: int,
    device: str = "cpu",
    tta: bool = False,
    initial=None,
    **settings: object,
) -> dict:
    """Train on rows 0-255 for ``minutes``, score rows 256-511; ``settings`` go to TrainConfig.

    ``initial``: a checkpoint to fine-tune instead of starting from scratch.
    """
    config = TrainConfig(minutes=minutes, steps=None, seed=seed, device=device, **settings)
    generator = train_generator([(image[:SPLIT], labels[:SPLIT])], config, initial=initial)
    curve: list[tuple[float, float]] = []
    wait = 0.0

    def keep(event) -> None:
        nonlocal wait
        if isinstance(event, TrainingProgress):
            curve.append((event.elapsed, event.loss))
            wait = event.data_wait_fraction

    result = run_to_end(generator, keep)
    start = time.perf_counter()
    checkpoint = result.checkpoint
    prediction = predict(
        result.model,
        image[SPLIT:],
        config=InferenceConfig(device=device, tta=tta),
        **checkpoint.inference_settings(),
    )
    seconds = time.perf_counter() - start
    scores = score(labels[SPLIT:], prediction.labels)
    print(
        f"  {checkpoint.task.name}, {minutes:g} min, seed {seed}: AP@0.5 {scores['ap50']:.3f}, "
        f"{scores['n_pred']} objects; {checkpoint.postprocess}",
        flush=True,
    )
    calibration = checkpoint.metadata.get("calibration")
    if calibration:
        print(
            f"    labelling on {calibration['on']}: {calibration['metric']} "
            f"{calibration['score']:.3f} (start {calibration['default_score']:.3f}, "
            f"{'kept' if calibration.get('kept_start') else 'changed'}, "
            f"{calibration.get('objects')} objects)",
            flush=True,
        )
    return {**scores, "steps": result.steps, "wait": wait, "curve": curve, "predict_s": seconds}


def plot(runs: dict[float, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for minutes, results in sorted(runs.items()):
        elapsed, loss = np.array(results[0]["curve"]).T
        kernel = np.ones(25) / 25
        smooth = np.convolve(loss, kernel, mode="valid") if len(loss) > 25 else loss
        loss_axis.plot(elapsed[len(elapsed) - len(smooth) :] / 60, smooth, label=f"{minutes:g} min")
    loss_axis.set(xlabel="training time (min)", ylabel="loss (moving mean of 25 steps)")
    loss_axis.set_yscale("log")
    loss_axis.legend(title="budget")
    budgets = sorted(runs)
    for key, name in (("ap50", "AP@0.5"), ("ap75", "AP@0.75"), ("apart", "touching pairs apart")):
        medians = [statistics.median(r[key] for r in runs[m]) for m in budgets]
        ap_axis.plot(budgets, medians, marker="o", label=name)
    ap_axis.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ap_axis.set(xlabel="training budget (CPU minutes)", ylabel="score on rows 256-511", ylim=(0, 1))
    ap_axis.legend(loc="lower right")
    figure.suptitle("U-Net on DSB 2018 nuclei, 2 CPU threads (benchmarks/training.py)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per budget (seeds 0..N-1)")
    parser.add_argument("--plot", type=Path, help="save loss curves and scores as a PNG")
    parser.add_argument(
        "--head", nargs="+", default=["three-class"], help="instance heads to compare"
    )
    parser.add_argument("--tta", action="store_true", help="also score test-time augmentation")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="training precision"
    )
    parser.add_argument("--tile-size", type=int, default=None, help="training tile (input) side")
    add_device_argument(parser)
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    print(describe_device(args.device))
    min_distance, base = baseline(image, labels)
    n_true = len(np.unique(labels[SPLIT:])) - 1
    extra = {"precision": args.precision}
    if args.tile_size is not None:
        extra["tile_size"] = args.tile_size
    table: dict[tuple[str, float], list[dict]] = {}
    for head in args.head:
        for minutes in args.minutes:
            table[head, minutes] = [
                run(image, labels, minutes, seed, args.device, args.tta, head=head, **extra)
                for seed in range(args.repeats)
            ]
    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"\nrows 256-511, {n_true} true nuclei, {base['n_pairs']} touching pairs; {n}")
    print("| method | steps | AP@0.5 | AP@0.75 | touching pairs apart | objects | data wait |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| Otsu + distance-transform watershed (min_distance {min_distance}) | - | "
        f"{base['ap50']:.3f} | {base['ap75']:.3f} | {base['apart']:.3f} | {base['n_pred']} | - |"
    )
    tta = ", TTA" if args.tta else ""
    for (head, minutes), results in table.items():
        steps = statistics.median(r["steps"] for r in results)
        print(
            f"| U-Net {head}{tta}, {minutes:g} min | {steps:.0f} | "
            + " | ".join(spread([r[key] for r in results]) for key in ("ap50", "ap75", "apart"))
            + f" | {statistics.median(r['n_pred'] for r in results):.0f}"
            + f" | {statistics.median(r['wait'] for r in results):.1%} |"
        )
    if args.plot:
        plot({m: r for (h, m), r in table.items() if h == args.head[0]}, args.plot)
        print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
