"""The ``napari-unet`` command's entry point, kept free of heavy imports.

Ctrl-C while Python loads NumPy and the command line would print a traceback
from inside an import; until :func:`napari_unet.cli.main` takes over (and turns
Ctrl-C into a clean stop), it simply ends the program, as it does for any tool.
"""

from __future__ import annotations

import signal
import sys


def run() -> None:
    """Run ``napari-unet`` with the arguments of this process and exit with its status."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from napari_unet.cli import main

    sys.exit(main())
