"""WorkerSlot, the one-worker-per-widget holder, with the real napari thread workers."""

from __future__ import annotations

import threading

import pytest
from napari.qt.threading import create_worker

from napari_unet._widgets._common import WorkerSlot

TIMEOUT_MS = 10_000


def _count(stop_event: threading.Event, until: int):
    for number in range(until):
        if stop_event.is_set():
            return
        yield number


def test_the_slot_is_free_when_the_finished_callback_runs(qtbot):
    slot = WorkerSlot()
    seen = []
    for _ in range(20):  # a race shows up only now and then; give it chances
        stop_event = threading.Event()
        worker = create_worker(_count, stop_event, 3, _start_thread=False)
        slot.start(worker, stop_event, on_finished=lambda: seen.append(slot.worker))
        qtbot.waitUntil(lambda: not slot.running, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(seen) == 20, timeout=TIMEOUT_MS)
    # A callback that starts the next worker must find the slot free.
    assert seen == [None] * 20


def test_an_old_worker_finishing_late_keeps_the_new_one_in_the_slot(qtbot):
    slot = WorkerSlot()

    def wait_for(event: threading.Event):
        event.wait(TIMEOUT_MS / 1000)
        yield 0

    release_old, release_new = threading.Event(), threading.Event()
    finished = []
    old = create_worker(wait_for, release_old, _start_thread=False)
    slot.start(old, threading.Event(), on_finished=lambda: finished.append("old"))
    new = create_worker(wait_for, release_new, _start_thread=False)
    slot.start(new, threading.Event(), on_finished=lambda: finished.append("new"))
    release_old.set()
    qtbot.waitUntil(lambda: finished == ["old"], timeout=TIMEOUT_MS)
    assert slot.worker is new
    release_new.set()
    qtbot.waitUntil(lambda: finished == ["old", "new"], timeout=TIMEOUT_MS)
    assert slot.worker is None


def test_stop_sets_the_flag_and_close_drops_results(qtbot):
    slot = WorkerSlot()
    stop_event = threading.Event()
    worker = create_worker(_count, stop_event, 10**9, _start_thread=False)
    results = []
    worker.yielded.connect(slot.if_open(results.append))
    slot.start(worker, stop_event)
    qtbot.waitUntil(lambda: len(results) > 0, timeout=TIMEOUT_MS)
    slot.close()
    assert stop_event.is_set()
    qtbot.waitUntil(lambda: not slot.running, timeout=TIMEOUT_MS)
    count = len(results)
    qtbot.wait(50)
    assert len(results) == count


@pytest.mark.parametrize(
    "dock", ["Train U-Net", "Segment", "Weight map preview", "Correct objects"]
)
def test_long_layer_names_do_not_widen_the_docks(make_napari_viewer, dock):
    from napari_unet._widgets._common import PLUGIN_NAME
    from napari_unet.synthetic import make_touching_nuclei

    image, labels = make_touching_nuclei((64, 64), seed=0)
    widths = []
    for prefix in ("", "a very long layer name from an automated acquisition " * 3):
        viewer = make_napari_viewer()
        viewer.add_image(image, name=prefix + "image")
        viewer.add_labels(labels, name=prefix + "labels")
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, dock)
        widths.append(widget.native.sizeHint().width())
    assert widths[1] <= widths[0] + 30, widths


def test_border_settings_keep_every_linked_dock_equal(qtbot):
    from magicgui.widgets import FloatSpinBox

    from napari_unet._widgets._common import BorderSettings

    settings = BorderSettings()
    preview = (FloatSpinBox(max=100), FloatSpinBox(max=100))
    train = (FloatSpinBox(max=100), FloatSpinBox(max=100))
    links = [settings.link(*preview), settings.link(*train)]
    preview[0].value, preview[1].value = 20.0, 3.0
    assert (settings.w0, settings.sigma) == (20.0, 3.0)
    assert (train[0].value, train[1].value) == (20.0, 3.0)
    # Both values change at once: no dock sends back a half-updated pair.
    settings.reset()
    assert (settings.w0, settings.sigma) == (10.0, 5.0)
    assert [box.value for box in (*preview, *train)] == [10.0, 5.0, 10.0, 5.0]
    assert links  # kept alive: the settings hold the links weakly
