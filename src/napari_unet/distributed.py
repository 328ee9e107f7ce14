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

The work is split over three modules: :mod:`napari_unet.blocks` (one block
task, and running tasks here), :mod:`napari_unet.dask_runner` (running them on
a cluster) and :mod:`napari_unet.result_store` (the zarr store, its levels and
its safe naming, without torch). This module plans the tasks and labels the
result.

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

import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._generators import run_to_end
from napari_unet.blocks import (
    BlockPlan,
    BlockResult,
    BlockTask,
    ModelPayload,
    PathSource,
    plane_index,
    run_here,
)
from napari_unet.dask_runner import run_on_cluster
from napari_unet.inference import (
    ImagePlanes,
    InferenceConfig,
    check_outputs,
    labels_dtype,
    tile_geometry,
)
from napari_unet.io import open_image
from napari_unet.normalization import Normalization
from napari_unet.result_store import (
    PARTIAL_SUFFIX,
    STORE_KEY,
    PlaneOf,
    ZarrSegmentation,
    array_location,
    check_output,
    check_stride,
    create_array,
    import_optional,
    level_arrays,
    open_result,
    overview_strides,
    remove_leftover,
    replace_partial,
    write_level_arrays,
    write_levels,
)
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
        its maps (``foreground``; ``interior`` for ``three-class``, ``distance``
        for ``distance``) in the store.
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
        if model.object_area is not None and config.object_diameter != "off":
            logger.info(
                "Block-wise segmentation keeps the image's own scale; the model's object "
                "size (%.0f px) is not applied (predict() resamples in-memory images).",
                model.object_area,
            )
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
    levels = [check_stride(stride) for stride in levels]
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
    check_output(output, partial, overwrite, [source_path, array_location(image)])

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

    # Normalisation decided once per plane, on the whole plane, as predict does.
    tasks = []
    for plane in range(planes.n_planes):
        low, high, smoothing = normalization.prepare(planes.plane_view(plane))
        tasks += [BlockTask(plane, rows, cols, low, high, smoothing) for rows, cols in regions]

    zarr = import_optional("zarr")
    remove_leftover(partial)
    root = zarr.open_group(str(partial), mode="w")
    plane_chunks = (1,) * len(planes.plane_shape)
    out_shape = (*planes.plane_shape, *spatial)
    create_array(root, "labels", out_shape, (*plane_chunks, *blocks), labels_dtype(task))
    for name in task.map_names:
        create_array(root, name, out_shape, (*plane_chunks, *blocks), np.float32)
    n_classes = model_config.n_classes
    if probabilities:
        create_array(
            root,
            "probabilities",
            (*planes.plane_shape, n_classes, *spatial),
            (*plane_chunks, n_classes, *blocks),
            np.float32,
        )
    root.attrs.update(
        {
            STORE_KEY: {
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
    plan = BlockPlan(
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
        runs = run_here(plan, tasks, network, image, should_stop)
    else:
        source: Any = PathSource(str(source_path)) if source_path is not None else image
        payload = ModelPayload(uuid.uuid4().hex, model_config.to_dict(), state_dict)
        runs = run_on_cluster(client, plan, tasks, payload, source, should_stop)
    reached: set[int] = set()

    def note(block: BlockResult) -> None:
        reached.add(block.plane)

    completed = yield from _passing(runs, note)

    if task.instances and (completed or client is None):
        labels = root["labels"]
        for plane in sorted(reached) if not completed else range(planes.n_planes):
            index = plane_index(plane, planes.plane_shape)
            maps = [PlaneOf(root[name], index) for name in task.map_names]
            task.label_plane(maps, settings, out=PlaneOf(labels, index))
    if not completed:
        logger.info("Stopped; the finished blocks are in %s", partial)
        return open_result(partial, completed=False)
    if not probabilities:
        for name in task.map_names:
            shutil.rmtree(partial / name)
    if levels:
        # Before the rename, so that a store under its final name is complete, levels included.
        write_level_arrays(zarr.open_group(str(partial), mode="r+"), levels, None)
    root.attrs[STORE_KEY] = {**root.attrs[STORE_KEY], "completed": True}
    replace_partial(partial, output)
    logger.info("Wrote %s", output)
    return open_result(output, completed=True)


def segment_to_zarr(
    model: Any, image: Any, output: str | os.PathLike[str], **kwargs: Any
) -> ZarrSegmentation:
    """Run :func:`segment_to_zarr_generator` to the end and return its :class:`ZarrSegmentation`."""
    return run_to_end(segment_to_zarr_generator(model, image, output, **kwargs))


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
