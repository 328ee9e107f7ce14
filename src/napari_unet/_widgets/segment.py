"""The "Segment" dock widget: run a trained U-Net on an Image layer.

``segment_widget`` is a :func:`magicgui.magic_factory`. Pressing Run checks the
choices on the main thread (problems become notifications that say what to
do), adds an empty Labels layer and starts a thread worker around
:func:`~napari_unet.inference.predict_generator`. Every finished tile is drawn
into the new layer as it arrives, so the user watches the mask fill in; the
final labels (instance ids after the seeded watershed, or class ids) replace the
provisional ones when the worker returns. Cancel stops after the current tile
and keeps the finished tiles.

An image whose data is a dask or zarr array, or a multiscale image (its full
resolution is segmented), is not loaded into memory: the worker runs
:func:`~napari_unet.distributed.segment_to_zarr_generator` in this process,
block by block, into a zarr store (in the chosen folder, or else in a
temporary folder deleted when napari exits), and the output Labels layer reads
that store (multiscale, like a multiscale input). The progress bar counts
blocks; Cancel stops after the current tile and keeps the finished blocks.
"""

import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import napari
import numpy as np
import torch
from magicgui import magic_factory
from magicgui.widgets import (
    CheckBox,
    FloatSpinBox,
    FunctionGui,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_unet._reader import probability_maps
from napari_unet._validation import NonFiniteImageError, check_finite
from napari_unet._widgets._common import (
    UNCERTAINTY_KEY,
    Failure,
    UserError,
    WorkerSlot,
    choose_likely_layer,
    guarded,
    image_array,
    is_own_map,
    keep_narrow,
    likely_image,
    placement,
    stop_when_closed,
    trained_models,
)
from napari_unet.checkpoint import Checkpoint, CheckpointError, load_model_file
from napari_unet.device import resolve_device
from napari_unet.distributed import (
    BlockResult,
    ZarrSegmentation,
    level_arrays,
    segment_to_zarr_generator,
)
from napari_unet.inference import (
    InferenceConfig,
    Prediction,
    TileResult,
    labels_dtype,
    predict_generator,
    without_channel_axis,
)
from napari_unet.registry import ModelHashError, available_models, load_model
from napari_unet.tasks import Postprocess
from napari_unet.uncertainty import foreground_uncertainty, least_certain_objects

# No ``from __future__ import annotations`` in this module: magicgui reads the
# annotations of ``segment_widget`` (the return one included) as real types.

__all__ = ["FILE_CHOICE", "segment_widget"]

#: Last entry of the model list: use the file chosen under "model file".
FILE_CHOICE = "checkpoint file…"
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _model_choices(_widget: Any = None) -> list[str]:
    """Trained models of this session (newest first), models by name, the file entry.

    Models by name are the pretrained ones shipped in the package and those in the
    user's models folder (:mod:`napari_unet.registry`), so Segment works before any
    training.
    """
    session = trained_models.names()
    named = [entry.name for entry in available_models() if entry.name not in session]
    return [*session, *named, FILE_CHOICE]


# -- images that are not loaded into memory -----------------------------------------------

_scratch: tempfile.TemporaryDirectory | None = None


def _reads_lazily(layer: napari.layers.Image) -> bool:
    """Whether ``layer`` is segmented block by block into a store (dask, zarr, multiscale)."""
    return bool(layer.multiscale) or not isinstance(layer.data, np.ndarray)


def _level_strides(
    layer: napari.layers.Image, channel_axis: int | None
) -> tuple[tuple[int, int], ...]:
    """Row and column strides from a multiscale layer's full resolution to its other levels."""
    if not layer.multiscale:
        return ()

    def spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
        return without_channel_axis(shape, channel_axis)[-2:]

    full = spatial(tuple(layer.data[0].shape))
    strides = []
    for level in layer.data[1:]:
        rows, cols = spatial(tuple(level.shape))
        strides.append((max(1, round(full[0] / rows)), max(1, round(full[1] / cols))))
    return tuple(strides)


def _new_store(folder: Path | None, image_name: str) -> Path:
    """Return a new zarr store path for the result: in ``folder``, else in a temporary one.

    The temporary folder lasts as long as napari runs: it is deleted at exit,
    so results meant to stay should go to a chosen folder.
    """
    global _scratch
    if folder is None or not str(folder) or str(folder) == ".":
        if _scratch is None:
            _scratch = tempfile.TemporaryDirectory(prefix="napari-unet-")
        folder = Path(_scratch.name)
    elif not folder.is_dir():
        raise UserError(
            f"The zarr folder {folder} does not exist; choose an existing folder, or clear "
            f"it to use a temporary one."
        )
    stem = "".join(c if c.isalnum() or c in "-_ " else "_" for c in image_name).strip()
    stem = f"{stem or 'image'} segmentation"
    path, count = folder / f"{stem}.zarr", 1
    while path.exists() or path.with_name(path.name + ".partial").exists():
        count += 1
        path = folder / f"{stem} ({count}).zarr"
    return path


def _where_the_store_is(image_name: str, path: Path) -> str:
    """Say where a result store is, and that a temporary one goes when napari exits."""
    where = f"The segmentation of {image_name!r} is in {path}."
    if _scratch is not None and Path(_scratch.name) in path.parents:
        where += (
            " That is a temporary folder, deleted when napari exits: to keep the result, "
            "copy that folder elsewhere first, or choose a zarr folder before Run."
        )
    return where


# -- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choices:
    """What the user chose in the widget for one run (see :func:`segment_widget`)."""

    image: napari.layers.Image | None
    model: str | None
    model_file: Path | None
    device: str
    probabilities: bool
    tile_size: int
    zarr_folder: Path | None = None
    tta: bool = False
    object_diameter: float = 0.0  # 0: estimated per plane


@dataclass
class _Job:
    """Everything one run needs; the worker gets only the arrays and settings."""

    checkpoint: Checkpoint
    data: Any
    channel_axis: int | None
    config: InferenceConfig
    postprocess: Postprocess | None
    device: torch.device
    probabilities: bool
    image_name: str
    out_shape: tuple[int, ...]
    out_placement: dict[str, Any]
    labels_layer: napari.layers.Labels | None  # added when the result comes, for a store
    viewer: Any
    store: Path | None = None  # where a lazily read image is segmented to (a zarr store)
    # A multiscale input's lower levels as (rows, columns) strides of its full resolution.
    level_strides: tuple[tuple[int, int], ...] = ()
    stop_event: threading.Event = field(default_factory=threading.Event)
    tiles: Generator[Any, None, Any] | None = None
    started_at: float = field(default_factory=time.perf_counter)
    # An in-memory instance result's maps, kept for re-labelling without the network,
    # and the factor each plane was resampled by (its labelling sizes scale with it).
    maps: np.ndarray | None = None
    scales: list[float] = field(default_factory=list)
    # The user has corrected the result by hand (paint, fill, Correct objects).
    corrected: bool = False

    def mark_corrected(self, *_: Any) -> None:
        self.corrected = True

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return self.out_shape[:-2]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64))

    def plane_index(self, plane: int) -> tuple[int, ...]:
        """Index of flat plane number ``plane`` in the leading axes of the output."""
        if not self.plane_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(plane, self.plane_shape))


def _predict(job: _Job) -> Generator[TileResult, None, Prediction]:
    # The network is built here, off the main thread; only the engine generator's
    # frame holds it, so closing that generator releases it (and its GPU memory).
    task = job.checkpoint.task
    job.tiles = predict_generator(
        job.checkpoint.build_model(),
        job.data,
        channel_axis=job.channel_axis,
        config=job.config,
        # An instance result keeps its maps, so that it can be labelled again live.
        return_probabilities=job.probabilities or task.instances,
        should_stop=job.stop_event.is_set,
        **{**job.checkpoint.inference_settings(), "postprocess": job.postprocess},
    )
    result = yield from job.tiles
    job.scales = result.scales
    if task.instances and result.probabilities is not None:
        # (..., K, H, W) probabilities -> (..., n_maps, H, W) maps, in this thread.
        probabilities = np.asarray(result.probabilities)
        job.maps = task.tile_maps(np.moveaxis(probabilities, -3, 0))
        job.maps = np.moveaxis(job.maps, 0, -3)
        if not job.probabilities:
            result.probabilities = None
    return result


def _settings_problem(checkpoint: Checkpoint, settings: Postprocess | None) -> str:
    """Say what is wrong with labelling settings for ``checkpoint`` ("" when nothing)."""
    if settings is None or len(checkpoint.task.map_names) > 1:
        return ""
    if settings.seed_threshold is not None and settings.seed_threshold <= settings.threshold:
        return (
            "With the paper's head, seeds are the most confident foreground: raise the seed "
            "threshold above the foreground threshold."
        )
    return ""


def _relabel(task: Any, maps: np.ndarray, settings: Postprocess, scales: list[float]) -> np.ndarray:
    """Label every plane of kept ``(..., n_maps, H, W)`` maps with ``settings`` (a worker).

    Each plane's sizes are taken at the scale its objects were found at.
    """
    plane_shape = maps.shape[:-3]
    labels = np.zeros((*plane_shape, *maps.shape[-2:]), dtype=labels_dtype(task))
    for plane, index in enumerate(np.ndindex(*plane_shape)):
        scale = scales[plane] if plane < len(scales) else 1.0
        task.label_plane(maps[index], settings.at_scale(scale), out=labels[index])
    return labels


