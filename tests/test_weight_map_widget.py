"""The weight map preview widget, with a real viewer and the real thread workers."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from napari.qt.threading import GeneratorWorker

import napari_unet._widgets.weight_map as weight_map_module
from _layers import assert_unchanged, layer_snapshot
from napari_unet._widgets._common import PLUGIN_NAME, UserError
from napari_unet._widgets.weight_map import (
    METADATA_KEY,
    _checked_labels,
    _Request,
    weight_map_planes,
)
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.weights import boundary_weight_map

WIDGET_NAME = "Weight map preview"
OUTPUT = "nuclei labels weight map"
TIMEOUT_MS = 20_000


@pytest.fixture
def labels():
    return make_touching_nuclei((128, 128), seed=0)[1]


def open_widget(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    return dock, widget, widget._weight_map_preview


def settle(qtbot, preview):
    """Wait until no computation runs, is pending or is about to be started."""
    qtbot.waitUntil(lambda: not preview.busy, timeout=TIMEOUT_MS)


def own_layers(viewer):
    return [layer for layer in viewer.layers if METADATA_KEY in layer.metadata]


def test_opens_from_the_plugin_menu_and_shows_the_map(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="nuclei labels", scale=(0.5, 0.25), translate=(3, 4))
    _, widget, preview = open_widget(viewer)
    # The map appears when the widget opens, before any parameter is touched.
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)

    layer = viewer.layers[OUTPUT]
    np.testing.assert_allclose(layer.data, boundary_weight_map(labels, 10, 5), rtol=1e-6)
    np.testing.assert_allclose(layer.scale, (0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (3, 4))
    assert layer.colormap.name == "inferno"
    assert layer.contrast_limits[0] == 0
    assert layer.contrast_limits[1] == pytest.approx(float(layer.data.max()))
    assert layer.metadata[METADATA_KEY] == str(viewer.layers["nuclei labels"].unique_id)
    assert widget.status.value == "done: plane 1/1"
    assert len(viewer.layers) == 2


def test_parameter_changes_update_the_same_layer(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="nuclei labels")
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    layer = viewer.layers[OUTPUT]

    widget.w0.value = 20.0
    settle(qtbot, preview)
    assert viewer.layers[OUTPUT] is layer
    assert len(viewer.layers) == 2
    np.testing.assert_allclose(layer.data, boundary_weight_map(labels, 20, 5), rtol=1e-6)

    widget.sigma.value = 2.0
    settle(qtbot, preview)
    np.testing.assert_allclose(layer.data, boundary_weight_map(labels, 20, 2), rtol=1e-6)

    widget.balance_classes.value = False
    settle(qtbot, preview)
    expected = boundary_weight_map(labels, 20, 2, class_weights=None)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)
    assert viewer.layers[OUTPUT] is layer
    assert len(viewer.layers) == 2


def test_the_latest_request_wins_without_piling_up_workers(
    make_napari_viewer, qtbot, labels, monkeypatch
):
    viewer = make_napari_viewer()
    viewer.add_labels(np.stack([labels] * 40), name="nuclei labels")
    _, widget, preview = open_widget(viewer)
    settle(qtbot, preview)

    started = []
    start = preview._slot.start

    def start_one(worker, stop_event, on_finished=None):
        # The previous worker has finished before the next one starts.
        assert preview._slot.worker is None
        started.append(worker)
        start(worker, stop_event, on_finished)

    monkeypatch.setattr(preview._slot, "start", start_one)
    for w0 in (1.0, 2.0, 3.0, 4.0):
        widget.w0.value = w0
    settle(qtbot, preview)

    # The first change starts a worker; the next three stop it and only the
    # last one is computed.
    assert len(started) == 2
    expected = boundary_weight_map(labels, 4, 5)
    np.testing.assert_allclose(viewer.layers[OUTPUT].data, np.stack([expected] * 40), rtol=1e-6)


def test_a_stack_is_computed_plane_by_plane(make_napari_viewer, qtbot, labels):
    other = make_touching_nuclei((128, 128), seed=1)[1]
    stack = np.stack([labels, other, np.zeros_like(labels)])
    viewer = make_napari_viewer()
    viewer.add_labels(stack, name="nuclei labels", scale=(2, 0.5, 0.5))
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)

    layer = viewer.layers[OUTPUT]
    assert layer.data.shape == stack.shape
    np.testing.assert_allclose(layer.scale, (2, 0.5, 0.5))
    expected = np.stack(
        [boundary_weight_map(labels, 10, 5), boundary_weight_map(other, 10, 5), 0 * labels]
    )
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)
    assert widget.status.value.startswith("done: plane 3/3")
    assert "1 plane(s) without objects" in widget.status.value


def test_multiscale_labels_use_full_resolution(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    viewer.add_labels([labels, labels[::2, ::2]], name="nuclei labels", multiscale=True)
    _, _, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    np.testing.assert_allclose(
        viewer.layers[OUTPUT].data, boundary_weight_map(labels, 10, 5), rtol=1e-6
    )


def test_editing_the_labels_recomputes_the_map(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    labels_layer = viewer.add_labels(labels.copy(), name="nuclei labels")
    _, _, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    layer = viewer.layers[OUTPUT]

    # Painting a stroke (a paint event)...
    labels_layer.brush_size = 9
    labels_layer.paint((20, 20), 99)
    assert (labels_layer.data == 99).any()
    assert preview.busy  # debounced, then recomputed
    settle(qtbot, preview)
    painted = np.asarray(labels_layer.data).copy()
    np.testing.assert_allclose(layer.data, boundary_weight_map(painted, 10, 5), rtol=1e-6)

    # ... and replacing the data (a data event).
    edited = painted.copy()
    edited[edited == edited.max()] = 0
    edited[60:70, 60:70] = 200
    labels_layer.data = edited
    settle(qtbot, preview)
    assert viewer.layers[OUTPUT] is layer
    np.testing.assert_allclose(layer.data, boundary_weight_map(edited, 10, 5), rtol=1e-6)


def test_a_users_layer_with_the_same_name_is_never_overwritten(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="nuclei labels")
    mine = np.arange(128 * 128, dtype=np.float32).reshape(128, 128)
    user_layer = viewer.add_image(mine.copy(), name=OUTPUT)
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: len(own_layers(viewer)) == 1, timeout=TIMEOUT_MS)
    settle(qtbot, preview)

    (layer,) = own_layers(viewer)
    assert layer is not user_layer
    assert layer.name != OUTPUT  # napari made the name unique
    np.testing.assert_allclose(layer.data, boundary_weight_map(labels, 10, 5), rtol=1e-6)

    widget.w0.value = 3.0
    settle(qtbot, preview)
    assert viewer.layers[OUTPUT] is user_layer
    np.testing.assert_array_equal(user_layer.data, mine)
    assert own_layers(viewer) == [layer]
    assert len(viewer.layers) == 3


def test_a_deleted_output_layer_is_made_again(make_napari_viewer, qtbot, labels):
    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="nuclei labels")
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    viewer.layers.remove(OUTPUT)

    widget.w0.value = 5.0
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    np.testing.assert_allclose(
        viewer.layers[OUTPUT].data, boundary_weight_map(labels, 5, 5), rtol=1e-6
    )
    assert len(viewer.layers) == 2


def test_empty_labels_give_a_notification_and_no_layer(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((64, 64), dtype=np.int32), name="nuclei labels")
    before = layer_snapshot(viewer)
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: any("Paint at least two" in n for n in notes), timeout=TIMEOUT_MS)
    settle(qtbot, preview)

    assert_unchanged(viewer, before)
    assert "no objects" in widget.status.value
    # Recomputing after each stroke does not repeat the same pop-up.
    widget.sigma.value = 3.0
    settle(qtbot, preview)
    assert sum("Paint at least two" in n for n in notes) == 1
    assert_unchanged(viewer, before)


def test_a_single_object_shows_the_class_weights_and_says_why(make_napari_viewer, qtbot, notes):
    single = np.zeros((64, 64), dtype=np.int32)
    single[10:30, 10:30] = 1
    viewer = make_napari_viewer()
    viewer.add_labels(single, name="nuclei labels")
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    np.testing.assert_allclose(
        viewer.layers[OUTPUT].data, boundary_weight_map(single, 10, 5), rtol=1e-6
    )
    assert any("Paint a second object" in n for n in notes)
    assert "one object only" in widget.status.value


def test_no_labels_layer_gives_a_notification(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="nuclei")
    before = layer_snapshot(viewer)
    _, widget, preview = open_widget(viewer)
    widget()
    settle(qtbot, preview)
    assert any("Add or open a Labels layer" in n for n in notes)
    assert_unchanged(viewer, before)


def test_an_error_in_the_worker_becomes_a_notification(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    negative = np.zeros((32, 32), dtype=np.int32)
    negative[2:5, 2:5] = 1
    negative[10:15, 10:15] = -3
    viewer.add_labels(negative, name="nuclei labels")
    before = layer_snapshot(viewer)
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: widget.status.value.startswith("failed"), timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    # One notification, with the core's message (which says what to fix).
    (message,) = notes
    assert message.startswith("The weight map preview of 'nuclei labels' could not run:")
    assert "negative values" in message
    assert_unchanged(viewer, before)


# RuntimeError matters: superqt would otherwise take it for a deleted worker.
@pytest.mark.parametrize("error_type", [RuntimeError, MemoryError])
def test_an_error_after_some_planes_keeps_them(
    make_napari_viewer, qtbot, labels, notes, monkeypatch, error_type
):
    calls = []

    def fail_on_second_plane(plane, **kwargs):
        calls.append(plane)
        if len(calls) == 2:  # only once
            raise error_type("out of luck")
        return boundary_weight_map(plane, **kwargs)

    monkeypatch.setattr(weight_map_module, "boundary_weight_map", fail_on_second_plane)
    viewer = make_napari_viewer()
    viewer.add_labels(np.stack([labels, labels]), name="nuclei labels")
    _, widget, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: widget.status.value.startswith("failed"), timeout=TIMEOUT_MS)
    settle(qtbot, preview)

    (message,) = notes
    if error_type is MemoryError:
        assert "ran out of memory" in message
    else:
        assert f"failed ({error_type.__name__}: out of luck)" in message
    assert "Try a smaller image or fewer planes" in message
    data = viewer.layers[OUTPUT].data
    np.testing.assert_allclose(data[0], boundary_weight_map(labels, 10, 5), rtol=1e-6)
    assert not data[1].any()
    assert len(viewer.layers) == 2
    # The preview is not stuck: the next change computes the map again.
    widget.w0.value = 3.0
    settle(qtbot, preview)
    expected = boundary_weight_map(labels, 3, 5)
    np.testing.assert_allclose(viewer.layers[OUTPUT].data, np.stack([expected] * 2), rtol=1e-6)
    assert widget.status.value == "done: plane 2/2"


def large_stack():
    """Enough planes that computing them all takes seconds, not milliseconds."""
    plane = make_touching_nuclei((256, 256), seed=0)[1].astype(np.uint16)
    return np.broadcast_to(plane, (300, 256, 256)).copy()


def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = large_stack()
    viewer.add_labels(stack, name="nuclei labels")
    _, _, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: preview.run is not None, timeout=TIMEOUT_MS)
    run = preview.run
    assert isinstance(run.worker, GeneratorWorker)  # napari's own, as in the other widgets
    planes = []
    run.worker.yielded.connect(planes.append)

    with qtbot.waitSignal(run.worker.finished, timeout=TIMEOUT_MS):
        viewer.close()
    assert run.stop_event.is_set()
    assert len(planes) < len(stack)


def test_closing_the_widget_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = large_stack()
    viewer.add_labels(stack, name="nuclei labels")
    dock, _, preview = open_widget(viewer)
    qtbot.waitUntil(lambda: preview.run is not None, timeout=TIMEOUT_MS)
    run = preview.run
    planes = []
    run.worker.yielded.connect(planes.append)

    with qtbot.waitSignal(run.worker.finished, timeout=TIMEOUT_MS):
        viewer.window.remove_dock_widget(dock)
    assert run.stop_event.is_set()
    assert len(planes) < len(stack)
    # Painting after closing starts nothing.
    viewer.layers["nuclei labels"].data = stack[:2].copy()
    assert not preview.busy


def test_weight_map_planes_stops_between_planes(labels):
    stop = threading.Event()
    planes = weight_map_planes(
        np.stack([labels] * 3), w0=10, sigma=5, class_weights=None, stop_event=stop
    )
    first = next(planes)
    assert first.index == 0 and first.n_planes == 3 and first.n_objects == 2
    stop.set()
    with pytest.raises(StopIteration) as ended:
        next(planes)
    summary = ended.value.value
    assert summary.stopped and summary.planes_done == 1


def test_1d_labels_are_refused_with_a_message():
    # napari makes no 1D Labels layer, but the check stands in front of the worker.
    layer = SimpleNamespace(name="line", multiscale=False, data=np.array([0, 1, 1, 2]))
    with pytest.raises(UserError, match=r"is 1D.*Choose a 2D or 3D Labels layer"):
        _checked_labels(_Request(object(), layer, 10.0, 5.0, True))


def test_opens_on_the_labels_with_objects_not_a_new_empty_layer(
    make_napari_viewer, qtbot, labels, notes
):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros_like(labels), name="first, empty")
    viewer.add_labels(labels, name="nuclei labels")
    viewer.add_labels(np.zeros_like(labels), name="new annotation")
    viewer.layers.selection.clear()
    _, widget, preview = open_widget(viewer)
    assert widget["labels"].value.name == "nuclei labels"
    qtbot.waitUntil(lambda: OUTPUT in viewer.layers, timeout=TIMEOUT_MS)
    settle(qtbot, preview)
    assert not any("no objects" in note for note in notes)  # no warning about another layer
