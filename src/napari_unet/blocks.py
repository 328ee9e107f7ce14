"""The block engine: one block of one plane, segmented with its context and written out.

A block task reads its block plus the network's border of context from the
image (mirrored only at the image edge), scales it with the plane's
normalisation statistics, runs the overlap-tile loop of
:mod:`napari_unet.inference`, and writes the task's tile outputs (an instance
task's maps, or semantic class ids) and optionally the probabilities into the
block's chunk of a result store. :func:`run_here` runs the tasks one after
another in this process; :mod:`napari_unet.dask_runner` runs the same tasks on
a dask cluster. :mod:`napari_unet.distributed` plans the tasks and labels the
result.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._generators import run_to_end
from napari_unet.inference import (
    ImagePlanes,
    ModelPredictor,
    _crop_predictor,
    test_time_augmented,
    tile_starts,
    tiled_predict,
)
from napari_unet.normalization import Normalization
from napari_unet.result_store import import_optional
from napari_unet.tasks import get_task

__all__ = ["BlockPlan", "BlockResult", "BlockTask", "make_predictor", "run_block", "run_here"]


@dataclass(frozen=True)
class BlockResult:
    """One finished block (what the generator yields).

    Attributes
    ----------
    plane : int
        Index of the 2D plane in a stack (0 for a 2D image).
    region : tuple of slice
        Rows and columns of the plane that the block covers.
    done, count : int
        Blocks finished so far (this one included) and blocks in all.
    seconds : float
        Time the task took where it ran.
    """

    plane: int
    region: tuple[slice, slice]
    done: int
    count: int
    seconds: float


@dataclass(frozen=True)
class BlockPlan:
    """Settings shared by every block of a run (sent with each task)."""

    store: str
    task: str
    channel_axis: int | None
    plane_shape: tuple[int, ...]
    n_classes: int
    tile_shape: tuple[int, int]
    border: int
    align: int
    same_padding: bool
    tta: bool
    probabilities: bool
    device: str
    precision: str
    torch_threads: int | None


@dataclass(frozen=True)
class BlockTask:
    """One block of one plane, and that plane's normalisation (statistics, smoothing)."""

    plane: int
    rows: slice
    cols: slice
    low: np.ndarray
    high: np.ndarray
    smoothing: float = 0.0


@dataclass(frozen=True)
class ModelPayload:
    """The network as it travels to the workers: its config and weights, and a cache key."""

    key: str
    config: dict[str, Any]
    state_dict: dict[str, Any]


@dataclass(frozen=True)
class PathSource:
    """An image that each worker opens itself (TIFF stores cannot be pickled)."""

    path: str


