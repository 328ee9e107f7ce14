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


def print_instance_table(table: dict[str, list[dict]]) -> None:
    """Print one Markdown row per setting: runs, steps, AP@0.5, AP@0.75, pairs apart, objects."""
    print("| settings | runs | steps | AP@0.5 | AP@0.75 | touching pairs apart | objects |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, results in table.items():
        if not results:
            continue
        steps = [r["steps"] for r in results if "steps" in r]
        print(
            f"| {name} | {len(results)} | "
            + (f"{statistics.median(steps):.0f}" if steps else "-")
            + " | "
            + " | ".join(spread([r[key] for r in results]) for key in ("ap50", "ap75", "apart"))
            + f" | {statistics.median(r['n_pred'] for r in results):.0f} |"
        )


def spread(values: list[float], digits: int = 3) -> str:
    """``median (min-max)`` of repeated runs, or the one value of a single run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )
