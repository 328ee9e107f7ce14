"""The zarr store of a block-wise segmentation: its arrays, levels and safe naming.

A result store holds ``labels`` (and, when asked for, ``probabilities`` and the
instance task's maps such as ``foreground``), written under ``<output>.partial``
and renamed to ``output`` only when complete, with overview levels
(``labels_level1``, ...) for napari. This module needs zarr but neither torch nor
the network, so napari's reader of result stores (:mod:`napari_unet._reader`)
imports it without loading PyTorch; :mod:`napari_unet.distributed` writes the
stores.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.io import LARGE_DATA_EXTRA, is_zarr_store

__all__ = [
    "PARTIAL_SUFFIX",
    "STORE_KEY",
    "ZarrSegmentation",
    "level_arrays",
    "overview_strides",
    "write_levels",
]

logger = logging.getLogger(__name__)

#: Ending of a store while it is written.
PARTIAL_SUFFIX = ".partial"
#: The store attribute that describes a result (task, classes, blocks, completed).
STORE_KEY = "napari-unet"


@dataclass
class ZarrSegmentation:
    """The result of :func:`~napari_unet.distributed.segment_to_zarr`: arrays in a zarr store.

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
        A completed result of :func:`~napari_unet.distributed.segment_to_zarr`.
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
    >>> from napari_unet.distributed import segment_to_zarr
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
    zarr = import_optional("zarr")
    if not result.completed:
        raise ValueError("The result is not complete; levels are written for complete results.")
    strides = [check_stride(stride) for stride in strides]
    return write_level_arrays(zarr.open_group(str(result.path), mode="r+"), strides, should_stop)


def write_level_arrays(
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
            target = create_array(root, key, shape, chunks, source.dtype)
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


def check_stride(stride: Any) -> tuple[int, int]:
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


class PlaneOf:
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


def create_array(
    group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any
) -> Any:
    if hasattr(group, "create_array"):  # zarr >= 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def open_result(path: Path, *, completed: bool) -> ZarrSegmentation:
    zarr = import_optional("zarr")
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


def check_output(
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


def array_location(array: Any) -> Path | None:
    """Return the folder of a zarr array on a local disk (zarr 3 ``root``, zarr 2 ``path``)."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if not isinstance(root, (str, os.PathLike)):
        return None
    return Path(root) / str(getattr(array, "path", "") or "")


def remove_leftover(partial: Path) -> None:
    """Remove the ``.partial`` store of an earlier run that did not finish."""
    if not partial.exists():
        return
    if not is_zarr_store(partial):
        raise FileExistsError(
            f"{partial} exists and is not an unfinished result of this program; move it away."
        )
    logger.warning("Removing %s, left by an earlier run that did not finish", partial)
    shutil.rmtree(partial)


def replace_partial(partial: Path, output: Path) -> None:
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


def import_optional(name: str) -> Any:
    """Import an optional package; say how to install it when it is missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"Segmenting large images needs the {name!r} package; install it with "
            f"{LARGE_DATA_EXTRA}."
        ) from None
