"""`make demo`: train a U-Net on the sample data in napari and segment a new image.

Opens napari with the plugin's sample data (synthetic touching nuclei and their
labels), trains the default network briefly on them, saves the model, then
segments a new image with overlap-tile inference and adds the result as a
Labels layer. With a display the viewer stays open at the end. With
``--headless`` (what `make demo` uses under Xvfb when there is no display) it
saves screenshots of the whole napari window under ``--output`` and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PLUGIN = "napari-unet-segmentation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--headless", action="store_true", help="save screenshots and exit instead of showing"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="folder for screenshots and model"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    return parser.parse_args(argv)


def save_screenshot(viewer, path: Path) -> Path:
    """Save a screenshot of the whole napari window (not just the canvas)."""
    from napari.qt import get_qapp

    get_qapp().processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def train_on_sample(viewer, steps: int, output: Path):
    """Train on the sample layers, printing progress; return the training result."""
    from napari.qt import get_qapp

    from napari_unet._generators import run_to_end
    from napari_unet.checkpoint import save_checkpoint
    from napari_unet.training import TrainConfig, TrainingProgress, train_generator

    image = viewer.layers["nuclei"].data
    labels = viewer.layers["nuclei labels"].data
    print(f"Training the default U-Net for {steps} steps on the sample data (CPU is fine)...")

    def show(event) -> None:
        if isinstance(event, TrainingProgress) and (
            event.step % 50 == 0 or event.step == event.total_steps
        ):
            print(
                f"  step {event.step}/{event.total_steps}  loss {event.loss:.3f}  "
                f"{event.images_per_second:.1f} steps/s"
            )
            viewer.status = f"training: step {event.step}, loss {event.loss:.3f}"
            get_qapp().processEvents()

    events = train_generator([(image, labels)], TrainConfig(steps=steps, seed=0))
    result = run_to_end(events, show)
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / "model.pt"
    save_checkpoint(model_path, result.checkpoint)
    print(f"Model saved to {model_path.resolve()}")
    return result


def segment_new_image(viewer, model):
    """Segment a new synthetic image tile by tile, streaming tiles into a Labels layer."""
    import numpy as np
    from napari.qt import get_qapp

    from napari_unet._generators import run_to_end
    from napari_unet.inference import InferenceConfig, predict_generator
    from napari_unet.metrics import average_precision
    from napari_unet.synthetic import make_touching_nuclei

    image, truth = make_touching_nuclei((384, 512), seed=1)
    viewer.add_image(image, name="new nuclei")
    layer = viewer.add_labels(np.zeros(image.shape, np.uint32), name="new nuclei segmentation")

    def show(tile) -> None:
        # Provisional view while tiles arrive: foreground of each finished tile.
        rows, cols = tile.region
        layer.data[rows, cols] = (tile.probabilities[1] > 0.5).astype(np.uint32)
        layer.refresh()
        get_qapp().processEvents()

    tiles = predict_generator(model, image, config=InferenceConfig(tile_shape=(196, 196)))
    prediction = run_to_end(tiles, show)
    layer.data = prediction.labels
    for name in ("nuclei", "nuclei labels"):
        viewer.layers[name].visible = False
    viewer.reset_view()
    score = average_precision(truth, prediction.labels, 0.5)
    print(
        f"Segmented a new {image.shape[0]}x{image.shape[1]} image: "
        f"{int(prediction.labels.max())} objects, AP@0.5 = {score:.2f} against its true labels"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import napari

    viewer = napari.Viewer(title="U-Net Segmentation demo", show=True)
    viewer.window.resize(1400, 900)
    layers = viewer.open_sample(PLUGIN, "touching_nuclei")
    print(f"Loaded sample data: {', '.join(layer.name for layer in layers)}")
    shots = []
    if args.headless:
        shots.append(save_screenshot(viewer, args.output / "01-sample-data.png"))
    start = time.perf_counter()
    result = train_on_sample(viewer, args.steps, args.output)
    print(f"Training took {time.perf_counter() - start:.0f} s ({result.stop_reason}).")
    segment_new_image(viewer, result.model)
    if not args.headless:
        napari.run()
        return 0
    shots.append(save_screenshot(viewer, args.output / "02-segmentation.png"))
    for shot in shots:
        print(f"Screenshot of the napari window: {shot.resolve()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
