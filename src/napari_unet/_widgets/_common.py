"""What the three dock widgets share: layers to arrays, trained models, workers.

This is widget-layer code (it imports Qt and napari); the compute core never
imports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget

if TYPE_CHECKING:
    import napari

    from napari_unet.checkpoint import Checkpoint

PLUGIN_NAME = "napari-unet-segmentation"
logger = logging.getLogger("napari_unet")


class UserError(Exception):
    """A problem the user can fix; its message says how. Shown as a notification."""


# -- layers <-> arrays --------------------------------------------------------------------


def image_array(layer: napari.layers.Image) -> tuple[Any, int | None]:
    """Return the data of an Image layer and its channel axis (-1 for RGB, else None).

    Multiscale layers give their full-resolution level. Lazy arrays (dask,
    zarr) are returned as they are: the engines read them tile by tile.
    """
    data = layer.data[0] if layer.multiscale else layer.data
    return data, (-1 if layer.rgb else None)


def spatial_shape(layer: napari.layers.Image) -> tuple[int, ...]:
    """Shape of the image without its RGB channel axis."""
    data, channel_axis = image_array(layer)
    shape = tuple(data.shape)
    return shape[:-1] if channel_axis == -1 else shape


def placement(
    layer: napari.layers.Layer, ndim: int, channel_axis: int | None = None
) -> dict[str, Any]:
    """``scale`` and ``translate`` of ``layer``'s last ``ndim`` axes, for a new layer.

    A ``channel_axis`` that is one of the layer's own axes (a multi-channel
    layer that is not RGB) is left out first; an RGB layer's colour axis is
    not a layer axis, so it needs no care.
    """
    axes = list(range(layer.ndim))
    if channel_axis is not None and not getattr(layer, "rgb", False):
        axes.remove(channel_axis % layer.ndim)
    scale = tuple(layer.scale[axis] for axis in axes)[-ndim:]
    translate = tuple(layer.translate[axis] for axis in axes)[-ndim:]
    return {"scale": scale, "translate": translate}


#: Layer metadata keys of the plugin's own maps (weight maps, uncertainty of a result),
#: each holding the id of the layer it was made from; they are not images to use.
OWN_MAP_KEY = "napari_unet_weight_map_of"
UNCERTAINTY_KEY = "napari_unet_uncertainty_of"


def is_own_map(layer: Any) -> bool:
    """Whether ``layer`` is one of the plugin's maps (not an image to train on or segment)."""
    metadata = getattr(layer, "metadata", {})
    return OWN_MAP_KEY in metadata or UNCERTAINTY_KEY in metadata


def likely_image(viewer: napari.Viewer) -> Any:
    """Return the Image layer a user most likely means: the selected one, else the newest."""
    from napari.layers import Image

    active = viewer.layers.selection.active
    if isinstance(active, Image) and not is_own_map(active):
        return active
    images = [
        layer for layer in viewer.layers if isinstance(layer, Image) and not is_own_map(layer)
    ]
    return images[-1] if images else None


def likely_labels(viewer: napari.Viewer) -> Any:
    """Return the Labels layer a user most likely means.

    The selected one, else the newest that holds objects (an empty one is
    usually a new annotation), else the newest.
    """
    from napari.layers import Labels

    active = viewer.layers.selection.active
    if isinstance(active, Labels):
        return active
    layers = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    with_objects = [
        layer for layer in layers if not layer.multiscale and np.asarray(layer.data).any()
    ]
    return (with_objects or layers or [None])[-1]


#: Choosers show this many characters of a layer name; longer names are cut, not the canvas.
CHOOSER_CHARACTERS = 16


def keep_narrow(container: Any) -> None:
    """Keep a dock narrow whatever the layer names: choosers and labels do not grow with text."""
    from magicgui.widgets import ComboBox, Container, Label
    from qtpy.QtWidgets import QComboBox

    for widget in container:
        if isinstance(widget, Container):
            keep_narrow(widget)
        elif isinstance(widget, ComboBox):
            widget.native.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            widget.native.setMinimumContentsLength(CHOOSER_CHARACTERS)
        elif isinstance(widget, Label):
            widget.native.setWordWrap(True)


def choose_likely_layer(gui: Any, chooser: Any, likely: Callable[[Any], Any]) -> None:
    """Set ``chooser`` to ``likely(viewer)`` once ``gui`` (with a viewer parameter) is docked."""
    try:
        viewer = gui.viewer.value
    except Exception:  # not (yet) in a viewer
        return
    layer = likely(viewer) if viewer is not None else None
    if layer is not None and layer is not chooser.value:
        chooser.reset_choices()
        if layer in chooser.choices:
            chooser.value = layer


def labels_array(layer: napari.layers.Labels) -> np.ndarray:
    """Return the data of a Labels layer as a numpy array (full resolution)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data)


def region_mask(layer: napari.layers.Shapes, shape: tuple[int, ...]) -> np.ndarray:
    """Union of the shapes of ``layer`` as a boolean mask of ``shape``.

    Shapes drawn in 2D apply to every plane of a stack; shapes drawn in a
    stack apply to their own plane.
    """
    if len(layer.data) == 0:
        raise UserError(
            f"The region layer {layer.name!r} has no shapes. Draw rectangles around the "
            f"fully annotated regions, or choose no region layer to train on every labelled "
            f"pixel."
        )
    mask_shape = shape[-layer.ndim :] if layer.ndim <= len(shape) else shape
    masks = layer.to_masks(mask_shape=mask_shape)
    mask = np.any(masks, axis=0)
    return np.broadcast_to(mask, shape).copy()


# -- engines -----------------------------------------------------------------------------


engines_ready = threading.Event()
_warm_up_lock = threading.Lock()
_warm_up_started = False


def load_engines_in_background() -> None:
    """Import PyTorch and warm it up in a thread when a widget opens.

    ``import torch`` takes about a second, and the first optimiser step imports
    more of it (dynamo, sympy) while holding the GIL for up to 0.3 s at a time.
    Done when the user presses Train, either would stall the viewer then. The
    first Labels layer of a session imports its colour code (scikit-image's
    colour module, scipy.linalg: 0.3-0.45 s); done when Run adds the result
    layer, that import would stall the viewer at the click.
    """

    def load() -> None:
        import napari
        import torch

        napari.layers.Labels(np.zeros((1, 1), np.uint8))  # not added: only its imports

        import napari_unet.checkpoint
        import napari_unet.training  # noqa: F401 (also imports inference)
        from napari_unet.model import UNet, UNetConfig

        model = UNet(UNetConfig(depth=1, base_channels=2))
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.zeros(1, 1, 28, 28)).sum().backward()
        optimizer.step()

    def load_then_signal() -> None:
        try:
            load()
        finally:
            engines_ready.set()

    global _warm_up_started
    with _warm_up_lock:
        if _warm_up_started:  # once per napari session
            return
        _warm_up_started = True
    threading.Thread(target=load_then_signal, name="napari-unet-warm-up", daemon=True).start()


# -- trained models -----------------------------------------------------------------------


class TrainedModels:
    """The models trained (or loaded) in this napari session, by display name.

    The Train widget adds to it; the Segment and Train widgets offer its
    entries as "start from" and "model" choices and update when it changes.
    """

    changed = Signal()

    def __init__(self) -> None:
        self._models: dict[str, Checkpoint] = {}

    def add(self, checkpoint: Checkpoint, name: str) -> str:
        """Store ``checkpoint`` under ``name`` (made unique) and return the name."""
        unique, count = name, 1
        while unique in self._models:
            count += 1
            unique = f"{name} ({count})"
        self._models[unique] = checkpoint
        self.changed.emit()
        return unique

    def names(self) -> list[str]:
        """Newest first."""
        return list(reversed(self._models))

    def get(self, name: str) -> Checkpoint:
        return self._models[name]

    def clear(self) -> None:
        self._models.clear()
        self.changed.emit()


trained_models = TrainedModels()


class BorderSettings:
    """The weight map's w0 and sigma: one pair of values for the preview and for training.

    The Weight map preview and Train U-Net both show them; what the user sets
    in one dock is what the other shows and what training uses (and the
    checkpoint records).
    """

    changed = Signal()

    def __init__(self) -> None:
        self.w0, self.sigma = DEFAULT_W0, DEFAULT_SIGMA

    def set(self, w0: float, sigma: float) -> None:
        """Change the values (and tell every dock) when they differ."""
        if (float(w0), float(sigma)) != (self.w0, self.sigma):
            self.w0, self.sigma = float(w0), float(sigma)
            self.changed.emit()

    def reset(self) -> None:
        """Back to the paper's values."""
        self.set(DEFAULT_W0, DEFAULT_SIGMA)

    def link(self, w0_box: Any, sigma_box: Any) -> BorderLink:
        """Keep two spin boxes and these settings equal; keep the returned link alive."""
        return BorderLink(self, w0_box, sigma_box)


