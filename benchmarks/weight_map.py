"""Benchmark of the U-Net boundary weight map against straightforward methods.

Usage (from the repository root)::

    python benchmarks/weight_map.py [--data-dir ../shared/data] [--repeats N]

For a 512x512 synthetic image with 125 nuclei, and for the real image
``<data-dir>/dsb2018-nuclei/labels.tif`` when it is there, the script times

(a) :func:`napari_unet.weights.boundary_weight_map` (best of ``--repeats``),
(b) the per-instance reference: one full-image distance transform per object,
    two smallest per pixel (``_reference.per_instance_weight_map``, best of
    ``--reference-repeats``),
(c) the naive all-pairs method (every background pixel against every object
    pixel) on a small crop, its full-image time extrapolated by pixel count (a
    lower bound) and by the number of (background, object) pixel pairs,

and prints a table with the speed-up and the largest absolute error of each
method against the reference. It exits with status 1 if an error exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _reference import all_pairs_weight_map, per_instance_weight_map

from napari_unet.synthetic import make_touching_nuclei
from napari_unet.weights import boundary_weight_map, separate_touching_objects

REPOSITORY = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
GOAL = 50.0
CROP = 64


def best_time(function, repeats: int):
    """Return (best wall-clock seconds over ``repeats`` calls, last result)."""
    best = np.inf
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def _pixel_pairs(target: np.ndarray) -> int:
    """Return (background pixels) x (object pixels) of a separated target."""
    n_objects = int(np.count_nonzero(target))
    return (target.size - n_objects) * n_objects


def load_images(data_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Return the images to benchmark, saying why the real one is skipped if it is."""
    images = [
        (
            "synthetic 512x512, 125 nuclei (seed 0)",
            make_touching_nuclei((512, 512), n_nuclei=125, seed=0)[1],
        )
    ]
    path = data_dir / "dsb2018-nuclei" / "labels.tif"
    if not data_dir.is_dir():
        print(f"SKIPPED real image: data directory {data_dir} does not exist.")
    elif not path.is_file():
        print(f"SKIPPED real image: {path} does not exist.")
    else:
        import tifffile

        labels = tifffile.imread(path)
        if labels.ndim != 2:
            print(f"SKIPPED real image: {path} is not 2D (shape {labels.shape}).")
        else:
            n_objects = len(np.unique(labels)) - 1
            name = f"DSB 2018 {labels.shape[0]}x{labels.shape[1]}, {n_objects} nuclei"
            images.append((name, labels))
    return images


def benchmark(name: str, labels: np.ndarray, repeats: int, reference_repeats: int):
    """Print the table for one image; return (speed-up, largest error)."""
    print(f"\n## {name}")
    boundary_weight_map(labels)  # warm-up (imports, caches)
    fast_time, fast = best_time(lambda: boundary_weight_map(labels), repeats)
    reference_time, reference = best_time(
        lambda: per_instance_weight_map(labels), reference_repeats
    )
    fast_error = float(np.abs(fast - reference).max())

    # The all-pairs method on a crop from the centre of the image, compared with
    # the reference on the same crop.
    row = (labels.shape[0] - CROP) // 2
    col = (labels.shape[1] - CROP) // 2
    crop = labels[row : row + CROP, col : col + CROP]
    pairs_crop_time, pairs = best_time(lambda: all_pairs_weight_map(crop), 1)
    pairs_error = float(np.abs(pairs - per_instance_weight_map(crop)).max())
    by_pixels = pairs_crop_time * labels.size / crop.size
    # Its work is proportional to (background pixels) x (object pixels), so the
    # pixel-count figure is a lower bound; the pair count gives a closer estimate.
    target, crop_target = separate_touching_objects(labels), separate_touching_objects(crop)
    by_pairs = pairs_crop_time * (_pixel_pairs(target) / max(_pixel_pairs(crop_target), 1))

    rows = [
        ("boundary_weight_map", fast_time, fast_error, f"best of {repeats}"),
        (
            "per-instance reference",
            reference_time,
            0.0,
            f"best of {reference_repeats}",
        ),
        (
            "all-pairs, extrapolated",
            by_pixels,
            pairs_error,
            f"{pairs_crop_time:.3f} s on a {CROP}x{CROP} crop x pixel count (lower bound)",
        ),
        (
            "all-pairs, extrapolated",
            by_pairs,
            pairs_error,
            f"{pairs_crop_time:.3f} s on a {CROP}x{CROP} crop x (background x object) pixel pairs",
        ),
    ]
    print(f"{'method':<24} {'seconds':>10} {'speed-up':>10} {'max abs err':>12}  note")
    for method, seconds, error, note in rows:
        speed_up = reference_time / seconds
        print(f"{method:<24} {seconds:>10.4f} {speed_up:>9.2f}x {error:>12.2e}  {note}")
    speed_up = reference_time / fast_time
    print(f"{name}: boundary_weight_map is {speed_up:.0f}x faster than the reference")
    return speed_up, max(fast_error, pairs_error)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="folder holding dsb2018-nuclei/labels.tif; a relative path is taken "
        "from the repository root (default: ../shared/data)",
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="runs of boundary_weight_map (best kept)"
    )
    parser.add_argument(
        "--reference-repeats",
        type=int,
        default=3,
        help="runs of the per-instance reference (best kept)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.reference_repeats < 1:
        parser.error("--repeats and --reference-repeats must be at least 1")
    data_dir = args.data_dir if args.data_dir.is_absolute() else REPOSITORY / args.data_dir
    data_dir = data_dir.resolve()

    results = [
        (name, *benchmark(name, labels, args.repeats, args.reference_repeats))
        for name, labels in load_images(data_dir)
    ]
    worst_name, worst_speed_up, _ = min(results, key=lambda result: result[1])
    worst_error = max(error for _, _, error in results)
    print()
    print(f"max abs error vs reference: {worst_error:.2e} (tolerance {TOLERANCE:g})")
    print(
        f"speed-up vs per-instance reference: {worst_speed_up:.0f}x (goal >= {GOAL:.0f}x)"
        + (f", smallest of {len(results)} images ({worst_name})" if len(results) > 1 else "")
    )
    if worst_error > TOLERANCE:
        print(f"FAILED: an error exceeds {TOLERANCE:g}.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
