"""How the benchmark scripts summarise repeated runs."""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int = 3) -> str:
    """``median (min-max)`` of repeated runs, or the one value of a single run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )
