"""The benchmark scripts that need no shared data still run (tiny sizes, one repeat).

They call the package's API; an API change that breaks one should fail here, not
in the next benchmark session. The ones that read ../shared/data are run by
``make bench``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["inference.py", "--sizes", "256", "--repeats", "1", "--device", "cpu"],
        ["inference_memory.py", "--size", "512"],
    ],
    ids=lambda command: command[0],
)
def test_benchmark_runs(command):
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "|" in completed.stdout  # a table was printed
