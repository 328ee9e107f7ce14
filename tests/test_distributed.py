"""Block-wise segmentation into zarr stores, here and on a local dask cluster."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from distributed import Client, LocalCluster

from napari_unet import cli
from napari_unet._generators import run_to_end
from napari_unet.checkpoint import Checkpoint, save_checkpoint
from napari_unet.distributed import (
    BlockResult,
    ZarrSegmentation,
    segment_to_zarr,
    segment_to_zarr_generator,
    write_levels,
)
from napari_unet.inference import InferenceConfig, predict
from napari_unet.io import open_image
from napari_unet.model import UNet, UNetConfig
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.tasks import Postprocess
from napari_unet.training import TrainConfig, train

# Image sizes, blocks and tiles are multiples of the tile: both runs then compute the
# same tiles, which is what makes the results equal bit for bit.
TILE = 32
BLOCK = (128, 64)
CONFIG = InferenceConfig(tile_shape=(TILE, TILE), device="cpu", precision="fp32")


# One PyTorch thread: as on the dask workers, whose rounding depends on the thread count.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint():
    """A tiny network trained briefly: blob-shaped objects (a random one gives speckle)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    image, labels = make_touching_nuclei((128, 128), seed=3)
    config = TrainConfig(
        head="paper",
        calibrate=False,
        steps=60,
        seed=0,
        device="cpu",
        base_channels=4,
        depth=2,
        tile_size=92,
        dropout=0.0,
        learning_rate=1e-2,
        w0=0.0,
        rotate=False,
    )
    result = train([(image, labels)], config)
    torch.set_num_threads(previous)
    return result.checkpoint


@pytest.fixture(scope="module")
def tall_image():
    # Taller than label_instances' 2048-pixel blocks, so its merge across them is used too.
    return make_touching_nuclei((2112, 192), seed=5)[0]


@pytest.fixture(scope="module")
def stack():
    return np.stack([make_touching_nuclei((128, 128), seed=seed)[0] for seed in (7, 8)])


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def reference(checkpoint, image, config=CONFIG, **kwargs):
    kwargs.setdefault("task", checkpoint.task)
    kwargs.setdefault("postprocess", checkpoint.postprocess)
    return predict(
        checkpoint.build_model(),
        image,
        normalization=checkpoint.normalization,
        config=config,
        **kwargs,
    )


def store_equals_predict(checkpoint, image, path):
    """Segment ``image`` in 64x64 blocks into ``path``; check its labels equal predict's.

    Returns the store's group and predict's result (probabilities kept).
    """
    result = segment_to_zarr(
        checkpoint, image, path, block_shape=(64, 64), probabilities=True, config=CONFIG
    )
    expected = reference(checkpoint, image, return_probabilities=True)
    np.testing.assert_array_equal(result.labels[...], expected.labels)
    return zarr.open_group(str(result.path), mode="r"), expected


def crossing_ids(labels: np.ndarray, rows: int, cols: int) -> set[int]:
    """Ids of objects with pixels on both sides of a border every ``rows``/``cols`` pixels."""
    found: set[int] = set()
    for r in range(rows, labels.shape[0], rows):
        above, below = labels[r - 1], labels[r]
        found |= set(above[(above == below) & (above > 0)].tolist())
    for c in range(cols, labels.shape[1], cols):
        left, right = labels[:, c - 1], labels[:, c]
        found |= set(left[(left == right) & (left > 0)].tolist())
    return found


def write_zarr(path, data, chunks):
    array = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[...] = data
    return array


# -- on a cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cluster_result_equals_single_process_across_block_borders(
    checkpoint, tall_image, client, tmp_path
):
    expected = reference(checkpoint, tall_image, return_probabilities=True)
    assert expected.labels.max() > 50  # real objects, not an empty or speckled mask
    # Objects cross the task blocks' borders, and label_instances' (row 2048).
    assert len(crossing_ids(expected.labels, *BLOCK)) >= 10
    assert crossing_ids(expected.labels, 2048, 10**6)

    result = segment_to_zarr(
        checkpoint,
        tall_image,
        tmp_path / "out.zarr",
        block_shape=BLOCK,
        config=CONFIG,
        probabilities=True,
        client=client,
    )
    assert isinstance(result, ZarrSegmentation) and result.completed
    assert result.path == tmp_path / "out.zarr"
    assert not (tmp_path / "out.zarr.partial").exists()
    assert isinstance(result.labels, zarr.Array)
    assert result.labels.chunks == BLOCK and result.labels.dtype == np.uint32
    # Exactly equal, ids included (not merely up to a permutation).
    np.testing.assert_array_equal(result.labels[...], expected.labels)
    np.testing.assert_array_equal(result.probabilities[...], expected.probabilities)
    np.testing.assert_array_equal(result.foreground[...], 1.0 - expected.probabilities[0])


