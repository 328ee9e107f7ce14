"""Choose how an instance model's maps become objects, on the user's own annotations.

After training, the network's maps (foreground, and interior for the
``three-class`` head) are computed once for a few annotated planes; then the
:class:`~napari_unet.tasks.Postprocess` settings that score best against the
annotations are searched on a grid
of the foreground threshold, the seed threshold, and the smallest seed and
the smallest object as fractions of the median area of the annotated objects
(the *size prior*: a seed much smaller than a typical object is a hole or a
peak of the probability, not an object; a piece much smaller is noise).

The score is the mean average precision at IoU 0.5 (objects found, as a
biologist counts them); when the objects are grown to tile the image
(``tessellate``, cells between membranes), it is one minus the
foreground-restricted Rand error, the score of such segmentations (ISBI 2012):
AP would not see a cell merged into its neighbour across a membrane.

Labelling is far cheaper than the network: this takes seconds per plane.

Examples
--------
A foreground whose two blobs are one object at a low seed threshold and two
at a high one: calibration finds the threshold that separates them.

>>> import numpy as np
>>> from napari_unet.calibration import calibrate
>>> from napari_unet.tasks import get_task
>>> rows, cols = np.mgrid[0:32, 0:48]
>>> blob = lambda r, c: np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 50.0)
>>> foreground = np.clip(blob(16, 16) + blob(16, 30), 0, 1).astype(np.float32)
>>> truth = np.zeros((32, 48), np.int32)
>>> truth[foreground > 0.5] = 1
>>> truth[(foreground > 0.5) & (cols >= 23)] = 2
>>> best = calibrate(get_task("paper"), [foreground[None]], [truth])
>>> best.score
1.0
>>> best.postprocess.seed_threshold > float(foreground[16, 23])
True
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from napari_unet.metrics import match_instances, rand_error
from napari_unet.tasks import Postprocess, Task

__all__ = ["Calibration", "calibrate"]

logger = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SEED_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Fractions of the median annotated object area.
MIN_SEED_FRACTIONS = (0.0, 0.03, 0.1, 0.2, 0.35)
MIN_SIZE_FRACTIONS = (0.0, 0.05, 0.15, 0.3)


@dataclass(frozen=True)
class Calibration:
    """The chosen settings and their score (mean over the planes), named by ``metric``."""

    postprocess: Postprocess
    score: float
    default_score: float
    n_planes: int
    metric: str = "AP@0.5"
    #: The annotated objects scored.
    n_objects: int = 0
    #: True when no setting beat the start (by more than chance, with ``prefer_start``).
    kept_start: bool = False


def _outside(labels: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """``labels`` without the objects that lie mostly in ``ignore``."""
    if ignore is None:
        return labels
    labels = np.asarray(labels)
    flat = labels.ravel().astype(np.intp)
    sizes = np.bincount(flat)
    inside = np.bincount(flat[np.asarray(ignore).ravel()], minlength=sizes.size)
    dropped = 2 * inside > sizes
    dropped[0] = False
    return np.where(dropped[labels], 0, labels) if dropped.any() else labels


def _plane_score(truth: np.ndarray, labels: np.ndarray, tessellate: bool) -> float:
    """How well ``labels`` reproduce ``truth``: AP@0.5, or 1 - Rand error when tessellating."""
    if tessellate:
        return 1.0 - rand_error(truth, labels)
    return match_instances(truth, labels, 0.5).average_precision


def calibrate(
    task: Task,
    maps: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    object_areas: np.ndarray | None = None,
    *,
    start: Postprocess | None = None,
    scales: Sequence[float] | None = None,
    ignore: Sequence[np.ndarray | None] | None = None,
    prefer_start: bool = False,
) -> Calibration:
    """Find the labelling settings that best reproduce ``truths`` from ``maps``.

    Every combination of the grids above is scored (the smallest object is
    applied to each labelling afterwards, which is cheap). The chosen setting
    is the best after averaging each score with those of its grid neighbours:
    a setting in the middle of a broad optimum carries over to new images
    better than a narrow peak, which on the annotations the network was
    trained on is often an artefact of its confidence there.

    With ``prefer_start`` (the start was itself chosen on annotations, as a
    fine-tuned model's are) it replaces ``start`` only when it scores better
    by more than ``1 / sqrt(n)``, ``n`` the number of annotated objects: a
    few dozen objects rank settings partly by chance (on the nuclei image,
    the settings best for one half of its rows scored 0.61 on the other half,
    where the pretrained model's own, chosen on its held-out fields, scored
    0.81). The task's defaults, which no annotation chose, give way to any
    better setting.

    Parameters
    ----------
    task : Task
        An instance task; it labels the maps.
    maps : sequence of numpy.ndarray
        Per plane, the task's maps ``(len(task.map_names), H, W)``.
    truths : sequence of numpy.ndarray
        Per plane, the annotated instance labels ``(H, W)``.
    object_areas : numpy.ndarray, optional
        Areas of the annotated objects; their median scales the size limits
        (default: the areas in ``truths``).
    start : Postprocess, optional
        Settings to compare with (default: the task's); ``tessellate`` is
        kept from it, and chooses the score.
    scales : sequence of float, optional
        Per plane, the factor its image was resampled by to reach the model's
        object size (``Prediction.scales``); the size limits are chosen at the
        model's scale and applied to each plane at its own
        (:meth:`~napari_unet.tasks.Postprocess.at_scale`). Default: all 1.
    ignore : sequence of numpy.ndarray or None, optional
        Per plane, a mask of pixels not scored: the objects of the truth and of
        a labelling that lie mostly there are left out. For a part of an image
        held out of training, the objects that its cut edge cuts in two: their
        pieces on either side say nothing about the labelling.
    prefer_start : bool
        Keep ``start`` unless another setting is better by more than chance
        (above); for settings that were calibrated before.

    Returns
    -------
    Calibration
        The chosen settings, their score and the score of ``start``.
    """
    if not task.instances:
        raise ValueError(f"Only instance tasks have labelling settings; got {task.name!r}.")
    if len(maps) != len(truths) or not maps:
        raise ValueError("Give one truth per map, and at least one.")
    scales = list(scales) if scales is not None else [1.0] * len(maps)
    if len(scales) != len(maps):
        raise ValueError(f"Give one scale per map: got {len(scales)} for {len(maps)}.")
    start = start or task.default_postprocess
    ignores = list(ignore) if ignore is not None else [None] * len(maps)
    if len(ignores) != len(maps):
        raise ValueError(f"Give one ignore mask (or None) per map: got {len(ignores)}.")
    truths = [_outside(truth, mask) for truth, mask in zip(truths, ignores, strict=True)]
    if object_areas is None or len(object_areas) == 0:
        object_areas = np.concatenate([np.bincount(t.ravel().astype(np.intp))[1:] for t in truths])
        object_areas = object_areas[object_areas > 0]
    typical = float(np.median(object_areas)) if len(object_areas) else 0.0
    min_seeds = [round(fraction * typical) for fraction in MIN_SEED_FRACTIONS]
    min_sizes = [round(fraction * typical) for fraction in MIN_SIZE_FRACTIONS]

    def scores(settings: Postprocess) -> np.ndarray:
        """Mean score of ``settings`` with each smallest object size."""
        totals = np.zeros(len(min_sizes))
        for plane_maps, truth, scale, mask in zip(maps, truths, scales, ignores, strict=True):
            plane_settings = replace(settings, min_size=0).at_scale(scale)
            # Objects left out once: the smallest-object rule drops whole objects too.
            labels = _outside(np.asarray(task.label_plane(plane_maps, plane_settings)), mask)
            sizes = np.bincount(labels.ravel().astype(np.intp))
            for index, smallest in enumerate(min_sizes):
                here = round(smallest / scale**2)
                kept = labels if here == 0 else np.where(sizes[labels] >= here, labels, 0)
                totals[index] += _plane_score(truth, kept, start.tessellate)
        return totals / len(maps)

    seeds_from_foreground = len(task.map_names) == 1
    grid = np.zeros((len(THRESHOLDS), len(SEED_THRESHOLDS), len(min_seeds), len(min_sizes)))
    valid = np.ones(grid.shape, bool)
    for (i, threshold), (j, seed_threshold), (k, min_seed) in itertools.product(
        enumerate(THRESHOLDS), enumerate(SEED_THRESHOLDS), enumerate(min_seeds)
    ):
        if seeds_from_foreground and seed_threshold <= threshold:
            valid[i, j, k] = False
            continue
        grid[i, j, k] = scores(
            replace(
                start, threshold=threshold, seed_threshold=seed_threshold, min_seed_size=min_seed
            )
        )
    # Each setting's score averaged with its valid neighbours in the grid.
    weight = ndi.uniform_filter(valid.astype(float), size=3, mode="nearest")
    smooth = ndi.uniform_filter(np.where(valid, grid, 0.0), size=3, mode="nearest")
    smooth = np.where(valid, smooth / np.maximum(weight, 1e-12), -np.inf)
    i, j, k, m = np.unravel_index(int(np.argmax(smooth)), grid.shape)
    best = replace(
        start,
        threshold=THRESHOLDS[i],
        seed_threshold=SEED_THRESHOLDS[j],
        min_seed_size=min_seeds[k],
        min_size=min_sizes[m],
    )
    default_score = float(
        np.mean(
            [
                _plane_score(
                    truth,
                    _outside(task.label_plane(plane_maps, start.at_scale(scale)), mask),
                    start.tessellate,
                )
                for plane_maps, truth, scale, mask in zip(
                    maps, truths, scales, ignores, strict=True
                )
            ]
        )
    )
    metric = "1 - Rand error" if start.tessellate else "AP@0.5"
    n_objects = int(sum(np.unique(truth[truth > 0]).size for truth in truths))
    score = float(grid[i, j, k, m])
    margin = 1.0 / np.sqrt(max(n_objects, 1)) if prefer_start else 0.0
    kept_start = bool(score - default_score <= margin)
    if kept_start:
        best, score = start, default_score
    logger.info(
        "calibrated on %d plane(s): %s %.3f (defaults %.3f) with %s",
        len(maps),
        metric,
        score,
        default_score,
        best,
    )
    return Calibration(best, score, default_score, len(maps), metric, n_objects, kept_start)
