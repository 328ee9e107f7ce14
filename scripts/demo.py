"""`make demo`: napari with the sample data and the plugin's three widgets docked.

With a display, napari opens with the synthetic touching nuclei, their labels and
the Weight map preview, Train U-Net and Segment widgets, and stays open for you.

With ``--headless`` (what `make demo` uses under Xvfb when there is no display),
the script drives the whole workflow through the widgets themselves, exactly as a
user would click it, and saves screenshots of the napari window to ``--output``:

0. segment the sample with the pretrained ``nuclei`` model, before any training;
1. preview the boundary weight map of the labels;
2. train a U-Net (by default fine-tuning ``nuclei``; with a live preview), then save it;
3. segment a new image, tiles streaming into a Labels layer;
4. correct the result and train again from the current model.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

PLUGIN = "napari-unet-segmentation"
WIDGETS = ("Weight map preview", "Train U-Net", "Segment", "Correct objects")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--headless", action="store_true", help="drive the workflow, save screenshots, exit"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="folder for screenshots and model"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    return parser.parse_args(argv)


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``condition()`` holds (the viewer stays live)."""
    from napari.qt import get_qapp

    app = get_qapp()
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the demo step did not finish in time")
        app.processEvents()
        time.sleep(0.01)


def screenshot(viewer, path: Path, dock=None) -> Path:
    """Save a screenshot of the whole napari window (not just the canvas).

    ``dock`` is brought to the front of its tab group first; notification
    toasts are closed so that they do not hide the image.
    """
    from napari.qt import get_qapp

    if dock is not None:
        dock.raise_()
    try:  # a private class: the screenshots just look better without toasts
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
    except (ImportError, AttributeError):
        pass
    get_qapp().processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"  screenshot: {path}")
    return path