def test_cluster_semantic_stack_from_a_zarr_path(checkpoint, stack, client, tmp_path):
    source = tmp_path / "stack.zarr"
    write_zarr(source, stack, chunks=(1, 40, 40))
    events = []
    generator = segment_to_zarr_generator(
        checkpoint,
        source,  # each worker opens the path itself
        tmp_path / "classes.zarr",
        block_shape=(64, 64),
        task="semantic",
        config=CONFIG,
        client=client,
    )
    result = run_to_end(generator, events.append)

    expected = reference(checkpoint, stack, task="semantic")
    np.testing.assert_array_equal(result.labels[...], expected.labels)
    assert result.labels.dtype == np.uint16 and result.labels.chunks == (1, 64, 64)
    assert set(np.unique(expected.labels)) == {1, 2}
    assert result.probabilities is None and result.foreground is None
    # One event per block and plane: 2 planes x 2 x 2 blocks, each counted once.
    assert all(isinstance(event, BlockResult) for event in events)
    assert sorted(event.done for event in events) == list(range(1, 9))
    assert {(e.plane, e.region[0].start, e.region[1].start) for e in events} == {
        (p, r, c) for p in (0, 1) for r in (0, 64) for c in (0, 64)
    }


def test_cluster_refuses_an_image_that_cannot_travel(checkpoint, client, tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((64, 64), np.uint16))
    opened = open_image(tmp_path / "image.tif")  # holds an open file
    with pytest.raises(TypeError, match="pass its file path instead"):
        segment_to_zarr(checkpoint, opened, tmp_path / "out.zarr", config=CONFIG, client=client)


def test_cli_segments_a_zarr_store_on_a_running_scheduler(
    checkpoint, stack, client, tmp_path, capsys
):
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    write_zarr(tmp_path / "stack.ome.zarr", stack, chunks=(1, 32, 32))
    status = cli.main(
        [
            "segment",
            str(tmp_path / "model.pt"),
            str(tmp_path / "stack.ome.zarr"),
            "-o",
            str(tmp_path / "out"),
            "--scheduler",
            client.scheduler.address,
            "--block-size",
            "64",
        ]
    )
    assert status == 0
    labels = zarr.open_array(str(tmp_path / "out" / "stack.zarr" / "labels"), mode="r")
    # The CLI lets the tile be chosen for a 64-pixel block: a 64-pixel tile here.
    expected = reference(checkpoint, stack, InferenceConfig(tile_shape=(64, 64), device="cpu"))
    np.testing.assert_array_equal(labels[...], expected.labels)
    assert f"({int(expected.labels.max())} objects)" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_starts_a_local_cluster_with_workers(checkpoint, stack, tmp_path):
    """In a fresh process, so that no client of another test can stand in for the CLI's."""
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    tifffile.imwrite(tmp_path / "stack.tif", stack, tile=(32, 32))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_unet.cli",
            "segment",
            str(tmp_path / "model.pt"),
            str(tmp_path / "stack.tif"),  # read lazily because of --workers
            "-o",
            str(tmp_path / "out"),
            "--workers",
            "2",
            "--block-size",
            "64",
            "--probabilities",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    store = zarr.open_group(str(tmp_path / "out" / "stack.zarr"), mode="r")
    expected = reference(
        checkpoint,
        stack,
        InferenceConfig(tile_shape=(64, 64), device="cpu"),
        return_probabilities=True,
    )
    np.testing.assert_array_equal(store["labels"][...], expected.labels)
    np.testing.assert_array_equal(store["probabilities"][...], expected.probabilities)
    assert "stack.tif ->" in completed.stdout


# -- in this process ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dask", "tiff", "numpy"])
def test_here_equals_single_process(checkpoint, stack, tmp_path, kind):
    if kind == "dask":
        image = da.from_array(stack, chunks=(1, 40, 50))
    elif kind == "tiff":
        image = tmp_path / "stack.tif"
        tifffile.imwrite(image, stack, tile=(32, 32))
    else:
        image = stack
    result = segment_to_zarr(
        checkpoint, image, tmp_path / "out.zarr", block_shape=(64, 64), config=CONFIG
    )
    expected = reference(checkpoint, stack)
    np.testing.assert_array_equal(result.labels[...], expected.labels)
    assert crossing_ids(expected.labels[0], 64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.zarr"] + (["stack.tif"] if kind == "tiff" else [])
    )
    assert result.foreground is None  # the intermediate is removed unless asked for