def _predict_to_store(job: _Job) -> Generator[BlockResult, None, ZarrSegmentation]:
    # Block by block in this worker thread; the image is read one block at a time.
    job.tiles = segment_to_zarr_generator(
        job.checkpoint,
        job.data,
        job.store,
        channel_axis=job.channel_axis,
        config=job.config,
        postprocess=job.postprocess,
        probabilities=job.probabilities,
        should_stop=job.stop_event.is_set,
        # Written once into the store, so that napari's overviews do not read it whole.
        levels=job.level_strides,
    )
    return (yield from job.tiles)


def _segment(job: _Job) -> Generator[Any, None, Prediction | ZarrSegmentation | Failure]:
    """Worker body: tiles (or blocks), then the result or a Failure (memory errors as advice)."""
    result = yield from guarded(_predict(job) if job.store is None else _predict_to_store(job))
    if isinstance(result, Failure) and isinstance(
        result.error, (torch.cuda.OutOfMemoryError, MemoryError)
    ):
        return Failure(
            UserError(
                f"Out of memory while segmenting {job.image_name!r} on {job.device}: set a "
                f"smaller tile size, or choose the cpu device."
            )
        )
    return result


# -- choices -> job (main thread) ---------------------------------------------------------


def _choose_checkpoint(model: str | None, model_file: Path | None) -> Checkpoint:
    """Return the checkpoint named in the model list, or read ``model_file``."""
    if model and model != FILE_CHOICE:
        if model in trained_models.names():
            return trained_models.get(model)
        try:
            return load_model(model)
        except FileNotFoundError:
            raise UserError(
                f"The model {model!r} is no longer available; choose another model or a "
                f"checkpoint file."
            ) from None
        except (CheckpointError, ModelHashError) as error:
            raise UserError(str(error)) from error
    if model_file is None or not str(model_file) or str(model_file) == "." or model_file.is_dir():
        raise UserError(
            "Choose a model file (.pt, or a bioimage.io .zip exported by napari-unet) under "
            "'model file', or a model in the list: 'nuclei' is the pretrained one, and the "
            "Train U-Net widget adds yours."
        )
    try:
        return load_model_file(model_file)
    except (CheckpointError, FileNotFoundError) as error:
        raise UserError(str(error)) from error


def _channel_axis(
    layer: napari.layers.Image, shape: tuple[int, ...], in_channels: int
) -> int | None:
    """Where the model's input channels lie in the layer's data, or a UserError.

    RGB(A) layers have their channels last. Other layers are grey unless the
    model wants several channels: then the leading axis (not one of the last
    two) whose length is ``in_channels`` holds them, axis -3 first.
    """
    if layer.rgb:
        if in_channels == 1:
            raise UserError(
                f"{layer.name!r} is an RGB image but the model was trained on grey "
                f"(1-channel) images; choose a model trained on RGB images, or split the "
                f"image into channels (Layers > Split RGB) and segment one of them."
            )
        if shape[-1] != in_channels:
            raise UserError(
                f"The model expects {in_channels} channels but {layer.name!r} has "
                f"{shape[-1]} colour channels; choose a model trained on such images."
            )
        return -1
    if in_channels == 1:
        return None
    leading = range(len(shape) - 2)
    matches = [axis for axis in leading if shape[axis] == in_channels]
    if not matches:
        raise UserError(
            f"The model expects {in_channels} channels but {layer.name!r} (shape "
            f"{tuple(shape)}) has no axis of length {in_channels} besides its last two; "
            f"choose a model trained on 1-channel images, or a multi-channel image."
        )
    preferred = len(shape) - 3
    return preferred if preferred in matches else matches[0]


# -- labelling settings --------------------------------------------------------------------

#: Pause after the last change of a labelling setting before labelling again.
RELABEL_DEBOUNCE_MS = 150
#: How many of the least certain objects "show where to annotate next" lists.
LEAST_CERTAIN = 10


class _LabellingControls:
    """Threshold, seed threshold, smallest object, tessellation: the model's, or the user's.

    Until the user changes one, each run uses the settings calibrated for the
    model when it was trained, and the controls show them. Once changed, the
    user's values are used for every run, and the last result is labelled
    again with them at once (the network does not run again); "use the
    model's" goes back.
    """

    def __init__(self, on_change: Any) -> None:
        self.own = False  # the user has changed a setting
        self.heading = Label(value="labelling: the model's calibrated settings", label="")
        self.threshold = FloatSpinBox(
            label="foreground threshold", value=0.5, min=0.05, max=0.95, step=0.05,
            tooltip="A pixel belongs to an object above this foreground probability.",
        )  # fmt: skip
        self.seed_threshold = FloatSpinBox(
            label="seed threshold", value=0.6, min=0.05, max=0.95, step=0.05,
            tooltip="Objects grow from pixels above this value: the interior probability "
            "(three-class head), the distance to the border as a fraction of the object's "
            "largest (distance head) or the foreground probability (paper head). Higher "
            "splits more touching objects; too high splits single ones.",
        )  # fmt: skip
        self.min_size = SpinBox(
            label="smallest object (px)", value=0, min=0, max=1_000_000, step=10,
            tooltip="Objects with fewer pixels are dropped.",
        )  # fmt: skip
        self.tessellate = CheckBox(
            text="grow cells to tile the image", value=False,
            tooltip="Grow the objects over every pixel, so that cells separated by "
            "membranes (electron microscopy) tile the image.",
        )  # fmt: skip
        self.reset_button = PushButton(text="use the model's settings", enabled=False)
        self.widgets = [
            self.heading,
            self.threshold,
            self.seed_threshold,
            self.min_size,
            self.tessellate,
            self.reset_button,
        ]
        self._on_change = on_change
        self._model: Postprocess | None = None
        for control in self._controls:
            control.changed.connect(self._changed)
        self.reset_button.changed.connect(self.reset)

    @property
    def _controls(self) -> tuple[Any, ...]:
        return (self.threshold, self.seed_threshold, self.min_size, self.tessellate)

    def _changed(self) -> None:
        self.own = True
        self.heading.value = "labelling: your settings"
        self.reset_button.enabled = True
        self._on_change()

    def reset(self) -> None:
        """Use the model's settings again (and re-label the last result with them)."""
        self.own = False
        self.heading.value = "labelling: the model's calibrated settings"
        self.reset_button.enabled = False
        if self._model is not None:
            self._show(self._model)
        self._on_change()

    def _show(self, settings: Postprocess) -> None:
        values = (
            settings.threshold,
            settings.seed_threshold or 0.5,
            settings.min_size,
            settings.tessellate,
        )
        for control, value in zip(self._controls, values, strict=True):
            with control.changed.blocked():
                control.value = value

    def settings_for(self, checkpoint: Checkpoint) -> Postprocess | None:
        """Return the settings a run of ``checkpoint`` uses (None for a semantic model)."""
        model = checkpoint.postprocess
        if model is None:
            return None
        self._model = model
        if not self.own:
            self._show(model)
            return model
        return replace(
            model,
            threshold=float(self.threshold.value),
            seed_threshold=float(self.seed_threshold.value),
            min_size=int(self.min_size.value),
            tessellate=bool(self.tessellate.value),
        )


# -- the widget's state -------------------------------------------------------------------


class _Session:
    """State of one Segment widget: its widgets, its worker and the current job."""

    # Class-level fallbacks for ``close``: the widget and its session form a
    # reference cycle, and when the garbage collector clears it the widget's
    # ``destroyed`` signal can arrive after the session's ``__dict__`` is emptied.
    # (While a worker runs, its signal connections keep the session alive.)
    slot: WorkerSlot | None = None
    alive: bool = False

    def __init__(self, gui: FunctionGui) -> None:
        self.gui = gui
        self.slot = WorkerSlot()
        self.job: _Job | None = None
        self.alive = True
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress", visible=True)
        self.status = Label(value="Ready.", label="")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.labelling = _LabellingControls(self.relabel_soon)
        self.uncertainty_button = PushButton(
            text="show where to annotate next",
            enabled=False,
            tooltip="Add a map of how unsure the network is (0 sure, 1 cannot tell) and list "
            "the least certain objects: the ones to correct and annotate first.",
        )
        self.uncertainty_button.changed.connect(self.show_uncertainty)
        gui.extend(
            [
                self.progress,
                self.status,
                self.cancel_button,
                *self.labelling.widgets,
                self.uncertainty_button,
            ]
        )
        # The last in-memory instance result, which the labelling controls re-label.
        self.kept: _Job | None = None
        self.relabel_slot = WorkerSlot()
        self._relabel_again = False
        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(RELABEL_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.relabel)

    # -- model list

    def on_models_changed(self) -> None:
        """Refresh the model list, newest first; select a model that has just been added."""
        combo = self.gui.model
        current, before = combo.value, set(combo.choices)
        with combo.changed.blocked():
            # magicgui keeps old entries in place and appends new ones; clear
            # first so the list follows trained_models' newest-first order.
            combo.choices = ()
            combo.reset_choices()
            added = [name for name in trained_models.names() if name not in before]
            if added:
                combo.value = added[0]  # just trained: most likely the one wanted
            elif current in combo.choices:
                combo.value = current
        self.sync_file_row()

    def sync_file_row(self) -> None:
        """Show the file chooser only when the checkpoint-file entry is chosen."""
        self.gui.model_file.visible = self.gui.model.value == FILE_CHOICE

    def sync_folder_row(self) -> None:
        """Show the zarr folder chooser only for an image that is segmented into a store."""
        image = self.gui.image.value
        self.gui.zarr_folder.visible = image is not None and _reads_lazily(image)

    # -- running

    @property
    def busy(self) -> bool:
        # ``slot.running`` is False until the thread pool actually starts the
        # worker; the slot holds the worker from start to finish.
        return self.slot.worker is not None

    def run(self, viewer: Any, choices: _Choices) -> GeneratorWorker | None:
        """Check the choices, add the output layer and start the worker."""
        if self.busy:
            show_error("A segmentation is already running; wait for it or press Cancel.")
            return None
        try:
            job = self._make_job(viewer, choices)
        except UserError as error:
            show_error(str(error))
            return None
        worker = create_worker(_segment, job, _start_thread=False)
        worker.yielded.connect(self.on_tile if job.store is None else self.on_block)
        worker.returned.connect(self.on_returned)
        self.job = job
        self.gui.call_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"Segmenting {job.image_name!r}…"
        self.progress.value = 0
        self.slot.start(worker, job.stop_event, on_finished=self.on_finished)
        return worker

    def _make_job(self, viewer: Any, choices: _Choices) -> _Job:
        image = choices.image
        if image is None:
            raise UserError("There is no Image layer to segment: open an image first.")
        checkpoint = _choose_checkpoint(choices.model, choices.model_file)
        postprocess = self.labelling.settings_for(checkpoint)
        problem = _settings_problem(checkpoint, postprocess)
        if problem:
            raise UserError(problem)
        try:
            resolved = resolve_device(choices.device)
        except ValueError as error:  # e.g. cuda requested, none available
            raise UserError(str(error)) from error
        data, _ = image_array(image)
        shape = tuple(int(s) for s in data.shape)
        channel_axis = _channel_axis(image, shape, checkpoint.model_config.in_channels)
        out_shape = without_channel_axis(shape, channel_axis)
        if len(out_shape) < 2 or min(out_shape[-2:]) < 2:
            raise UserError(
                f"{image.name!r} has shape {shape}; segmentation needs 2D planes of at "
                f"least 2x2 pixels."
            )
        if isinstance(data, np.ndarray):
            # Checked here, before a layer is added; lazy images are checked as they are read.
            try:
                check_finite(data, repr(image.name))
            except NonFiniteImageError as error:
                raise UserError(str(error)) from error
        tile_size = choices.tile_size
        config = InferenceConfig(
            tile_shape=(tile_size, tile_size) if tile_size > 0 else None,
            tta=choices.tta,
            object_diameter=choices.object_diameter or "auto",
            device=str(resolved),
        )
        out_placement = placement(image, len(out_shape), channel_axis)
        store, labels_layer = None, None
        if _reads_lazily(image):
            # Never loaded into memory: the result goes to a new zarr store, and its
            # layer is added when the worker returns.
            store = _new_store(choices.zarr_folder, image.name)
            level_strides = _level_strides(image, channel_axis)
        else:
            level_strides = ()
            dtype = labels_dtype(checkpoint.task)
            # A new layer every run (napari makes the name unique): never overwrite
            # the user's layers or an earlier result.
            labels_layer = napari.layers.Labels(
                np.zeros(out_shape, dtype=dtype),
                name=f"{image.name} segmentation",
                **out_placement,
            )
            viewer.add_layer(labels_layer)
        return _Job(
            checkpoint=checkpoint,
            data=data,
            channel_axis=channel_axis,
            config=config,
            postprocess=postprocess,
            device=resolved,
            probabilities=choices.probabilities,
            image_name=image.name,
            out_shape=out_shape,
            out_placement=out_placement,
            labels_layer=labels_layer,
            viewer=viewer,
            store=store,
            level_strides=level_strides,
        )

    def cancel(self) -> None:
        """Stop after the current tile; the worker returns what is done.

        Only the stop event is set: ``worker.quit()`` would end the worker without
        its return value, losing the final instance ids of the finished tiles.
        """
        if self.job is not None:
            self.job.stop_event.set()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling after the current tile…"

    # -- worker callbacks (main thread)

    def on_tile(self, tile: TileResult) -> None:
        """Draw one finished tile into the output layer."""
        job = self.job
        if job is None:
            return
        rows, cols = tile.region
        task = job.checkpoint.task
        if task.instances:
            # Provisional: foreground as label 1. The instance ids come per plane
            # with the final result (the watershed needs the whole plane).
            values = task.tile_maps(tile.probabilities)[0] > job.postprocess.threshold
        else:
            values = task.tile_labels(tile.probabilities)
        index = job.plane_index(tile.plane)
        layer = job.labels_layer
        layer.data[(*index, rows, cols)] = values  # in place: no copy of the layer
        if self._shows_plane(index):
            layer.refresh(extent=False, highlight=False)
        if self.alive:
            total = job.n_planes * tile.count
            self.progress.max = total
            self.progress.value = tile.plane * tile.count + tile.index + 1
            self.status.value = (
                f"plane {tile.plane + 1}/{job.n_planes}, tile {tile.index + 1}/{tile.count}"
            )
            if tile.scale != 1.0:
                self.status.value += f" (resampled x{tile.scale:.2f} to the model's object size)"

    def _shows_plane(self, index: tuple[int, ...]) -> bool:
        """Whether the viewer's current 2D slice may show plane ``index`` of the output.

        Only a thin 2D view of the last two axes at another plane is known to be
        unaffected; anything else (3D view, transposed axes, thick slices) is
        refreshed.
        """
        if not index:
            return True
        job = self.job
        assert job is not None
        dims = job.viewer.dims
        if dims.ndisplay != 2 or tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
            return True
        if any(dims.margin_left) or any(dims.margin_right):
            return True
        # napari picks the plane by rounding the point in data coordinates.
        point = job.labels_layer.world_to_data(dims.point)
        return all(int(np.round(p)) == i for p, i in zip(point[: len(index)], index, strict=True))

    def on_block(self, block: BlockResult) -> None:
        """Count a finished block of an image segmented into a store."""
        if self.job is None or not self.alive:
            return
        self.progress.max = block.count
        self.progress.value = block.done
        self.status.value = f"block {block.done}/{block.count}"
        if block.done == block.count:
            # What follows the last block takes a while on a large image: say what it is.
            after = "labelling the objects" if self.job.checkpoint.task.instances else ""
            if self.job.level_strides:
                after = f"{after}, then " if after else ""
                after += "writing the overview levels"
            if after:
                self.status.value += f"; {after}…"

    def on_returned(self, result: Prediction | ZarrSegmentation | Failure) -> None:
        """Show the final labels (and probabilities); say if the run was cancelled or failed."""
        job = self.job
        if job is None:
            return
        if isinstance(result, Failure):
            # The tiles drawn so far stay in the layer (a store's result shows nothing).
            advice = "check that the model suits the image, or try the cpu device."
            if job.store is None:
                advice = f"The tiles finished so far are kept; {advice}"
            else:
                advice = advice[0].upper() + advice[1:]
            show_error(result.message(f"Segmentation of {job.image_name!r}", advice=advice))
            if self.alive:
                self.status.value = "Failed."
            return
        where = ""  # for a store: where it is, since it outlives the layer
        if isinstance(result, ZarrSegmentation):
            if not self.alive:  # the widget (or the viewer) is gone
                return
            self._add_store_layers(job, result)
            where = _where_the_store_is(job.image_name, result.path)
            if result.completed:
                show_info(where)
            done = "blocks"
        else:
            # The final ids replace the provisional mask in one assignment.
            job.labels_layer.data = result.labels
            if job.maps is not None and result.completed:
                self.kept = job
                self.uncertainty_button.enabled = True
                # Re-labelling must not silently replace the user's corrections.
                job.labels_layer.events.paint.connect(job.mark_corrected)
            if job.probabilities and result.probabilities is not None:
                self._add_probabilities(job, [result.probabilities])
            done = "tiles"
        seconds = time.perf_counter() - job.started_at
        if result.completed:
            message = f"Done in {seconds:.1f} s."
        else:
            message = f"Cancelled; the finished {done} are kept."
            show_info(f"Segmentation cancelled; the finished {done} are kept. {where}".strip())
        if self.alive:
            self.status.value = message
            if result.completed:
                self.progress.value = self.progress.max

    def _add_store_layers(self, job: _Job, result: ZarrSegmentation) -> None:
        """Add the Labels layer (and probabilities) that read the zarr store."""
        import dask.array as da
        import zarr

        def levels_of(name: str, array: Any) -> list[Any]:
            # Like its input, a multiscale layer: napari then reads the full resolution
            # only where it is zoomed in. A complete store holds the levels; a cancelled
            # run's are subsampled from its full resolution on the fly.
            if not job.level_strides:
                return [array]
            if result.completed:
                return level_arrays(zarr.open_group(str(result.path), mode="r"), name)
            lazy = da.from_zarr(array)
            return [array] + [lazy[..., ::rows, ::cols] for rows, cols in job.level_strides]

        labels = levels_of("labels", result.labels)
        job.labels_layer = napari.layers.Labels(
            labels if len(labels) > 1 else labels[0],
            name=f"{job.image_name} segmentation",
            multiscale=len(labels) > 1,
            **job.out_placement,
        )
        job.viewer.add_layer(job.labels_layer)
        if job.probabilities and result.probabilities is not None:
            levels = levels_of("probabilities", result.probabilities)
            self._add_probabilities(
                job,
                [level if isinstance(level, da.Array) else da.from_zarr(level) for level in levels],
            )

    def _add_probabilities(self, job: _Job, levels: list[Any]) -> None:
        """Add probability Image layers just below the segmentation.

        ``levels`` holds the ``(..., K, H, W)`` probabilities, or their
        multiscale levels, full resolution first; the layers are those the
        reader of result stores makes (:func:`napari_unet._reader.probability_maps`).
        """
        checkpoint = job.checkpoint
        maps = probability_maps(job.image_name, levels, checkpoint.mode, checkpoint.class_names)
        layers = job.viewer.layers
        for layer_name, data in maps:
            layer = napari.layers.Image(
                data if len(data) > 1 else data[0],
                name=layer_name,
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                multiscale=len(data) > 1,
                **job.out_placement,
            )
            if job.labels_layer in layers:
                layers.insert(layers.index(job.labels_layer), layer)
            else:
                layers.append(layer)

    # -- where to annotate next

    def show_uncertainty(self, *_: Any) -> None:
        """Add (or update) the last result's uncertainty layer; list the least certain objects."""
        kept = self.kept
        if kept is None or kept.maps is None or kept.labels_layer not in kept.viewer.layers:
            self.status.value = "Segment an image first: the map comes from the last result."
            return
        uncertainty = foreground_uncertainty(kept.maps)
        labels = np.asarray(kept.labels_layer.data)
        worst = least_certain_objects(labels, uncertainty, LEAST_CERTAIN)
        layers = kept.viewer.layers
        owner = str(kept.labels_layer.unique_id)
        mine = [layer for layer in layers if layer.metadata.get(UNCERTAINTY_KEY) == owner]
        if mine:
            mine[0].data = uncertainty
        else:
            layer = napari.layers.Image(
                uncertainty,
                name=f"{kept.labels_layer.name} uncertainty",
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                metadata={UNCERTAINTY_KEY: owner},
                **kept.out_placement,
            )
            layers.insert(layers.index(kept.labels_layer), layer)  # under the labels
        listed = ", ".join(f"{object_id} ({score:.2f})" for object_id, score in worst)
        self.status.value = (
            f"Least certain objects: {listed}." if worst else "No objects in the result."
        )

    # -- re-labelling the last result (main thread, work in a worker)

    def relabel_soon(self) -> None:
        """Re-label the last result once the user pauses changing a labelling setting."""
        if self.kept is not None:
            self._debounce.start()

    def relabel(self) -> GeneratorWorker | None:
        """Label the kept maps again with the current settings, off the main thread."""
        kept = self.kept
        if kept is None or kept.maps is None or not self.alive:
            return None
        if kept.labels_layer not in kept.viewer.layers:
            self.kept = None  # the user removed the result: nothing to update
            return None
        if kept.corrected:
            self.status.value = (
                "The result has been corrected by hand, so it is not labelled again (that "
                "would replace your corrections). The new settings apply to the next Run."
            )
            return None
        if self.relabel_slot.running:
            self._relabel_again = True  # the latest settings win, without piling up workers
            return None
        settings = self.labelling.settings_for(kept.checkpoint)
        problem = _settings_problem(kept.checkpoint, settings)
        if problem:
            self.status.value = problem
            return None
        worker = create_worker(
            _relabel,
            kept.checkpoint.task,
            kept.maps,
            settings,
            kept.scales,
            _start_thread=False,
        )
        worker.returned.connect(self.relabel_slot.if_open(self._show_relabelled))
        self.status.value = "Labelling the objects again…"
        self.relabel_slot.start(worker, threading.Event(), on_finished=self._relabel_finished)
        return worker

    def _show_relabelled(self, labels: np.ndarray) -> None:
        kept = self.kept
        if kept is None or kept.labels_layer not in kept.viewer.layers:
            return
        kept.labels_layer.data = labels
        if self.alive:
            n_objects = int(labels.max()) if labels.size else 0
            self.status.value = f"{n_objects} objects with the new settings."

    def _relabel_finished(self) -> None:
        if self._relabel_again and self.alive:
            self._relabel_again = False
            self.relabel()

    def on_finished(self) -> None:
        """Release the network and free GPU memory; re-enable Run."""
        job, self.job = self.job, None
        if job is not None:
            if job.tiles is not None:
                # After napari quits the worker (viewer closing) the generator is still
                # suspended and holds the network: close it now, not when collected.
                job.tiles.close()
                job.tiles = None
            if job.device.type == "cuda":
                torch.cuda.empty_cache()
        if self.alive:
            self.gui.call_button.enabled = True
            self.cancel_button.enabled = False

    def close(self) -> None:
        """Stop the worker and leave the shared model list (the widget is gone)."""
        self.alive = False
        if self.slot is not None:
            self.slot.stop()
        relabel_slot = self.__dict__.get("relabel_slot")
        if relabel_slot is not None:
            relabel_slot.close()
        self.kept = None
        trained_models.changed.disconnect(self.on_models_changed)