def open_viewer():
    """Return the viewer with the sample data and the docks of the four widgets."""
    import napari

    viewer = napari.Viewer(title="U-Net Segmentation demo", show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample(PLUGIN, "touching_nuclei")
    docks = {}
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        docks[name] = (dock, widget)
    return viewer, docks


def run_workflow(viewer, docks, steps: int, output: Path) -> None:
    import numpy as np

    from napari_unet._widgets._common import engines_ready
    from napari_unet.metrics import average_precision
    from napari_unet.synthetic import make_touching_nuclei

    def show(name: str):
        dock, widget = docks[name]
        dock.raise_()
        return widget

    def dock(name: str):
        return docks[name][0]

    print("0. Segment the sample with the pretrained 'nuclei' model, before any training")
    segment = show("Segment")
    segment.image.value = viewer.layers["nuclei"]
    segment.model.value = "nuclei"
    wait_until(engines_ready.is_set)
    worker = segment()
    done = []
    worker.finished.connect(lambda: done.append(True))
    wait_until(lambda: bool(done))
    pretrained = viewer.layers["nuclei segmentation"]
    for layer in viewer.layers:
        layer.visible = layer.name in ("nuclei", "nuclei segmentation")
    screenshot(viewer, output / "00-pretrained.png", dock("Segment"))
    truth = np.asarray(viewer.layers["nuclei labels"].data)
    print(
        f"  {int(np.max(pretrained.data))} objects, AP@0.5 = "
        f"{average_precision(truth, np.asarray(pretrained.data)):.2f} against the sample's labels"
    )
    pretrained.visible = False
    viewer.layers["nuclei labels"].visible = True

    print("1. Weight map preview of 'nuclei labels'")
    show("Weight map preview")
    wait_until(lambda: "nuclei labels weight map" in viewer.layers)
    weight_layer = viewer.layers["nuclei labels weight map"]
    weight_layer.visible = True
    wait_until(lambda: float(np.max(weight_layer.data)) > 0)
    viewer.layers["nuclei labels"].opacity = 0.35
    screenshot(viewer, output / "01-weight-map.png", dock("Weight map preview"))
    weight_layer.visible = False
    viewer.layers["nuclei labels"].opacity = 0.7

    train = show("Train U-Net")
    print(
        f"2. Train U-Net for {steps} steps, starting from {train.start_from.value!r} "
        "(live preview every 50 steps)"
    )
    train.budget_unit.value = "steps"
    train.budget.value = steps
    train.live_preview.value = True
    train.preview_every.value = 50
    wait_until(engines_ready.is_set)
    worker = train.start()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    wait_until(lambda: len(train.plot.steps) >= steps // 2)
    viewer.layers["nuclei labels"].visible = False
    screenshot(viewer, output / "02-training.png", dock("Train U-Net"))
    wait_until(lambda: bool(finished))
    viewer.layers["nuclei labels"].visible = True
    print(f"  {train.status.value}")
    model_path = train.save_model(output / "model.pt")
    print(f"  model saved to {model_path}")

    print("3. Segment a new image")
    image, truth = make_touching_nuclei((384, 512), seed=1)
    new_image = viewer.add_image(image, name="new nuclei")
    for name in ("nuclei", "nuclei labels", "nuclei training preview", "nuclei segmentation"):
        viewer.layers[name].visible = False
    viewer.reset_view()
    segment = show("Segment")
    segment.image.value = new_image
    segment.tile_size.value = 128
    worker = segment()
    tiles, done = [], []
    worker.yielded.connect(tiles.append)
    worker.finished.connect(lambda: done.append(True))
    wait_until(lambda: len(tiles) >= 5 or bool(done))
    screenshot(viewer, output / "03-segmenting.png", dock("Segment"))
    wait_until(lambda: bool(done))
    result = viewer.layers["new nuclei segmentation"]
    screenshot(viewer, output / "04-segmentation.png", dock("Segment"))
    labels = np.asarray(result.data)
    print(
        f"  {int(labels.max())} objects, AP@0.5 = {average_precision(truth, labels):.2f} "
        f"against the true labels of the synthetic image"
    )

    print("4. See where the model is unsure, correct the result, train again")
    segment.session.value.uncertainty_button.clicked.emit()
    print(f"  {segment.session.value.status.value}")
    uncertainty = viewer.layers["new nuclei segmentation uncertainty"]
    correct = show("Correct objects")
    correct.layer_box.value = result
    # A biologist clicks what is wrong; the demo finds it from the true labels:
    # objects on background are deleted, pieces of one nucleus are merged.
    from napari_unet._widgets.correct import DELETE, MERGE

    def centre(mask):
        rows, columns = np.nonzero(mask)
        inside = np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2)
        return (rows[inside], columns[inside])

    correct.tool.value = DELETE
    for object_id in np.unique(labels)[1:]:
        mask = labels == object_id
        if (truth[mask] > 0).mean() < 0.2:
            correct.click(centre(mask))
    correct.tool.value = MERGE
    for object_id in np.unique(truth)[1:]:
        mask = truth == object_id
        ids, counts = np.unique(np.asarray(result.data)[mask], return_counts=True)
        pieces = [i for i, c in zip(ids, counts, strict=True) if i and c > 0.2 * mask.sum()]
        for piece in pieces[1:]:
            correct.click(centre(mask & (np.asarray(result.data) == pieces[0])))
            correct.click(centre(mask & (np.asarray(result.data) == piece)))
    print(f"  corrected with the tools: {correct.status.value}")
    uncertainty.visible = True
    screenshot(viewer, output / "05-correct.png", dock("Correct objects"))
    uncertainty.visible = False
    correct.tool.value = "off"
    # What the tools cannot fix (a missed nucleus) is painted: the demo copies in
    # the true outline of each object still wrong.
    labels = np.asarray(result.data)
    corrected = labels.copy()
    next_id = int(corrected.max()) + 1
    for object_id in np.unique(truth)[1:]:
        mask = truth == object_id
        ids, counts = np.unique(labels[mask], return_counts=True)
        if ids[np.argmax(counts)] == 0 or counts.max() < 0.8 * mask.sum():
            corrected[mask] = next_id
            next_id += 1
    result.data = corrected
    result.mode = "paint"
    viewer.layers.selection.active = result
    train = show("Train U-Net")
    train.add_pair_button.clicked.emit()
    train.rows[1].image.value = new_image
    train.rows[1].labels_box.value = result
    train.budget.value = max(steps // 3, 1)
    train.live_preview.value = False
    worker = train.start()
    finished.clear()
    worker.finished.connect(lambda: finished.append(True))
    wait_until(lambda: bool(finished))
    screenshot(viewer, output / "06-retrain.png", dock("Train U-Net"))
    print(f"  {train.status.value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import warnings

    # Shown as a toast over the image otherwise; the demo's Qt binding is ours to pick.
    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")
    import napari

    viewer, docks = open_viewer()
    print(f"napari opened with {', '.join(layer.name for layer in viewer.layers)}")
    if not args.headless:
        napari.run()
        return 0
    start = time.perf_counter()
    run_workflow(viewer, docks, args.steps, args.output)
    print(f"Workflow done in {time.perf_counter() - start:.0f} s; screenshots in {args.output}/")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
