"""Calibrated labelling against a threshold sweep, after 2 minutes of training in the widgets.

Issue 16: a biologist annotates two fields of one experiment, trains through the
Train U-Net widget for ``--minutes`` (its defaults: fine-tuning ``nuclei``, the
labelling calibrated on annotations held out of training), then segments the
other fields of the experiment with the Segment widget. Are the calibrated
thresholds as good as the best ones a sweep over the kept maps finds?

The experiment: the 512x640 one-channel fields of ``dsb2018-stage1-test`` (8
fields). The two with the most nuclei are annotated; the other six are
segmented and scored (AP@0.5, mean over the fields). The sweep re-labels the
kept maps of every field with each foreground / seed threshold pair, through
the same function the Segment widget's labelling controls call, and one such
re-labelling is also done through the controls, live. Screenshots of the napari
window before training (``nuclei`` as shipped) and after, on the segmented field
with the most nuclei, go to ``--output``.

Needs a display: ``xvfb-run -a python benchmarks/widget_calibration.py``.

Usage: python benchmarks/widget_calibration.py [--minutes 2] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _data import add_data_argument, data_directory, experiment_fields

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from demo import PLUGIN, screenshot, wait_until

from napari_unet.io import read_image
from napari_unet.metrics import average_precision

THRESHOLDS = [float(t) for t in np.round(np.arange(0.2, 0.91, 0.05), 2)]
SEED_THRESHOLDS = [float(t) for t in np.round(np.arange(0.2, 0.96, 0.05), 2)]


def segment_layer(viewer, segment, layer_name: str, model: str) -> np.ndarray:
    """Run the Segment widget on one layer with ``model``; return the result's labels."""
    segment.image.value = viewer.layers[layer_name]
    segment.model.value = model
    done = []
    worker = segment()
    worker.finished.connect(lambda: done.append(True))
    wait_until(lambda: bool(done))
    session = segment.session.value
    wait_until(lambda: not session.busy and session.job is None)
    return np.asarray(viewer.layers[f"{layer_name} segmentation"].data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--output", type=Path, default=Path("benchmark-output/widget-calibration"))
    args = parser.parse_args()
    folder = data_directory(args.data_dir) / "dsb2018-stage1-test"
    fields = experiment_fields(folder)
    annotated, others = fields[:2], sorted(fields[2:])

    import warnings

    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")
    import napari

    from napari_unet._widgets._common import engines_ready
    from napari_unet._widgets.segment import _relabel

    viewer = napari.Viewer(title="U-Net Segmentation: widget calibration", show=True)
    viewer.window.resize(1500, 950)
    truths = {}
    for key in annotated + others:
        name = key[:8]
        viewer.add_image(read_image(folder / "images" / f"{key}.tif"), name=name)
        truths[name] = read_image(folder / "labels" / f"{key}.tif", labels=True)
    for key in annotated:
        viewer.add_labels(truths[key[:8]], name=f"{key[:8]} labels")
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train U-Net", tabify=True)
    segment_dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment", tabify=True)
    wait_until(engines_ready.is_set)
    evaluated = [key[:8] for key in others]
    shown = max(evaluated, key=lambda name: len(np.unique(truths[name])))  # the most nuclei
    pixels = np.asarray(viewer.layers[shown].data)
    viewer.layers[shown].contrast_limits = tuple(np.percentile(pixels, (1, 99.8)).tolist())

    def show_only(*names: str) -> None:
        for layer in viewer.layers:
            layer.visible = layer.name in names
        viewer.reset_view()

    print(f"annotated: {', '.join(k[:8] for k in annotated)}; segmented: {', '.join(evaluated)}")
    before = segment_layer(viewer, segment, shown, "nuclei")
    show_only(shown, f"{shown} segmentation")
    viewer.layers[f"{shown} segmentation"].opacity = 0.5
    screenshot(viewer, args.output / "before.png", segment_dock)
    print(
        f"before training ('nuclei' as shipped), {shown}: AP@0.5 "
        f"{average_precision(truths[shown], before):.3f}"
    )
    viewer.layers.remove(f"{shown} segmentation")

    train_dock.raise_()
    for row, key in enumerate(annotated):
        if row:
            train.add_pair_button.clicked.emit()
        train.rows[row].image.value = viewer.layers[key[:8]]
        train.rows[row].labels_box.value = viewer.layers[f"{key[:8]} labels"]
    train.budget_unit.value = "minutes"
    train.budget.value = args.minutes
    train.live_preview.value = False
    print(f"training {args.minutes:g} min from {train.start_from.value!r}")
    start = time.perf_counter()
    finished = []
    train.start().finished.connect(lambda: finished.append(True))
    wait_until(lambda: bool(finished), timeout=args.minutes * 60 + 900)
    print(f"  {train.status.value} ({time.perf_counter() - start:.0f} s)")
    model = segment.model.value
    if model == "nuclei":
        raise RuntimeError("the Segment widget did not switch to the trained model")
    print(f"segmenting with {model!r}")

    default_scores, sweep = [], np.zeros((len(THRESHOLDS), len(SEED_THRESHOLDS)))
    settings = None
    for name in evaluated:
        labels = segment_layer(viewer, segment, name, model)
        if name == shown:
            print(f"after training, {shown}: AP@0.5 {average_precision(truths[shown], labels):.3f}")
            show_only(shown, f"{shown} segmentation")
            viewer.layers[f"{shown} segmentation"].opacity = 0.5
            screenshot(viewer, args.output / "after.png", segment_dock)
        kept = segment.session.value.kept
        settings = segment.session.value.labelling.settings_for(kept.checkpoint)
        default_scores.append(average_precision(truths[name], labels))
        for i, threshold in enumerate(THRESHOLDS):
            for j, seed in enumerate(SEED_THRESHOLDS):
                candidate = replace(
                    settings, threshold=float(threshold), seed_threshold=float(seed)
                )
                relabelled = _relabel(kept.checkpoint.task, kept.maps, candidate, kept.scales)
                sweep[i, j] += average_precision(truths[name], relabelled)
    sweep /= len(evaluated)
    calibrated = float(np.mean(default_scores))
    i, j = np.unravel_index(int(np.argmax(sweep)), sweep.shape)
    best = float(sweep[i, j])
    print(f"calibrated labelling {settings}: AP@0.5 {calibrated:.3f} (mean of {len(evaluated)})")
    print(
        f"best of the sweep: threshold {THRESHOLDS[i]:g}, seed threshold "
        f"{SEED_THRESHOLDS[j]:g}: AP@0.5 {best:.3f}; gap {best - calibrated:.3f}"
    )

    # The last field, re-labelled live through the controls with the sweep's best.
    controls = segment.session.value.labelling
    last = viewer.layers[f"{evaluated[-1]} segmentation"]
    old = np.array(last.data)
    kept = segment.session.value.kept
    expected = _relabel(
        kept.checkpoint.task,
        kept.maps,
        replace(settings, threshold=float(THRESHOLDS[i]), seed_threshold=float(SEED_THRESHOLDS[j])),
        kept.scales,
    )
    changed = time.perf_counter()
    controls.threshold.value = float(THRESHOLDS[i])
    controls.seed_threshold.value = float(SEED_THRESHOLDS[j])
    wait_until(lambda: np.array_equal(last.data, expected), timeout=30)
    print(
        f"live re-label of {evaluated[-1]} through the controls: the sweep's labels on screen "
        f"{time.perf_counter() - changed:.2f} s after the change (was AP@0.5 "
        f"{average_precision(truths[evaluated[-1]], old):.3f}, now "
        f"{average_precision(truths[evaluated[-1]], expected):.3f})"
    )

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
