r"""Weight map preview: the U-Net loss weights of a Labels layer, live in the viewer.

The U-Net is trained with a pixel-wise weighted loss (Ronneberger et al. 2015,
eq. 2),

.. math::

    w(x) = w_c(x) + w_0 \exp\left(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\right),

whose second term puts a high weight on the thin background gaps between
touching objects. This dock widget shows that map for the chosen Labels layer
as an Image layer and recomputes it when a parameter changes or the labels are
painted, so a biologist can choose ``w0`` and ``sigma`` by looking at them.

This is widget-layer code (Qt and napari); the maths is
:func:`napari_unet.weights.boundary_weight_map`. The computation runs in a
thread worker that takes numpy arrays and yields one 2D plane at a time; the
viewer is changed only in the worker's callbacks, on the main thread.
"""

# No `from __future__ import annotations` here: magicgui resolves the return
# annotation of a string-annotated function by importing it, which fails for a
# class of this module.

import threading
import weakref
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import napari
import numpy as np
from magicgui import magic_factory
from magicgui.widgets import FunctionGui, Label
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from napari_unet._widgets._common import (
    OWN_MAP_KEY,
    Failure,
    UserError,
    WorkerSlot,
    border_settings,
    choose_likely_layer,
    guarded,
    keep_narrow,
    labels_array,
    likely_labels,
    placement,
    stop_when_closed,
)
from napari_unet.weights import boundary_weight_map

__all__ = ["weight_map_planes", "weight_map_widget"]

#: Key in the output layer's ``metadata``: the ``unique_id`` of its Labels layer.
METADATA_KEY = OWN_MAP_KEY
#: Wait this long after the last paint stroke before recomputing (milliseconds).
DEBOUNCE_MS = 300


# -- the computation (no Qt: runs in the worker thread) -----------------------------------


@dataclass(frozen=True)
class PlaneWeights:
    """One computed plane, as yielded by :func:`weight_map_planes`.

    Attributes
    ----------
    index : int
        Index of the plane in the stack flattened to ``(n_planes, H, W)``.
    n_planes : int
        Number of planes in the stack (1 for a 2D image).
    weights : numpy.ndarray of float32, shape (H, W)
        The weight map of the plane; all 0 for a plane without objects, which
        training skips.
    n_objects : int
        0, 1, or 2 for "two or more" objects in the plane.
    """

    index: int
    n_planes: int
    weights: np.ndarray
    n_objects: int


@dataclass(frozen=True)
class Summary:
    """What :func:`weight_map_planes` returns once it ends.

    Attributes
    ----------
    n_planes : int
        Number of planes in the stack.
    planes_done : int
        Number of planes computed (fewer than ``n_planes`` when stopped).
    stopped : bool
        Whether ``stop_event`` ended the computation early.
    empty_planes : tuple of int
        Planes without any object.
    single_object_planes : tuple of int
        Planes with exactly one object (no border term there).
    """

    n_planes: int
    planes_done: int
    stopped: bool
    empty_planes: tuple[int, ...] = ()
    single_object_planes: tuple[int, ...] = ()

    @property
    def no_objects(self) -> bool:
        """Whether the whole stack holds no object (nothing was computed)."""
        return not self.stopped and len(self.empty_planes) == self.n_planes


