"""Locate and read the shared benchmark data (never copied into the repository)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="folder holding dsb2018-nuclei/ and isbi2012/; a relative path is taken "
        "from the repository root (default: ../shared/data)",
    )


def data_directory(path: Path) -> Path:
    """Resolve ``--data-dir``, or exit with a message that says what to do."""
    directory = (path if path.is_absolute() else REPOSITORY / path).resolve()
    if not directory.is_dir():
        sys.exit(
            f"benchmark data not found at {directory}: pass --data-dir DIR pointing at the "
            f"shared data (the folder that holds dsb2018-nuclei/ and isbi2012/)."
        )
    return directory


def read_nuclei(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the DSB 2018 nuclei image and its instance labels."""
    from napari_unet.io import read_image

    folder = directory / "dsb2018-nuclei"
    for name in ("image.tif", "labels.tif"):
        if not (folder / name).is_file():
            sys.exit(f"{folder / name} is missing; the nuclei benchmarks need it.")
    return read_image(folder / "image.tif"), read_image(folder / "labels.tif", labels=True)


#: The experiment of the DSB stage 1 test set that the widget benchmarks play a user with:
#: its eight 512x640 one-channel fluorescence fields.
EXPERIMENT_SHAPE = [512, 640]


def experiment_fields(test_folder: Path) -> list[str]:
    """Return the ids of the experiment's fields, those with the most nuclei first."""
    import json

    summary = json.loads((test_folder / "summary.json").read_text())
    keys = [
        key
        for key, info in summary.items()
        if info["shape"] == EXPERIMENT_SHAPE and info["channels"] == 1
    ]
    return sorted(keys, key=lambda key: (-summary[key]["n_objects"], key))
