"""Running block tasks on a dask cluster (local or remote).

One dask task per block: the network and an in-memory image are scattered to
the workers once; each worker builds the network and opens a file image once
per run (cached), then runs :func:`napari_unet.blocks.run_block`. The client
yields the blocks as they finish and cancels what has not run when stopped.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_unet.blocks import (
    BlockPlan,
    BlockResult,
    BlockTask,
    ModelPayload,
    PathSource,
    make_predictor,
    run_block,
)
from napari_unet.io import open_image
from napari_unet.result_store import import_optional

__all__ = ["run_on_cluster"]

logger = logging.getLogger(__name__)


def run_on_cluster(
    client: Any,
    plan: BlockPlan,
    tasks: list[BlockTask],
    payload: ModelPayload,
    source: Any,
    should_stop: Callable[[], bool] | None,
) -> Generator[BlockResult, None, bool]:
    """Submit one task per block to ``client``'s cluster; yield blocks as they finish."""
    distributed = import_optional("distributed")
    # The network and an in-memory image travel once, not with every task.
    model_future = client.scatter(payload, broadcast=True, hash=False)
    if not isinstance(source, PathSource):
        _check_picklable(source)
        source = client.scatter(source, hash=False)
    run = payload.key[:8]
    futures = {}
    for number, task in enumerate(tasks):
        future = client.submit(
            run_block_on_worker,
            plan,
            task,
            model_future,
            source,
            key=f"napari-unet-block-{run}-{number}",
            priority=-number,  # row-major order, as far as the workers allow
        )
        futures[future.key] = (future, task)
    logger.info("Submitted %d block(s) to %s", len(tasks), client)
    # The client's own loop: without it as_completed looks for a default client, and the
    # command line's client is deliberately not the default.
    finished_blocks = distributed.as_completed(
        [future for future, _ in futures.values()], loop=client.loop
    )
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


def run_block_on_worker(
    plan: BlockPlan, task: BlockTask, payload: ModelPayload, source: Any
) -> tuple[bool, float]:
    """Task body on a dask worker: cached network and image, then :func:`_run_block`."""
    import torch

    threads = plan.torch_threads or 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    predictor = _cached_predictor(payload, plan)
    if isinstance(source, PathSource):
        image = _cached_source(payload.key, source.path)
    elif _is_dask_array(source):
        image = _SynchronousDask(source)
    else:
        image = source
    return run_block(plan, task, predictor, image, None)


def _cached_predictor(payload: ModelPayload, plan: BlockPlan) -> Callable[[np.ndarray], np.ndarray]:
    """Build the network once per worker process and run, not once per task."""
    from napari_unet.model import UNet, UNetConfig

    key = (payload.key, plan.device, plan.precision)
    with _cache_lock:
        if key not in _predictors:
            network = UNet(UNetConfig(**payload.config))
            network.load_state_dict(payload.state_dict, strict=True)
            _remember(_predictors, key, make_predictor(network.eval(), plan))
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
