"""The Segment dock widget, run through its real thread worker in a real viewer."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from napari.qt.threading import GeneratorWorker
from napari.utils.notifications import NotificationSeverity, notification_manager

import napari_unet._widgets.segment as segment_module
from napari_unet._widgets._common import OWN_MAP_KEY, PLUGIN_NAME, trained_models
from napari_unet._widgets.segment import FILE_CHOICE
from napari_unet.checkpoint import Checkpoint, save_checkpoint
from napari_unet.inference import InferenceConfig, predict, tile_starts
from napari_unet.model import UNet, UNetConfig
from napari_unet.scaling import area_of_diameter
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.tasks import Postprocess

TIMEOUT_MS = 60_000  # generous: the test machine is small and shared


# -- fixtures and helpers -----------------------------------------------------------------


def tiny_checkpoint(mode: str = "instances", **config) -> Checkpoint:
    # Seed 1 gives an untrained net whose foreground covers about half the image,
    # so the provisional masks visibly change from tile to tile.
    torch.manual_seed(1)
    model = UNet(UNetConfig(depth=2, base_channels=4, **config))
    return Checkpoint.from_model(model, mode=mode)


def expected(checkpoint: Checkpoint, image, tile: int | None = None, **kwargs):
    config = InferenceConfig(tile_shape=(tile, tile) if tile else None, device="cpu")
    kwargs.setdefault("postprocess", checkpoint.postprocess)
    return predict(
        checkpoint.build_model(),
        image,
        task=checkpoint.task,
        normalization=checkpoint.normalization,
        config=config,
        **kwargs,
    )


@pytest.fixture
def nuclei() -> np.ndarray:
    return make_touching_nuclei((160, 200), seed=0)[0]


@pytest.fixture
def notifications():
    """Every napari notification dispatched during the test."""
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def errors(seen) -> list[str]:
    return [n.message for n in seen if n.severity == NotificationSeverity.ERROR]


def infos(seen) -> list[str]:
    return [n.message for n in seen if n.severity == NotificationSeverity.INFO]


def open_widget(viewer):
    _, gui = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Segment")
    return gui


def file_row_shown(gui) -> bool:
    # ``visible`` is False for any widget of an unshown window; isHidden is not.
    return not gui.model_file.native.isHidden()


def session_of(gui):
    return gui.session.value


def run_and_wait(qtbot, gui, **values):
    """Set widget values, press Run and wait until the worker has finished."""
    for name, value in values.items():
        getattr(gui, name).value = value
    worker = gui()
    assert worker is not None
    session = session_of(gui)
    qtbot.waitUntil(lambda: not session.busy and session.job is None, timeout=TIMEOUT_MS)
    return worker


def viewer_with_a_model(make_napari_viewer, image):
    """A viewer with ``image`` as "nuclei", a tiny model in the session, and the widget."""
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    return viewer, checkpoint, open_widget(viewer)


def gate_after_first_tile(monkeypatch):
    """Make the worker wait after its first tile until released or asked to stop.

    Without it a tiny model may finish every tile before the main thread has
    handled the first one. Returns (release event, list of yielded tiles).
    """
    real = segment_module.predict_generator
    release, tiles = threading.Event(), []

    def gated(*args, should_stop, **kwargs):
        generator = real(*args, should_stop=should_stop, **kwargs)
        first = next(generator)
        tiles.append(first)
        yield first
        while not release.is_set() and not should_stop():
            release.wait(0.01)
        return (yield from generator)

    monkeypatch.setattr(segment_module, "predict_generator", gated)
    return release, tiles


# -- tests --------------------------------------------------------------------------------


def test_dock_widget_opens_and_tracks_trained_models(make_napari_viewer):
    viewer = make_napari_viewer()
    gui = open_widget(viewer)
    session = session_of(gui)
    # Before any training: the shipped pretrained model, selected, and the file entry.
    assert gui.model.choices == ("nuclei", FILE_CHOICE)
    assert gui.model.value == "nuclei" and not file_row_shown(gui)
    assert gui.call_button.enabled and not session.cancel_button.enabled
    assert gui._result_widget is None  # no widget shows the returned worker
    assert gui.session.native.isHidden()  # the bound state is not a user choice

    name = trained_models.add(tiny_checkpoint(), "test model")
    assert gui.model.choices == (name, "nuclei", FILE_CHOICE)
    assert gui.model.value == name  # a model just trained is selected
    assert not file_row_shown(gui)
    newer = trained_models.add(tiny_checkpoint(), "test model")
    assert gui.model.choices == (newer, name, "nuclei", FILE_CHOICE)  # newest first
    gui.model.value = FILE_CHOICE
    assert file_row_shown(gui)


def test_segments_with_the_pretrained_model_before_any_training(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    gui = open_widget(viewer)
    run_and_wait(qtbot, gui)  # the defaults: the shipped model
    output = viewer.layers["nuclei segmentation"]
    assert output.data.shape == nuclei.shape and output.data.max() > 0


def test_segments_tile_by_tile_into_a_new_layer(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei, name="nuclei", scale=(0.5, 2.0), translate=(10.0, -5.0))
    user_data = np.arange(nuclei.size, dtype=np.int32).reshape(nuclei.shape) % 7
    user_layer = viewer.add_labels(user_data.copy(), name="nuclei segmentation")
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    gui = open_widget(viewer)

    gui.tile_size.value = 48
    gui.probabilities.value = True
    worker = gui()
    output = viewer.layers[-1]
    assert output is not user_layer and output.name != "nuclei segmentation"
    assert output.name.startswith("nuclei segmentation")
    assert not gui.call_button.enabled and session_of(gui).cancel_button.enabled
    snapshots = []
    output.events.set_data.connect(lambda: snapshots.append(np.array(output.data)))
    session = session_of(gui)
    qtbot.waitUntil(lambda: not session.busy and session.job is None, timeout=TIMEOUT_MS)
    assert gui.call_button.enabled and not session.cancel_button.enabled
    assert isinstance(worker, GeneratorWorker)  # napari's own, as in the other widgets

    reference = expected(checkpoint, nuclei, tile=48, return_probabilities=True)
    np.testing.assert_array_equal(output.data, reference.labels)
    assert output.data.dtype == np.uint32
    # The mask filled in tile by tile: provisional foreground (label 1) growing.
    provisional = [s for s in snapshots if s.max() <= 1]
    assert len(provisional) >= 5
    counts = [int(np.count_nonzero(s)) for s in provisional]
    assert counts == sorted(counts) and len(set(counts)) >= 5
    assert 0 < counts[0] < counts[-1]
    assert session.status.value.startswith("Done")
    for layer in (output, viewer.layers["nuclei probabilities"]):
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    probabilities = viewer.layers["nuclei probabilities"]
    np.testing.assert_allclose(probabilities.data, 1.0 - reference.probabilities[0], atol=1e-6)
    # Probabilities sit below the segmentation so the labels stay visible.
    assert viewer.layers.index(probabilities) == viewer.layers.index(output) - 1
    # The user's layer is untouched and nothing else was added.
    np.testing.assert_array_equal(user_layer.data, user_data)
    assert len(viewer.layers) == 4


def test_stack_is_segmented_plane_by_plane(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = np.stack([make_touching_nuclei((64, 80), seed=seed)[0] for seed in range(3)])
    image = viewer.add_image(stack, name="movie", scale=(3.0, 0.5, 0.5), translate=(1, 2, 3))
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    gui = open_widget(viewer)

    viewer.dims.set_point(0, 7.0)  # world 7 = translate 1 + scale 3 * plane 2

    gui.tile_size.value = 32
    gui()
    output = viewer.layers["movie segmentation"]
    snapshots = []
    output.events.set_data.connect(lambda: snapshots.append(np.array(output.data)))
    session = session_of(gui)
    qtbot.waitUntil(lambda: not session.busy and session.job is None, timeout=TIMEOUT_MS)

    assert output.data.shape == stack.shape
    reference = expected(checkpoint, stack, tile=32).labels
    np.testing.assert_array_equal(output.data, reference)
    assert reference.max() > 1
    # Only tiles of the plane on screen redraw the layer while it runs.
    per_plane = len(tile_starts(64, 32, 4)) * len(tile_starts(80, 32, 4))
    provisional = [s for s in snapshots if s.max() <= 1]
    assert len(provisional) == per_plane
    assert provisional[0][:2].any()  # planes 0 and 1 were done (and drawn silently)
    np.testing.assert_allclose(output.scale, image.scale)
    np.testing.assert_allclose(output.translate, image.translate)


def test_rgb_image_with_three_channel_model(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    rgb = np.stack([nuclei, nuclei // 2, nuclei[::-1]], axis=-1)
    image = viewer.add_image(rgb, name="colour", rgb=True, scale=(2.0, 2.0))
    checkpoint = tiny_checkpoint(in_channels=3)
    trained_models.add(checkpoint, "rgb model")
    gui = open_widget(viewer)

    run_and_wait(qtbot, gui, tile_size=64)

    output = viewer.layers["colour segmentation"]
    assert output.data.shape == nuclei.shape
    reference = expected(checkpoint, rgb, tile=64, channel_axis=-1)
    np.testing.assert_array_equal(output.data, reference.labels)
    np.testing.assert_allclose(output.scale, image.scale)


def test_multichannel_layer_uses_the_channel_axis(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    channels = np.stack([nuclei, nuclei[:, ::-1]])  # (C, H, W), not RGB
    viewer.add_image(channels, name="two colours", scale=(5.0, 0.5, 0.25))
    checkpoint = tiny_checkpoint(in_channels=2)
    trained_models.add(checkpoint, "two-channel model")
    gui = open_widget(viewer)

    run_and_wait(qtbot, gui, tile_size=64)

    output = viewer.layers["two colours segmentation"]
    reference = expected(checkpoint, channels, tile=64, channel_axis=0)
    np.testing.assert_array_equal(output.data, reference.labels)
    np.testing.assert_allclose(output.scale, (0.5, 0.25))  # the channel axis is gone


def test_semantic_model_gives_classes_and_one_probability_layer_per_class(
    make_napari_viewer, qtbot, nuclei
):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="tissue")
    checkpoint = tiny_checkpoint(mode="semantic", n_classes=3)
    trained_models.add(checkpoint, "classes")
    gui = open_widget(viewer)

    run_and_wait(qtbot, gui, tile_size=64, probabilities=True)

    output = viewer.layers["tissue segmentation"]
    reference = expected(checkpoint, nuclei, tile=64, return_probabilities=True)
    np.testing.assert_array_equal(output.data, reference.labels)
    assert output.data.dtype == np.uint16
    assert set(np.unique(output.data)) <= {1, 2, 3}
    for k, name in enumerate(checkpoint.class_names):
        layer = viewer.layers[f"tissue probabilities ({name})"]
        np.testing.assert_allclose(layer.data, reference.probabilities[k], atol=1e-6)
    assert len(viewer.layers) == 2 + 3


@pytest.mark.parametrize("kind", ["checkpoint", "bioimageio"])
def test_model_file(make_napari_viewer, qtbot, nuclei, tmp_path, notifications, kind):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    checkpoint = tiny_checkpoint()
    if kind == "checkpoint":
        path = tmp_path / "m.pt"
        save_checkpoint(path, checkpoint)
    else:
        from napari_unet.export import export_bioimageio

        path = export_bioimageio(checkpoint, tmp_path / "m.zip")
    gui = open_widget(viewer)
    run_and_wait(qtbot, gui, model=FILE_CHOICE, model_file=path, tile_size=64)

    output = viewer.layers["nuclei segmentation"]
    np.testing.assert_array_equal(output.data, expected(checkpoint, nuclei, tile=64).labels)
    assert errors(notifications) == []


def test_corrupt_checkpoint_file_is_reported(make_napari_viewer, nuclei, tmp_path, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    (tmp_path / "broken.pt").write_bytes(b"not a model at all")
    gui = open_widget(viewer)
    gui.model.value = FILE_CHOICE
    gui.model_file.value = tmp_path / "broken.pt"

    assert gui() is None

    assert len(viewer.layers) == 1
    (message,) = errors(notifications)
    assert "broken.pt" in message and "not a readable model file" in message


def test_cancel_keeps_the_finished_tiles(
    make_napari_viewer, qtbot, nuclei, monkeypatch, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    gui = open_widget(viewer)
    session = session_of(gui)
    release, tiles = gate_after_first_tile(monkeypatch)

    gui.tile_size.value = 16  # about a hundred tiles
    worker = gui()
    output = viewer.layers["nuclei segmentation"]
    qtbot.waitUntil(lambda: session.progress.value >= 1, timeout=TIMEOUT_MS)
    session.cancel_button.native.click()
    assert not session.cancel_button.enabled
    release.set()
    started = time.perf_counter()
    qtbot.waitUntil(lambda: not session.busy and session.job is None, timeout=1000)
    assert not worker.is_running
    assert time.perf_counter() - started < 1.0

    (first,) = tiles
    assert first.count > 50
    rows, cols = first.region
    done = np.zeros(nuclei.shape, bool)
    done[rows, cols] = True
    reference = expected(checkpoint, nuclei, tile=16).labels
    assert np.count_nonzero(output.data) > 0
    assert not output.data[~done].any()
    np.testing.assert_array_equal(output.data[done] > 0, reference[done] > 0)
    assert "Segmentation cancelled; the finished tiles are kept." in infos(notifications)
    assert errors(notifications) == []
    assert gui.call_button.enabled and not session.cancel_button.enabled


@pytest.mark.parametrize("close", ["viewer", "widget"])
def test_closing_stops_the_worker(make_napari_viewer, qtbot, nuclei, monkeypatch, close):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    trained_models.add(tiny_checkpoint(), "test model")
    dock, gui = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Segment")
    session = session_of(gui)
    gate_after_first_tile(monkeypatch)  # never released: only stopping ends the run
    gui.tile_size.value = 16

    worker = gui()
    qtbot.waitUntil(lambda: session.progress.value >= 1, timeout=TIMEOUT_MS)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    if close == "viewer":
        viewer.close()
    else:
        viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    assert not worker.is_running
    assert session.job is None and session.slot.worker is None
    if close == "viewer":
        # The destroyed widget left the shared model list: adding a model is safe.
        qtbot.waitUntil(lambda: not session.alive, timeout=5000)
        trained_models.add(tiny_checkpoint(), "another model")


# -- problems become notifications and add no layer ---------------------------------------


def test_no_image_layer(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    trained_models.add(tiny_checkpoint(), "test model")
    gui = open_widget(viewer)

    assert gui() is None

    assert len(viewer.layers) == 0
    (message,) = errors(notifications)
    assert "no Image layer" in message


def test_no_model_file(make_napari_viewer, nuclei, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    gui = open_widget(viewer)
    gui.model.value = FILE_CHOICE

    assert gui() is None

    assert len(viewer.layers) == 1
    (message,) = errors(notifications)
    assert "Choose a model file" in message and "'nuclei' is the pretrained one" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_gpu(make_napari_viewer, nuclei, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    trained_models.add(tiny_checkpoint(), "test model")
    gui = open_widget(viewer)
    gui.device.value = "cuda"

    assert gui() is None

    assert len(viewer.layers) == 1
    (message,) = errors(notifications)
    assert "choose 'auto' or 'cpu'" in message


def test_rgb_image_with_grey_model(make_napari_viewer, nuclei, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([nuclei] * 3, axis=-1), name="colour", rgb=True)
    trained_models.add(tiny_checkpoint(), "grey model")
    gui = open_widget(viewer)

    assert gui() is None

    assert len(viewer.layers) == 1
    (message,) = errors(notifications)
    assert "RGB" in message and "grey" in message


def test_multichannel_model_on_grey_image(make_napari_viewer, nuclei, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    trained_models.add(tiny_checkpoint(in_channels=2), "two-channel model")
    gui = open_widget(viewer)

    assert gui() is None

    assert len(viewer.layers) == 1
    (message,) = errors(notifications)
    assert "expects 2 channels" in message


# RuntimeError matters: superqt would otherwise take it for a deleted worker.
@pytest.mark.parametrize("error_type", [RuntimeError, OSError])
def test_worker_error_is_a_notification(
    make_napari_viewer, qtbot, nuclei, monkeypatch, notifications, error_type
):
    def failing(*args, **kwargs):
        raise error_type("the disk went away")
        yield  # a generator, like the real one

    monkeypatch.setattr(segment_module, "predict_generator", failing)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    trained_models.add(tiny_checkpoint(), "test model")
    gui = open_widget(viewer)

    run_and_wait(qtbot, gui)

    (message,) = errors(notifications)
    assert "the disk went away" in message
    assert error_type.__name__ in message and "try the cpu device" in message
    assert gui.call_button.enabled and not session_of(gui).cancel_button.enabled
    assert session_of(gui).status.value.startswith("Failed")
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei segmentation"]


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (RuntimeError("CUDA error: unspecified launch failure"), "try the cpu device"),
        (ValueError("the tile is too small"), "could not run: the tile is too small"),
        (MemoryError(), "set a smaller tile size, or choose the cpu device"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "set a smaller tile size"),
    ],
    ids=["RuntimeError", "ValueError", "MemoryError", "OutOfMemoryError"],
)
def test_worker_error_after_some_tiles_keeps_them(
    make_napari_viewer, qtbot, nuclei, monkeypatch, notifications, error, says
):
    real = segment_module.predict_generator
    tiles = []

    def failing(*args, **kwargs):
        generator = real(*args, **kwargs)
        tiles.append(next(generator))
        yield tiles[0]
        raise error

    monkeypatch.setattr(segment_module, "predict_generator", failing)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    gui = open_widget(viewer)

    run_and_wait(qtbot, gui, tile_size=64)

    (message,) = errors(notifications)
    assert says in message
    session = session_of(gui)
    assert gui.call_button.enabled and not session.cancel_button.enabled
    assert session.status.value.startswith("Failed")
    # The first tile stays drawn; nothing else was added or drawn.
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei segmentation"]
    output = viewer.layers["nuclei segmentation"]
    (first,) = tiles
    done = np.zeros(nuclei.shape, bool)
    done[first.region] = True
    reference = expected(checkpoint, nuclei, tile=64).labels
    assert np.count_nonzero(output.data) > 0
    assert not output.data[~done].any()
    np.testing.assert_array_equal(output.data[done] > 0, reference[done] > 0)


# -- dask, zarr and multiscale images: segmented block by block into a zarr store -----------


def record_block_statuses(gui, monkeypatch) -> list[str]:
    """The status line after each finished block of a store run."""
    session, statuses = session_of(gui), []
    on_block = session.on_block

    def recording(block):
        on_block(block)
        statuses.append(session.status.value)

    monkeypatch.setattr(session, "on_block", recording)
    return statuses


def test_dask_image_is_segmented_into_a_zarr_backed_layer(
    make_napari_viewer, qtbot, nuclei, tmp_path, notifications, monkeypatch
):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="small")
    checkpoint = tiny_checkpoint()
    trained_models.add(checkpoint, "test model")
    gui = open_widget(viewer)
    assert gui.zarr_folder.native.isHidden()  # an in-memory image needs no folder
    lazy = da.from_array(nuclei, chunks=(64, 64))
    image = viewer.add_image(lazy, name="big", scale=(0.5, 2.0), translate=(10.0, -5.0))
    gui.image.value = image
    assert not gui.zarr_folder.native.isHidden()

    statuses = record_block_statuses(gui, monkeypatch)
    run_and_wait(qtbot, gui, tile_size=48, probabilities=True, zarr_folder=tmp_path)
    assert statuses == ["block 1/1; labelling the objects…"]

    output = viewer.layers["big segmentation"]
    assert isinstance(output.data, zarr.Array)  # read from the store, not loaded
    assert (tmp_path / "big segmentation.zarr" / "labels").is_dir()
    reference = expected(checkpoint, nuclei, tile=48, return_probabilities=True)
    np.testing.assert_array_equal(output.data[...], reference.labels)
    assert output.data.dtype == np.uint32
    probabilities = viewer.layers["big probabilities"]
    assert isinstance(probabilities.data, da.Array)
    np.testing.assert_allclose(
        probabilities.data.compute(), 1.0 - reference.probabilities[0], atol=1e-6
    )
    assert viewer.layers.index(probabilities) == viewer.layers.index(output) - 1
    for layer in (output, probabilities):
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    session = session_of(gui)
    assert session.status.value.startswith("Done")
    assert session.progress.value == session.progress.max == 1  # one block
    assert errors(notifications) == []
    store = tmp_path / "big segmentation.zarr"
    assert infos(notifications) == [f"The segmentation of 'big' is in {store}."]


def test_multiscale_image_segments_its_full_resolution(
    make_napari_viewer, qtbot, nuclei, notifications, monkeypatch
):
    viewer = make_napari_viewer()
    levels = [nuclei, nuclei[::2, ::2], nuclei[::4, ::4]]
    image = viewer.add_image(
        levels, multiscale=True, name="pyramid", scale=(2.0, 3.0), translate=(1.0, 2.0)
    )
    checkpoint = tiny_checkpoint(mode="semantic", n_classes=3)
    trained_models.add(checkpoint, "classes")
    gui = open_widget(viewer)

    statuses = record_block_statuses(gui, monkeypatch)
    run_and_wait(qtbot, gui, tile_size=64, probabilities=True)  # no folder: a temporary one
    assert statuses == ["block 1/1; writing the overview levels…"]

    output = viewer.layers["pyramid segmentation"]
    assert output.multiscale  # like its input: napari reads full resolution only zoomed in
    full = output.data[0]
    assert isinstance(full, zarr.Array) and full.shape == nuclei.shape
    prediction = expected(checkpoint, nuclei, tile=64, return_probabilities=True)
    reference = prediction.labels
    np.testing.assert_array_equal(full[...], reference)
    assert [level.shape for level in output.data] == [level.shape for level in levels]
    # The lower levels were written into the store once, not subsampled on every redraw.
    assert all(isinstance(level, zarr.Array) for level in output.data)
    np.testing.assert_array_equal(output.data[2][...], reference[::4, ::4])
    membrane = viewer.layers["pyramid probabilities (class 2)"]
    assert membrane.multiscale and len(membrane.data) == 3
    np.testing.assert_allclose(
        np.asarray(membrane.data[1]), prediction.probabilities[1, ::2, ::2], atol=1e-6
    )
    np.testing.assert_allclose(output.scale, image.scale)
    np.testing.assert_allclose(output.translate, image.translate)
    store = Path(str(full.store.root))
    assert store.name == "pyramid segmentation.zarr"
    assert store.parent == Path(segment_module._scratch.name)
    (notice,) = infos(notifications)
    assert str(store) in notice and "temporary folder, deleted when napari exits" in notice


def test_cancel_keeps_the_finished_blocks_of_a_store(
    make_napari_viewer, qtbot, nuclei, monkeypatch, notifications
):
    real = segment_module.segment_to_zarr_generator
    release = threading.Event()

    def gated(*args, should_stop, **kwargs):
        # Small blocks, and a pause after the first one until released or stopped.
        generator = real(*args, block_shape=(64, 64), should_stop=should_stop, **kwargs)
        yield next(generator)
        while not release.is_set() and not should_stop():
            release.wait(0.01)
        return (yield from generator)

    monkeypatch.setattr(segment_module, "segment_to_zarr_generator", gated)
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(nuclei, chunks=(64, 64)), name="big")
    trained_models.add(tiny_checkpoint(), "test model")
    gui = open_widget(viewer)
    session = session_of(gui)

    worker = gui()
    qtbot.waitUntil(lambda: session.progress.value >= 1, timeout=TIMEOUT_MS)
    assert session.progress.max == 12  # 3 x 4 blocks of 64 pixels
    session.cancel_button.native.click()
    release.set()
    qtbot.waitUntil(lambda: not session.busy and session.job is None, timeout=TIMEOUT_MS)
    assert not worker.is_running

    output = viewer.layers["big segmentation"]
    assert isinstance(output.data, zarr.Array)
    labels = output.data[...]
    assert labels[:64, :64].any()
    assert not labels[64:].any() and not labels[:, 64:].any()
    # One notice, naming the unfinished store: no folder was chosen, so a temporary one.
    (notice,) = infos(notifications)
    assert notice.startswith("Segmentation cancelled; the finished blocks are kept.")
    store = Path(str(output.data.store.root))
    assert store.name == "big segmentation.zarr.partial" and str(store) in notice
    assert "temporary folder, deleted when napari exits" in notice
    assert errors(notifications) == []


def test_labelling_settings_relabel_the_last_result_without_the_network(
    make_napari_viewer, qtbot, nuclei, monkeypatch
):
    viewer, checkpoint, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    session = session_of(gui)
    controls = session.labelling
    run_and_wait(qtbot, gui, tile_size=48)
    output = viewer.layers[-1]
    # The controls show the model's settings, which the run used.
    assert controls.threshold.value == pytest.approx(checkpoint.postprocess.threshold)
    assert not controls.reset_button.enabled
    before = np.array(output.data)

    calls = []
    monkeypatch.setattr(
        segment_module, "predict_generator", lambda *a, **k: calls.append(1)
    )  # the network must not run again
    controls.min_size.value = nuclei.size + 1  # larger than any object: all are dropped
    qtbot.waitUntil(lambda: not output.data.any(), timeout=TIMEOUT_MS)
    assert not calls and controls.reset_button.enabled
    assert "your settings" in controls.heading.value
    controls.min_size.value = 0
    controls.tessellate.value = True  # the cells grow until they tile the image
    qtbot.waitUntil(lambda: np.asarray(output.data).all(), timeout=TIMEOUT_MS)
    assert not calls
    controls.reset_button.changed.emit(True)
    qtbot.waitUntil(lambda: np.array_equal(output.data, before), timeout=TIMEOUT_MS)
    assert not controls.tessellate.value


def test_the_users_labelling_settings_apply_to_the_next_run(make_napari_viewer, qtbot, nuclei):
    viewer, checkpoint, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    controls = session_of(gui).labelling
    controls.threshold.value = 0.3
    controls.seed_threshold.value = 0.9
    run_and_wait(qtbot, gui, tile_size=48)
    settings = dataclasses.replace(
        checkpoint.postprocess, threshold=0.3, seed_threshold=0.9, min_size=0
    )
    reference = expected(checkpoint, nuclei, tile=48, postprocess=settings)
    np.testing.assert_array_equal(viewer.layers[-1].data, reference.labels)


def test_test_time_augmentation_from_the_widget(make_napari_viewer, qtbot, nuclei):
    viewer, checkpoint, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    run_and_wait(qtbot, gui, tile_size=48, tta=True)
    config = InferenceConfig(tile_shape=(48, 48), device="cpu", tta=True)
    reference = predict(
        checkpoint.build_model(),
        nuclei,
        task=checkpoint.task,
        postprocess=checkpoint.postprocess,
        normalization=checkpoint.normalization,
        config=config,
    )
    np.testing.assert_array_equal(viewer.layers[-1].data, reference.labels)


def test_paper_head_settings_that_cannot_seed_are_refused(
    make_napari_viewer, nuclei, notifications
):
    viewer, _, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    controls = session_of(gui).labelling
    controls.threshold.value = 0.7
    controls.seed_threshold.value = 0.6
    assert gui() is None
    (message,) = errors(notifications)
    assert "raise the seed threshold" in message
    assert len(viewer.layers) == 1  # no empty result layer left behind


def test_object_diameter_brings_the_image_to_the_models_object_size(
    make_napari_viewer, qtbot, nuclei, monkeypatch
):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei, name="nuclei")
    # A model of objects twice as wide as the 12 px the user types: the image is doubled.
    # Its "network" sees the normalised image as the foreground, so objects are the nuclei.
    checkpoint = dataclasses.replace(
        tiny_checkpoint(),
        object_area=area_of_diameter(24.0),
        postprocess=Postprocess(threshold=0.3, seed_threshold=0.6),
    )
    border = checkpoint.model_config.border

    def image_as_foreground(tile):
        crop = np.clip(tile[0, border:-border, border:-border], 0.0, 1.0)
        return np.stack([1.0 - crop, crop]).astype(np.float32)

    real = segment_module.predict_generator
    monkeypatch.setattr(
        segment_module,
        "predict_generator",
        lambda *args, **kwargs: real(*args, predictor=image_as_foreground, **kwargs),
    )

    def reference(**settings):
        return predict(
            checkpoint.build_model(),
            nuclei,
            task=checkpoint.task,
            postprocess=dataclasses.replace(checkpoint.postprocess, **settings),
            normalization=checkpoint.normalization,
            config=InferenceConfig(tile_shape=(48, 48), device="cpu", object_diameter=12.0),
            object_area=checkpoint.object_area,
            predictor=image_as_foreground,
        ).labels

    trained_models.add(checkpoint, "sized model")
    gui = open_widget(viewer)
    run_and_wait(qtbot, gui, tile_size=48, object_diameter=12.0)
    session = session_of(gui)
    assert session.kept.scales == [pytest.approx(2.0)]
    output = viewer.layers[-1]
    first = reference()
    assert output.data.shape == nuclei.shape and first.max() > 5
    np.testing.assert_array_equal(output.data, first)

    # Re-labelled without the network, the smallest object is taken at the model's
    # scale: 4x the median object's area there is the median area here.
    smallest = 4 * int(np.median(np.bincount(first.ravel())[1:]))
    expected_labels = reference(min_size=smallest)
    as_if_unscaled = checkpoint.task.label_plane(
        session.kept.maps, dataclasses.replace(checkpoint.postprocess, min_size=smallest)
    )
    assert as_if_unscaled.max() < expected_labels.max() < first.max()
    session.labelling.min_size.value = smallest
    qtbot.waitUntil(lambda: np.array_equal(output.data, expected_labels), timeout=TIMEOUT_MS)


def test_offers_images_not_weight_maps_and_preselects_the_selected_one(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    image = nuclei
    viewer.add_image(image, name="training image")
    viewer.add_image(image, name="new image")
    viewer.add_image(image, name="labels weight map", metadata={OWN_MAP_KEY: "0"})
    viewer.layers.selection.active = viewer.layers["training image"]
    gui = open_widget(viewer)
    names = [layer.name for layer in gui.image.choices]
    assert names == ["training image", "new image"]  # the plugin's map is not an image
    assert gui.image.value.name == "training image"  # the selected one
    assert gui.model_file.line_edit.value == "" and gui.zarr_folder.line_edit.value == ""
    other = make_napari_viewer()
    other.add_image(image, name="training image")
    other.add_image(image, name="new image")
    other.layers.selection.clear()
    assert open_widget(other).image.value.name == "new image"  # none selected: the newest


def test_where_to_annotate_next(make_napari_viewer, qtbot, nuclei):
    from napari_unet.uncertainty import foreground_uncertainty, least_certain_objects

    viewer, _, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    session = session_of(gui)
    assert not session.uncertainty_button.enabled  # nothing segmented yet
    run_and_wait(qtbot, gui, tile_size=48)
    output = viewer.layers[-1]
    assert session.uncertainty_button.enabled
    session.uncertainty_button.clicked.emit()
    layer = viewer.layers[f"{output.name} uncertainty"]
    assert viewer.layers.index(layer) == viewer.layers.index(output) - 1  # under the labels
    np.testing.assert_allclose(layer.data, foreground_uncertainty(session.kept.maps))
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0
    worst = least_certain_objects(output.data, layer.data, 10)
    assert session.status.value.startswith(f"Least certain objects: {worst[0][0]} (")
    session.uncertainty_button.clicked.emit()  # again: the same layer, updated
    assert sum(layer.name.endswith("uncertainty") for layer in viewer.layers) == 1
    assert layer not in gui.image.choices  # a map, not an image to segment


def test_relabelling_never_replaces_the_users_corrections(make_napari_viewer, qtbot, nuclei):
    viewer, _, gui = viewer_with_a_model(make_napari_viewer, nuclei)
    session = session_of(gui)
    run_and_wait(qtbot, gui, tile_size=48)
    output = viewer.layers[-1]
    first = int(np.max(output.data))
    rows, columns = np.nonzero(np.asarray(output.data) == first)
    output.data_setitem((rows, columns), 0)  # the user deletes an object (undoable)
    corrected = np.array(output.data)
    session.labelling.min_size.value = 5
    qtbot.wait(2 * segment_module.RELABEL_DEBOUNCE_MS + 200)
    qtbot.waitUntil(lambda: not session.relabel_slot.running, timeout=TIMEOUT_MS)
    np.testing.assert_array_equal(output.data, corrected)
    assert "corrected by hand" in session.status.value
