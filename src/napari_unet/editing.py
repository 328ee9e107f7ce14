"""Corrections of a segmentation, object by object: delete, merge, split along a line.

Each function looks at one 2D label plane and returns an :class:`Edit`: the
pixels to change and their new ids. It never changes the plane itself, so a
caller can apply the edit where it records undo history (napari's
``Labels.data_setitem``) or simply with :meth:`Edit.apply`.

Splitting: the line (a polyline of points, in pixel coordinates) is drawn one
pixel wide and thickened to 4-connectivity, so that it cuts the objects it
crosses; each cut object falls into its 4-connected pieces. The largest
piece keeps the id, the others get new ids above the largest in the plane,
and the pixels under the line go to the nearest piece. A line that does not
cross an object from one side to the other leaves it whole.

Examples
--------
>>> import numpy as np
>>> plane = np.zeros((5, 9), int); plane[1:4, 1:8] = 3
>>> edit = split_along(plane, [(0, 4), (4, 4)])
>>> after = edit.apply(plane)
>>> sorted(np.unique(after).tolist())
[0, 3, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

__all__ = ["Edit", "delete_object", "merge_objects", "object_at", "split_along"]


@dataclass(frozen=True)
class Edit:
    """Pixels of a plane to change (``rows``, ``columns``) and their new ``values``."""

    rows: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    #: What the edit does, for the user.
    summary: str

    @property
    def empty(self) -> bool:
        """Whether the edit changes nothing."""
        return self.rows.size == 0

    def apply(self, plane: np.ndarray) -> np.ndarray:
        """Return a copy of ``plane`` with the edit made."""
        out = np.array(plane, copy=True)
        out[self.rows, self.columns] = self.values
        return out


def _nothing(summary: str) -> Edit:
    empty = np.zeros(0, np.intp)
    return Edit(empty, empty, np.zeros(0, np.int64), summary)


def object_at(plane: np.ndarray, point: Sequence[float]) -> int:
    """Return the id under ``point`` (row, column), 0 outside the plane or on background."""
    row, column = (round(float(v)) for v in point)
    if not (0 <= row < plane.shape[0] and 0 <= column < plane.shape[1]):
        return 0
    return int(plane[row, column])


def delete_object(plane: np.ndarray, object_id: int) -> Edit:
    """Set the pixels of ``object_id`` to background."""
    if object_id == 0:
        return _nothing("That is background: click inside an object to delete it.")
    rows, columns = np.nonzero(plane == object_id)
    return Edit(rows, columns, np.zeros(rows.size, np.int64), f"Deleted object {object_id}.")


def merge_objects(plane: np.ndarray, keep: int, other: int) -> Edit:
    """Give the pixels of ``other`` the id ``keep``."""
    if 0 in (keep, other):
        return _nothing("Click inside two objects to merge them (one was background).")
    if keep == other:
        return _nothing("Both clicks fell in the same object: click two different ones.")
    rows, columns = np.nonzero(plane == other)
    return Edit(
        rows,
        columns,
        np.full(rows.size, keep, np.int64),
        f"Merged object {other} into object {keep}.",
    )


def split_along(plane: np.ndarray, line: Sequence[Sequence[float]]) -> Edit:
    """Split the objects that ``line`` (points as (row, column)) crosses, along it."""
    from scipy import ndimage as ndi
    from skimage.draw import line as draw_line

    points = np.round(np.asarray(line, dtype=float)).astype(int)
    if points.ndim != 2 or points.shape[0] < 2:
        return _nothing("Draw a line across an object to split it.")
    cut = np.zeros(plane.shape, bool)
    for (r0, c0), (r1, c1) in pairwise(points):
        rr, cc = draw_line(r0, c0, r1, c1)
        inside = (rr >= 0) & (rr < plane.shape[0]) & (cc >= 0) & (cc < plane.shape[1])
        cut[rr[inside], cc[inside]] = True
    # A diagonal one-pixel line leaves 4-connected gaps: close them.
    cut |= ndi.binary_dilation(cut, np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0]], bool))
    crossed = [int(i) for i in np.unique(plane[cut]) if i != 0]
    if not crossed:
        return _nothing("The line crosses no object: draw it across the object to split.")
    next_id = int(plane.max()) + 1
    all_rows, all_columns, all_values, split = [], [], [], 0
    boxes = ndi.find_objects(np.where(np.isin(plane, crossed), plane, 0))
    for object_id in crossed:
        box = boxes[object_id - 1]
        mask = plane[box] == object_id
        pieces, n_pieces = ndi.label(mask & ~cut[box])
        if n_pieces < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")  # the largest piece keeps the id
        ids = np.zeros(n_pieces + 1, np.int64)
        ids[order + 1] = [object_id, *range(next_id, next_id + n_pieces - 1)]
        next_id += n_pieces - 1
        # Pixels under the line go to the nearest piece.
        nearest = ndi.distance_transform_edt(
            pieces == 0, return_distances=False, return_indices=True
        )
        filled = pieces[tuple(nearest)]
        new = np.where(mask, ids[filled], plane[box])
        rows, columns = np.nonzero(mask & (new != object_id))
        all_rows.append(rows + box[0].start)
        all_columns.append(columns + box[1].start)
        all_values.append(new[rows, columns])
        split += 1
    if not split:
        return _nothing(
            "The line does not cut an object in two: draw it from one side of the object "
            "to the other."
        )
    return Edit(
        np.concatenate(all_rows),
        np.concatenate(all_columns),
        np.concatenate(all_values).astype(np.int64),
        f"Split {split} object{'s' if split > 1 else ''} along the line.",
    )
