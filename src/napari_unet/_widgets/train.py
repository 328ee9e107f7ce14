"""The "Train U-Net" dock widget.

It turns the chosen layers into arrays, runs :func:`napari_unet.training.train_generator`
in a napari thread worker (the viewer stays responsive), follows its events with a
progress bar and a loss plot, and hands the trained model to the Segment widget
through :data:`napari_unet._widgets._common.trained_models`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet._widgets._common import (
    Failure,
    UserError,
    WorkerSlot,
    border_settings,
    describe,
    guarded,
    image_array,
    is_own_map,
    keep_narrow,
    labels_array,
    load_engines_in_background,
    placement,
    region_mask,
    spatial_shape,
    stop_when_closed,
    trained_models,
)
from napari_unet._widgets.loss_plot import LossPlot
from napari_unet.tasks import INSTANCE_HEADS

if TYPE_CHECKING:
    import napari
    import napari.viewer

    from napari_unet.checkpoint import Checkpoint
    from napari_unet.training import TrainingEvent, TrainingResult

NEW_MODEL = "new model"
#: Metadata key of a training preview layer: the (Python) id of the image it previews.
PREVIEW_OF = "napari_unet_training_preview_of"
#: Labels layers up to this size are read at once when chosen (masks are recognised).
MAX_READ_LABELS_PIXELS = 1 << 22
FROM_FILE = "checkpoint file…"
MODEL_SIZES = {
    "small (16 base channels, fast on a CPU)": 16,
    "medium (32 base channels)": 32,
    "large (64 base channels, as in the paper; use a GPU)": 64,
}
OPTIMIZERS = {"Adam (short interactive runs)": "adam", "SGD, momentum 0.99 (the paper)": "sgd"}


def _layers_of(viewer: napari.Viewer, kind: type) -> list[tuple[str, Any]]:
    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, kind) and not is_own_map(layer)
    ]


class PairRow(Container):
    """One training pair: an Image layer, its Labels layer and optional regions."""

    def __init__(self, viewer: napari.Viewer, number: int) -> None:
        self.image = ComboBox(
            label=f"image {number}",
            choices=lambda _: _layers_of(viewer, Image),
            tooltip="An image to learn from (2D, a stack of 2D planes, or RGB).",
        )
        self.labels_box = ComboBox(
            label=f"labels {number}",
            choices=lambda _: _layers_of(viewer, Labels),
            tooltip=(
                "The annotation of that image. Instances mode: 0 is background, every other "
                "id one cell. Semantic mode: values 1..K are classes, 0 is not annotated."
            ),
        )
        self.regions = ComboBox(
            label=f"regions {number}",
            choices=lambda _: _layers_of(viewer, Shapes),
            nullable=True,
            tooltip=(
                "Optional Shapes layer of rectangles around the fully annotated regions; "
                "pixels outside them are ignored in training. Empty: the whole image counts."
            ),
        )
        self.labels_note = Label(value="", label="", visible=False)
        self.labels_note.native.setWordWrap(True)
        self.convert_button = PushButton(
            text="convert to instances",
            visible=False,
            tooltip="Add a new Labels layer with one id per object (your layer is kept).",
        )
        super().__init__(
            widgets=[
                self.image,
                self.labels_box,
                self.labels_note,
                self.convert_button,
                self.regions,
            ],
            labels=True,
        )
        self.viewer = viewer
        # Pre-select the Labels layer whose name starts like the image's, if any.
        self.image.changed.connect(self._match_labels)
        self.labels_box.changed.connect(self._read_labels)
        self.convert_button.changed.connect(self.convert_to_instances)
        self._match_labels()
        self._read_labels()

    def _read_labels(self, *_: Any) -> None:
        """Say what the chosen labels will be taken as, when they are a mask."""
        reading = self._reading()
        note = reading.describe(self.labels_box.value.name) if reading is not None else None
        self.labels_note.value = note or ""
        self.labels_note.visible = note is not None
        self.convert_button.visible = reading is not None and reading.convertible

    def _reading(self) -> Any:
        from napari_unet.label_kinds import read_labels

        layer = self.labels_box.value
        if layer is None or layer.multiscale or layer.data.size > MAX_READ_LABELS_PIXELS:
            return None  # training still reads them; here the main thread must stay quick
        return read_labels(np.asarray(layer.data))

    def convert_to_instances(self, *_: Any) -> None:
        """Add "<labels> instances", one id per object, and choose it for this pair."""
        from napari_unet.label_kinds import to_instances

        layer = self.labels_box.value
        reading = self._reading()
        if layer is None or reading is None or not reading.convertible:
            return
        converted = self.viewer.add_labels(
            to_instances(np.asarray(layer.data), reading),
            name=f"{layer.name} instances",
            **placement(layer, layer.ndim),
        )
        self.labels_box.reset_choices()
        self.labels_box.value = converted
        show_info(
            f"Added {converted.name!r}: {int(converted.data.max())} objects. {layer.name!r} "
            "is unchanged; check the new layer and correct touching objects."
        )

    def _match_labels(self, *_: Any) -> None:
        image = self.image.value
        if image is None:
            return
        for layer in self.labels_box.choices:
            if layer.name.startswith(image.name) and layer.data.shape == spatial_shape(image):
                self.labels_box.value = layer
                return


@dataclass
class TrainingRequest:
    """One training run's arrays and settings (the worker never touches a layer).

    ``preview_layer_of`` is the layer whose plane is previewed; only the main
    thread uses it, to place the preview layer.
    """

    pairs: list[tuple[np.ndarray, np.ndarray]]
    masks: list[np.ndarray | None]
    channel_axis: int | None
    validation: tuple[np.ndarray, np.ndarray] | None
    #: The model to fine-tune, or the registry name of one: reading and checking a
    #: stored model takes about 0.5 s, which the worker spends, not the click.
    initial: Checkpoint | str | None
    config: Any
    preview: np.ndarray | None
    preview_every: int
    preview_layer_of: Any  # main thread only
    image_names: list[str]


def _training_events(request: TrainingRequest, should_stop: Any) -> Any:
    """Yield the training engine's events in the worker; return its result or a Failure."""
    from napari_unet.registry import load_model
    from napari_unet.training import train_generator

    def events() -> Any:
        initial = request.initial
        if isinstance(initial, str):
            initial = load_model(initial)
        return (
            yield from train_generator(
                request.pairs,
                request.config,
                masks=request.masks,
                channel_axis=request.channel_axis,
                validation=request.validation,
                initial=initial,
                should_stop=should_stop,
                metadata={"trained_with": "napari widget", "images": request.image_names},
                preview=request.preview,
                preview_every=request.preview_every,
            )
        )

    return (yield from guarded(events()))