def test_sizes_off_the_tile_grid_agree_up_to_rounding(checkpoint, tmp_path):
    """Blocks and image not multiples of the tile: other tiles, the same maths."""
    image = make_touching_nuclei((203, 190), seed=4)[0]
    for tile_shape in [(TILE, TILE), None]:
        config = InferenceConfig(tile_shape=tile_shape, device="cpu", precision="fp32")
        result = segment_to_zarr(
            checkpoint,
            image,
            tmp_path / f"{tile_shape}.zarr",
            block_shape=(60, 70),  # rounded up to (60, 72): multiples of 2**depth
            config=config,
            probabilities=True,
        )
        assert result.labels.chunks == (60, 72)
        expected = reference(checkpoint, image, config, return_probabilities=True)
        np.testing.assert_allclose(result.probabilities[...], expected.probabilities, atol=1e-5)
        assert np.mean(result.labels[...] == expected.labels) > 0.999


def test_rgb_semantic_and_same_padding(tmp_path):
    torch.manual_seed(0)
    model = UNet(
        UNetConfig(
            in_channels=3, n_classes=3, depth=2, base_channels=4, dropout=0.0, padding="same"
        )
    ).eval()
    image = np.random.default_rng(0).random((128, 192, 3)).astype(np.float32)
    result = segment_to_zarr(
        model,
        image,
        tmp_path / "out.zarr",
        block_shape=(64, 64),
        channel_axis=-1,
        task="semantic",
        config=CONFIG,
    )
    expected = predict(model, image, channel_axis=-1, task="semantic", config=CONFIG)
    np.testing.assert_array_equal(result.labels[...], expected.labels)
    assert len(np.unique(expected.labels)) >= 2  # not a constant result


def test_levels_subsample_labels_and_probabilities_chunk_by_chunk(checkpoint, stack, tmp_path):
    # Blocks of 64 on 128 x 128 planes: 4 chunks per plane, so levels span chunks.
    stack = stack[:, :, :120]  # a width that the strides do not divide
    result = segment_to_zarr(
        checkpoint, stack, tmp_path / "out.zarr", block_shape=(64, 64), probabilities=True
    )
    polls = []

    def go_on() -> bool:
        polls.append(1)
        return False

    levels = write_levels(result, [(2, 2), (4, 4), (3, 3), (4, 8)], should_stop=go_on)
    labels, probabilities = result.labels[...], result.probabilities[...]
    strides = [(1, 1), (2, 2), (4, 4), (3, 3), (4, 8)]
    assert len(levels["labels"]) == len(levels["probabilities"]) == len(strides)
    for (rows, cols), level, level_probabilities in zip(
        strides, levels["labels"], levels["probabilities"], strict=True
    ):
        np.testing.assert_array_equal(level[...], labels[..., ::rows, ::cols])
        np.testing.assert_array_equal(level_probabilities[...], probabilities[..., ::rows, ::cols])
        assert level.dtype == labels.dtype
        assert level.chunks[-2:] == tuple(min(64, n) for n in level.shape[-2:])
    assert len(np.unique(labels)) > 10  # objects, not a constant result
    # In the store, by name, for anyone who opens it later.
    group = zarr.open_group(str(result.path), mode="r")
    assert {"labels_level1", "labels_level4", "probabilities_level3"} <= set(group.array_keys())
    assert len(polls) > 4 * len(stack)  # polled between chunks


def test_levels_are_written_before_the_store_takes_its_name(checkpoint, stack, tmp_path):
    image = stack[0]
    kwargs = {"block_shape": (64, 64), "task": "semantic", "config": CONFIG}
    result = segment_to_zarr(checkpoint, image, tmp_path / "a.zarr", levels=[(2, 2)], **kwargs)
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(group["labels_level1"][...], result.labels[::2, ::2])
    # A stopped run keeps its .partial name and gets no levels.
    stopped = segment_to_zarr(
        checkpoint, image, tmp_path / "b.zarr", levels=[(2, 2)], should_stop=lambda: True, **kwargs
    )
    assert not stopped.completed
    assert "labels_level1" not in set(zarr.open_group(str(stopped.path)).array_keys())
    with pytest.raises(ValueError, match="two positive integers"):
        segment_to_zarr(checkpoint, image, tmp_path / "c.zarr", levels=[(0, 2)], **kwargs)
    assert not (tmp_path / "c.zarr.partial").exists()