def weight_map_planes(
    labels: np.ndarray,
    *,
    w0: float,
    sigma: float,
    class_weights: str | None,
    stop_event: threading.Event | None = None,
) -> Generator[PlaneWeights, None, Summary]:
    """Compute the boundary weight map of a label image plane by plane.

    :func:`~napari_unet.weights.boundary_weight_map` is 2D; a stack
    ``(..., H, W)`` is computed one ``(H, W)`` plane at a time, so that a
    caller can show each plane as it comes and stop between planes.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (..., H, W)
        Instance labels, 0 for background. Must not change while the generator
        runs (pass a copy of data that the user may paint).
    w0, sigma : float
        Border weight and border width in pixels, as in
        :func:`~napari_unet.weights.boundary_weight_map`.
    class_weights : {"balanced", None}
        Class weights :math:`w_c`, balanced per plane or all 1.
    stop_event : threading.Event, optional
        Checked before each plane; when set, the generator returns early.

    Yields
    ------
    PlaneWeights
        One per plane, in order. Planes without objects get an all-zero map:
        training skips them, so they carry no weight. Nothing is yielded when
        the whole stack has no object.

    Returns
    -------
    Summary
        Planes done, whether it was stopped, and the planes with fewer than two
        objects.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((2, 9, 11), dtype=np.int32)
    >>> labels[0, 3:6, 1:4] = 1
    >>> labels[0, 3:6, 7:10] = 2
    >>> planes = weight_map_planes(labels, w0=10.0, sigma=2.0, class_weights=None)
    >>> [(p.index, p.n_objects, round(float(p.weights.max()), 4)) for p in planes]
    [(0, 2, 2.3534), (1, 0, 0.0)]
    """
    if labels.ndim < 2:
        raise ValueError(f"labels must be 2D or a stack of 2D planes, got shape {labels.shape}.")
    height, width = labels.shape[-2:]
    planes = labels.reshape(-1, height, width)
    n_planes = len(planes)
    empty: list[int] = []
    single: list[int] = []
    if not planes.any():
        # Nothing to show: do not yield, so the caller adds no layer.
        return Summary(n_planes, 0, False, tuple(range(n_planes)))
    for index, plane in enumerate(planes):
        if stop_event is not None and stop_event.is_set():
            return Summary(n_planes, index, True, tuple(empty), tuple(single))
        objects = plane[plane != 0]
        if objects.size == 0:
            n_objects = 0
            weights = np.zeros((height, width), dtype=np.float32)
            empty.append(index)
        else:
            # "At least two" is all that matters, and min/max is cheaper than unique.
            n_objects = 1 if objects.min() == objects.max() else 2
            if n_objects == 1:
                single.append(index)
            weights = boundary_weight_map(plane, w0=w0, sigma=sigma, class_weights=class_weights)
        yield PlaneWeights(index, n_planes, weights, n_objects)
    return Summary(n_planes, n_planes, False, tuple(empty), tuple(single))


# -- the widget ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """The widget's parameters at one call: what to compute, for which viewer."""

    viewer: Any  # napari.Viewer, usually a PublicOnlyProxy of it
    labels: napari.layers.Labels | None
    w0: float
    sigma: float
    balance_classes: bool


@dataclass
class _Run:
    """One worker's computation, and what its callbacks need on the main thread."""

    request: _Request
    shape: tuple[int, ...]
    stop_event: threading.Event = field(default_factory=threading.Event)
    worker: Any = None
    output: np.ndarray | None = None
    layer: napari.layers.Image | None = None
    peak: float = 0.0


def _weight_map_events(
    labels: np.ndarray, **options: Any
) -> Generator[PlaneWeights, None, Summary | Failure]:
    """Worker body: the planes, then the summary or a Failure."""
    return (yield from guarded(weight_map_planes(labels, **options)))


