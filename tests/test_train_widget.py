"""The Train U-Net widget, with a real viewer and the real thread worker."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from _layers import assert_unchanged, layer_snapshot
from napari_unet._widgets._common import PLUGIN_NAME, trained_models
from napari_unet._widgets.train import FROM_FILE, TrainWidget
from napari_unet.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from napari_unet.model import UNet, UNetConfig
from napari_unet.registry import load_model
from napari_unet.synthetic import make_touching_nuclei


@pytest.fixture
def viewer_with_data(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = make_touching_nuclei((96, 112), seed=0)
    viewer.add_image(image, name="nuclei", scale=(0.5, 0.5), translate=(3, 4))
    viewer.add_labels(labels, name="nuclei labels", scale=(0.5, 0.5), translate=(3, 4))
    return viewer


def short(widget: TrainWidget, steps: int = 3) -> None:
    widget.budget_unit.value = "steps"
    widget.budget.value = steps


def run_to_end(qtbot, widget: TrainWidget, timeout: int = 60_000):
    worker = widget.start()
    assert worker is not None
    # Wait on the widget's state: a fast failure may finish before a signal wait begins.
    qtbot.waitUntil(lambda: not widget.slot.running, timeout=timeout)
    return worker


def test_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Train U-Net")
    assert isinstance(widget, TrainWidget)


def test_trains_a_model_through_the_worker(qtbot, viewer_with_data, notes):
    viewer = viewer_with_data
    widget = TrainWidget(viewer)
    assert widget.rows[0].image.value.name == "nuclei"
    assert widget.rows[0].labels_box.value.name == "nuclei labels"
    short(widget, steps=4)
    events = []
    worker = widget.start()
    worker.yielded.connect(events.append)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert widget.checkpoint is not None
    assert widget.checkpoint.metadata["steps"] == 4
    assert widget.model_name in trained_models.names()
    assert widget.start_from.value == widget.model_name  # ready to fine-tune
    assert widget.plot.steps == [1, 2, 3, 4]
    assert widget.progress.value == widget.progress.max
    assert widget.train_button.enabled and not widget.stop_button.enabled
    assert any("Training finished after 4 steps" in note for note in notes)
    # The user's layers are untouched.
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]


def test_stop_ends_training_within_a_second_and_keeps_the_model(qtbot, viewer_with_data, notes):
    widget = TrainWidget(viewer_with_data)
    widget.budget_unit.value = "minutes"
    widget.budget.value = 10
    worker = widget.start()
    steps = []
    worker.yielded.connect(lambda event: steps.append(getattr(event, "step", None)))
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60_000)
    started = time.perf_counter()
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        widget.stop_button.clicked.emit()
    assert time.perf_counter() - started < 1.0
    assert widget.checkpoint is not None, notes
    assert widget.checkpoint.metadata["stop_reason"] == "stopped"
    assert widget.progress.value < widget.progress.max  # how far it got, not 100%


def test_fine_tunes_the_model_just_trained(qtbot, viewer_with_data):
    widget = TrainWidget(viewer_with_data)
    widget.start_from.value = "new model"
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    first = widget.model_name
    # The user corrects the labels, then trains again from the current model.
    viewer_with_data.layers["nuclei labels"].data[:5, :5] = 0
    run_to_end(qtbot, widget)
    assert widget.model_name != first
    assert widget.checkpoint.metadata["fine_tuned_from"]["steps"] == 2
    assert trained_models.names()[:2] == [widget.model_name, first]
    # The name counts the steps of both runs.
    assert widget.checkpoint.metadata["total_steps"] == 4 and ", 4 steps" in widget.model_name


def test_cells_that_tile_the_image_make_a_tessellating_model(qtbot, viewer_with_data):
    widget = TrainWidget(viewer_with_data)
    widget.tessellate.value = True
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    assert widget.checkpoint.postprocess.tessellate
    widget.start_from.value = "new model"
    widget.tessellate.value = False
    widget.start_from.value = widget.model_name  # fine-tuning shows the model's choice
    assert widget.tessellate.value


def test_fine_tunes_the_pretrained_model_by_default(qtbot, viewer_with_data):
    widget = TrainWidget(viewer_with_data)
    assert widget.start_from.value == "nuclei"  # instances start from it unless chosen
    assert not widget.model_size.enabled and not widget.head.enabled
    assert widget.head.value == "three-class" == load_model("nuclei").head
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    assert widget.checkpoint.metadata["fine_tuned_from"]["steps"] > 2  # the pretraining's
    assert widget.checkpoint.normalization == load_model("nuclei").normalization


def test_semantic_mode_starts_a_new_model(viewer_with_data):
    widget = TrainWidget(viewer_with_data)
    widget.mode.value = "semantic"  # the nuclei model cannot learn classes
    assert widget.start_from.value == "new model" and widget.model_size.enabled
    widget.mode.value = "instances"
    assert widget.start_from.value == "new model"  # the user's choice now stays
    widget.start_from.value = "nuclei"
    assert widget.mode.value == "instances" and widget.start_from.value == "nuclei"


def test_partial_annotation_with_a_region_layer_and_live_preview(qtbot, viewer_with_data):
    viewer = viewer_with_data
    regions = viewer.add_shapes(
        [np.array([[0, 0], [0, 60], [50, 60], [50, 0]]) * 2.0 * 0.5], scale=(0.5, 0.5)
    )
    widget = TrainWidget(viewer)
    widget.rows[0].regions.value = regions
    widget.live_preview.value = True
    widget.preview_every.value = 2
    short(widget, steps=4)
    run_to_end(qtbot, widget)
    preview = viewer.layers["nuclei training preview"]
    assert preview.data.shape == (96, 112)
    assert tuple(preview.scale) == (0.5, 0.5) and tuple(preview.translate) == (3, 4)


def test_elastic_deformation_can_be_switched_off(qtbot, viewer_with_data, monkeypatch):
    from napari_unet.training import TrainConfig

    seen = []
    original = TrainConfig.__post_init__

    def spy(self):
        seen.append(self.augment.elastic_std)
        original(self)

    monkeypatch.setattr(TrainConfig, "__post_init__", spy)
    widget = TrainWidget(viewer_with_data)
    widget.elastic.value = False
    short(widget, steps=1)
    run_to_end(qtbot, widget)
    assert seen and seen[-1] == 0.0
    assert widget.checkpoint is not None


def test_save_model_writes_a_loadable_checkpoint(qtbot, viewer_with_data, tmp_path):
    widget = TrainWidget(viewer_with_data)
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    path = widget.save_model(tmp_path / "nuclei")
    assert path == tmp_path / "nuclei.pt"
    loaded = load_checkpoint(path)
    assert loaded.metadata["steps"] == 2
    torch.testing.assert_close(loaded.state_dict, widget.checkpoint.state_dict)


def test_save_dialog_remembers_the_folder(qtbot, viewer_with_data, tmp_path, monkeypatch):
    from qtpy.QtCore import QSettings
    from qtpy.QtWidgets import QFileDialog

    from napari_unet._widgets import train

    store = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    monkeypatch.setattr(train, "settings_store", lambda: store)
    offered = []

    def dialog(parent, title, suggestion, filters):
        offered.append(suggestion)
        return str(tmp_path / "models" / "first.pt"), filters

    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog)
    (tmp_path / "models").mkdir()
    widget = TrainWidget(viewer_with_data)
    short(widget, steps=1)
    run_to_end(qtbot, widget)
    widget.save_button.clicked.emit()
    widget.save_button.clicked.emit()
    assert (tmp_path / "models" / "first.pt").is_file()
    assert offered[1] == str(tmp_path / "models" / "unet-model.pt")


def test_two_pairs_and_a_validation_pair(qtbot, viewer_with_data):
    viewer = viewer_with_data
    image, labels = make_touching_nuclei((96, 112), seed=5)
    viewer.add_image(image, name="second")
    viewer.add_labels(labels, name="second labels")
    widget = TrainWidget(viewer)
    widget.add_pair_button.clicked.emit()
    assert len(widget.rows) == 2
    widget.rows[1].image.value = viewer.layers["second"]
    assert widget.rows[1].labels_box.value.name == "second labels"
    widget.validation_image.value = viewer.layers["second"]
    widget.validation_labels.value = viewer.layers["second labels"]
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    assert widget.checkpoint.metadata["data_shapes"] == [[1, 96, 112], [1, 96, 112]]


@pytest.mark.parametrize("kind", ["checkpoint", "bioimageio"])
def test_starts_from_a_model_file(qtbot, viewer_with_data, tmp_path, kind):
    torch.manual_seed(0)
    initial = Checkpoint.from_model(UNet(UNetConfig(depth=2, base_channels=4)))
    if kind == "checkpoint":
        path = tmp_path / "start.pt"
        save_checkpoint(path, initial)
    else:
        from napari_unet.export import export_bioimageio

        path = export_bioimageio(initial, tmp_path / "start.zip")
    widget = TrainWidget(viewer_with_data)
    widget.start_from.value = FROM_FILE
    assert not widget.model_file.native.isHidden()
    widget.model_file.value = path
    short(widget, steps=1)
    run_to_end(qtbot, widget)
    assert widget.checkpoint.model_config.base_channels == 4


# -- errors: a notification that says what to do, and no layer changes --------------------


def test_no_layers(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    assert widget.start() is None
    assert "Open an image" in notes[-1]
    assert len(viewer.layers) == 0


def test_labels_shape_differs_from_image(viewer_with_data, notes):
    viewer = viewer_with_data
    viewer.add_labels(np.ones((50, 50), np.int32), name="other labels")
    before = layer_snapshot(viewer)
    widget = TrainWidget(viewer)
    widget.rows[0].labels_box.value = viewer.layers["other labels"]
    assert widget.start() is None
    assert "Choose the Labels layer painted on this image" in notes[-1]
    assert_unchanged(viewer, before)


def test_no_annotation(viewer_with_data, notes):
    viewer = viewer_with_data
    viewer.add_labels(np.zeros((96, 112), np.int32), name="nuclei empty")
    before = layer_snapshot(viewer)
    widget = TrainWidget(viewer)
    widget.rows[0].labels_box.value = viewer.layers["nuclei empty"]
    assert widget.start() is None
    assert "No annotation found" in notes[-1]
    assert_unchanged(viewer, before)


def test_checkpoint_from_another_mode(viewer_with_data, notes, tmp_path):
    semantic = Checkpoint.from_model(UNet(UNetConfig(depth=2, base_channels=4)), mode="semantic")
    save_checkpoint(tmp_path / "semantic.pt", semantic)
    before = layer_snapshot(viewer_with_data)
    widget = TrainWidget(viewer_with_data)
    widget.start_from.value = FROM_FILE
    widget.model_file.value = tmp_path / "semantic.pt"
    assert widget.mode.value == "instances"
    assert widget.start() is None
    assert "trained in semantic mode" in notes[-1]
    assert_unchanged(viewer_with_data, before)


def test_corrupt_checkpoint_file(viewer_with_data, notes, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    widget = TrainWidget(viewer_with_data)
    widget.start_from.value = FROM_FILE
    widget.model_file.value = tmp_path / "broken.pt"
    assert widget.start() is None
    assert "broken.pt" in notes[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(viewer_with_data, notes):
    before = layer_snapshot(viewer_with_data)
    widget = TrainWidget(viewer_with_data)
    widget.device.value = "cuda"
    assert widget.start() is None
    assert "cuda" in notes[-1].lower() and "cpu" in notes[-1]
    assert_unchanged(viewer_with_data, before)


def test_engine_errors_become_notifications(qtbot, viewer_with_data, notes):
    # The engine, not the widget, rejects negative ids: its message reaches the user.
    labels = viewer_with_data.layers["nuclei labels"].data.astype(np.int32)
    labels[0, 0] = -1
    viewer_with_data.add_labels(labels, name="nuclei negative")
    widget = TrainWidget(viewer_with_data)
    widget.rows[0].labels_box.value = viewer_with_data.layers["nuclei negative"]
    short(widget, steps=1)
    run_to_end(qtbot, widget)
    assert widget.checkpoint is None
    assert notes[-1].startswith("Training could not run:")
    assert widget.train_button.enabled


def test_closing_the_viewer_stops_training(qtbot, viewer_with_data):
    widget = TrainWidget(viewer_with_data)
    viewer_with_data.window.add_dock_widget(widget)
    widget.budget_unit.value = "minutes"
    widget.budget.value = 10
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.plot.steps) > 0, timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer_with_data.close()


def test_a_0_255_mask_is_recognised_and_converted_into_a_new_layer(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    image, labels = make_touching_nuclei((96, 112), seed=0)
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    viewer.add_image(image, name="nuclei", scale=(0.5, 0.5))
    layer = viewer.add_labels(mask, name="nuclei mask", scale=(0.5, 0.5))
    widget = TrainWidget(viewer)
    row = widget.rows[0]
    assert row.labels_box.value is layer
    # ``visible`` is False for any widget of an unshown window; isHidden is not.
    assert not row.labels_note.native.isHidden()
    assert "binary mask (0 and 255)" in row.labels_note.value
    assert not row.convert_button.native.isHidden()
    row.convert_button.clicked.emit()
    converted = viewer.layers["nuclei mask instances"]
    assert row.labels_box.value is converted
    assert converted.data.max() > 1 and np.array_equal(converted.data > 0, mask > 0)
    assert tuple(converted.scale) == (0.5, 0.5)
    assert row.labels_note.native.isHidden() and row.convert_button.native.isHidden()
    assert layer.name == "nuclei mask" and np.array_equal(layer.data, mask)  # kept as it was
    assert any("nuclei mask instances" in note for note in notes)


def test_the_previews_w0_and_sigma_are_the_ones_trained_with(qtbot, viewer_with_data):
    from napari_unet.weights import boundary_weight_map

    viewer = viewer_with_data
    _, preview = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Weight map preview")
    widget = TrainWidget(viewer)
    preview.w0.value, preview.sigma.value = 20.0, 2.0
    assert (widget.w0.value, widget.sigma.value) == (20.0, 2.0)
    widget.sigma.value = 3.0  # and back: the preview follows Train
    assert preview.sigma.value == 3.0
    output = "nuclei labels weight map"
    qtbot.waitUntil(
        lambda: output in viewer.layers and not preview._weight_map_preview.busy, timeout=20_000
    )
    expected = boundary_weight_map(viewer.layers["nuclei labels"].data, 20.0, 3.0)
    np.testing.assert_allclose(viewer.layers[output].data, expected, rtol=1e-6)
    short(widget, steps=2)
    run_to_end(qtbot, widget)
    recorded = widget.checkpoint.metadata["train_config"]
    assert (recorded["w0"], recorded["sigma"]) == (20.0, 3.0)
    # A dock opened later shows the same values.
    assert (TrainWidget(viewer).w0.value, TrainWidget(viewer).sigma.value) == (20.0, 3.0)


def test_closing_the_dock_mid_run_keeps_the_model(qtbot, viewer_with_data, notes):
    dock, widget = viewer_with_data.window.add_plugin_dock_widget(PLUGIN_NAME, "Train U-Net")
    widget.budget_unit.value = "minutes"
    widget.budget.value = 10
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.plot.steps) > 0, timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer_with_data.window.remove_dock_widget(dock)
    assert len(trained_models.names()) == 1
    assert any("closed during training" in note for note in notes)
    # Reopened, the dock can save the session's model at once.
    reopened = TrainWidget(viewer_with_data)
    assert reopened.save_button.enabled
    assert reopened.model_to_save() is trained_models.get(trained_models.names()[0])


def test_the_live_preview_shows_an_image_not_trained_on(qtbot, viewer_with_data):
    viewer = viewer_with_data
    widget = TrainWidget(viewer)
    widget.live_preview.value = True
    widget.preview_every.value = 2
    assert widget.preview_source().name == "nuclei"  # nothing else: the training image
    new_image, _ = make_touching_nuclei((80, 72), seed=5)
    viewer.add_image(new_image, name="new field")
    assert widget.preview_source().name == "new field"  # by default: not trained on
    short(widget, steps=4)
    run_to_end(qtbot, widget)
    preview = viewer.layers["new field training preview"]
    assert preview.data.shape == (80, 72)
    widget.preview_image.value = viewer.layers["nuclei"]  # or the one the user chooses
    assert widget.preview_source().name == "nuclei"
    run_to_end(qtbot, widget)
    assert viewer.layers["nuclei training preview"].data.shape == (96, 112)
