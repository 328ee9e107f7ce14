"""How the benchmark scripts summarise repeated runs."""

from __future__ import annotations

import platform
import statistics

import torch


def describe_device(device: str) -> str:
    """Name the processor that runs the benchmark: the GPU's model, or the CPU and its threads."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def add_device_argument(parser) -> None:
    """``--device``: cpu (the recorded figures) or cuda / cuda:N (the same figures on a GPU)."""
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), cuda or cuda:N: where to train and segment"
    )


def spread(values: list[float], digits: int = 3) -> str:
    """``median (min-max)`` of repeated runs, or the one value of a single run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )
