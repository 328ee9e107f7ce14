"""Share of the training step spent on preparing data, default model, on the CPU.

Three timings in one run, on the DSB 2018 nuclei image (rows 0-255), with the
default TrainConfig (380x380 tiles, elastic deformation, rotation, flips and
gray-value augmentation, depth-4 base-16 network, Adam):

- model only: training steps on tiles drawn beforehand (no data work at all);
- data only: drawing augmented tiles, nothing else, with the warp of today
  (``torch.nn.functional.grid_sample``) and, for comparison, the scipy
  spline warp used before session 14;
- pipeline: the real training loop, where a background thread draws the
  tiles while the model trains (``data_wait_fraction`` is the share of the
  loop spent waiting for a tile), once with each warp. The held-out scoring of
  the real loop (at most 3% of its time, by design) is turned off: it is not
  data preparation.

"overhead" is the real cost of the pipeline
(pipeline / model - 1), which also counts the tile thread competing with
PyTorch for the two cores. Goal (issue 3): under 10%.

Usage: python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--steps 150] [--repeats 3]
       [--precision auto|fp32|bf16 ...] (several: one table each, and the throughput of
       the last with today's warp against the first with the scipy spline warp)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from _data import add_data_argument, data_directory, read_nuclei
from scipy import ndimage as ndi

from napari_unet import sampling
from napari_unet.device import autocast_dtype, resolve_device
from napari_unet.sampling import make_sampler, prepare_training_data
from napari_unet.training import TrainConfig, TrainingProgress, _step, train_generator

SPLIT = 256


def model_only(data, config: TrainConfig, steps: int) -> float:
    model_config = config.model_config(data.in_channels, data.n_classes)
    from napari_unet.model import UNet

    torch.manual_seed(0)
    model = UNet(model_config).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    sampler = make_sampler(data, model_config, config.tile_size, config, seed=0)
    tiles = [sampler.draw() for _ in range(min(steps, 20))]
    device = resolve_device("cpu")
    amp = autocast_dtype(device, config.precision, "training")  # as in the real loop
    _step(model, optimizer, *tiles[0], device, amp, data.task)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        _step(model, optimizer, *tiles[i % len(tiles)], device, amp, data.task)
    return (time.perf_counter() - start) / steps


def data_only(data, config: TrainConfig, steps: int, scipy_splines: bool = False) -> float:
    """Seconds per drawn tile; ``scipy_splines``: the warp before session 14, for comparison."""
    model_config = config.model_config(data.in_channels, data.n_classes)
    sampler = make_sampler(data, model_config, config.tile_size, config, seed=1)
    with _warp(scipy_splines):
        return _time_draws(sampler, steps)


@contextlib.contextmanager
def _warp(scipy_splines: bool):
    real = sampling.warp
    if scipy_splines:
        sampling.warp = _spline_warp
    try:
        yield
    finally:
        sampling.warp = real


#: Per image, by id: the image itself (held, so that its id is never reused) and its coefficients.
_COEFFICIENTS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _spline_warp(array, coordinates, *, order, mode="mirror"):
    """Warp as tiles did before session 14: scipy's splines, cubic coefficients once per image."""
    if order == 3:
        if id(array) not in _COEFFICIENTS:
            coefficients = np.stack(
                [ndi.spline_filter(channel, 3, output=np.float32, mode=mode) for channel in array]
            )
            _COEFFICIENTS[id(array)] = (array, coefficients)
        array = _COEFFICIENTS[id(array)][1]
    channels = array if array.ndim == 3 else array[np.newaxis]
    out = np.stack(
        [
            ndi.map_coordinates(channel, coordinates, order=order, mode=mode, prefilter=False)
            for channel in channels
        ]
    )
    return out if array.ndim == 3 else out[0]


def _time_draws(sampler, steps: int) -> float:
    sampler.draw()
    start = time.perf_counter()
    for _ in range(steps):
        sampler.draw()
    return (time.perf_counter() - start) / steps


def pipeline(image, labels, config: TrainConfig, steps: int, scipy_splines: bool = False):
    """Seconds per step of the real loop and the share of it spent waiting for tiles."""
    with _warp(scipy_splines):
        events = list(train_generator([(image, labels)], config))
    progress = [event for event in events if isinstance(event, TrainingProgress)]
    first, last = progress[9], progress[-1]  # after warm-up, as in the other two timings
    per_step = (last.elapsed - first.elapsed) / (last.step - first.step)
    return per_step, last.data_wait_fraction


def measure(image, labels, precision: str, steps: int, repeats: int) -> list[tuple]:
    """Print one table for ``precision``; return its rows (seconds)."""
    # Without the held-out scoring (at most 3% of the time by design): it is not data work.
    config = TrainConfig(
        steps=steps + 10, device="cpu", seed=0, precision=precision, calibrate=False
    )
    data = prepare_training_data([(image, labels)])
    rows = []
    for _ in range(repeats):
        model = model_only(data, config, steps)
        old_tiles = data_only(data, config, steps, scipy_splines=True)
        tiles = data_only(data, config, steps)
        old_real, _ = pipeline(image, labels, config, steps, scipy_splines=True)
        real, wait = pipeline(image, labels, config, steps)
        rows.append((model, old_tiles, tiles, old_real, real, wait))
    print(f"\nprecision {precision}")
    print("| repeat | model only, ms/step | data, ms/tile, before | data, ms/tile | pipeline, "
          "ms/step, before | pipeline, ms/step | supervised Mpx/min, before | supervised "
          "Mpx/min | overhead, before | overhead | waiting for tiles |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (model, old_tiles, tiles, old_real, real, wait) in enumerate(rows, start=1):
        print(
            f"| {i} | {model * 1e3:.0f} | {old_tiles * 1e3:.1f} | {tiles * 1e3:.1f} | "
            f"{old_real * 1e3:.0f} | {real * 1e3:.0f} | {_megapixels(old_real):.1f} | "
            f"{_megapixels(real):.1f} | {old_real / model - 1:+.1%} | {real / model - 1:+.1%} | "
            f"{wait:.1%} |"
        )
    overhead = statistics.median(row[4] / row[0] - 1 for row in rows)
    gain = statistics.median(row[3] / row[4] for row in rows)
    print(f"median overhead of the data pipeline: {overhead:+.1%} (goal < 10%)")
    print(f"median throughput against the scipy spline warp: {gain:.2f}x")
    return rows


def _megapixels(seconds_per_step: float) -> float:
    """Supervised output megapixels per minute of the default tile (196x196 outputs)."""
    config = TrainConfig()
    output = config.model_config(1, 2).output_shape((config.tile_size, config.tile_size))
    return output[0] * output[1] / 1e6 / seconds_per_step * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"]
    )
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    image, labels = image[:SPLIT], labels[:SPLIT]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps")
    tables = {p: measure(image, labels, p, args.steps, args.repeats) for p in args.precision}
    if len(tables) > 1:
        first, last = args.precision[0], args.precision[-1]
        before = statistics.median(_megapixels(row[3]) for row in tables[first])
        now = statistics.median(_megapixels(row[4]) for row in tables[last])
        print(
            f"\nthroughput: {last} with today's warp {now:.1f} supervised Mpx/min against "
            f"{first} with the scipy spline warp {before:.1f}: {now / before:.2f}x"
        )


if __name__ == "__main__":
    main()