class BorderLink:
    """Two spin boxes of one dock tied to :class:`BorderSettings` (both ways)."""

    def __init__(self, settings: BorderSettings, w0_box: Any, sigma_box: Any) -> None:
        self.settings, self.w0_box, self.sigma_box = settings, w0_box, sigma_box
        self._pulling = False
        self.pull()
        w0_box.changed.connect(self.push)
        sigma_box.changed.connect(self.push)
        # A bound method: psygnal holds it weakly, so a closed dock is let go.
        settings.changed.connect(self.pull)

    def push(self, *_: Any) -> None:
        # Not while pulling: half-updated boxes would send back a stale value.
        if not self._pulling:
            self.settings.set(self.w0_box.value, self.sigma_box.value)

    def pull(self) -> None:
        self._pulling = True
        try:
            if self.w0_box.value != self.settings.w0:
                self.w0_box.value = self.settings.w0
            if self.sigma_box.value != self.settings.sigma:
                self.sigma_box.value = self.settings.sigma
        except RuntimeError:  # the dock's Qt widgets are gone
            self.settings.changed.disconnect(self.pull)
        finally:
            self._pulling = False


#: The paper's border weight and width.
DEFAULT_W0, DEFAULT_SIGMA = 10.0, 5.0
border_settings = BorderSettings()


def describe(checkpoint: Checkpoint) -> str:
    """Name a checkpoint briefly: mode, size and training steps."""
    config = checkpoint.model_config
    # A fine-tuned model counts the steps of the runs it comes from too.
    steps = checkpoint.metadata.get("total_steps", checkpoint.metadata.get("steps"))
    trained = f", {steps} steps" if steps is not None else ""
    return f"{checkpoint.mode}, base {config.base_channels}{trained}"


# -- workers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What a worker returns instead of raising (see :func:`guarded`)."""

    error: Exception

    def message(self, action: str, advice: str = "") -> str:
        """One sentence for a notification; the engines' errors say what to do.

        ``advice`` follows an unexpected error, whose message says nothing to do.
        """
        if isinstance(self.error, UserError):
            return str(self.error)
        if isinstance(self.error, MemoryError):
            return f"{action} ran out of memory. " + (
                advice or "Crop the image, or close other programs, and try again."
            )
        if isinstance(self.error, (ValueError, TypeError)):
            return f"{action} could not run: {self.error}"
        message = f"{action} failed ({type(self.error).__name__}: {self.error})."
        return f"{message} {advice}" if advice else message


def guarded(events: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Pass ``events`` through; turn an exception into a returned :class:`Failure`.

    napari's workers re-raise unhandled errors in the event loop and show a
    second, bare notification, and superqt's take a RuntimeError for a deleted
    worker (no ``errored``, no ``finished``: the widget would stay busy).
    Returning the error lets the widget's ``returned`` handler show one message
    that says what to do. The traceback goes to the log.
    """
    try:
        return (yield from events)
    except Exception as error:
        logger.exception("worker failed")
        return Failure(error)


@dataclass
class WorkerSlot:
    """At most one running worker per widget, stopped cooperatively.

    The engines poll ``should_stop`` between steps or tiles and then return
    what they have; ``stop`` sets that flag.
    """

    worker: Any = None
    stop_event: threading.Event | None = None
    closed: bool = False  # the widget is gone: results have nowhere to go

    @property
    def running(self) -> bool:
        """A worker was started and has not finished (it may not have begun yet)."""
        return self.worker is not None

    def start(
        self,
        worker: Any,
        stop_event: threading.Event,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """Hold ``worker`` until it finishes, then call ``on_finished``.

        The slot is released and ``on_finished`` called from one connection to
        ``finished``: two separate connections are two queued events, and under
        load the main thread can run the first (which may start the next
        worker) before the worker thread has posted the second.
        """
        self.worker, self.stop_event = worker, stop_event

        def finished() -> None:
            if self.worker is worker:  # a newer worker may already have taken the slot
                self.worker = None
            if on_finished is not None:
                on_finished()

        worker.finished.connect(finished)
        worker.start()

    def if_open(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a worker callback so that it does nothing once the widget is closed."""

        def call(*args: Any) -> None:
            if not self.closed:
                callback(*args)

        return call

    def close(self) -> None:
        """Drop further results and stop the worker: the widget is closing."""
        self.closed = True
        self.stop()

    def stop(self) -> None:
        # Only the cooperative flag: worker.quit() would abandon the engine's generator
        # without its return value (the model trained so far) and without its cleanup.
        if self.stop_event is not None:
            self.stop_event.set()


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the watched widget is closed or taken out of its dock."""

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._on_close = on_close
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.Close or (
            kind == QEvent.Type.ParentChange and watched.parent() is None
        ):
            self._on_close()
        return False


def stop_when_closed(
    widget: QWidget, slot: WorkerSlot, on_close: Callable[[], None] | None = None
) -> None:
    """Stop ``slot``'s worker when ``widget`` closes, leaves its dock or is destroyed.

    ``on_close``, if given, is called then too (possibly more than once).
    """

    def close() -> None:
        slot.close()
        if on_close is not None:
            on_close()

    _CloseWatcher(widget, close)
    widget.destroyed.connect(lambda *_: close())
