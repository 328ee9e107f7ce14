"""Peak resident memory of segmenting a large image with the default model.

Each measurement runs in a fresh Python process (``resource.getrusage`` reports
the peak resident set size of the whole process, so one process per case keeps
the cases apart). The image is a 1024x1024 synthetic touching-nuclei image
(``make_touching_nuclei``) tiled to the requested size, uint16. The network is
the default one (depth 4, 16 base channels) with its He-initialised random
weights: its foreground is noise, which splits the image into millions of tiny
objects, the worst case for the labelling step's bookkeeping. A trained model
finds far fewer objects and needs less.

Goal (issue 3): peak resident memory under 2 GB for an 8192x8192 image.

Usage: python benchmarks/inference_memory.py [--size 8192] [--modes instances semantic]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_megabytes() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: int, mode: str) -> dict[str, float | int | str]:
    """Segment one ``size`` x ``size`` image in this process and report memory."""
    import numpy as np
    import torch

    from napari_unet import InferenceConfig, UNet, UNetConfig, make_touching_nuclei, predict

    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    tile, _ = make_touching_nuclei((1024, 1024), seed=1)
    reps = -(-size // 1024)
    image = np.ascontiguousarray(np.tile(tile, (reps, reps))[:size, :size])
    before = peak_megabytes()
    start = time.perf_counter()
    task = "semantic" if mode == "semantic" else "paper"  # a two-output network
    prediction = predict(model, image, task=task, config=InferenceConfig(device="cpu"))
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "size": size,
        "before_mb": before,
        "peak_mb": peak_megabytes(),
        "seconds": seconds,
        "objects": int(prediction.labels.max()),
        "labels_dtype": str(prediction.labels.dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--modes", nargs="+", default=["instances", "semantic"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.size, args.child)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| image | mode | labels | objects | seconds | resident before inference, MB "
        "| peak resident, MB |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    worst = 0.0
    for mode in args.modes:
        output = subprocess.run(
            [sys.executable, __file__, "--size", str(args.size), "--child", mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = json.loads(output.strip().splitlines()[-1])
        worst = max(worst, row["peak_mb"])
        print(
            f"| {args.size}x{args.size} uint16 | {mode} | {row['labels_dtype']} | "
            f"{row['objects']} | {row['seconds']:.0f} | {row['before_mb']:.0f} | "
            f"{row['peak_mb']:.0f} |"
        )
    print(f"largest peak: {worst / 1024:.2f} GB (goal < 2 GB)")


if __name__ == "__main__":
    main()
