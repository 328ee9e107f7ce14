"""Whether torch.compile pays for the training step on the CPU (issue 13).

Times the default model's training step (380x380 tiles of the DSB 2018 nuclei
image, rows 0-255, the default precision) eagerly and compiled with
``torch.compile`` (inductor), in one run: the compiled step's time after
warm-up, and the compile time (the first steps), from which the break-even
budget follows (the minutes of training after which compiling has saved
more than it cost).

Usage: python benchmarks/compile.py [--data-dir ../shared/data] [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _data import add_data_argument, data_directory, read_nuclei
from _report import describe_device

from napari_unet.device import autocast_dtype, resolve_device
from napari_unet.model import UNet
from napari_unet.sampling import make_sampler, prepare_training_data
from napari_unet.training import TrainConfig, _step

SPLIT = 256


def time_steps(model, optimizer, tiles, steps, amp, task) -> float:
    """Seconds per training step, over ``steps`` steps on prepared tiles."""
    device = resolve_device("cpu")
    start = time.perf_counter()
    for i in range(steps):
        _step(model, optimizer, *tiles[i % len(tiles)], device, amp, task)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    image, labels = read_nuclei(data_directory(args.data_dir))
    config = TrainConfig(steps=args.steps)
    data = prepare_training_data([(image[:SPLIT], labels[:SPLIT])], task=config.task)
    model_config = config.model_config(data.in_channels, data.n_classes)
    sampler = make_sampler(data, model_config, config.tile_size, config, seed=0)
    tiles = [sampler.draw() for _ in range(20)]
    amp = autocast_dtype(resolve_device("cpu"), config.precision, "training")
    print(describe_device("cpu"), f"autocast {amp}", flush=True)

    eager, compiled, compile_seconds = [], [], []
    for repeat in range(args.repeats):
        torch.manual_seed(repeat)
        model = UNet(model_config).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        time_steps(model, optimizer, tiles, 2, amp, data.task)  # warm-up
        eager.append(time_steps(model, optimizer, tiles, args.steps, amp, data.task))

        torch.manual_seed(repeat)
        torch._dynamo.reset()
        model = UNet(model_config).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        fast = torch.compile(model)
        start = time.perf_counter()
        time_steps(fast, optimizer, tiles, 2, amp, data.task)  # compiles
        first = time.perf_counter() - start
        compiled.append(time_steps(fast, optimizer, tiles, args.steps, amp, data.task))
        compile_seconds.append(first - 2 * compiled[-1])
        print(
            f"  repeat {repeat}: eager {eager[-1] * 1e3:.1f} ms/step, compiled "
            f"{compiled[-1] * 1e3:.1f} ms/step, compile {compile_seconds[-1]:.0f} s",
            flush=True,
        )
    e, c, k = (statistics.median(x) for x in (eager, compiled, compile_seconds))
    saved_per_step = e - c
    print("\n| step | eager ms | compiled ms | speed-up | compile s | break-even |")
    print("|---|---:|---:|---:|---:|---:|")
    break_even = (
        f"{k / saved_per_step * e / 60:.1f} min of eager training"
        if saved_per_step > 0
        else "never"
    )
    print(
        f"| training, {config.tile_size}x{config.tile_size} | {e * 1e3:.1f} | {c * 1e3:.1f} | "
        f"{e / c:.2f}x | {k:.0f} | {break_even} |"
    )


if __name__ == "__main__":
    main()
