"""Forward-pass speed of the default network on the CPU: memory layout, bf16, roofline.

In one run, on a 572x572 input (the paper's tile, 388x388 output) and the
default network (depth 4, 16 base channels), under ``torch.inference_mode``:

- float32 in PyTorch's default (contiguous, NCHW) layout;
- float32 in ``channels_last`` (NHWC) layout, what inference uses;
- bfloat16 autocast with channels_last (what ``precision="bf16"`` does), and
  how often its labels (argmax) agree with float32's;
- the roofline figure: the network's FLOPs (counted by
  ``torch.utils.flop_counter``) divided by its float32 channels_last time,
  against the FLOP/s of a large float32 matrix product on the same machine.

Usage: python benchmarks/cpu_options.py [--repeats 5] [--size 572]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import spread
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.device import cpu_has_amx
from napari_unet.model import UNet, UNetConfig


def timings(function, repeats: int) -> list[float]:
    function()  # warm-up
    result = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        result.append(time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=572)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    x = torch.randn(1, 1, args.size, args.size)
    last = UNet(UNetConfig()).eval().to(memory_format=torch.channels_last)
    last.load_state_dict(model.state_dict())
    x_last = x.contiguous(memory_format=torch.channels_last)

    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x)
        flops = counter.get_total_flops()
        contiguous = timings(lambda: model(x), args.repeats)
        channels_last = timings(lambda: last(x_last), args.repeats)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return last(x_last)

        bfloat16 = timings(bf16, max(1, args.repeats // 2))
        reference = last(x_last).argmax(1)
        agreement = float((bf16().float().argmax(1) == reference).float().mean())
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        matmul = timings(lambda: a @ b, args.repeats)

    peak = 2 * n**3 / min(matmul)
    achieved = flops / statistics.median(channels_last)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, AMX: {cpu_has_amx()}; "
        f"input {args.size}x{args.size}, {flops / 1e9:.1f} GFLOP per forward"
    )
    print("| variant | seconds, median (min-max) | vs float32 contiguous |")
    print("|---|---:|---:|")
    base = statistics.median(contiguous)
    for name, values in (
        ("float32, contiguous (NCHW)", contiguous),
        ("float32, channels_last", channels_last),
        ("bfloat16 autocast, channels_last", bfloat16),
    ):
        print(f"| {name} | {spread(values)} | {base / statistics.median(values):.2f}x |")
    print(f"bf16 labels agree with float32 on {agreement:.2%} of pixels")
    print(
        f"roofline: network {achieved / 1e9:.1f} GFLOP/s, float32 matmul {peak / 1e9:.1f} GFLOP/s "
        f"({achieved / peak:.0%} of the matmul rate)"
    )


if __name__ == "__main__":
    main()