def _init_widget(gui: FunctionGui) -> None:
    """Add progress, status and Cancel; keep the model list current."""
    session = _Session(gui)
    gui.session.bind(session)
    gui.model.changed.connect(session.sync_file_row)
    session.sync_file_row()
    # Not the plugin's own weight maps; and, once docked in a viewer, the selected
    # or newest image rather than the first (often a training image).
    every_image = gui.image._default_choices
    gui.image.choices = lambda widget: [
        layer for layer in every_image(widget) if not is_own_map(layer)
    ]
    gui.native_parent_changed.connect(lambda *_: choose_likely_layer(gui, gui.image, likely_image))
    gui.image.changed.connect(session.sync_folder_row)
    session.sync_folder_row()
    trained_models.changed.connect(session.on_models_changed)
    stop_when_closed(gui.native, session.slot)
    keep_narrow(gui)
    # An empty field, not the "." of Path(): nothing is chosen yet.
    for chooser in (gui.model_file, gui.zarr_folder):
        chooser.line_edit.value = ""
    gui.native.destroyed.connect(lambda *_: session.close())


@magic_factory(
    call_button="Run",
    widget_init=_init_widget,
    model={
        "choices": _model_choices,
        "tooltip": "A model trained in this session, a pretrained model ('nuclei'), one of "
        "your models folder, or a file.",
    },
    model_file={
        "label": "model file",
        "filter": "*.pt *.zip",
        "mode": "r",
        "tooltip": "A checkpoint (.pt) saved by the Train U-Net widget or `napari-unet train`, "
        "or a bioimage.io package (.zip) from `napari-unet export`.",
    },
    device={"choices": DEVICE_CHOICES, "tooltip": "auto: CUDA, then Apple MPS, then CPU."},
    probabilities={
        "label": "add probabilities",
        "tooltip": "Also add the predicted probabilities as Image layers.",
    },
    tile_size={
        "label": "tile size (0 = automatic)",
        "min": 0,
        "max": 16384,
        "tooltip": "Output tile side in pixels; smaller tiles need less memory.",
    },
    object_diameter={
        "label": "object diameter (px, 0 = auto)",
        "min": 0.0,
        "max": 10000.0,
        "step": 1.0,
        "tooltip": "Typical diameter of the objects in this image. The image is resampled so "
        "that its objects have the size the model was trained at; 0 estimates it from a "
        "first pass (a second pass runs only where the size differs). Images segmented "
        "block by block into a zarr store keep their own scale.",
    },
    tta={
        "label": "test-time augmentation",
        "tooltip": "Average the 8 flips and rotations of every tile: often a little more "
        "accurate, 8 times slower.",
    },
    zarr_folder={
        "label": "zarr folder",
        "mode": "d",
        "tooltip": "Where the result of a dask, zarr or multiscale image is written (a zarr "
        "store). Empty: a temporary folder deleted when napari exits.",
    },
    session={"widget_type": "EmptyWidget", "visible": False},
)
def segment_widget(
    viewer: napari.Viewer,
    image: napari.layers.Image,
    model: str,
    model_file: Path = Path(),
    device: str = "auto",
    probabilities: bool = False,
    tile_size: int = 0,
    object_diameter: float = 0.0,
    tta: bool = False,
    zarr_folder: Path = Path(),
    session: _Session | None = None,
) -> GeneratorWorker | None:
    """Segment ``image`` with a trained U-Net, tile by tile, into a new Labels layer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the widget is docked in (injected).
    image : napari.layers.Image
        The image (2D, a stack of planes, RGB or multi-channel).
    model : str
        A model trained in this session, a model name (:mod:`napari_unet.registry`:
        the shipped ``"nuclei"`` or one of the user's models folder), or
        ``FILE_CHOICE`` to use ``model_file``.
    model_file : pathlib.Path
        A checkpoint file, used when ``model`` is ``FILE_CHOICE``.
    device : {"auto", "cpu", "cuda"}
        Where the network runs.
    probabilities : bool
        Also add the probabilities as Image layers.
    tile_size : int
        Output tile side in pixels; 0 chooses it automatically.
    object_diameter : float
        Typical object diameter in pixels, to bring the image to the model's
        object size; 0 estimates it per plane (:mod:`napari_unet.scaling`).
    tta : bool
        Test-time augmentation: average the 8 flips and rotations.
    zarr_folder : pathlib.Path
        Where a dask, zarr or multiscale image's result store goes (shown only
        for such images); empty for a temporary folder deleted at exit.
    session : _Session
        The widget's state (bound by the widget; not a user choice).

    Returns
    -------
    GeneratorWorker or None
        The started worker, or None when a notification explained what to fix.
        (The return annotation names no napari layer type, so magicgui adds nothing
        to the viewer.)
    """
    if session is None:
        raise RuntimeError("segment_widget must be created with its widget_init.")
    choices = _Choices(
        image,
        model,
        model_file,
        device,
        probabilities,
        tile_size,
        zarr_folder,
        tta,
        object_diameter,
    )
    return session.run(viewer, choices)