def test_levels_stop_when_asked_and_check_their_input(checkpoint, stack, tmp_path):
    result = segment_to_zarr(
        checkpoint, stack[0], tmp_path / "out.zarr", block_shape=(64, 64), task="semantic"
    )
    assert write_levels(result, [(2, 2)], should_stop=lambda: True) == {}
    # Again, over the unfinished level the stop left behind.
    (full, half) = write_levels(result, [(2, 2)])["labels"]
    np.testing.assert_array_equal(half[...], full[::2, ::2])
    for bad in ([(0, 2)], [(2,)], [(2.0, 2)], [(True, 2)]):
        with pytest.raises(ValueError, match="two positive integers"):
            write_levels(result, bad)
    partial = dataclasses.replace(result, completed=False)
    with pytest.raises(ValueError, match="not complete"):
        write_levels(partial, [(2, 2)])


def test_should_stop_keeps_the_finished_blocks_under_the_partial_name(checkpoint, stack, tmp_path):
    image = stack[0]
    output = tmp_path / "out.zarr"
    seen = []
    generator = segment_to_zarr_generator(
        checkpoint,
        image,
        output,
        block_shape=(64, 64),
        config=CONFIG,
        should_stop=lambda: len(seen) >= 1,
    )
    result = run_to_end(generator, seen.append)
    assert len(seen) == 1 and not result.completed
    assert result.path == tmp_path / "out.zarr.partial" and not output.exists()
    labels = result.labels[...]
    first = np.zeros(image.shape, bool)
    first[seen[0].region] = True
    assert labels[first].any() and not labels[~first].any()
    expected = reference(checkpoint, image).labels
    np.testing.assert_array_equal(labels[first] > 0, expected[first] > 0)

    # A new run replaces the unfinished store and completes.
    result = segment_to_zarr(checkpoint, image, output, block_shape=(64, 64), config=CONFIG)
    assert result.completed and not result.path.with_name("out.zarr.partial").exists()
    np.testing.assert_array_equal(result.labels[...], expected)


def test_existing_output_and_input_are_protected(checkpoint, stack, tmp_path):
    image = stack[0]
    source = tmp_path / "image.zarr"
    write_zarr(source, image, chunks=(32, 32))
    output = tmp_path / "out.zarr"
    segment_to_zarr(checkpoint, source, output, block_shape=(64, 64), config=CONFIG)
    before = zarr.open_array(str(output / "labels"), mode="r")[...]

    with pytest.raises(FileExistsError, match="overwrite=True"):
        segment_to_zarr(checkpoint, source, output, config=CONFIG)
    for target in (source, source / "inside.zarr"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            segment_to_zarr(checkpoint, source, target, config=CONFIG, overwrite=True)
    opened = zarr.open_array(str(source), mode="r")
    with pytest.raises(ValueError, match="would overwrite the input"):
        segment_to_zarr(checkpoint, opened, source, config=CONFIG, overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        segment_to_zarr(checkpoint, source, tmp_path / "missing" / "out.zarr", config=CONFIG)
    (tmp_path / "other.zarr.partial").write_text("not ours")
    with pytest.raises(FileExistsError, match="move it away"):
        segment_to_zarr(checkpoint, source, tmp_path / "other.zarr", config=CONFIG)
    np.testing.assert_array_equal(zarr.open_array(str(source), mode="r")[...], image)

    # overwrite=True replaces the store (semantic now: other values, other dtype).
    result = segment_to_zarr(
        checkpoint, source, output, task="semantic", config=CONFIG, overwrite=True
    )
    assert result.labels.dtype == np.uint16 and before.dtype == np.uint32
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "image.zarr",
        "other.zarr.partial",
        "out.zarr",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"block_shape": (0, 64)}, ValueError, "block_shape must be two positive integers"),
        ({"block_shape": 64}, ValueError, "block_shape must be two positive integers"),
        ({"task": "panoptic"}, ValueError, "Unknown task"),
        ({"channel_axis": 0}, ValueError, "expects 1 channel"),
        ({"torch_threads": 0}, ValueError, "torch_threads"),
    ],
)
def test_bad_arguments_are_rejected(checkpoint, tmp_path, kwargs, error, match):
    image = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(error, match=match):
        segment_to_zarr(checkpoint, image, tmp_path / "out.zarr", config=CONFIG, **kwargs)
    assert not (tmp_path / "out.zarr").exists()


def test_a_model_is_required(tmp_path):
    with pytest.raises(TypeError, match="Checkpoint or a UNet"):
        segment_to_zarr("model.pt", np.zeros((64, 64)), tmp_path / "out.zarr")


