"""The "Correct objects" dock widget: delete, merge and split objects with the mouse.

The user chooses a Labels layer (by default the selected one, else the newest:
usually the Segment result) and a tool; clicks and drags on the canvas then
edit that layer through napari's own history (``Labels.data_setitem``), so
Ctrl+Z undoes each correction. The edits themselves are computed by
:mod:`napari_unet.editing`, which knows nothing of napari.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, RadioButtons
from napari.layers import Labels

from napari_unet._widgets._common import keep_narrow, likely_labels
from napari_unet.editing import Edit, delete_object, merge_objects, object_at, split_along

if TYPE_CHECKING:
    import napari.viewer

OFF, DELETE, MERGE, SPLIT = "off", "delete (click)", "merge (click two)", "split (draw a line)"
HELP = {
    OFF: "Choose a tool, then click or draw on the labels. Ctrl+Z undoes a correction.",
    DELETE: "Click an object to delete it.",
    MERGE: "Click an object, then another: the second joins the first.",
    SPLIT: "Drag a line across an object, from one side to the other, to cut it in two.",
}


def _labels_layers(viewer: napari.viewer.Viewer) -> list[tuple[str, Labels]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Labels)]


class CorrectWidget(Container):
    """Correct a Labels layer object by object, with undo."""

    # napari passes the viewer to a parameter annotated exactly "napari.viewer.Viewer".
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.layer_box = ComboBox(
            label="labels",
            choices=lambda _: _labels_layers(viewer),
            tooltip="The Labels layer to correct.",
        )
        self.tool = RadioButtons(label="tool", choices=[OFF, DELETE, MERGE, SPLIT], value=OFF)
        self.help = Label(label="", value=HELP[OFF])
        self.help.native.setWordWrap(True)
        self.status = Label(label="", value="")
        self.status.native.setWordWrap(True)
        super().__init__(widgets=[self.layer_box, self.tool, self.help, self.status])
        self._layer: Labels | None = None
        self._first: int | None = None  # merge: the object clicked first
        self._choose_likely_layer()
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        self.layer_box.changed.connect(self._attach)
        self.tool.changed.connect(self._tool_changed)
        self.native.destroyed.connect(lambda *_: self._detach())
        keep_narrow(self)

    # -- which layer --------------------------------------------------------------------

    def _choose_likely_layer(self) -> None:
        layer = likely_labels(self.viewer)
        if layer is not None:
            self.layer_box.value = layer

    def _layers_changed(self, *_: Any) -> None:
        try:
            self.layer_box.reset_choices()
        except RuntimeError:  # the dock is gone
            return
        if self._layer is not None and self._layer not in self.viewer.layers:
            self._detach()

    def _attach(self, *_: Any) -> None:
        """Listen to the mouse on the chosen layer (and only while a tool is on)."""
        self._detach()
        layer = self.layer_box.value
        if layer is None or self.tool.value == OFF:
            return
        if layer.multiscale:
            self.status.value = (
                f"{layer.name!r} is multiscale (read from a store): corrections need a "
                "Labels layer held in memory. Load the result as one level first."
            )
            return
        self._layer = layer
        layer.mouse_drag_callbacks.append(self._on_mouse)
        layer.mode = "pan_zoom"  # clicks go to the tool, not to the paint brush
        # Drawing a line must not also pan the view.
        layer.mouse_pan = self.tool.value != SPLIT
        self.viewer.layers.selection.active = layer  # napari sends the mouse to the active layer

    def _detach(self) -> None:
        layer, self._layer = self._layer, None
        if layer is not None and self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
            layer.mouse_pan = True

    def _tool_changed(self, *_: Any) -> None:
        self._first = None
        self.help.value = HELP[self.tool.value]
        self.status.value = ""
        self._attach()

    # -- the mouse ----------------------------------------------------------------------

    def _on_mouse(self, layer: Labels, event: Any) -> Any:
        """Follow a click (delete, merge) or a drag (split) on the layer."""
        points = [layer.world_to_data(event.position)]
        yield
        while event.type == "mouse_move":
            points.append(layer.world_to_data(event.position))
            yield
        if self.tool.value == SPLIT:
            self.draw(points)
        elif len(points) < 3:  # a click, not a pan
            self.click(points[-1])

    def click(self, position: Any) -> None:
        """Delete or merge at ``position`` (data coordinates of the layer)."""
        plane, index = self._plane(position)
        if plane is None:
            return
        clicked = object_at(plane, position[-2:])
        if self.tool.value == DELETE:
            self._apply(delete_object(plane, clicked), index)
        elif self.tool.value == MERGE:
            if self._first is None:
                if clicked == 0:
                    self.status.value = "That is background: click inside an object."
                    return
                self._first = clicked
                self.status.value = f"Object {clicked} chosen: click the object to merge into it."
                return
            first, self._first = self._first, None
            self._apply(merge_objects(plane, first, clicked), index)

    def draw(self, points: list[Any]) -> None:
        """Split the objects that the line through ``points`` (data coordinates) crosses."""
        if not points:
            return
        plane, index = self._plane(points[0])
        if plane is not None:
            self._apply(split_along(plane, [p[-2:] for p in points]), index)

    def _plane(self, position: Any) -> tuple[np.ndarray | None, tuple[int, ...]]:
        layer = self._layer
        if layer is None:
            return None, ()
        index = tuple(round(float(c)) for c in position[:-2])
        if any(not 0 <= i < n for i, n in zip(index, layer.data.shape, strict=False)):
            return None, ()
        return np.asarray(layer.data[index]), index

    def _apply(self, edit: Edit, index: tuple[int, ...]) -> None:
        self.status.value = edit.summary
        if edit.empty or self._layer is None:
            return
        fixed = tuple(np.full(edit.rows.size, i, np.intp) for i in index)
        # data_setitem records the change in napari's history: Ctrl+Z undoes it.
        self._layer.data_setitem((*fixed, edit.rows, edit.columns), edit.values)
