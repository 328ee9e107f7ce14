"""Benchmark of the U-Net boundary weight map against straightforward methods.

Usage (from the repository root)::

    python benchmarks/weight_map.py [--data-dir ../shared/data] [--repeats 5]

For a 512x512 synthetic image with 125 nuclei, and for the real image
``<data-dir>/dsb2018-nuclei/labels.tif`` when it is there, the script times

(a) :func:`napari_unet.weights.boundary_weight_map`,
(b) the per-instance reference: one full-image distance transform per object,
    two smallest per pixel (``_reference.per_instance_weight_map``),

one after the other ``--repeats`` times, so that each repeat gives a speed-up
measured under the same load (the table gives their median and range), and
(c) the naive all-pairs method (every background pixel against every object
    pixel) on a small crop, its full-image time extrapolated by pixel count (a
    lower bound) and by the number of (background, object) pixel pairs,

and prints a table with the speed-up and the largest absolute error of each
method against the reference. It exits with status 1 if an error exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _data import add_data_argument, data_directory
from _reference import all_pairs_weight_map, per_instance_weight_map
from _report import spread

from napari_unet.synthetic import make_touching_nuclei
from napari_unet.weights import boundary_weight_map, separate_touching_objects

TOLERANCE = 1e-4
GOAL = 50.0
CROP = 64


def timed(function):
    """Return (wall-clock seconds of one call, its result)."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _pixel_pairs(target: np.ndarray) -> int:
    """Return (background pixels) x (object pixels) of a separated target."""
    n_objects = int(np.count_nonzero(target))
    return (target.size - n_objects) * n_objects


def load_images(data_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Return the synthetic image and the real DSB 2018 labels."""
    from napari_unet.io import read_image

    path = data_dir / "dsb2018-nuclei" / "labels.tif"
    if not path.is_file():
        sys.exit(f"{path} is missing; the weight-map benchmark needs it.")
    labels = read_image(path, labels=True)
    n_objects = len(np.unique(labels)) - 1
    return [
        (
            "synthetic 512x512, 125 nuclei (seed 0)",
            make_touching_nuclei((512, 512), n_nuclei=125, seed=0)[1],
        ),
        (f"DSB 2018 {labels.shape[0]}x{labels.shape[1]}, {n_objects} nuclei", labels),
    ]


def benchmark(name: str, labels: np.ndarray, repeats: int):
    """Print the table for one image; return (median speed-up, largest error)."""
    print(f"\n## {name}")
    boundary_weight_map(labels)  # warm-up (imports, caches)
    fast_times, reference_times = [], []
    for _ in range(repeats):
        seconds, fast = timed(lambda: boundary_weight_map(labels))
        fast_times.append(seconds)
        seconds, reference = timed(lambda: per_instance_weight_map(labels))
        reference_times.append(seconds)
    speed_ups = [r / f for r, f in zip(reference_times, fast_times, strict=True)]
    fast_error = float(np.abs(fast - reference).max())
    reference_time = statistics.median(reference_times)

    # The all-pairs method on a crop from the centre of the image, compared with
    # the reference on the same crop.
    row = (labels.shape[0] - CROP) // 2
    col = (labels.shape[1] - CROP) // 2
    crop = labels[row : row + CROP, col : col + CROP]
    pairs_crop_time, pairs = timed(lambda: all_pairs_weight_map(crop))
    pairs_error = float(np.abs(pairs - per_instance_weight_map(crop)).max())
    by_pixels = pairs_crop_time * labels.size / crop.size
    # Its work is proportional to (background pixels) x (object pixels), so the
    # pixel-count figure is a lower bound; the pair count gives a closer estimate.
    target, crop_target = separate_touching_objects(labels), separate_touching_objects(crop)
    by_pairs = pairs_crop_time * (_pixel_pairs(target) / max(_pixel_pairs(crop_target), 1))

    print(f"{'method':<24} {'seconds':>22} {'speed-up':>22} {'max abs err':>12}  note")
    print(
        f"{'boundary_weight_map':<24} {spread(fast_times, 4):>22} "
        f"{spread(speed_ups, 0) + 'x':>22} {fast_error:>12.2e}"
    )
    print(f"{'per-instance reference':<24} {spread(reference_times, 4):>22} {'1x':>22} {0:>12.2e}")
    for seconds, note in (
        (by_pixels, "x pixel count (lower bound)"),
        (by_pairs, "x (background x object) pixel pairs"),
    ):
        print(
            f"{'all-pairs, extrapolated':<24} {seconds:>22.4f} "
            f"{reference_time / seconds:>21.2f}x {pairs_error:>12.2e}  "
            f"{pairs_crop_time:.3f} s on a {CROP}x{CROP} crop {note}"
        )
    speed_up = statistics.median(speed_ups)
    print(
        f"{name}: boundary_weight_map is {speed_up:.0f}x faster than the reference "
        f"(median of {repeats})"
    )
    return speed_up, max(fast_error, pairs_error)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each method (median reported)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    images = load_images(data_directory(args.data_dir))

    results = [(name, *benchmark(name, labels, args.repeats)) for name, labels in images]
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
