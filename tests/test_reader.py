"""The napari reader of result stores, and the overview levels the command line writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_unet import cli
from napari_unet._reader import get_reader, read_result
from napari_unet.checkpoint import Checkpoint, save_checkpoint
from napari_unet.distributed import segment_to_zarr, write_levels
from napari_unet.inference import InferenceConfig
from napari_unet.model import UNet, UNetConfig
from napari_unet.synthetic import make_touching_nuclei

CONFIG = InferenceConfig(tile_shape=(32, 32), device="cpu", precision="fp32")
PLUGIN = "napari-unet-segmentation"


def tiny_checkpoint(mode: str, n_classes: int, **kwargs) -> Checkpoint:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, n_classes=n_classes, dropout=0.0)).eval()
    return Checkpoint.from_model(model, mode=mode, **kwargs)


@pytest.fixture(scope="module")
def image():
    return make_touching_nuclei((128, 96), seed=2)[0]


def test_semantic_store_with_levels_opens_as_labels_over_class_probabilities(image, tmp_path):
    checkpoint = tiny_checkpoint("semantic", 3, class_names=("cytoplasm", "membrane", "nucleus"))
    result = segment_to_zarr(
        checkpoint, image, tmp_path / "cells.zarr", config=CONFIG, probabilities=True
    )
    write_levels(result, [(2, 2), (4, 4)])

    reader = get_reader(str(result.path))
    assert reader is read_result
    layers = reader(str(result.path))
    names = [meta["name"] for _, meta, _ in layers]
    assert names == [
        "cells probabilities (cytoplasm)",
        "cells probabilities (membrane)",
        "cells probabilities (nucleus)",
        "cells segmentation",
    ]  # the labels last, so on top
    data, meta, kind = layers[-1]
    assert kind == "labels" and meta["multiscale"]
    assert [level.shape for level in data] == [(128, 96), (64, 48), (32, 24)]
    np.testing.assert_array_equal(data[2][...], result.labels[::4, ::4])
    membrane, meta, kind = layers[1]
    assert kind == "image" and meta["multiscale"] and meta["contrast_limits"] == (0.0, 1.0)
    np.testing.assert_allclose(membrane[1].compute(), result.probabilities[1, ::2, ::2])


def test_instances_store_without_levels_gives_the_foreground(image, tmp_path):
    result = segment_to_zarr(
        tiny_checkpoint("instances", 2),
        image,
        tmp_path / "nuclei segmentation.zarr",  # as the Segment widget names its stores
        config=CONFIG,
        probabilities=True,
    )
    (foreground, meta, kind), (labels, labels_meta, labels_kind) = read_result([str(result.path)])
    assert (meta["name"], kind, meta["multiscale"]) == ("nuclei probabilities", "image", False)
    np.testing.assert_allclose(foreground.compute(), 1.0 - result.probabilities[0], atol=1e-6)
    assert (labels_meta["name"], labels_kind) == ("nuclei segmentation", "labels")
    assert not labels_meta["multiscale"] and isinstance(labels, zarr.Array)


def test_other_paths_are_left_to_other_readers(image, tmp_path):
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(4, 4), dtype="u1")
    plain[...] = 1
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w").attrs["napari-unet"] = "other"
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "file.zarr").write_text("not a store")
    stopped = segment_to_zarr(
        tiny_checkpoint("semantic", 2),
        image,
        tmp_path / "stopped.zarr",
        block_shape=(64, 64),
        config=CONFIG,
        should_stop=lambda: True,
    )
    assert not stopped.completed
    complete = segment_to_zarr(tiny_checkpoint("semantic", 2), image, tmp_path / "ok.zarr")
    for path in ("plain.zarr", "group.zarr", "folder.zarr", "file.zarr", "missing.zarr"):
        assert get_reader(str(tmp_path / path)) is None, path
    assert get_reader(str(stopped.path)) is None  # unfinished: not shown as a result
    assert get_reader([str(complete.path), str(complete.path)]) is None
    assert get_reader([str(complete.path)]) is read_result
    with pytest.raises(ValueError, match="not a complete result"):
        read_result(str(tmp_path / "plain.zarr"))


def test_cli_writes_overview_levels_that_napari_opens(make_napari_viewer, tmp_path):
    # Taller than 1024 pixels: levels of 1/2 and 1/4 take it down to about 1024.
    tall = make_touching_nuclei((2112, 192), seed=5)[0]
    source = zarr.open_array(
        str(tmp_path / "tall.zarr"), mode="w", shape=tall.shape, chunks=(512, 192), dtype=tall.dtype
    )
    source[...] = tall
    save_checkpoint(tmp_path / "model.pt", tiny_checkpoint("instances", 2))
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "model.pt"), str(tmp_path / "tall.zarr"), "-o", str(out)]
    assert cli.main([*args, "--block-size", "1024"]) == 0
    group = zarr.open_group(str(out / "tall.zarr"), mode="r")
    assert sorted(group.array_keys()) == ["labels", "labels_level1", "labels_level2"]

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(out / "tall.zarr"), plugin=PLUGIN)
    assert layer.name == "tall segmentation" and layer.multiscale
    assert [level.shape for level in layer.data] == [(2112, 192), (1056, 96), (528, 48)]
    np.testing.assert_array_equal(layer.data[1][...], group["labels"][::2, ::2])
    assert layer.data[0][...].any()
