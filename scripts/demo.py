"""`make demo`: open napari with the plugin's sample data.

With a display, the viewer stays open for you to explore. With ``--headless``
(what `make demo` uses under Xvfb when there is no display) it takes a
screenshot of the whole napari window, saves it under ``--output`` and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-unet-segmentation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--headless", action="store_true", help="save screenshots and exit instead of showing"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="folder for the screenshots"
    )
    return parser.parse_args(argv)


def save_screenshot(viewer, path: Path) -> Path:
    """Save a screenshot of the whole napari window (not just the canvas)."""
    from napari.qt import get_qapp

    get_qapp().processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import napari

    viewer = napari.Viewer(title="U-Net Segmentation demo", show=True)
    viewer.window.resize(1400, 900)
    layers = viewer.open_sample(PLUGIN, "touching_nuclei")
    print(f"Loaded sample data: {', '.join(layer.name for layer in layers)}")
    if not args.headless:
        napari.run()
        return 0
    shot = save_screenshot(viewer, args.output / "01-sample-data.png")
    print(f"Screenshot of the napari window: {shot.resolve()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