def test_cli_zarr_input_without_a_cluster_and_option_errors(checkpoint, stack, tmp_path, capsys):
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    write_zarr(tmp_path / "plane.zarr", stack[0], chunks=(32, 32))
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "model.pt"), str(tmp_path / "plane.zarr"), "-o", str(out)]
    assert cli.main([*args, "--block-size", "64"]) == 0
    expected = reference(checkpoint, stack[0], InferenceConfig(tile_shape=(64, 64), device="cpu"))
    labels = zarr.open_array(str(out / "plane.zarr" / "labels"), mode="r")
    np.testing.assert_array_equal(labels[...], expected.labels)
    capsys.readouterr()

    assert cli.main([*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.main([*args, "--workers", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    # Writing the result onto the input is refused before anything is read.
    same = ["segment", str(tmp_path / "model.pt"), str(out / "plane.zarr"), "-o", str(out)]
    assert cli.main(same) == 2
    err = capsys.readouterr().err
    assert "would replace the input" in err and len(err.strip().splitlines()) == 1


def test_cli_names_a_missing_input_before_starting_a_cluster(
    checkpoint, tmp_path, capsys, monkeypatch
):
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    started = []
    monkeypatch.setattr(cli, "_dask_client", lambda *args: started.append(args))
    model, missing = str(tmp_path / "model.pt"), str(tmp_path / "typo.zarr")
    code = cli.main(["segment", model, missing, "-o", str(tmp_path / "out"), "--workers", "2"])
    assert code == 1 and not started
    err = capsys.readouterr().err
    assert "typo.zarr" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_explains_an_address_that_is_not_a_dask_scheduler(checkpoint, stack, tmp_path, capsys):
    # The usual mistake: the dashboard's web server instead of the scheduler.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_like_a_web_server():
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 8)

    thread = threading.Thread(target=answer_like_a_web_server, daemon=True)
    thread.start()
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    write_zarr(tmp_path / "plane.zarr", stack[0], chunks=(32, 32))
    model, image = str(tmp_path / "model.pt"), str(tmp_path / "plane.zarr")
    address = f"tcp://127.0.0.1:{port}"
    scheduler_before = dask.config.get("scheduler", None)
    code = cli.main(["segment", model, image, "-o", str(tmp_path / "out"), "--scheduler", address])
    thread.join(timeout=30)
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot connect to a dask scheduler at {address}" in err
    assert "tcp://HOST:8786" in err and "Traceback" not in err
    # The failed connection left no default client behind for later computations.
    assert dask.config.get("scheduler", None) == scheduler_before
    assert da.ones(4).sum().compute() == 4


def test_a_three_class_store_equals_predict(stack, tmp_path):
    """Both maps of the three-class head go to the store and are labelled as predict does."""
    network = UNet(UNetConfig(depth=2, base_channels=4, n_classes=3, dropout=0.0)).eval()
    three_class = Checkpoint.from_model(
        network,
        mode="instances",
        head="three-class",
        postprocess=Postprocess(threshold=0.5, seed_threshold=0.4, min_seed_size=3, min_size=2),
    )
    group, expected = store_equals_predict(three_class, stack[0], tmp_path / "a.zarr")
    np.testing.assert_allclose(group["interior"][...], expected.probabilities[1], atol=1e-6)
    assert group.attrs["napari-unet"]["task"] == "three-class"


def test_a_noisy_plane_is_smoothed_block_by_block_as_predict_smooths_it_whole(checkpoint, tmp_path):
    """Blocks read a margin and smooth it, so the store equals predict on the smoothed plane."""
    nuclei = make_touching_nuclei((160, 192), seed=11)[0]
    dim = np.random.default_rng(4).poisson(2.0 + 4.0 * (nuclei > np.median(nuclei)))
    dim = dim.astype(np.uint8)
    assert checkpoint.normalization.prepare(dim[None])[2] > 0  # judged noisy: smoothed
    group, expected = store_equals_predict(checkpoint, dim, tmp_path / "dim.zarr")
    name = checkpoint.task.map_names[0]
    np.testing.assert_allclose(group[name][...], expected.probabilities[1], atol=1e-5)
    # Without the smoothing the maps differ: the test sees the smoothing, not its absence.
    unsmoothed = dataclasses.replace(checkpoint.normalization, smooth_noisy=False)
    plain = predict(
        checkpoint.build_model(),
        dim,
        task=checkpoint.task,
        postprocess=checkpoint.postprocess,
        normalization=unsmoothed,
        config=CONFIG,
        return_probabilities=True,
    )
    assert np.abs(plain.probabilities[1] - expected.probabilities[1]).max() > 1e-2
