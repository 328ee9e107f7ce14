"""Share of the training step spent on preparing data, default model, on the CPU.

Three timings in one run, on the DSB 2018 nuclei image (rows 0-255), with the
default TrainConfig (380x380 tiles, elastic deformation, rotation, flips and
gray-value augmentation, depth-4 base-16 network, Adam):

- model only: training steps on tiles drawn beforehand (no data work at all);
- data only: drawing augmented tiles, nothing else;
- pipeline: the real training loop, where a background thread draws the
  tiles while the model trains (``data_wait_fraction`` is the share of the
  loop spent waiting for a tile).

"naive share" is what drawing tiles in the training thread would cost
(data / (data + model)); "overhead" is the real cost of the pipeline
(pipeline / model - 1), which also counts the tile thread competing with
PyTorch for the two cores. Goal (issue 3): under 10%.

Usage: python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--steps 150] [--repeats 3]
       [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _data import add_data_argument, data_directory, read_nuclei

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


def data_only(data, config: TrainConfig, steps: int, prefilter_per_tile: bool = False) -> float:
    """Seconds per drawn tile; ``prefilter_per_tile``: the old way, cubic prefilter per tile."""
    model_config = config.model_config(data.in_channels, data.n_classes)
    sampler = make_sampler(data, model_config, config.tile_size, config, seed=1)
    if prefilter_per_tile:
        real = sampling._warp_window
        sampler.coefficients = [sample.image for sample in data.samples]

        def per_tile(array, coords, order, prefiltered=False):
            return real(array, coords, order, False)

        sampling._warp_window = per_tile
    try:
        return _time_draws(sampler, steps)
    finally:
        if prefilter_per_tile:
            sampling._warp_window = real


def _time_draws(sampler, steps: int) -> float:
    sampler.draw()
    start = time.perf_counter()
    for _ in range(steps):
        sampler.draw()
    return (time.perf_counter() - start) / steps


def pipeline(image, labels, config: TrainConfig, steps: int) -> tuple[float, float]:
    events = train_generator([(image, labels)], config)
    first = last = None
    for event in events:
        if isinstance(event, TrainingProgress):
            if event.step == 10:  # after warm-up, as in the other two timings
                first = event
            last = event
    timed = last.step - first.step
    per_step = (last.elapsed - first.elapsed) / timed
    return per_step, last.data_wait_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    image, labels = image[:SPLIT], labels[:SPLIT]
    config = TrainConfig(steps=args.steps + 10, device="cpu", seed=0, precision=args.precision)
    data = prepare_training_data([(image, labels)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps")
    output = config.model_config(1, 2).output_shape((config.tile_size, config.tile_size))
    rows = []
    for _ in range(args.repeats):
        model = model_only(data, config, args.steps)
        old_tiles = data_only(data, config, args.steps, prefilter_per_tile=True)
        tiles = data_only(data, config, args.steps)
        real, wait = pipeline(image, labels, config, args.steps)
        rows.append((model, old_tiles, tiles, real, wait))
    print("| repeat | model only, ms/step | data only, ms/tile (prefilter per tile) | data only, "
          "ms/tile | pipeline, ms/step | supervised Mpx/min | naive share | overhead | "
          "waiting for tiles |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (model, old_tiles, tiles, real, wait) in enumerate(rows, start=1):
        megapixels = output[0] * output[1] / 1e6 / real * 60
        print(
            f"| {i} | {model * 1e3:.0f} | {old_tiles * 1e3:.1f} | {tiles * 1e3:.1f} | "
            f"{real * 1e3:.0f} | {megapixels:.1f} | {tiles / (tiles + model):.1%} | "
            f"{real / model - 1:+.1%} | {wait:.1%} |"
        )
    overhead = statistics.median(real / model - 1 for model, _, _, real, _ in rows)
    print(f"median overhead of the data pipeline: {overhead:+.1%} (goal < 10%)")


if __name__ == "__main__":
    main()
