"""Segment images larger than memory block by block, in one process or on a dask cluster.

The image (a zarr array, an OME-Zarr image, a TIFF file read through
:mod:`tifffile`'s zarr interface, or any numpy, zarr or dask array) is cut into
blocks, and the result goes to a zarr store one block, which is one chunk, at
a time. Each block is one task: in this process one after another, or, with a
:class:`distributed.Client`, spread over the workers of a dask cluster (local
or remote: dask schedules the tasks; nothing here does). A task

1. reads its block plus the network's ``border`` of context on every side
   (plus what the block's last tile may run past its end, less than
   ``2**depth`` pixels) from the image itself, mirrored only at the image edge
   (:meth:`~napari_unet.inference.ImagePlanes.read_mirrored`), so that it sees
   the same pixels as the single-process run;
2. scales them with the normalisation statistics computed once per plane on
   the whole image before any task starts (the call
   :func:`~napari_unet.inference.predict_generator` makes), not per block;
3. runs the same overlap-tile loop
   (:func:`~napari_unet.inference.tiled_predict` and
   :class:`~napari_unet.inference.ModelPredictor`), with tile origins on
   multiples of ``2**depth`` (blocks start on such multiples);
4. writes its block of the outputs: class ids 1..K (``semantic``), or the
   foreground probability ``1 - p(background)`` (``instances``), and the class
   probabilities when asked. Output chunks are blocks, so no two tasks ever
   write the same chunk.

In ``instances`` mode the labels are then made in the calling process by
:func:`~napari_unet.postprocess.label_instances`, the function and settings the
single-process path uses, reading the foreground and writing the labels one
block at a time (memory stays bounded by the block, not the image). It labels
each block and merges the ids that touch across block borders (a union of
touching ids), so an object crossing a border gets one id.

The store is written to ``<output>.partial`` and renamed to ``output`` when
complete. With a cluster, that folder must be on a file system every worker
and the client see (a shared or network file system), and the package must be
installed on the workers.

Equality with the single-process result
---------------------------------------
The network's floating-point rounding depends on the tile's size and on the
number of PyTorch threads (measured: about 1e-6 in the probabilities), so the
result is bit-for-bit that of :func:`~napari_unet.inference.predict` with the
same :class:`~napari_unet.inference.InferenceConfig` when both runs compute the
same tiles with the same number of threads (one per task on dask workers by
default). The tiles coincide when the step between tiles, ``s = (tile //
2**depth) * 2**depth``, divides the block size and ``size - tile`` along each
axis (for a depth-2 network and a tile of 32: image and block sizes that are
multiples of 32). The instance ids are then identical too, not merely equal up
to a permutation, since the same labelling runs on the same foreground.
Otherwise the two agree up to that rounding: labels can differ at the few
pixels whose probability lies within about 1e-6 of a threshold.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> from napari_unet import UNet, UNetConfig, InferenceConfig, predict
>>> from napari_unet.distributed import segment_to_zarr
>>> model = UNet(UNetConfig(depth=2, base_channels=4, dropout=0.0)).eval()
>>> image = np.random.default_rng(0).random((96, 64)).astype(np.float32)
>>> config = InferenceConfig(tile_shape=(32, 32), device="cpu", precision="fp32")
>>> path = pathlib.Path(tempfile.mkdtemp()) / "result.zarr"
>>> result = segment_to_zarr(
...     model, image, path, block_shape=(64, 64), task="semantic", config=config
... )
>>> result.labels.shape, result.labels.chunks
((96, 64), (64, 64))
>>> same = predict(model, image, task="semantic", config=config).labels
>>> bool((result.labels[:] == same).all())
True
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._generators import run_to_end
from napari_unet.inference import (
    ImagePlanes,
    InferenceConfig,
    ModelPredictor,
    _crop_predictor,
    check_outputs,
    labels_dtype,
    test_time_augmented,
    tile_geometry,
    tile_starts,
    tiled_predict,
)
from napari_unet.io import LARGE_DATA_EXTRA, is_zarr_store, open_image
from napari_unet.normalization import Normalization
from napari_unet.tasks import Postprocess, Task, get_task

__all__ = [
    "DEFAULT_BLOCK_SHAPE",
    "BlockResult",
    "ZarrSegmentation",
    "level_arrays",
    "overview_strides",
    "segment_to_zarr",
    "segment_to_zarr_generator",
    "write_levels",
]

logger = logging.getLogger(__name__)


#: Default block (and output chunk) shape in pixels.
DEFAULT_BLOCK_SHAPE = (2048, 2048)
PARTIAL_SUFFIX = ".partial"


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


@dataclass
class ZarrSegmentation:
    """The result of :func:`segment_to_zarr`: arrays in a zarr store.

    Attributes
    ----------
    path : pathlib.Path
        The store: ``output`` when complete, else ``output`` + ``.partial``.
    labels : zarr.Array
        Instance labels (uint32) or class ids 1..K (uint16), with the image's
        planes, height and width; chunks are the blocks.
    probabilities : zarr.Array or None
        ``(..., K, H, W)`` float32 class probabilities, when asked for.
    foreground : zarr.Array or None
        ``instances`` mode, when probabilities were asked for: the foreground
        probability ``1 - p(background)`` that the labels were made from.
    completed : bool
        False when stopped early: blocks not reached are 0, and the store keeps
        its ``.partial`` name.
    """

    path: Path
    labels: Any
    probabilities: Any | None
    foreground: Any | None
    completed: bool = True


# -- the public functions -----------------------------------------------------------------


def segment_to_zarr_generator(
    model: Any,
    image: Any,
    output: str | os.PathLike[str],
    *,
    block_shape: tuple[int, int] = DEFAULT_BLOCK_SHAPE,
    channel_axis: int | None = None,
    task: str | Task | None = None,
    postprocess: Postprocess | None = None,
    normalization: Normalization | None = None,
    config: InferenceConfig | None = None,
    probabilities: bool = False,
    client: Any | None = None,
    overwrite: bool = False,
    torch_threads: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    levels: Iterable[tuple[int, int]] = (),
) -> Generator[BlockResult, None, ZarrSegmentation]:
    """Segment an image block by block into a zarr store; yield blocks, return the store.

    Parameters
    ----------
    model : Checkpoint or UNet
        The trained network. A :class:`~napari_unet.checkpoint.Checkpoint` also
        gives the task, the labelling settings and the normalisation.
    image : array or path
        A 2D image or a stack of 2D planes, optionally with a channel axis: a
        numpy, zarr or dask array, or the path of a zarr store, OME-Zarr image
        or TIFF file (opened with :func:`~napari_unet.io.open_image`; on a
        cluster every worker opens the path itself, so it must be visible to
        them all).
    output : str or path-like
        The zarr store (a folder) to create. It must not exist unless
        ``overwrite``; it is written as ``output + ".partial"`` and renamed
        when complete.
    block_shape : tuple of int
        Height and width of a block, one task each (and of an output chunk);
        rounded up to a multiple of ``2**depth``. Larger blocks mean fewer,
        longer tasks and less context read twice.
    channel_axis : int, optional
        Axis of channels (-1 for RGB); must match the model's ``in_channels``.
    task : str or Task, optional
        What the outputs mean (:mod:`napari_unet.tasks`). Default: the
        checkpoint's task ("paper" for a bare network).
    postprocess : Postprocess, optional
        How an instance task's maps become objects. Default: the checkpoint's
        calibrated settings (the task's defaults for a bare network).
    normalization : Normalization, optional
        Default: the checkpoint's (percentiles 1 and 99.8 for a bare network).
    config : InferenceConfig, optional
        Tile size, thresholds, device and precision. Without a tile size the
        tiles are chosen to cover one block.
    probabilities : bool
        Also keep ``probabilities`` (all classes) and, for an instance task,
        its maps (``foreground``; ``interior`` for ``three-class``) in the store.
    client : distributed.Client, optional
        Run the blocks on this dask cluster. Default: here, one after another.
    overwrite : bool
        Replace an existing ``output`` (only once the new store is complete).
    torch_threads : int, optional
        PyTorch threads per task. Default: 1 on dask workers (dask runs one
        task per worker thread); unchanged in this process. The setting is
        per process: workers that are threads of this process
        (``LocalCluster(processes=False)``) change it here too.
    should_stop : callable, optional
        Polled between blocks (and here, between tiles); the run then stops,
        keeps what is done under the ``.partial`` name and returns. Blocks run
        here are labelled as far as they got; on a cluster, pending blocks are
        cancelled and instance labels are not made.
    levels : iterable of (int, int)
        Strides of lower-resolution levels to add to a complete result before
        it takes its name (see :func:`write_levels`), e.g. ``[(2, 2), (4, 4)]``
        or :func:`overview_strides` of the image; none by default.

    Yields
    ------
    BlockResult
        Each finished block, in the order they finish.

    Returns
    -------
    ZarrSegmentation
        The store and its arrays.

    Raises
    ------
    FileExistsError
        If ``output`` exists and ``overwrite`` is False.
    ValueError
        If ``output`` would overwrite the input, a parameter is invalid, or the
        image does not suit the model.
    """
    from napari_unet.checkpoint import Checkpoint
    from napari_unet.model import UNet

    config = config or InferenceConfig()
    class_names: tuple[str, ...] = ()
    if isinstance(model, Checkpoint):
        model_config, state_dict = model.model_config, model.state_dict
        task = get_task(task) if task is not None else model.task
        normalization = normalization or model.normalization
        network = None
        if task.name == model.task.name:
            class_names = model.class_names
            postprocess = postprocess or model.postprocess
    elif isinstance(model, UNet):
        model_config, network = model.config, model
        state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    else:
        raise TypeError(f"model must be a Checkpoint or a UNet, got {type(model).__name__}.")
    task = get_task(task or "paper")
    check_outputs(task, model_config.n_classes)
    settings = config.postprocess(postprocess or task.default_postprocess)
    class_names = class_names or task.class_names(model_config.n_classes)
    normalization = normalization or Normalization()
    block_shape = _check_block_shape(block_shape)
    levels = [_check_stride(stride) for stride in levels]
    if torch_threads is not None and (isinstance(torch_threads, bool) or torch_threads < 1):
        raise ValueError(f"torch_threads must be a positive integer or None, got {torch_threads}.")

    source_path: Path | None = None
    if isinstance(image, (str, os.PathLike)):
        source_path = Path(image)
        image = open_image(source_path)
    planes = ImagePlanes(image, channel_axis)
    if planes.channels != model_config.in_channels:
        raise ValueError(
            f"The model expects {model_config.in_channels} channel(s) but the image has "
            f"{planes.channels} (channel_axis={channel_axis}); choose the matching channel axis "
            f"or a model trained on this kind of image."
        )
    output = Path(output)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    _check_output(output, partial, overwrite, [source_path, _array_location(image)])

    spatial = (planes.height, planes.width)
    step = model_config.size_step
    blocks = tuple(
        size if _round_up(block, step) >= size else _round_up(block, step)
        for block, size in zip(block_shape, spatial, strict=True)
    )
    tile_shape, border = tile_geometry(model_config, config, (blocks[0], blocks[1]))
    regions = list(_block_regions(spatial, (blocks[0], blocks[1])))
    logger.info(
        "Segmenting %s in %d block(s) of %s with output tiles of %s (border %d)",
        spatial,
        len(regions) * planes.n_planes,
        blocks,
        tile_shape,
        border,
    )

    # Normalisation statistics once per plane, on the whole plane, as predict does.
    tasks = []
    for plane in range(planes.n_planes):
        low, high = normalization.statistics(planes.plane_view(plane))
        tasks += [_BlockTask(plane, rows, cols, low, high) for rows, cols in regions]

    zarr = _import("zarr")
    _remove_leftover(partial)
    root = zarr.open_group(str(partial), mode="w")
    plane_chunks = (1,) * len(planes.plane_shape)
    out_shape = (*planes.plane_shape, *spatial)
    _create_array(root, "labels", out_shape, (*plane_chunks, *blocks), labels_dtype(task))
    for name in task.map_names:
        _create_array(root, name, out_shape, (*plane_chunks, *blocks), np.float32)
    n_classes = model_config.n_classes
    if probabilities:
        _create_array(
            root,
            "probabilities",
            (*planes.plane_shape, n_classes, *spatial),
            (*plane_chunks, n_classes, *blocks),
            np.float32,
        )
    root.attrs.update(
        {
            "napari-unet": {
                "mode": task.mode,
                "task": task.name,
                "class_names": list(class_names),
                "block_shape": list(blocks),
                "tile_shape": list(tile_shape),
                "source": str(source_path) if source_path is not None else None,
                "completed": False,
            }
        }
    )
    plan = _Plan(
        store=str(partial),
        task=task.name,
        channel_axis=channel_axis,
        plane_shape=planes.plane_shape,
        n_classes=n_classes,
        tile_shape=tile_shape,
        border=border,
        align=step,
        same_padding=model_config.padding == "same",
        tta=config.tta,
        probabilities=probabilities,
        device=config.device,
        precision=config.precision,
        torch_threads=torch_threads,
    )

    if client is None:
        if network is None:
            network = model.build_model()
        runs = _run_here(plan, tasks, network, image, should_stop)
    else:
        source: Any = _PathSource(str(source_path)) if source_path is not None else image
        payload = _ModelPayload(uuid.uuid4().hex, model_config.to_dict(), state_dict)
        runs = _run_on_cluster(client, plan, tasks, payload, source, should_stop)
    reached: set[int] = set()

    def note(block: BlockResult) -> None:
        reached.add(block.plane)

    completed = yield from _passing(runs, note)

    if task.instances and (completed or client is None):
        labels = root["labels"]
        for plane in sorted(reached) if not completed else range(planes.n_planes):
            index = _plane_index(plane, planes.plane_shape)
            maps = [_PlaneOf(root[name], index) for name in task.map_names]
            task.label_plane(maps, settings, out=_PlaneOf(labels, index))
    if not completed:
        logger.info("Stopped; the finished blocks are in %s", partial)
        return _open_result(partial, completed=False)
    if not probabilities:
        for name in task.map_names:
            shutil.rmtree(partial / name)
    if levels:
        # Before the rename, so that a store under its final name is complete, levels included.
        _write_levels(zarr.open_group(str(partial), mode="r+"), levels, None)
    root.attrs["napari-unet"] = {**root.attrs["napari-unet"], "completed": True}
    _replace(partial, output)
    logger.info("Wrote %s", output)
    return _open_result(output, completed=True)


def segment_to_zarr(
    model: Any, image: Any, output: str | os.PathLike[str], **kwargs: Any
) -> ZarrSegmentation:
    """Run :func:`segment_to_zarr_generator` to the end and return its :class:`ZarrSegmentation`."""
    return run_to_end(segment_to_zarr_generator(model, image, output, **kwargs))


def write_levels(
    result: ZarrSegmentation,
    strides: Iterable[tuple[int, int]],
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, list[Any]]:
    """Add subsampled copies of a result's arrays to its store, for a multiscale view.

    napari shows a multiscale layer from its coarsest level that fits the
    screen; a level computed on the fly from the full resolution reads the
    whole store on every redraw of an overview. This writes the levels once.
    Level ``i`` (1, 2, ...) of ``labels`` is the array ``labels_level{i}`` of
    the store, ``labels[..., ::rows, ::cols]`` for the ``i``-th ``(rows,
    cols)`` of ``strides``: plain subsampling, as napari does for labels, so
    no id is changed or invented. ``probabilities`` gets levels too when the
    store has them. Each level is read from the finest level already written
    whose strides divide its own, one chunk at a time, so memory stays
    bounded by a chunk. Levels written by an earlier call are replaced.

    Parameters
    ----------
    result : ZarrSegmentation
        A completed result of :func:`segment_to_zarr`.
    strides : iterable of (int, int)
        Row and column strides of each level from the full resolution, e.g.
        ``[(2, 2), (4, 4)]``.
    should_stop : callable, optional
        Polled between chunks; when it returns True the writing stops.

    Returns
    -------
    dict of str to list
        For ``"labels"`` (and ``"probabilities"``), the levels, full resolution
        first; empty when stopped.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from napari_unet import UNet, UNetConfig, InferenceConfig
    >>> model = UNet(UNetConfig(depth=2, base_channels=4, dropout=0.0)).eval()
    >>> image = np.random.default_rng(0).random((96, 64)).astype(np.float32)
    >>> config = InferenceConfig(tile_shape=(32, 32), device="cpu", precision="fp32")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "result.zarr"
    >>> result = segment_to_zarr(model, image, path, task="semantic", config=config)
    >>> levels = write_levels(result, [(2, 2), (4, 4)])
    >>> [level.shape for level in levels["labels"]]
    [(96, 64), (48, 32), (24, 16)]
    >>> bool((levels["labels"][2][:] == result.labels[::4, ::4]).all())
    True
    """
    zarr = _import("zarr")
    if not result.completed:
        raise ValueError("The result is not complete; levels are written for complete results.")
    strides = [_check_stride(stride) for stride in strides]
    return _write_levels(zarr.open_group(str(result.path), mode="r+"), strides, should_stop)


def _write_levels(
    root: Any, strides: list[tuple[int, int]], should_stop: Callable[[], bool] | None
) -> dict[str, list[Any]]:
    """Write the levels of ``root``'s labels and probabilities (see :func:`write_levels`)."""
    levels: dict[str, list[Any]] = {}
    members = set(root.array_keys())
    for name in ("labels", "probabilities"):
        if name not in members:
            continue
        full = root[name]
        written: list[tuple[tuple[int, int], Any]] = [((1, 1), full)]
        for number, (rows, cols) in enumerate(strides, start=1):
            # The finest level that this one can be read from (level 0 always can).
            (source_rows, source_cols), source = max(
                (level for level in written if rows % level[0][0] == 0 and cols % level[0][1] == 0),
                key=lambda level: level[0][0] * level[0][1],
            )
            step = (rows // source_rows, cols // source_cols)
            height, width = source.shape[-2:]
            shape = (*source.shape[:-2], -(-height // step[0]), -(-width // step[1]))
            chunks = (
                *source.chunks[:-2],
                *(min(c, n) for c, n in zip(source.chunks[-2:], shape[-2:], strict=True)),
            )
            key = f"{name}_level{number}"
            if key in root:  # from an earlier call: derived data, rewritten
                del root[key]
            target = _create_array(root, key, shape, chunks, source.dtype)
            if not _subsample(source, target, step, should_stop):
                return {}
            written.append(((rows, cols), target))
        number = len(written)
        while f"{name}_level{number}" in root:  # left by an earlier call with more levels
            del root[f"{name}_level{number}"]
            number += 1
        levels[name] = [array for _, array in written]
    return levels


def overview_strides(shape: tuple[int, ...], smallest: int = 1024) -> list[tuple[int, int]]:
    """Strides 2, 4, 8, ... of the levels that take ``shape`` down to about ``smallest`` pixels.

    The coarsest level is the first whose larger side is at most ``smallest``;
    an image no larger than that gets none.

    Examples
    --------
    >>> overview_strides((8192, 6000))
    [(2, 2), (4, 4), (8, 8)]
    >>> overview_strides((1024, 1024))
    []
    """
    largest = max(shape[-2:])
    strides, stride = [], 2
    while largest / (stride // 2) > smallest:
        strides.append((stride, stride))
        stride *= 2
    return strides


def level_arrays(group: Any, name: str) -> list[Any]:
    """Return the array ``name`` of a result store and its levels (``name_level1``, ...)."""
    levels, number = [group[name]], 1
    members = set(group.array_keys())
    while f"{name}_level{number}" in members:
        levels.append(group[f"{name}_level{number}"])
        number += 1
    return levels


def _subsample(
    source: Any, target: Any, step: tuple[int, int], should_stop: Callable[[], bool] | None
) -> bool:
    """Write ``source[..., ::step[0], ::step[1]]`` into ``target``, one source chunk at a time."""
    height, width = source.shape[-2:]
    chunk_rows, chunk_cols = source.chunks[-2:]
    # Leading axes chunked one by one (planes) are looped over; the rest (classes) are read whole.
    loop = 0
    while loop < source.ndim - 2 and source.chunks[loop] == 1:
        loop += 1
    for index in np.ndindex(*source.shape[:loop]):
        for top in range(0, height, chunk_rows):
            for left in range(0, width, chunk_cols):
                if should_stop is not None and should_stop():
                    return False
                # The first kept row and column in this chunk (multiples of the step).
                row = -(-top // step[0]) * step[0]
                col = -(-left // step[1]) * step[1]
                bottom, right = min(top + chunk_rows, height), min(left + chunk_cols, width)
                if row >= bottom or col >= right:
                    continue
                kept = source[(*index, Ellipsis, slice(row, bottom), slice(col, right))]
                kept = kept[..., :: step[0], :: step[1]]
                out_row, out_col = row // step[0], col // step[1]
                target[
                    (
                        *index,
                        Ellipsis,
                        slice(out_row, out_row + kept.shape[-2]),
                        slice(out_col, out_col + kept.shape[-1]),
                    )
                ] = kept
    return True


def _check_stride(stride: Any) -> tuple[int, int]:
    try:
        rows, cols = stride
    except (TypeError, ValueError):
        rows = cols = None
    if not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
        for s in (rows, cols)
    ):
        raise ValueError(
            f"A level's strides must be two positive integers (rows, cols), got {stride!r}."
        )
    return int(rows), int(cols)


# -- what a task needs ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
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
class _BlockTask:
    """One block of one plane, and that plane's normalisation statistics."""

    plane: int
    rows: slice
    cols: slice
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class _ModelPayload:
    """The network as it travels to the workers: its config and weights, and a cache key."""

    key: str
    config: dict[str, Any]
    state_dict: dict[str, Any]


@dataclass(frozen=True)
class _PathSource:
    """An image that each worker opens itself (TIFF stores cannot be pickled)."""

    path: str


class _BlockWindow:
    """One block of one plane with the context its tiles need, read once.

    It offers the part of :class:`~napari_unet.inference.ImagePlanes` that
    :func:`~napari_unet.inference.tiled_predict` uses (``height``, ``width``,
    ``read_mirrored``) in block coordinates, so the tile loop runs unchanged.
    The pixels come from :meth:`ImagePlanes.read_mirrored` on the whole plane:
    the image itself around the block, mirrored only at the image edge.
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
    ) -> None:
        self.height = rows.stop - rows.start
        self.width = cols.stop - cols.start
        # The last tile may run past the block's end (by less than ``align``, or
        # further when the tile is larger than the block).
        extent_h = tile_starts(self.height, tile_shape[0], align)[-1] + tile_shape[0]
        extent_w = tile_starts(self.width, tile_shape[1], align)[-1] + tile_shape[1]
        self._border = border
        self._box = planes.read_mirrored(
            plane,
            rows.start - border,
            cols.start - border,
            extent_h + 2 * border,
            extent_w + 2 * border,
        )

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


def _run_block(
    plan: _Plan,
    task: _BlockTask,
    predictor: Callable[[np.ndarray], np.ndarray],
    image: Any,
    should_stop: Callable[[], bool] | None,
) -> tuple[bool, float]:
    """Segment one block and write it to the store; return (finished, seconds).

    The outputs are written per tile exactly as
    :func:`~napari_unet.inference.predict_generator` writes them, so where
    tiles overlap the later tile's values are kept, as there.
    """
    zarr = _import("zarr")
    start = time.perf_counter()
    planes = ImagePlanes(image, plan.channel_axis)
    window = _BlockWindow(
        planes, task.plane, task.rows, task.cols, plan.tile_shape, plan.border, plan.align
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
    index = _plane_index(task.plane, plan.plane_shape)
    outputs = zip(task_.map_names, values, strict=True) if task_.instances else [("labels", values)]
    for name, output in outputs:
        target = zarr.open_array(os.path.join(plan.store, name), mode="r+")
        target[(*index, task.rows, task.cols)] = output
    if probabilities is not None:
        target = zarr.open_array(os.path.join(plan.store, "probabilities"), mode="r+")
        target[(*index, slice(None), task.rows, task.cols)] = probabilities
    return finished, time.perf_counter() - start


def _make_predictor(network: Any, plan: _Plan) -> Callable[[np.ndarray], np.ndarray]:
    predictor: Callable[[np.ndarray], np.ndarray] = ModelPredictor(
        network, plan.device, plan.precision
    )
    if plan.same_padding:
        predictor = _crop_predictor(predictor, plan.border)
    if plan.tta:
        predictor = test_time_augmented(predictor)
    return predictor


# -- running here ---------------------------------------------------------------------------


def _run_here(
    plan: _Plan,
    tasks: list[_BlockTask],
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
        predictor = _make_predictor(network, plan)
        for done, task in enumerate(tasks, start=1):
            if should_stop is not None and should_stop():
                return False
            finished, seconds = _run_block(plan, task, predictor, image, should_stop)
            yield BlockResult(task.plane, (task.rows, task.cols), done, len(tasks), seconds)
            if not finished:
                return False
        return True
    finally:
        if plan.torch_threads is not None:
            torch.set_num_threads(previous)


# -- running on a dask cluster ----------------------------------------------------------------


def _run_on_cluster(
    client: Any,
    plan: _Plan,
    tasks: list[_BlockTask],
    payload: _ModelPayload,
    source: Any,
    should_stop: Callable[[], bool] | None,
) -> Generator[BlockResult, None, bool]:
    """Submit one task per block to ``client``'s cluster; yield blocks as they finish."""
    distributed = _import("distributed")
    # The network and an in-memory image travel once, not with every task.
    model_future = client.scatter(payload, broadcast=True, hash=False)
    if not isinstance(source, _PathSource):
        _check_picklable(source)
        source = client.scatter(source, hash=False)
    run = payload.key[:8]
    futures = {}
    for number, task in enumerate(tasks):
        future = client.submit(
            _run_block_on_worker,
            plan,
            task,
            model_future,
            source,
            key=f"napari-unet-block-{run}-{number}",
            priority=-number,  # row-major order, as far as the workers allow
        )
        futures[future.key] = (future, task)
    logger.info("Submitted %d block(s) to %s", len(tasks), client)
    finished_blocks = distributed.as_completed([future for future, _ in futures.values()])
    done = 0
    try:
        while not finished_blocks.is_empty():
            if should_stop is not None and should_stop():
                return False
            batch = finished_blocks.next_batch(block=should_stop is None)
            if not batch:
                time.sleep(0.05)
                continue
            for future in batch:
                _, seconds = future.result()  # re-raises a task's error here
                task = futures[future.key][1]
                done += 1
                yield BlockResult(task.plane, (task.rows, task.cols), done, len(tasks), seconds)
        return True
    finally:
        # Cancel what has not run (after a stop, an error, or the caller closing us).
        client.cancel([future for future, _ in futures.values()])


_cache_lock = threading.Lock()
_predictors: dict[tuple[str, str, str], Callable[[np.ndarray], np.ndarray]] = {}
_sources: dict[tuple[str, str], Any] = {}
_CACHE_SIZE = 2


def _run_block_on_worker(
    plan: _Plan, task: _BlockTask, payload: _ModelPayload, source: Any
) -> tuple[bool, float]:
    """Task body on a dask worker: cached network and image, then :func:`_run_block`."""
    import torch

    threads = plan.torch_threads or 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    predictor = _cached_predictor(payload, plan)
    if isinstance(source, _PathSource):
        image = _cached_source(payload.key, source.path)
    elif _is_dask_array(source):
        image = _SynchronousDask(source)
    else:
        image = source
    return _run_block(plan, task, predictor, image, None)


def _cached_predictor(payload: _ModelPayload, plan: _Plan) -> Callable[[np.ndarray], np.ndarray]:
    """Build the network once per worker process and run, not once per task."""
    from napari_unet.model import UNet, UNetConfig

    key = (payload.key, plan.device, plan.precision)
    with _cache_lock:
        if key not in _predictors:
            network = UNet(UNetConfig(**payload.config))
            network.load_state_dict(payload.state_dict, strict=True)
            _remember(_predictors, key, _make_predictor(network.eval(), plan))
        return _predictors[key]


def _cached_source(run: str, path: str) -> Any:
    """Open the image once per worker process and run (a new run opens it afresh)."""
    with _cache_lock:
        if (run, path) not in _sources:
            _remember(_sources, (run, path), open_image(path))
        return _sources[(run, path)]


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Keep ``value`` under ``key``, dropping the oldest entries beyond ``_CACHE_SIZE``."""
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        del cache[next(iter(cache))]


class _SynchronousDask:
    """Reads a dask array in the calling thread (no nested scheduling inside a task)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key].compute(scheduler="synchronous"))


def _is_dask_array(array: Any) -> bool:
    return type(array).__module__.startswith("dask.") and hasattr(array, "compute")


def _check_picklable(image: Any) -> None:
    """Fail early, with advice, for arrays that cannot travel to workers (open TIFF files)."""
    if isinstance(image, np.ndarray):
        return
    try:
        pickle.dumps(image)
    except (TypeError, pickle.PicklingError, AttributeError) as error:
        raise TypeError(
            f"The image ({type(image).__name__}) cannot be sent to the dask workers "
            f"({error}); pass its file path instead, so that each worker opens it."
        ) from error


# -- outputs ---------------------------------------------------------------------------------


class _PlaneOf:
    """A 2D plane of a stacked zarr array, read and written by slices (for label_instances)."""

    def __init__(self, array: Any, index: tuple[int, ...]) -> None:
        self.array, self.index = array, index
        self.shape = tuple(array.shape[len(index) :])
        self.dtype = array.dtype

    def __getitem__(self, key: Any) -> Any:
        return self.array[(*self.index, *_as_tuple(key))]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[(*self.index, *_as_tuple(key))] = value


def _as_tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _create_array(
    group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any
) -> Any:
    if hasattr(group, "create_array"):  # zarr >= 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def _open_result(path: Path, *, completed: bool) -> ZarrSegmentation:
    zarr = _import("zarr")
    root = zarr.open_group(str(path), mode="r+")
    members = set(root.array_keys())

    def get(name: str) -> Any:
        return root[name] if name in members else None

    return ZarrSegmentation(
        path=path,
        labels=root["labels"],
        probabilities=get("probabilities"),
        foreground=get("foreground"),
        completed=completed,
    )


def _check_output(
    output: Path, partial: Path, overwrite: bool, inputs: Iterable[Path | None]
) -> None:
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} already exists; choose another output, or pass overwrite=True to replace it."
        )
    if not output.parent.is_dir():
        raise FileNotFoundError(f"The folder {output.parent} does not exist; create it first.")
    for source in inputs:
        if source is None:
            continue
        for target in (output, partial):
            if _overlaps(target, source):
                raise ValueError(
                    f"Writing {target} would overwrite the input {source}; choose another output."
                )


def _overlaps(first: Path, second: Path) -> bool:
    """Whether one path is the other or lies inside it."""
    first, second = first.resolve(), second.resolve()
    return first == second or first in second.parents or second in first.parents


def _array_location(array: Any) -> Path | None:
    """Return the folder of a zarr array on a local disk (zarr 3 ``root``, zarr 2 ``path``)."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if not isinstance(root, (str, os.PathLike)):
        return None
    return Path(root) / str(getattr(array, "path", "") or "")


def _remove_leftover(partial: Path) -> None:
    """Remove the ``.partial`` store of an earlier run that did not finish."""
    if not partial.exists():
        return
    if not is_zarr_store(partial):
        raise FileExistsError(
            f"{partial} exists and is not an unfinished result of this program; move it away."
        )
    logger.warning("Removing %s, left by an earlier run that did not finish", partial)
    shutil.rmtree(partial)


def _replace(partial: Path, output: Path) -> None:
    """Rename the complete store to its name; an existing one goes only after that."""
    if not output.exists():
        os.replace(partial, output)
        return
    old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(output, old)
    os.replace(partial, output)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


# -- small helpers ----------------------------------------------------------------------------


def _passing(
    events: Generator[BlockResult, None, bool], note: Callable[[BlockResult], None]
) -> Generator[BlockResult, None, bool]:
    """Yield ``events`` on, calling ``note`` on each; return the generator's value."""
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                return bool(stop.value)
            note(event)
            yield event
    finally:
        events.close()


def _block_regions(shape: tuple[int, int], block: tuple[int, int]) -> Iterator[tuple[slice, slice]]:
    """Blocks in row-major order; the last row and column may be smaller."""
    for top in range(0, shape[0], block[0]):
        for left in range(0, shape[1], block[1]):
            yield (
                slice(top, min(top + block[0], shape[0])),
                slice(left, min(left + block[1], shape[1])),
            )


def _plane_index(plane: int, plane_shape: tuple[int, ...]) -> tuple[int, ...]:
    if not plane_shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(plane, plane_shape))


def _round_up(value: int, step: int) -> int:
    return math.ceil(value / step) * step


def _check_block_shape(block_shape: Any) -> tuple[int, int]:
    try:
        sizes = tuple(block_shape)
    except TypeError:
        sizes = ()
    if len(sizes) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes
    ):
        raise ValueError(
            f"block_shape must be two positive integers (height, width), got {block_shape!r}; "
            f"e.g. block_shape=(2048, 2048)."
        )
    return int(sizes[0]), int(sizes[1])


def _import(name: str) -> Any:
    """Import an optional package; say how to install it when it is missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"Segmenting large images needs the {name!r} package; install it with "
            f"{LARGE_DATA_EXTRA}."
        ) from None