class _Preview:
    """State of one weight map preview widget: its worker, its layers, its timers.

    The latest request wins: a request that comes while a worker runs stops
    that worker between planes and starts a new one with the latest parameters
    once it has finished, so at most one worker runs and none queue up.
    """

    def __init__(self, widget: FunctionGui, status: Label) -> None:
        self._widget = widget
        self._status = status
        self._slot = WorkerSlot()
        self.run: _Run | None = None
        self._latest: _Request | None = None
        self._pending = False
        self._closed = False
        self._watched: napari.layers.Labels | None = None
        # The layers this widget made, by the unique_id of their Labels layer.
        # Weak references: a layer the user deleted is not kept alive here.
        self._outputs: dict[Hashable, weakref.ref[napari.layers.Image]] = {}
        self._last_notice: str | None = None
        # Timers without a Qt parent, so they can be stopped safely while the
        # widget is being destroyed with the viewer.
        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self._on_debounce)
        # A new worker starts from the event loop, after the old one's `finished`
        # callback has run and its slot is free.
        self._restart = QTimer()
        self._restart.setSingleShot(True)
        self._restart.setInterval(0)
        self._restart.timeout.connect(self._start_latest)
        stop_when_closed(widget.native, self._slot, on_close=self._close)
        # Show the map as soon as the widget opens (once it is docked and sees the
        # viewer), not only after the first change of a parameter.
        self._debounce.start(0)

    @property
    def busy(self) -> bool:
        """Whether a computation runs or is about to start (pending or debounced)."""
        return (
            self.run is not None
            or self._pending
            or self._debounce.isActive()
            or self._restart.isActive()
        )

    # -- requests -----------------------------------------------------------------------

    def request(self, request: _Request) -> None:
        """Show the weight map for ``request``, stopping a computation in progress."""
        if self._closed:
            return
        self._latest = request
        self._watch(request.labels)
        if self.run is not None:
            self.run.stop_event.set()
            self._pending = True
            self._set_status("computing… (restarting with the new settings)")
            return
        self._start(request)

    def _start_latest(self) -> None:
        if not self._closed and self.run is None and self._latest is not None:
            self._start(self._latest)

    def _on_debounce(self) -> None:
        if not self._closed:
            # Calling the widget reads its current values and emits `called`.
            self._widget()

    def _on_labels_edited(self, event: Any = None) -> None:
        if not self._closed:
            self._debounce.start(DEBOUNCE_MS)  # restarts the countdown on every stroke

    def _watch(self, labels: napari.layers.Labels | None) -> None:
        """Recompute when ``labels`` (and no other layer) is painted or replaced."""
        if labels is self._watched:
            return
        self._unwatch()
        if labels is not None:
            labels.events.paint.connect(self._on_labels_edited)
            labels.events.data.connect(self._on_labels_edited)
            self._watched = labels

    def _unwatch(self) -> None:
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._on_labels_edited)
            self._watched.events.data.disconnect(self._on_labels_edited)
            self._watched = None

    # -- the worker -----------------------------------------------------------------------

    def _start(self, request: _Request) -> None:
        try:
            labels = _checked_labels(request)
        except UserError as error:
            self._notify(show_warning, str(error))
            return
        run = _Run(request, labels.shape)
        worker = create_worker(
            _weight_map_events,
            labels,
            w0=request.w0,
            sigma=request.sigma,
            class_weights="balanced" if request.balance_classes else None,
            stop_event=run.stop_event,
            _start_thread=False,
        )
        worker.yielded.connect(partial(self._on_plane, run))
        worker.returned.connect(partial(self._on_returned, run))
        run.worker = worker
        self.run = run
        self._pending = False
        self._set_status("computing…")
        self._slot.start(worker, run.stop_event, on_finished=partial(self._on_finished, run))

    def _on_plane(self, run: _Run, plane: PlaneWeights) -> None:
        if run is not self.run or self._closed or run.stop_event.is_set():
            return  # a stopped run's planes may still arrive: drop them
        if run.output is None:
            self._begin_output(run)
        assert run.output is not None and run.layer is not None
        run.output.reshape(-1, *run.output.shape[-2:])[plane.index] = plane.weights
        run.peak = max(run.peak, float(plane.weights.max()))
        run.layer.contrast_limits = (0.0, run.peak if run.peak > 0 else 1.0)
        run.layer.refresh()
        self._set_status(f"done: plane {plane.index + 1}/{plane.n_planes}")

    def _on_returned(self, run: _Run, result: Summary | Failure) -> None:
        if run is not self.run or self._closed:
            return
        name = run.request.labels.name if run.request.labels is not None else ""
        if isinstance(result, Failure):
            # The planes shown so far stay.
            message = result.message(
                f"The weight map preview of {name!r}",
                advice="Try a smaller image or fewer planes; if that does not help, report "
                "this message as a bug.",
            )
            self._set_status(f"failed: {result.error}")
            self._last_notice = message
            show_error(message)
            return
        summary = result
        if summary.stopped:
            return
        if summary.no_objects:
            self._notify(
                show_warning,
                f"The Labels layer {name!r} has no objects yet, so there is no weight map "
                f"to show. Paint at least two touching objects (e.g. two nuclei) to see the "
                f"high weights on the gap between them.",
            )
            return
        done = f"done: plane {summary.planes_done}/{summary.n_planes}"
        notes = _describe_sparse_planes(summary)
        self._set_status(done if not notes else f"{done}; {notes}")
        if summary.single_object_planes:
            where = "" if summary.n_planes == 1 else " in some planes"
            self._notify(
                show_info,
                f"{name!r} has a single object{where}, so the map shows only the class "
                f"weights there (no border term). Paint a second object touching it to "
                f"see the border weights.",
                status=False,
            )
        else:
            self._last_notice = None  # a later problem is news again

    def _on_finished(self, run: _Run) -> None:
        if run is self.run:
            self.run = None
        if self._pending and not self._closed:
            self._restart.start()

    # -- the output layer -----------------------------------------------------------------

    def _begin_output(self, run: _Run) -> None:
        """Find or make this widget's layer for the run's labels, and its data array."""
        request = run.request
        assert request.labels is not None
        labels = request.labels
        layer = self._own_layer(request)
        where = placement(labels, labels.ndim)
        if layer is None:
            run.output = np.zeros(run.shape, dtype=np.float32)
            layer = napari.layers.Image(
                run.output,
                name=f"{labels.name} weight map",
                colormap="inferno",
                contrast_limits=(0.0, max(request.w0, 1.0)),
                # Additive: the dark (low-weight) pixels let the labels show through,
                # the bright ridges between touching objects stand out.
                blending="additive",
                opacity=0.8,
                metadata={METADATA_KEY: str(labels.unique_id)},
                **where,
            )
            # napari makes the name unique if the user has a layer of that name:
            # a user's layer is never replaced.
            active = request.viewer.layers.selection.active
            request.viewer.add_layer(layer)
            if active is not None:
                # Adding selects the new layer; keep the user's (e.g. the Labels
                # layer being painted) so that painting goes on where it was.
                request.viewer.layers.selection.active = active
            self._outputs[labels.unique_id] = weakref.ref(layer)
        else:
            data = layer.data
            reusable = (
                isinstance(data, np.ndarray)
                and data.dtype == np.float32
                and data.shape == run.shape
                and data.flags.writeable
                and data.flags.c_contiguous  # so that the plane view below writes into it
            )
            # Filling the layer's own array keeps the old planes on screen until
            # their new values arrive (no flash of zeros in a stack).
            run.output = data if reusable else np.zeros(run.shape, dtype=np.float32)
            if not reusable:
                layer.data = run.output
            layer.scale, layer.translate = where["scale"], where["translate"]
        run.layer = layer

    def _own_layer(self, request: _Request) -> napari.layers.Image | None:
        """Return this widget's layer for ``request.labels`` if it is still in the viewer."""
        assert request.labels is not None
        ref = self._outputs.get(request.labels.unique_id)
        layer = ref() if ref is not None else None
        if layer is None or not any(item is layer for item in request.viewer.layers):
            return None  # never made, or deleted by the user: make a new one
        return layer

    # -- messages and closing -------------------------------------------------------------

    def _notify(self, show: Callable[[str], None], message: str, *, status: bool = True) -> None:
        """Show ``message`` in the status line and, unless just shown, as a notification.

        Painting recomputes after every stroke; repeating the same notification
        each time would bury the viewer in pop-ups.
        """
        if status:
            self._set_status(message)
        if message != self._last_notice:
            self._last_notice = message
            show(message)

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self._status.value = text

    def _close(self) -> None:
        """Stop everything for good: called when the widget closes or is destroyed."""
        if self._closed:
            return
        self._closed = True
        self._pending = False
        self._debounce.stop()
        self._restart.stop()
        self._unwatch()
        if self.run is not None:
            self.run.stop_event.set()


