"""The ``napari-unet`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_unet import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-unet`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description=(
            "Train and apply a U-Net (Ronneberger et al. 2015) to microscopy images. "
            "The same engines drive the napari plugin 'U-Net Segmentation'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
