"""Helpers for widget tests: check that the user's layers were left alone."""

from __future__ import annotations

import numpy as np


def layer_snapshot(viewer) -> list[tuple[str, str, np.ndarray]]:
    """Name, type and a copy of the data of every layer, to check nothing changed."""
    return [
        (layer.name, type(layer).__name__, np.asarray(layer.data).copy()) for layer in viewer.layers
    ]


def assert_unchanged(viewer, before) -> None:
    after = layer_snapshot(viewer)
    assert [(n, t) for n, t, _ in after] == [(n, t) for n, t, _ in before]
    for (_, _, a), (_, _, b) in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