def _checked_labels(request: _Request) -> np.ndarray:
    """Return a copy of the chosen labels as a numpy array, or raise a :class:`UserError`."""
    if request.viewer is None:
        raise UserError(
            "The weight map preview needs a napari viewer: open it from the Plugins menu "
            "(U-Net Segmentation > Weight map preview)."
        )
    layer = request.labels
    if layer is None:
        raise UserError(
            "Add or open a Labels layer (e.g. File > New Labels Layer, then paint a few "
            "touching cells) and choose it here to preview its weight map."
        )
    source = layer.data[0] if layer.multiscale else layer.data
    # Multiscale labels: the full-resolution level, as training uses.
    array = labels_array(layer)
    if array is source:
        # The user may paint while the worker reads: give it a snapshot.
        array = array.copy()
    if array.ndim < 2:
        raise UserError(
            f"The Labels layer {layer.name!r} is {array.ndim}D; the weight map needs a 2D "
            f"image or a stack of 2D planes. Choose a 2D or 3D Labels layer."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(
            f"The Labels layer {layer.name!r} holds {array.dtype} values; the weight map "
            f"needs integer object ids (0 = background). Convert the layer's data to "
            f"integers, e.g. with skimage.measure.label for a mask."
        )
    return array


def _describe_sparse_planes(summary: Summary) -> str:
    """Return a short note on planes with fewer than two objects, or ''."""
    if summary.n_planes == 1:
        return "one object only: no border term" if summary.single_object_planes else ""
    notes = []
    if summary.empty_planes:
        notes.append(f"{len(summary.empty_planes)} plane(s) without objects shown as 0")
    if summary.single_object_planes:
        notes.append(f"{len(summary.single_object_planes)} plane(s) with one object")
    return ", ".join(notes)


def _init_widget(widget: FunctionGui) -> None:
    """Add the status line and connect the widget to its preview state."""
    # `labels` is also a magic_factory option (show labels or not), so this
    # parameter's options are set here rather than in the decorator.
    chooser = widget["labels"]
    chooser.label = "Labels layer"
    chooser.tooltip = (
        "The instance labels (one id per cell or nucleus) whose training weights to "
        "show. The map updates when you paint on this layer."
    )
    status = Label(name="status", label="status", value="", gui_only=True)
    status.tooltip = "What the preview is doing: computing, done, or what to fix."
    widget.append(status)
    # The same values as Train U-Net's: what the user previews is trained.
    widget._border_link = border_settings.link(widget.w0, widget.sigma)
    keep_narrow(widget)
    preview = _Preview(widget, status)
    # Strong reference: napari and psygnal keep only weak ones to bound methods.
    widget._weight_map_preview = preview
    widget.called.connect(preview.request)
    # Once docked: the selected Labels layer, else the newest with objects (not the first).
    # (widget.labels is magicgui's "show labels" flag; the chooser is widget["labels"].)
    widget.native_parent_changed.connect(
        lambda *_: choose_likely_layer(widget, widget["labels"], likely_labels)
    )


@magic_factory(
    auto_call=True,
    widget_init=_init_widget,
    w0={
        "label": "border weight w0",
        "min": 0.0,
        "max": 100.0,
        "step": 1.0,
        "tooltip": "Extra weight on the background gaps between touching objects "
        "(10 in the U-Net paper). Higher values make the network work harder to "
        "separate touching cells.",
    },
    sigma={
        "label": "border width sigma (px)",
        "min": 0.5,
        "max": 50.0,
        "step": 0.5,
        "tooltip": "How far from the gap the extra weight reaches, in pixels (5 in the "
        "U-Net paper). Use about the width of the gaps between your cells.",
    },
    balance_classes={
        "label": "balance classes",
        "tooltip": "Weight background and object pixels so that both count equally "
        "in training (useful when cells cover little of the image). Off: both weigh 1.",
    },
)
def weight_map_widget(
    viewer: napari.Viewer,
    labels: napari.layers.Labels,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance_classes: bool = True,
) -> _Request:
    """Preview the U-Net boundary weight map of a Labels layer.

    The map is shown as an Image layer named "<labels> weight map" and
    recomputed, in a background thread, whenever a parameter changes or the
    labels are painted.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (filled in by napari).
    labels : napari.layers.Labels
        The Labels layer whose weight map to show.
    w0 : float
        Border weight: extra weight on the gaps between touching objects.
    sigma : float
        Border width in pixels.
    balance_classes : bool
        Balance background and object pixels (``class_weights="balanced"``);
        otherwise both classes weigh 1.

    Returns
    -------
    _Request
        The parameters; the widget's ``called`` signal hands them to the
        preview, which runs the computation.
    """
    return _Request(viewer, labels, float(w0), float(sigma), bool(balance_classes))
