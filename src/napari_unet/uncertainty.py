"""Where to annotate next: how unsure the network is, per pixel and per object.

Every instance task's first map is the foreground probability ``p``
(:mod:`napari_unet.tasks`). Its binary entropy, divided by ``log 2``, is 0
where the network is sure (``p`` near 0 or 1) and 1 where it cannot tell
(``p = 0.5``). An object's uncertainty is the mean over its pixels: objects
cut into slivers, merged pairs and doubtful specks score high, and are the
ones worth correcting and annotating first.

Examples
--------
>>> import numpy as np
>>> maps = np.array([[[0.5, 1.0]]])        # (maps, H, W): foreground first
>>> foreground_uncertainty(maps).round(3).tolist()
[[1.0, 0.0]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["foreground_uncertainty", "least_certain_objects"]


def foreground_uncertainty(maps: np.ndarray) -> np.ndarray:
    """Return the foreground map's entropy in [0, 1]: ``(..., K, H, W)`` -> ``(..., H, W)``."""
    p = np.clip(np.asarray(maps[..., 0, :, :], dtype=np.float32), 1e-6, 1.0 - 1e-6)
    entropy = -(p * np.log(p) + (1.0 - p) * np.log1p(-p)) / np.log(2.0)
    return entropy.astype(np.float32)


def least_certain_objects(
    labels: np.ndarray, uncertainty: np.ndarray, count: int = 10
) -> list[tuple[int, float]]:
    """Return up to ``count`` (object id, mean uncertainty), the least certain first."""
    labels = np.asarray(labels).ravel()
    if not labels.any():
        return []
    sums = np.bincount(labels, weights=np.asarray(uncertainty, np.float64).ravel())
    areas = np.bincount(labels)
    ids = np.flatnonzero(areas[1:]) + 1
    means = sums[ids] / areas[ids]
    order = np.argsort(-means, kind="stable")[:count]
    return [(int(ids[i]), float(means[i])) for i in order]
