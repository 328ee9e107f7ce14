"""The Correct objects widget: delete, merge and split with the mouse, each undoable."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)

from napari_unet._widgets._common import PLUGIN_NAME
from napari_unet._widgets.correct import DELETE, MERGE, SPLIT, CorrectWidget


@dataclass
class MouseEvent:
    type: str
    position: tuple[float, ...]
    is_dragging: bool = False
    view_direction: None = None
    dims_displayed: tuple[int, ...] = (0, 1)
    dims_point: tuple[float, ...] = (0, 0)
    modifiers: list = field(default_factory=list)


def drag(layer, *points) -> None:
    """Press at the first point, move through the others, release at the last."""
    mouse_press_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_press", points[0])))
    for point in points[1:]:
        mouse_move_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_move", point, True)))
    mouse_release_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_release", points[-1])))


def result_layer(viewer):
    plane = np.zeros((40, 60), np.int32)
    plane[4:20, 4:40] = 1
    plane[24:36, 10:50] = 2
    plane[24:36, 52:58] = 3
    viewer.add_labels(np.zeros_like(plane), name="my annotation")
    # World coordinates differ from the data's: the tools must convert.
    return viewer.add_labels(plane, name="image segmentation", scale=(2, 2), translate=(10, 0))


def test_opens_from_the_plugin_menu_on_the_newest_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = result_layer(viewer)
    viewer.layers.selection.clear()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Correct objects")
    assert isinstance(widget, CorrectWidget)
    assert widget.layer_box.value is layer


def test_delete_merge_and_split_with_the_mouse_each_undone(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = result_layer(viewer)
    original = layer.data.copy()
    widget = CorrectWidget(viewer)
    assert widget.layer_box.value is layer

    widget.tool.value = DELETE
    assert viewer.layers.selection.active is layer and layer.mode == "pan_zoom"
    drag(layer, (10 + 2 * 30, 2 * 54))  # a click on object 3, in world coordinates
    assert 3 not in layer.data and "Deleted object 3" in widget.status.value
    layer.undo()
    assert np.array_equal(layer.data, original)

    widget.tool.value = MERGE
    drag(layer, (10 + 2 * 10, 2 * 10))
    assert "Object 1 chosen" in widget.status.value
    drag(layer, (10 + 2 * 30, 2 * 20))
    assert set(np.unique(layer.data)) == {0, 1, 3}
    layer.undo()
    assert np.array_equal(layer.data, original)

    widget.tool.value = SPLIT
    assert not layer.mouse_pan  # drawing does not pan
    drag(layer, (10 + 2 * 1, 2 * 22), (10 + 2 * 12, 2 * 22), (10 + 2 * 23, 2 * 22))
    assert set(np.unique(layer.data)) == {0, 1, 2, 3, 4}
    assert np.array_equal(layer.data > 0, original > 0)
    layer.undo()
    assert np.array_equal(layer.data, original)

    widget.tool.value = "off"
    assert layer.mouse_pan and widget._on_mouse not in layer.mouse_drag_callbacks
    drag(layer, (10 + 2 * 30, 2 * 54))
    assert np.array_equal(layer.data, original)  # no tool: clicks change nothing
    assert not viewer.layers["my annotation"].data.any()


def test_a_stack_is_corrected_in_the_plane_shown(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = np.zeros((3, 20, 20), np.int32)
    stack[:, 5:15, 5:15] = 1
    layer = viewer.add_labels(stack, name="stack")
    widget = CorrectWidget(viewer)
    widget.tool.value = DELETE
    widget.click((1, 10, 10))
    assert (layer.data[1] == 0).all() and (layer.data[0] == 1).sum() == 100
