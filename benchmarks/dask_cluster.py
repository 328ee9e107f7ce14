"""Throughput of block-wise segmentation: a local dask cluster versus one process.

A synthetic uint16 image of --size x --size pixels (a 1024x1024
``make_touching_nuclei`` image tiled, as in inference_memory.py) is written to a
temporary zarr store, then segmented from that store into another zarr store by
``napari_unet.distributed.segment_to_zarr`` with the default network (depth 4,
16 base channels, float32) and blocks of --block-size pixels, two ways:

* one process: no dask client, the blocks one after another, PyTorch using
  --workers threads (the cores the cluster gets);
* a local dask cluster of --workers worker processes with one thread each
  (one PyTorch thread per task), started and warmed up before the timing.

Both compute the same blocks and tiles. The network has its random initial
weights, so in instances mode its foreground is noise and the labelling step
(``label_instances``, in the calling process in both runs) meets millions of
tiny objects, its worst case; the table gives the time to the last block (the
network, the part the cluster spreads) and the total. The two runs alternate
--repeats times, so each repeat gives ratios measured under the same load; the
table gives the median and range. Ratio = one-process seconds / cluster seconds.

Usage: python benchmarks/dask_cluster.py [--size 8192] [--workers 4] [--block-size 2048]
       [--mode instances|semantic] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from _report import spread
from distributed import Client, LocalCluster

from napari_unet._generators import run_to_end
from napari_unet.checkpoint import Checkpoint
from napari_unet.distributed import segment_to_zarr, segment_to_zarr_generator
from napari_unet.inference import InferenceConfig
from napari_unet.model import UNet, UNetConfig
from napari_unet.synthetic import make_touching_nuclei

TILE = 1024


def write_image(path: Path, size: int) -> None:
    """Write a size x size uint16 image, a tiled nuclei image, one 1024-pixel tile at a time."""
    tile = make_touching_nuclei((TILE, TILE), seed=0)[0]
    image = zarr.open_array(
        str(path), mode="w", shape=(size, size), chunks=(TILE, TILE), dtype=np.uint16
    )
    for top in range(0, size, TILE):
        for left in range(0, size, TILE):
            height, width = min(TILE, size - top), min(TILE, size - left)
            image[top : top + height, left : left + width] = tile[:height, :width]


def timed_run(checkpoint, source, output, config, block, client) -> tuple[float, float]:
    """Return (seconds to the last block, seconds in all) of one run; remove its output."""
    start = time.perf_counter()
    finished = [start]  # when each block finished
    blocks = segment_to_zarr_generator(
        checkpoint, source, output, block_shape=(block, block), config=config, client=client
    )
    result = run_to_end(blocks, lambda _: finished.append(time.perf_counter()))
    total = time.perf_counter() - start
    if not result.completed:
        raise RuntimeError("the run did not complete")
    shutil.rmtree(result.path)
    return finished[-1] - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--mode", choices=("instances", "semantic"), default="instances")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    checkpoint = Checkpoint.from_model(UNet(UNetConfig()).eval(), mode=args.mode)
    config = InferenceConfig(device="cpu", precision="fp32")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; {args.mode} mode, blocks of {args.block_size} px"
    )
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as folder:
        folder = Path(folder)
        source = folder / "image.zarr"
        write_image(source, args.size)
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            # Warm-up: imports and first-call allocations stay out of the timings.
            warm = np.zeros((512, 512), np.uint16)
            torch.set_num_threads(args.workers)
            for run_client in (None, client):
                segment_to_zarr(
                    checkpoint, warm, folder / "warm.zarr", config=config, client=run_client
                )
                shutil.rmtree(folder / "warm.zarr")
            here, there = [], []
            for _ in range(args.repeats):
                torch.set_num_threads(args.workers)
                here.append(
                    timed_run(
                        checkpoint, source, folder / "out.zarr", config, args.block_size, None
                    )
                )
                there.append(
                    timed_run(
                        checkpoint, source, folder / "out.zarr", config, args.block_size, client
                    )
                )

    n = f"median (min-max) of {args.repeats}" if args.repeats > 1 else "1 run"
    print(f"{n}; seconds to the last block / in all; ratio = one process / cluster")
    print(
        "| image | one process (threads) s | cluster (workers x 1 thread) s | cluster Mpx/s "
        "| ratio, network | ratio, in all |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    network = [h[0] / t[0] for h, t in zip(here, there, strict=True)]
    total = [h[1] / t[1] for h, t in zip(here, there, strict=True)]
    cluster_total = sorted(t[1] for t in there)[len(there) // 2]
    print(
        f"| {args.size}x{args.size} "
        f"| {spread([h[0] for h in here], 1)} / {spread([h[1] for h in here], 1)} "
        f"({args.workers}) "
        f"| {spread([t[0] for t in there], 1)} / {spread([t[1] for t in there], 1)} "
        f"({args.workers} x 1) "
        f"| {args.size**2 / cluster_total / 1e6:.2f} "
        f"| {spread(network, 2)}x | {spread(total, 2)}x |"
    )


if __name__ == "__main__":
    main()
