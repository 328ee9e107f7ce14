"""napari reader for the zarr stores that block-wise segmentation writes.

Dropping ``result.zarr`` (from ``napari-unet segment`` or
:func:`napari_unet.distributed.segment_to_zarr`) onto napari gives a Labels
layer, multiscale when the store holds levels, and the probabilities as Image
layers when it holds them; all read lazily from the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_result` for a complete result store, else None (another reader)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_result if _result_attributes(path) is not None else None


def read_result(path: str | list[str]) -> list[LayerData]:
    """Layers of a result store: the labels, then any probabilities (below the labels)."""
    import dask.array as da
    import zarr

    from napari_unet.result_store import level_arrays

    if isinstance(path, list):
        (path,) = path
    attributes = _result_attributes(path)
    if attributes is None:
        raise ValueError(f"{path} is not a complete result of napari-unet-segmentation.")
    group = zarr.open_group(str(path), mode="r")
    # A CLI store is named after its image, a widget store after its layer ("... segmentation").
    name = Path(path).name.removesuffix(".zarr").removesuffix(" segmentation") or "result"
    labels = level_arrays(group, "labels")
    layers: list[LayerData] = []
    if "probabilities" in set(group.array_keys()):
        levels = [da.from_zarr(level) for level in level_arrays(group, "probabilities")]
        class_names = list(attributes.get("class_names") or [])
        if len(class_names) != levels[0].shape[-3]:
            class_names = [f"class {k}" for k in range(1, levels[0].shape[-3] + 1)]
        maps = probability_maps(name, levels, attributes.get("mode"), class_names)
        for layer_name, data in maps:
            meta = {
                "name": layer_name,
                "colormap": "magma",
                "contrast_limits": (0.0, 1.0),
                "multiscale": len(data) > 1,
            }
            layers.append((data if len(data) > 1 else data[0], meta, "image"))
    meta = {"name": f"{name} segmentation", "multiscale": len(labels) > 1}
    layers.append((labels if len(labels) > 1 else labels[0], meta, "labels"))
    return layers


def probability_maps(
    name: str, levels: list[Any], mode: str | None, class_names: list[str] | tuple[str, ...]
) -> list[tuple[str, list[Any]]]:
    """Name and levels of each probability layer, from ``(..., K, H, W)`` probability levels.

    Instances: one layer, the foreground probability ``1 - p(background)``.
    Semantic: one layer per class, named after it (a biologist reads "nuclei
    probabilities (membrane)" more easily than an extra class axis on a slider).
    """
    if mode == "instances":
        return [(f"{name} probabilities", [1.0 - level[..., 0, :, :] for level in levels])]
    return [
        (f"{name} probabilities ({class_name})", [level[..., k, :, :] for level in levels])
        for k, class_name in enumerate(class_names)
    ]


def _result_attributes(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the store's ``napari-unet`` attributes for a complete result, else None."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return None
    try:
        import zarr

        from napari_unet.result_store import STORE_KEY

        group = zarr.open_group(str(path), mode="r")
        attributes = dict(group.attrs).get(STORE_KEY)
    except Exception:  # not zarr, not a group, or zarr missing: another reader's file
        return None
    if not isinstance(attributes, dict) or attributes.get("completed") is not True:
        return None
    return attributes