class BlockWindow:
    """One block of one plane with the context its tiles need, read once.

    It offers the part of :class:`~napari_unet.inference.ImagePlanes` that
    :func:`~napari_unet.inference.tiled_predict` uses (``height``, ``width``,
    ``read_mirrored``) in block coordinates, so the tile loop runs unchanged.
    The pixels come from :meth:`ImagePlanes.read_mirrored` on the whole plane:
    the image itself around the block, mirrored only at the image edge. A noisy
    plane's block (``smoothing`` > 0) is read with a margin the Gaussian
    reaches into and smoothed, so that it equals the same box of the whole
    plane smoothed, as :func:`~napari_unet.inference.predict_generator` does.
    """

    def __init__(
        self,
        planes: ImagePlanes,
        plane: int,
        rows: slice,
        cols: slice,
        tile_shape: tuple[int, int],
        border: int,
        align: int,
        smoothing: float = 0.0,
    ) -> None:
        self.height = rows.stop - rows.start
        self.width = cols.stop - cols.start
        # The last tile may run past the block's end (by less than ``align``, or
        # further when the tile is larger than the block).
        extent_h = tile_starts(self.height, tile_shape[0], align)[-1] + tile_shape[0]
        extent_w = tile_starts(self.width, tile_shape[1], align)[-1] + tile_shape[1]
        self._border = border
        reach = Normalization.smoothing_reach(smoothing)
        box = planes.read_mirrored(
            plane,
            rows.start - border - reach,
            cols.start - border - reach,
            extent_h + 2 * (border + reach),
            extent_w + 2 * (border + reach),
        )
        if reach:
            box = Normalization.smooth(box, smoothing)[:, reach:-reach, reach:-reach]
        self._box = box

    def read_mirrored(self, plane: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Return the box at (``top``, ``left``) in block coordinates (``plane`` is implied)."""
        row, col = top + self._border, left + self._border
        if (
            row < 0
            or col < 0
            or row + height > self._box.shape[1]
            or col + width > self._box.shape[2]
        ):
            raise ValueError(
                f"The tile at ({top}, {left}) of size ({height}, {width}) lies outside the "
                f"block's context of shape {self._box.shape[1:]}."
            )
        return self._box[:, row : row + height, col : col + width]


def run_block(
    plan: BlockPlan,
    task: BlockTask,
    predictor: Callable[[np.ndarray], np.ndarray],
    image: Any,
    should_stop: Callable[[], bool] | None,
) -> tuple[bool, float]:
    """Segment one block and write it to the store; return (finished, seconds).

    The outputs are written per tile exactly as
    :func:`~napari_unet.inference.predict_generator` writes them, so where
    tiles overlap the later tile's values are kept, as there.
    """
    zarr = import_optional("zarr")
    start = time.perf_counter()
    planes = ImagePlanes(image, plan.channel_axis)
    window = BlockWindow(
        planes,
        task.plane,
        task.rows,
        task.cols,
        plan.tile_shape,
        plan.border,
        plan.align,
        task.smoothing,
    )
    shape = (window.height, window.width)
    task_ = get_task(plan.task)
    if task_.instances:
        values = np.zeros((len(task_.map_names), *shape), np.float32)
    else:
        values = np.zeros(shape, np.uint16)  # class ids 1..K
    probabilities = np.zeros((plan.n_classes, *shape), np.float32) if plan.probabilities else None

    def keep(result: Any) -> None:
        rows, cols = result.region
        if task_.instances:
            values[:, rows, cols] = task_.tile_maps(result.probabilities)
        else:
            values[rows, cols] = task_.tile_labels(result.probabilities)
        if probabilities is not None:
            probabilities[:, rows, cols] = result.probabilities

    tiles = tiled_predict(
        window,  # duck-typed: the part of ImagePlanes that tiled_predict reads
        task.plane,
        predictor,
        border=plan.border,
        tile_shape=plan.tile_shape,
        align=plan.align,
        prepare=functools.partial(Normalization.apply, low=task.low, high=task.high),
        should_stop=should_stop,
    )
    finished = bool(run_to_end(tiles, keep))
    index = plane_index(task.plane, plan.plane_shape)
    outputs = zip(task_.map_names, values, strict=True) if task_.instances else [("labels", values)]
    for name, output in outputs:
        target = zarr.open_array(os.path.join(plan.store, name), mode="r+")
        target[(*index, task.rows, task.cols)] = output
    if probabilities is not None:
        target = zarr.open_array(os.path.join(plan.store, "probabilities"), mode="r+")
        target[(*index, slice(None), task.rows, task.cols)] = probabilities
    return finished, time.perf_counter() - start


def make_predictor(network: Any, plan: BlockPlan) -> Callable[[np.ndarray], np.ndarray]:
    """Return the tile predictor of ``network`` with the plan's cropping and augmentation."""
    predictor: Callable[[np.ndarray], np.ndarray] = ModelPredictor(
        network, plan.device, plan.precision, plan.task
    )
    if plan.same_padding:
        predictor = _crop_predictor(predictor, plan.border)
    if plan.tta:
        predictor = test_time_augmented(predictor)
    return predictor


# -- running here ---------------------------------------------------------------------------


def run_here(
    plan: BlockPlan,
    tasks: list[BlockTask],
    network: Any,
    image: Any,
    should_stop: Callable[[], bool] | None,
) -> Generator[BlockResult, None, bool]:
    """Run the blocks in this process, one after another."""
    import torch

    previous = torch.get_num_threads()
    if plan.torch_threads is not None:
        torch.set_num_threads(plan.torch_threads)
    try:
        predictor = make_predictor(network, plan)
        for done, task in enumerate(tasks, start=1):
            if should_stop is not None and should_stop():
                return False
            finished, seconds = run_block(plan, task, predictor, image, should_stop)
            yield BlockResult(task.plane, (task.rows, task.cols), done, len(tasks), seconds)
            if not finished:
                return False
        return True
    finally:
        if plan.torch_threads is not None:
            torch.set_num_threads(previous)


def plane_index(plane: int, plane_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Index of flat plane number ``plane`` in the leading axes of an output."""
    if not plane_shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(plane, plane_shape))