def _named_models() -> list[str]:
    """Models of this session (newest first), then the shipped and the user's by name."""
    from napari_unet.registry import available_models

    session = trained_models.names()
    return [*session, *(e.name for e in available_models() if e.name not in session)]


def _starting_model(name: str) -> Checkpoint:
    """Return the model of this session called ``name``, or the registry's."""
    from napari_unet.registry import load_model

    if name in trained_models.names():
        return trained_models.get(name)
    try:
        return load_model(name)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from None


class TrainWidget(Container):
    """Train a U-Net on (Image, Labels) layer pairs without freezing the viewer."""

    # napari passes the viewer to a parameter annotated exactly "napari.viewer.Viewer".
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.rows: list[PairRow] = [PairRow(viewer, 1)]
        self.pairs = Container(widgets=self.rows, labels=False)
        self.add_pair_button = PushButton(text="Add a pair")
        self.remove_pair_button = PushButton(text="Remove the last pair", enabled=False)
        self.validation_image = ComboBox(
            label="validation image",
            choices=lambda _: _layers_of(viewer, Image),
            nullable=True,
            value=None,
            tooltip="Optional held-out image, scored during training (AP at IoU 0.5).",
        )
        self.validation_labels = ComboBox(
            label="validation labels",
            choices=lambda _: _layers_of(viewer, Labels),
            nullable=True,
            value=None,
        )
        self.mode = ComboBox(
            label="mode",
            choices=["instances", "semantic"],
            tooltip=(
                "instances: every labelled id is one object; touching objects are kept apart "
                "with the paper's boundary weights. semantic: label values are classes."
            ),
        )
        self.head = ComboBox(
            label="head",
            choices=list(INSTANCE_HEADS),
            tooltip=(
                "What the network learns for instances. three-class: background, object "
                "interior and object boundary (objects grow from confident interiors). "
                "distance: foreground and each pixel's distance to its object's border "
                "(objects grow from the centres). paper: background and foreground with a "
                "gap between touching objects, as in Ronneberger et al. 2015."
            ),
        )
        self.tessellate = CheckBox(
            text="cells tile the image (membranes)",
            value=False,
            tooltip=(
                "For cells separated only by membranes, as in electron microscopy: Segment "
                "grows the cells over the predicted membranes so that they tile the image, "
                "and the labelling is tuned on the Rand error of the grown cells."
            ),
        )
        self.w0 = FloatSpinBox(
            label="border weight w0",
            value=10.0,
            min=0.0,
            max=100.0,
            step=1.0,
            tooltip="Weight of the pixels between touching objects (paper: 10).",
        )
        self.sigma = FloatSpinBox(
            label="border width sigma (px)",
            value=5.0,
            min=0.5,
            max=50.0,
            step=0.5,
            tooltip="About the width of the gaps between touching objects (paper: ~5 px); "
            "the Weight map preview shows its effect.",
        )
        # The same values as the Weight map preview's: what the user previews is trained.
        self._border_link = border_settings.link(self.w0, self.sigma)
        self.budget_unit = ComboBox(label="train for", choices=["minutes", "steps"])
        self.budget = FloatSpinBox(label="budget", value=2.0, min=0.1, max=100_000, step=0.5)
        self.model_size = ComboBox(label="model size", choices=list(MODEL_SIZES))
        self.start_from = ComboBox(
            label="start from",
            choices=lambda _: [NEW_MODEL, *_named_models(), FROM_FILE],
            tooltip="Fine-tune a model on your labels (the pretrained 'nuclei' model by "
            "default, a model trained in this session, one of your models folder, or a file), "
            "or train a new model (other objects than nuclei, RGB images).",
        )
        self.model_file = FileEdit(label="model file", filter="*.pt *.zip", visible=False)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"])
        self.optimizer = ComboBox(label="optimizer", choices=list(OPTIMIZERS))
        self.elastic = CheckBox(
            text="elastic deformation",
            value=True,
            tooltip=(
                "Warp training tiles randomly, as in the paper: it teaches invariance to "
                "shape changes, which new images need, but slows fitting in short runs."
            ),
        )
        self.live_preview = CheckBox(
            text="live preview", tooltip="Segment the visible plane every N steps."
        )
        self.preview_every = SpinBox(label="preview every (steps)", value=50, min=1, max=10_000)
        self.preview_image = ComboBox(
            label="preview image",
            choices=lambda _: _layers_of(viewer, Image),
            nullable=True,
            value=None,
            tooltip=(
                "The image the live preview segments. Empty: an image not trained on (the "
                "newest), so the preview shows how the model does on new data; else the "
                "first training image."
            ),
        )
        self.train_button = PushButton(text="Train U-Net")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.save_button = PushButton(text="Save model…", enabled=bool(trained_models.names()))
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1000)
        self.status = Label(label="status", value="ready")
        super().__init__(
            widgets=[
                self.pairs,
                Container(
                    widgets=[self.add_pair_button, self.remove_pair_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.validation_image,
                self.validation_labels,
                self.mode,
                self.head,
                self.tessellate,
                self.w0,
                self.sigma,
                self.budget_unit,
                self.budget,
                self.model_size,
                self.start_from,
                self.model_file,
                self.device,
                self.optimizer,
                self.elastic,
                self.live_preview,
                self.preview_every,
                self.preview_image,
                Container(
                    widgets=[self.train_button, self.stop_button, self.save_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.progress,
                self.status,
            ],
            labels=True,
        )
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)
        self.preview_every.visible = False
        self.preview_image.visible = False
        self.budget.native.setDecimals(1)
        self.slot = WorkerSlot()
        self.checkpoint: Checkpoint | None = None  # the last model trained here
        self.model_name: str | None = None
        self._ran_to_the_end = False  # the last run spent its whole budget
        self._preview_layer: Labels | None = None
        self._request: TrainingRequest | None = None
        self._started = 0.0

        self.add_pair_button.changed.connect(self._add_pair)
        self.remove_pair_button.changed.connect(self._remove_pair)
        self.budget_unit.changed.connect(self._budget_unit_changed)
        self._following_model = False  # the mode is being set from the chosen model
        self._start_from_pretrained()
        self.start_from.changed.connect(self._start_from_changed)
        self.mode.changed.connect(self._mode_changed)
        self.live_preview.changed.connect(self._live_preview_changed)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self._ask_and_save)
        trained_models.changed.connect(self._models_changed)
        self.native.destroyed.connect(lambda *_: _disconnect(self._models_changed))
        stop_when_closed(self.native, self.slot)
        keep_narrow(self)
        load_engines_in_background()

    # -- layout reactions ------------------------------------------------------------------

    def _add_pair(self) -> None:
        row = PairRow(self.viewer, len(self.rows) + 1)
        keep_narrow(row)
        self.rows.append(row)
        self.pairs.append(row)
        self.remove_pair_button.enabled = True

    def _remove_pair(self) -> None:
        if len(self.rows) > 1:
            self.pairs.remove(self.rows.pop())
        self.remove_pair_button.enabled = len(self.rows) > 1

    def _budget_unit_changed(self, unit: str) -> None:
        if unit == "steps":
            self.budget.native.setDecimals(0)
            self.budget.min, self.budget.step = 1, 50
            self.budget.value = 500
        else:
            self.budget.native.setDecimals(1)
            self.budget.min, self.budget.step = 0.1, 0.5
            self.budget.value = 2.0

    def _start_from_pretrained(self) -> None:
        """Instances start from the shipped model, which fine-tunes better than a new one.

        Its settings (an instance model, the default head and size) are the
        widget's own defaults, so nothing is loaded here: opening the dock stays
        instant, and the model is read when training starts.
        """
        from napari_unet.registry import default_start

        start = default_start(self.mode.value)
        if start is not None and start in self.start_from.choices:
            self.start_from.value = start
            self.model_size.enabled = self.head.enabled = False

    def _start_from_changed(self, value: str) -> None:
        self.model_file.visible = value == FROM_FILE
        fine_tune = value not in (NEW_MODEL, FROM_FILE)
        self.model_size.enabled = value == NEW_MODEL
        self.head.enabled = value == NEW_MODEL and self.mode.value == "instances"
        if fine_tune:
            try:
                model = _starting_model(value)
            except UserError as error:
                show_error(str(error))
                return
            self._following_model = True
            try:
                self.mode.value = model.mode
            finally:
                self._following_model = False
            if model.head is not None:
                self.head.value = model.head
            if model.postprocess is not None:
                self.tessellate.value = model.postprocess.tessellate

    def _mode_changed(self, mode: str) -> None:
        source = self.start_from.value
        if not self._following_model and source not in (NEW_MODEL, FROM_FILE):
            # A model of another mode cannot be fine-tuned in this one. A session
            # model's mode is known; reading a stored one would stall the viewer.
            session = trained_models.get(source) if source in trained_models.names() else None
            if session is None or session.mode != mode:
                self.start_from.value = NEW_MODEL
        self.head.visible = mode == "instances"
        self.tessellate.visible = mode == "instances"
        self.head.enabled = self.start_from.value == NEW_MODEL and mode == "instances"

    def _live_preview_changed(self, on: bool) -> None:
        self.preview_every.visible = on
        self.preview_image.visible = on

    def preview_source(self) -> Image | None:
        """Return the image the live preview segments (see ``preview_image``)."""
        if self.preview_image.value is not None:
            return self.preview_image.value
        first = self.rows[0].image.value
        if first is None:
            return None
        trained = {id(row.image.value) for row in self.rows}
        # An image the model does not learn from, shaped like the training images.
        untrained = [
            layer
            for _, layer in _layers_of(self.viewer, Image)
            if id(layer) not in trained and layer.rgb == first.rgb and layer.ndim == first.ndim
        ]
        return untrained[-1] if untrained else first

    def _models_changed(self) -> None:
        self.start_from.reset_choices()
        self.save_button.enabled = bool(trained_models.names())

    # -- gathering the request -------------------------------------------------------------

    def _collect(self) -> TrainingRequest:
        """Read the widget into arrays; raise UserError with what to do."""
        from napari_unet.augment import AugmentConfig
        from napari_unet.checkpoint import load_model_file
        from napari_unet.device import resolve_device
        from napari_unet.training import TrainConfig

        mode = self.mode.value
        pairs, masks, names = [], [], []
        channel_axes = set()
        for number, row in enumerate(self.rows, start=1):
            image_layer, labels_layer = row.image.value, row.labels_box.value
            if image_layer is None or labels_layer is None:
                raise UserError(
                    f"Pair {number} has no {'image' if image_layer is None else 'labels'} "
                    f"layer. Open an image, add a Labels layer and paint some "
                    f"{'objects' if mode == 'instances' else 'classes'}, then choose both."
                )
            image, channel_axis = image_array(image_layer)
            labels = labels_array(labels_layer)
            if tuple(labels.shape) != spatial_shape(image_layer):
                raise UserError(
                    f"The labels {labels_layer.name!r} have shape {tuple(labels.shape)} but the "
                    f"image {image_layer.name!r} has {spatial_shape(image_layer)}. Choose the "
                    f"Labels layer painted on this image."
                )
            if not np.any(labels):
                raise UserError(
                    f"No annotation found in {labels_layer.name!r}. Paint some "
                    f"{'cells (each with its own id)' if mode == 'instances' else 'classes'} "
                    f"first."
                )
            mask = None
            if row.regions.value is not None:
                mask = region_mask(row.regions.value, tuple(labels.shape))
                if not np.any(labels[mask]):
                    raise UserError(
                        f"The regions of {row.regions.value.name!r} contain no annotation "
                        f"of {labels_layer.name!r}. Draw them around the labelled cells."
                    )
            channel_axes.add(channel_axis)
            pairs.append((np.asarray(image), labels))
            masks.append(mask)
            names.append(image_layer.name)
        if len(channel_axes) > 1:
            raise UserError("Mix of RGB and grey images: train on images of one kind.")
        channel_axis = channel_axes.pop()

        validation = None
        if (self.validation_image.value is None) != (self.validation_labels.value is None):
            raise UserError("Choose both a validation image and its labels, or neither.")
        if self.validation_image.value is not None:
            v_image, v_axis = image_array(self.validation_image.value)
            v_labels = labels_array(self.validation_labels.value)
            if v_axis != channel_axis or tuple(v_labels.shape) != spatial_shape(
                self.validation_image.value
            ):
                raise UserError(
                    "The validation labels must have the validation image's shape, and the "
                    "validation image the training images' channels."
                )
            validation = (np.asarray(v_image), v_labels)

        try:
            resolve_device(self.device.value)
        except ValueError as error:
            raise UserError(str(error)) from None
        initial = None
        source = self.start_from.value
        if source == FROM_FILE:
            path = Path(self.model_file.value)
            if not path.is_file():
                raise UserError(
                    "Choose a model file (.pt or .zip) to start from, or start a new model."
                )
            try:
                initial = load_model_file(path)
            except (OSError, ValueError) as error:
                raise UserError(str(error)) from None
        elif source in trained_models.names():
            initial = trained_models.get(source)
        elif source != NEW_MODEL:
            initial = source  # a stored model, read in the worker (its checks say what to do)
        if initial is not None and not isinstance(initial, str) and initial.mode != mode:
            raise UserError(
                f"The starting model was trained in {initial.mode} mode but the mode is {mode}. "
                f"Choose mode {initial.mode} to fine-tune it, or start a new model."
            )
        steps = minutes = None
        if self.budget_unit.value == "steps":
            steps = max(1, round(self.budget.value))
        else:
            minutes = float(self.budget.value)
        config = TrainConfig(
            mode=mode,
            # A starting model keeps its head.
            head=self.head.value if mode == "instances" and initial is None else None,
            tessellate=mode == "instances" and bool(self.tessellate.value),
            w0=float(self.w0.value),
            sigma=float(self.sigma.value),
            steps=steps,
            minutes=minutes,
            base_channels=MODEL_SIZES[self.model_size.value],
            optimizer=OPTIMIZERS[self.optimizer.value],
            augment=AugmentConfig() if self.elastic.value else AugmentConfig(elastic_std=0.0),
            device=self.device.value,
        )
        preview = preview_layer = None
        if self.live_preview.value:
            preview_layer = self.preview_source()
            preview = self._visible_plane(preview_layer)
        return TrainingRequest(
            pairs, masks, channel_axis, validation, initial, config,
            preview, self.preview_every.value, preview_layer, names,
        )  # fmt: skip

    def _visible_plane(self, layer: Image) -> np.ndarray:
        """Return the 2D plane of ``layer`` that the viewer shows now."""
        data, _ = image_array(layer)
        leading = len(spatial_shape(layer)) - 2
        point = self.viewer.dims.current_step[-(leading + 2) :][:leading] if leading else ()
        index = tuple(min(int(p), data.shape[i] - 1) for i, p in enumerate(point))
        return np.asarray(data[index])

    # -- running ---------------------------------------------------------------------------

    def start(self) -> Any:
        """Start training; return the worker, or None when the input needs fixing."""
        from napari.qt.threading import create_worker

        if self.slot.running:
            show_warning("Training is already running; press Stop first.")
            return None
        try:
            request = self._collect()
        except UserError as error:
            show_error(str(error))
            return None
        stop_event = threading.Event()
        worker = create_worker(_training_events, request, stop_event.is_set, _start_thread=False)
        worker.yielded.connect(self.slot.if_open(self._on_event))
        worker.returned.connect(self.slot.if_open(self._on_result))
        # Closing the dock stops the run; the model trained so far is kept all the same.
        worker.returned.connect(partial(_keep_if_closed, self.slot))
        self._request = request
        if request.preview is not None:
            self._prepare_preview_layer(request)
        self._started = time.perf_counter()
        self.plot.clear()
        self.progress.value = 0
        self.status.value = "preparing the training data…"
        self.train_button.enabled = False
        self.stop_button.enabled = True
        self.slot.start(worker, stop_event, on_finished=self.slot.if_open(self._on_finished))
        return worker

    def stop(self) -> None:
        """Stop after the current step; the model trained so far is kept."""
        if self.slot.running:
            self.status.value = "stopping after this step…"
        self.slot.stop()

    def _on_event(self, event: TrainingEvent) -> None:
        from napari_unet.training import (
            TrainingMessage,
            TrainingPreview,
            TrainingProgress,
            ValidationResult,
        )

        if isinstance(event, TrainingProgress):
            config = self._request.config if self._request else None
            if config is not None and config.steps is not None:
                fraction = event.step / config.steps
            elif config is not None and config.minutes:
                fraction = event.elapsed / (60 * config.minutes)
            else:
                fraction = 0.0
            self.progress.value = int(1000 * min(fraction, 1.0))
            self.status.value = (
                f"step {event.step} · loss {event.loss:.4f} · {event.images_per_second:.1f} tiles/s"
            )
            self.plot.add_loss(event.step, event.loss)
        elif isinstance(event, ValidationResult):
            self.plot.add_score(event.step, event.score, event.score_name)
        elif isinstance(event, TrainingMessage):
            show_info(event.text)
        elif isinstance(event, TrainingPreview):
            self._show_preview(event.labels)

    def _prepare_preview_layer(self, request: TrainingRequest) -> None:
        """Add (or reuse) the preview layer now, at the click.

        Adding a layer costs napari about 0.2 s on the main thread: better spent
        when the user presses Train than in the middle of training.
        """
        shape = request.preview.shape[:-1] if request.channel_axis == -1 else request.preview.shape
        layer, source = self._preview_layer, request.preview_layer_of
        if (
            layer is not None
            and layer in self.viewer.layers
            and layer.data.shape == shape
            and layer.metadata.get(PREVIEW_OF) == id(source)
        ):
            layer.data = np.zeros(shape, np.uint32)
            return
        self._preview_layer = self.viewer.add_labels(
            np.zeros(shape, np.uint32),
            name=f"{source.name} training preview",
            opacity=0.6,
            metadata={PREVIEW_OF: id(source)},
            **placement(source, 2),
        )
        self.viewer.layers.selection.active = source  # keep the user's selection

    def _show_preview(self, labels: np.ndarray) -> None:
        layer = self._preview_layer
        if layer is not None and layer in self.viewer.layers:
            layer.data = labels  # the user may have deleted it: then just skip

    def _on_result(self, result: TrainingResult | Failure) -> None:
        if isinstance(result, Failure):
            show_error(result.message("Training"))
            self.status.value = "failed; see the notification"
            return
        if result.steps == 0:
            show_warning("Training stopped before its first step; no model was made.")
            return
        self.checkpoint = result.checkpoint
        self._ran_to_the_end = result.stop_reason == "budget"
        name = _add_to_session(result.checkpoint)
        self.model_name = name
        self.start_from.value = name  # the next run fine-tunes it (correct, then retrain)
        self.save_button.enabled = True
        minutes = (time.perf_counter() - self._started) / 60
        why = {"budget": "", "stopped": " (stopped)", "non-finite loss": " (loss not finite)"}
        show_info(
            f"Training finished after {result.steps} steps in {minutes:.1f} min"
            f"{why.get(result.stop_reason, '')}. Segment with it in the Segment widget "
            f"(model {name!r}), or save it."
        )
        self.status.value = f"done: {result.steps} steps, model {name!r}"

    def _on_finished(self) -> None:
        self.train_button.enabled = True
        self.stop_button.enabled = False
        # Full only when the budget was spent: a stopped run shows how far it got.
        if self.checkpoint is not None and self._ran_to_the_end:
            self.progress.value = self.progress.max

    # -- saving ----------------------------------------------------------------------------

    def _ask_and_save(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        # The only setting kept between napari launches: where models were saved.
        settings = settings_store()
        folder = Path(str(settings.value("model_folder", str(Path.home()))))
        # The dialog asks before replacing an existing file.
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save the U-Net model", str(folder / "unet-model.pt"), "U-Net model (*.pt)"
        )
        if path and self.save_model(path) is not None:
            settings.setValue("model_folder", str(Path(path).parent))

    def model_to_save(self) -> Checkpoint | None:
        """Return the session model chosen in *start from*, else the newest of the session."""
        names = trained_models.names()  # newest first
        if self.start_from.value in names:
            return trained_models.get(self.start_from.value)
        return trained_models.get(names[0]) if names else None

    def save_model(self, path: str | Path) -> Path | None:
        """Save :meth:`model_to_save` to ``path`` (atomically); return the path."""
        from napari_unet.checkpoint import save_checkpoint

        checkpoint = self.model_to_save()
        if checkpoint is None:
            show_error("There is no trained model yet: press Train U-Net first.")
            return None
        path = Path(path)
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        try:
            save_checkpoint(path, checkpoint)
        except OSError as error:
            show_error(f"Could not save the model to {path}: {error}. Choose another folder.")
            return None
        show_info(f"Model saved to {path}.")
        return path


def _add_to_session(checkpoint: Checkpoint) -> str:
    """Add a trained model to the session's list; return its name."""
    stamp = time.strftime("%H:%M:%S")
    return trained_models.add(checkpoint, f"{describe(checkpoint)} ({stamp})")


def _keep_if_closed(slot: WorkerSlot, result: Any) -> None:
    """Keep the model of a run whose dock was closed (the open dock handles its own)."""
    from napari_unet.training import TrainingResult

    if not slot.closed or not isinstance(result, TrainingResult) or result.steps == 0:
        return
    name = _add_to_session(result.checkpoint)
    show_info(
        f"Train U-Net was closed during training: the model of its {result.steps} steps is "
        f"kept as {name!r} (Segment lists it; reopen Train U-Net to save it)."
    )


def settings_store() -> Any:
    """Return the plugin's QSettings (per user, kept between napari launches)."""
    from qtpy.QtCore import QSettings

    return QSettings("napari-unet-segmentation", "napari-unet-segmentation")


def _disconnect(slot: Any) -> None:
    try:
        trained_models.changed.disconnect(slot)
    except (TypeError, ValueError):  # already gone
        pass
