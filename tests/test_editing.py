"""Object corrections: delete, merge and split along a line, as pixel edits."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.editing import delete_object, merge_objects, object_at, split_along


def two_objects():
    plane = np.zeros((20, 30), np.int32)
    plane[2:10, 2:20] = 4  # a long object
    plane[12:18, 5:25] = 7
    return plane


def test_delete_and_merge_change_only_their_objects():
    plane = two_objects()
    assert object_at(plane, (5.2, 3.7)) == 4 and object_at(plane, (-1, 3)) == 0
    deleted = delete_object(plane, 4).apply(plane)
    assert 4 not in deleted and (deleted == 7).sum() == (plane == 7).sum()
    assert plane.max() == 7  # the input is never changed
    merged = merge_objects(plane, 7, 4).apply(plane)
    assert np.array_equal(merged > 0, plane > 0) and set(np.unique(merged)) == {0, 7}
    assert merge_objects(plane, 4, 4).empty and "same object" in merge_objects(plane, 4, 4).summary
    assert delete_object(plane, 0).empty and "background" in delete_object(plane, 0).summary


def test_a_line_across_an_object_cuts_it_in_two():
    plane = two_objects()
    edit = split_along(plane, [(0, 11), (11, 11)])  # across object 4 only
    after = edit.apply(plane)
    assert edit.summary == "Split 1 object along the line."
    assert set(np.unique(after)) == {0, 4, 7, 8}  # the new id is above the largest
    assert np.array_equal(after > 0, plane > 0)  # no pixel lost: the line's go to a piece
    assert np.array_equal(after == 7, plane == 7)
    left, right = (after == 4).sum(), (after == 8).sum()
    assert left + right == (plane == 4).sum() and abs(left - right) <= 2 * 8  # columns 2-19


def test_a_diagonal_line_still_cuts_and_a_short_one_does_not():
    plane = np.zeros((20, 20), np.int32)
    plane[3:17, 3:17] = 1
    after = split_along(plane, [(0, 0), (19, 19)]).apply(plane)
    assert set(np.unique(after)) == {0, 1, 2}
    short = split_along(plane, [(5, 5), (8, 8)])  # inside, not from side to side
    assert short.empty and "one side of the object to the other" in short.summary
    missed = split_along(plane, [(0, 0), (0, 19)])
    assert missed.empty and "crosses no object" in missed.summary


def test_one_line_can_split_several_objects():
    plane = two_objects()
    after = split_along(plane, [(0, 15), (19, 15)]).apply(plane)
    assert set(np.unique(after)) == {0, 4, 7, 8, 9}


def test_uncertainty_is_the_foreground_entropy_and_ranks_objects():
    from napari_unet.uncertainty import foreground_uncertainty, least_certain_objects

    foreground = np.array([[0.0, 0.5, 1.0, 0.9]], np.float32)
    maps = np.stack([foreground, np.zeros_like(foreground)])  # (maps, H, W)
    uncertainty = foreground_uncertainty(maps)
    assert uncertainty[0, 1] == pytest.approx(1.0) and uncertainty[0, 2] < 1e-4
    assert 0.4 < uncertainty[0, 3] < 0.5  # H(0.9) = 0.469 bits
    labels = np.array([[0, 1, 2, 2]])
    assert [i for i, _ in least_certain_objects(labels, uncertainty)] == [1, 2]
    assert least_certain_objects(np.zeros((1, 4), int), uncertainty) == []
