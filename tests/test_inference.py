"""Tests for napari_unet.inference (overlap-tile inference)."""

from __future__ import annotations

import dataclasses
import math

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unet._generators import run_to_end
from napari_unet.inference import (
    ImagePlanes,
    InferenceConfig,
    ModelPredictor,
    Prediction,
    TileResult,
    choose_tile_shape,
    predict,
    predict_generator,
    tile_starts,
)
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import NOISY_PLANE, Normalization, noise_level
from napari_unet.postprocess import label_instances
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.tasks import PaperInstances

FP32 = {"device": "cpu", "precision": "fp32"}

# ---------------------------------------------------------------------------
# Helpers and data
# ---------------------------------------------------------------------------


# One intra-op thread: on a shared 2-core machine more threads only spin.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(depth=2, in_channels=1, n_classes=2, padding="valid", seed=0):
    config = UNetConfig(
        in_channels=in_channels,
        n_classes=n_classes,
        depth=depth,
        base_channels=4,
        padding=padding,
        dropout=0.0,
    )
    with torch.random.fork_rng():  # fixed weights without seeding the global generator
        torch.manual_seed(seed)
        return UNet(config).eval()


def normalised(image, normalization, channel_axis=None):
    """(C, H, W) image scaled with its own statistics (smoothed if noisy), as inference does."""
    chw = image[np.newaxis] if channel_axis is None else np.moveaxis(image, channel_axis, 0)
    low, high, sigma = normalization.prepare(chw)
    return Normalization.apply(Normalization.smooth(chw, sigma), low, high)


def whole_image_probabilities(model, chw):
    """Reference: one forward pass over the mirror-padded whole image, cropped."""
    config = model.config
    height, width = chw.shape[-2:]
    border = config.border
    padded_h, padded_w = config.input_shape_for((height, width))
    padded = np.pad(
        chw,
        ((0, 0), (border, padded_h - height - border), (border, padded_w - width - border)),
        mode="reflect",
    )
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None])
    return torch.softmax(logits, dim=1)[0, :, :height, :width].numpy()


def centre_crop_predictor(border, scale=(1.0,)):
    """Trivial predictor: the centre of the input tile, once per factor in ``scale``."""

    def predictor(tile):
        crop = tile[:, border:-border, border:-border]
        return np.concatenate([factor * crop for factor in scale]).astype(np.float32)

    return predictor


def zarr_array(shape, dtype, chunks, data=None):
    if hasattr(zarr, "create_array"):  # zarr >= 3
        array = zarr.create_array(store={}, shape=shape, chunks=chunks, dtype=dtype)
    else:  # zarr 2
        array = zarr.zeros(shape, chunks=chunks, dtype=dtype)
    if data is not None:
        array[...] = data
    return array


def run_generator(generator):
    """Collect the yielded tiles and the returned value of a generator."""
    tiles = []
    return tiles, run_to_end(generator, tiles.append)


@pytest.fixture(scope="module")
def nuclei_image():
    image, _ = make_touching_nuclei((157, 203), n_nuclei=25, seed=1)
    return image


# ---------------------------------------------------------------------------
# Tile placement
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "align"),
    [
        (100, 40, 16),
        (157, 20, 8),
        (203, 36, 8),
        (203, 4, 4),
        (17, 16, 16),
        (1000, 388, 16),
        (1001, 388, 16),
        (64, 64, 16),
        (65, 64, 16),
        (9, 100, 8),
    ],
)
def test_tile_starts_cover_evenly_on_aligned_positions(length, tile, align):
    starts = tile_starts(length, tile, align)
    assert starts[0] == 0
    assert all(start % align == 0 for start in starts)
    assert starts == sorted(set(starts))
    # Covered without holes, the last tile reaching the end (past it by less than align).
    step = (tile // align) * align
    gaps = np.diff(starts)
    assert all(gap <= step for gap in gaps)
    assert starts[-1] + tile >= length
    if tile < length:
        assert starts[-1] + tile - length < align
        # Evenly spread: gaps differ by at most one alignment step...
        assert gaps.max() - gaps.min() <= align
        # ... and no more tiles than aligned steps need.
        assert len(starts) == math.ceil(starts[-1] / step) + 1
    else:
        assert starts == [0]


def test_tile_starts_docstring_values():
    assert tile_starts(100, tile=40, align=16) == [0, 32, 64]
    assert tile_starts(30, tile=40, align=16) == [0]


@pytest.mark.parametrize(
    ("length", "tile", "align"), [(0, 4, 4), (10, 0, 4), (10, 4, 0), (100, 7, 8)]
)
def test_tile_starts_rejects_bad_values(length, tile, align):
    with pytest.raises(ValueError, match="must be"):
        tile_starts(length, tile, align)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize(
    ("height", "width", "budget"),
    [(157, 203, 1 << 21), (157, 203, 2000), (157, 203, 500), (157, 203, 64), (1000, 30, 400)],
)
def test_choose_tile_shape_respects_budget_and_covers(depth, height, width, budget):
    config = UNetConfig(depth=depth, base_channels=4, dropout=0.0)
    tile = choose_tile_shape(height, width, config, budget)
    # Tiles start on multiples of size_step, so they are at least that large.
    step = config.size_step
    smallest = config.output_shape(config.input_shape_for((step, step)))
    if budget >= smallest[0] * smallest[1]:
        assert tile[0] * tile[1] <= budget
    else:  # no tile fits: the smallest one
        assert tile == smallest
    # A size the network produces exactly.
    assert config.output_shape(config.input_shape_for(tile)) == tile
    for length, size in zip((height, width), tile, strict=True):
        assert tile_starts(length, size, config.size_step)[-1] + size >= length


def test_choose_tile_shape_one_tile_when_budget_allows():
    config = UNetConfig(depth=3, base_channels=4, dropout=0.0)
    tile = choose_tile_shape(157, 203, config, 1 << 21)
    assert tile_starts(157, tile[0], 8) == [0]
    assert tile_starts(203, tile[1], 8) == [0]


def test_choose_tile_shape_below_smallest_tile_gives_smallest():
    config = UNetConfig(depth=2, base_channels=4, dropout=0.0)
    assert choose_tile_shape(157, 203, config, 10) == config.output_shape((44, 44))


# ---------------------------------------------------------------------------
# Exactness of the stitched result
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3])
def test_tiled_prediction_equals_whole_image_pass(nuclei_image, depth):
    model = tiny_unet(depth=depth)
    normalization = Normalization()
    reference = whole_image_probabilities(model, normalised(nuclei_image, normalization))
    assert reference[1].std() > 0.05  # the network's output varies over the image

    results = {}
    for tile_shape in [(12, 12), (20, 36), (44, 60), (400, 400)]:
        prediction = predict(
            model,
            nuclei_image,
            task="semantic",
            normalization=normalization,
            config=InferenceConfig(tile_shape=tile_shape, **FP32),
            return_probabilities=True,
        )
        assert prediction.completed
        assert prediction.probabilities.shape == (2, 157, 203)
        assert prediction.probabilities.dtype == np.float32
        np.testing.assert_allclose(prediction.probabilities, reference, rtol=0, atol=1e-4)
        results[tile_shape] = prediction

    # Independent of the tile size, labels included (where the classes are not tied).
    first = results[(12, 12)]
    decided = np.abs(reference[1] - reference[0]) > 1e-3
    for prediction in results.values():
        np.testing.assert_allclose(prediction.probabilities, first.probabilities, atol=1e-4)
        np.testing.assert_array_equal(prediction.labels[decided], first.labels[decided])
    # Semantic labels are the classes 1..K.
    np.testing.assert_array_equal(first.labels[decided], np.argmax(reference, 0)[decided] + 1)


def test_whole_image_comparison_detects_a_one_pixel_shift(nuclei_image):
    """The exactness test is sharp: a reference off by one pixel is far from it."""
    model = tiny_unet(depth=2)
    chw = normalised(nuclei_image, Normalization())
    reference = whole_image_probabilities(model, chw)
    shifted = whole_image_probabilities(model, np.roll(chw, 1, axis=-1))
    assert np.abs(reference - shifted).max() > 1e-2


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (5, 7), (40, 9)])
def test_tiny_images_match_whole_image_pass(shape):
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    model = tiny_unet(depth=3)
    normalization = Normalization()
    reference = whole_image_probabilities(model, normalised(image, normalization))
    for tile_shape in [None, (4, 4), (12, 12)]:
        prediction = predict(
            model,
            image,
            task="semantic",
            normalization=normalization,
            config=InferenceConfig(tile_shape=tile_shape, **FP32),
            return_probabilities=True,
        )
        np.testing.assert_allclose(prediction.probabilities, reference, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# Stitching, checked with trivial predictors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (9, 203), (157, 203)])
@pytest.mark.parametrize("tile_shape", [(4, 4), (8, 12), (28, 20)])
def test_identity_predictor_reproduces_normalised_image(shape, tile_shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = rng.integers(100, 4000, size=shape).astype(np.uint16)
    model = tiny_unet(depth=2)
    normalization = Normalization()
    prediction = predict(
        model,
        image,
        task="semantic",
        normalization=normalization,
        config=InferenceConfig(tile_shape=tile_shape, **FP32),
        return_probabilities=True,
        predictor=centre_crop_predictor(model.config.border, scale=(1.0, 2.0)),
    )
    expected = normalised(image, normalization)[0]
    # Exact: every output pixel comes from the pixel at the same place.
    np.testing.assert_array_equal(prediction.probabilities[0], expected)
    np.testing.assert_array_equal(prediction.probabilities[1], 2 * expected)


@pytest.mark.parametrize(
    ("shape", "tile_shape"),
    [
        ((23, 31), (4, 4)),
        ((23, 31), (12, 20)),
        # The last tiles cover 5 pixels: their mirrored context reaches past
        # the part of the tile's input that lies inside the image.
        ((101, 157), (12, 12)),
    ],
)
def test_tile_inputs_are_windows_of_the_mirrored_image(shape, tile_shape):
    """Each tile's input is its window of the whole image mirrored at the edges."""
    image = np.random.default_rng(4).random(shape).astype(np.float32)
    model = tiny_unet(depth=3)
    border = model.config.border
    normalization = Normalization(0.0, 100.0)
    inputs = []

    def recording(tile):
        inputs.append(tile.copy())
        return centre_crop_predictor(border, scale=(1.0, 1.0))(tile)

    tiles, _ = run_generator(
        predict_generator(
            model,
            image,
            task="semantic",
            normalization=normalization,
            config=InferenceConfig(tile_shape=tile_shape, **FP32),
            predictor=recording,
        )
    )
    assert len(inputs) == len(tiles) > 1
    chw = normalised(image, normalization)
    mirrored = np.pad(chw, ((0, 0), (border, 200), (border, 200)), mode="reflect")
    for tile_input, result in zip(inputs, tiles, strict=True):
        top, left = result.region[0].start, result.region[1].start
        height, width = tile_input.shape[-2:]
        window = mirrored[:, top : top + height, left : left + width]
        np.testing.assert_array_equal(tile_input, window)


def test_same_padding_model_is_cropped_like_a_valid_one():
    image = np.random.default_rng(5).random((45, 61)).astype(np.float32)
    model = tiny_unet(depth=2, padding="same")

    def same_size_identity(tile):
        return np.concatenate([tile, tile])  # output as large as the input

    prediction = predict(
        model,
        image,
        task="semantic",
        normalization=Normalization(),
        config=InferenceConfig(tile_shape=(8, 16), **FP32),
        return_probabilities=True,
        predictor=same_size_identity,
    )
    np.testing.assert_array_equal(
        prediction.probabilities[0], normalised(image, Normalization())[0]
    )


def test_same_padding_model_runs_tiled():
    image = np.random.default_rng(6).random((45, 61)).astype(np.float32)
    model = tiny_unet(depth=2, padding="same")
    prediction = predict(
        model,
        image,
        task="semantic",
        config=InferenceConfig(tile_shape=(16, 16), **FP32),
        return_probabilities=True,
    )
    assert prediction.probabilities.shape == (2, 45, 61)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# The generator: tiles as they finish, cooperative stopping
# ---------------------------------------------------------------------------


def test_tiles_are_yielded_as_they_finish():
    image = np.random.default_rng(7).random((37, 53)).astype(np.float32)
    model = tiny_unet(depth=2)
    probabilities_out = np.full((2, 37, 53), -1.0, dtype=np.float32)
    generator = predict_generator(
        model,
        image,
        task="semantic",
        config=InferenceConfig(tile_shape=(12, 20), **FP32),
        probabilities_out=probabilities_out,
    )
    tiles = []
    covered = np.zeros((37, 53), dtype=bool)

    def check(result):
        assert isinstance(result, TileResult)
        rows, cols = result.region
        assert 0 <= rows.start < rows.stop <= 37
        assert 0 <= cols.start < cols.stop <= 53
        assert result.probabilities.shape == (2, rows.stop - rows.start, cols.stop - cols.start)
        # Already in the output when yielded, so a viewer can show it at once.
        np.testing.assert_array_equal(probabilities_out[:, rows, cols], result.probabilities)
        covered[rows, cols] = True
        tiles.append(result)

    prediction = run_to_end(generator, check)
    assert isinstance(prediction, Prediction)
    assert prediction.completed
    assert prediction.probabilities is probabilities_out
    count = len(tiles)
    assert count == len(tile_starts(37, 12, 4)) * len(tile_starts(53, 20, 4)) > 1
    assert [tile.index for tile in tiles] == list(range(count))
    assert {tile.count for tile in tiles} == {count}
    assert {tile.plane for tile in tiles} == {0}
    assert covered.all()
    assert (probabilities_out >= 0).all()


def test_a_noisy_plane_is_smoothed_whole_and_streams_at_its_own_index(nuclei_image):
    """A dim, shot-noise frame in a stack is smoothed before the network; a clean one is not."""
    rng = np.random.default_rng(4)
    dim = rng.poisson(2.6 + 3.4 * (nuclei_image > np.median(nuclei_image))).astype(np.float32)
    stack = np.stack([nuclei_image.astype(np.float32), dim])
    model = tiny_unet(depth=2)
    normalization = Normalization()
    assert normalization.prepare(stack[:1])[2] == 0.0
    assert normalization.prepare(stack[1:])[2] > 0.0
    planes = []
    prediction = run_to_end(
        predict_generator(
            model,
            stack,
            task="semantic",
            normalization=normalization,
            config=InferenceConfig(tile_shape=(28, 36), **FP32),
            return_probabilities=True,
            predictor=centre_crop_predictor(model.config.border, scale=(1.0, 2.0)),
        ),
        lambda tile: planes.append(tile.plane),
    )
    assert sorted(set(planes)) == [0, 1] and planes == sorted(planes)
    for index in (0, 1):
        expected = normalised(stack[index], normalization)[0]
        np.testing.assert_allclose(prediction.probabilities[index, 0], expected, atol=1e-6)
    # Smoothed: the frame's pixel noise is now below the limit, and was above it.
    unsmoothed = normalised(dim, Normalization(smooth_noisy=False))
    assert noise_level(prediction.probabilities[1, :1]) < NOISY_PLANE < noise_level(unsmoothed)


def test_should_stop_ends_early_and_keeps_finished_tiles():
    image = np.random.default_rng(8).random((37, 53)).astype(np.float32)
    model = tiny_unet(depth=2)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3  # stop before the fourth tile

    tiles, prediction = run_generator(
        predict_generator(
            model,
            image,
            task="semantic",
            config=InferenceConfig(tile_shape=(12, 12), **FP32),
            return_probabilities=True,
            should_stop=should_stop,
        )
    )
    assert len(tiles) == 3
    assert prediction.completed is False
    done = np.zeros((37, 53), dtype=bool)
    for tile in tiles:
        done[tile.region] = True
        np.testing.assert_array_equal(
            prediction.probabilities[(slice(None), *tile.region)], tile.probabilities
        )
    assert not done.all()
    assert (prediction.labels[~done] == 0).all()
    assert (prediction.probabilities[:, ~done] == 0).all()
    assert (prediction.labels[done] > 0).all()


def test_should_stop_in_a_stack_skips_later_planes():
    stack = np.random.default_rng(9).random((3, 20, 20)).astype(np.float32)
    model = tiny_unet(depth=2)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 1  # one tile only

    tiles, prediction = run_generator(
        predict_generator(
            model,
            stack,
            task="paper",
            config=InferenceConfig(tile_shape=(8, 8), **FP32),
            return_probabilities=True,
            should_stop=should_stop,
        )
    )
    assert len(tiles) == 1
    assert not prediction.completed
    assert (prediction.probabilities[1:] == 0).all()
    assert (prediction.labels[1:] == 0).all()


def test_predict_returns_the_generators_result():
    image = np.random.default_rng(10).random((30, 30)).astype(np.float32)
    model = tiny_unet(depth=2)
    kwargs = {
        "task": "semantic",
        "config": InferenceConfig(tile_shape=(12, 12), **FP32),
        "return_probabilities": True,
    }
    _, from_generator = run_generator(predict_generator(model, image, **kwargs))
    from_predict = predict(model, image, **kwargs)
    np.testing.assert_array_equal(from_predict.probabilities, from_generator.probabilities)
    np.testing.assert_array_equal(from_predict.labels, from_generator.labels)
    assert predict(model, image, task="semantic", config=kwargs["config"]).probabilities is None


# ---------------------------------------------------------------------------
# Stacks and channels
# ---------------------------------------------------------------------------


def test_stack_is_processed_plane_by_plane():
    rng = np.random.default_rng(11)
    # Planes of very different brightness: each is normalised on its own.
    stack = np.stack([rng.random((29, 41)) * 10**z + 5 * z for z in range(3)]).astype(np.float32)
    model = tiny_unet(depth=2)
    config = InferenceConfig(tile_shape=(12, 16), **FP32)
    tiles, prediction = run_generator(
        predict_generator(model, stack, task="semantic", config=config, return_probabilities=True)
    )
    assert prediction.labels.shape == (3, 29, 41)
    assert prediction.probabilities.shape == (3, 2, 29, 41)
    assert [tile.plane for tile in tiles] == sorted(tile.plane for tile in tiles)
    assert {tile.plane for tile in tiles} == {0, 1, 2}
    for z in range(3):
        single = predict(model, stack[z], task="semantic", config=config, return_probabilities=True)
        np.testing.assert_array_equal(prediction.probabilities[z], single.probabilities)
        np.testing.assert_array_equal(prediction.labels[z], single.labels)


def test_four_dimensional_stack_with_identity_predictor():
    rng = np.random.default_rng(12)
    stack = rng.random((2, 3, 19, 23)).astype(np.float32) * np.arange(1, 7).reshape(2, 3, 1, 1)
    model = tiny_unet(depth=2)
    normalization = Normalization()
    prediction = predict(
        model,
        stack,
        task="semantic",
        normalization=normalization,
        config=InferenceConfig(tile_shape=(8, 8), **FP32),
        return_probabilities=True,
        predictor=centre_crop_predictor(model.config.border, scale=(1.0, 1.0)),
    )
    assert prediction.probabilities.shape == (2, 3, 2, 19, 23)
    for t in range(2):
        for z in range(3):
            expected = normalised(stack[t, z], normalization)[0]
            np.testing.assert_array_equal(prediction.probabilities[t, z, 0], expected)


def test_rgb_channel_last_and_channel_first_agree():
    rng = np.random.default_rng(13)
    rgb = (rng.random((33, 47, 3)) * [50, 150, 250]).astype(np.uint8)
    model = tiny_unet(depth=2, in_channels=3)
    config = InferenceConfig(tile_shape=(12, 20), **FP32)
    last = predict(
        model, rgb, channel_axis=-1, task="semantic", config=config, return_probabilities=True
    )
    first = predict(
        model,
        np.moveaxis(rgb, -1, 0).copy(),
        channel_axis=0,
        task="semantic",
        config=config,
        return_probabilities=True,
    )
    np.testing.assert_array_equal(last.probabilities, first.probabilities)
    np.testing.assert_array_equal(last.labels, first.labels)
    assert last.labels.shape == (33, 47)
    reference = whole_image_probabilities(model, normalised(rgb, Normalization(), channel_axis=-1))
    np.testing.assert_allclose(last.probabilities, reference, rtol=0, atol=1e-4)


def test_rgb_channels_keep_their_order():
    rng = np.random.default_rng(14)
    rgb = rng.random((21, 26, 3)).astype(np.float32) * [1.0, 10.0, 100.0]
    model = tiny_unet(depth=2, in_channels=3, n_classes=3)
    normalization = Normalization()
    prediction = predict(
        model,
        rgb,
        channel_axis=-1,
        task="semantic",
        normalization=normalization,
        config=InferenceConfig(tile_shape=(8, 8), **FP32),
        return_probabilities=True,
        predictor=centre_crop_predictor(model.config.border),
    )
    expected = normalised(rgb, normalization, channel_axis=-1)
    np.testing.assert_array_equal(prediction.probabilities, expected)


def test_stack_of_rgb_planes():
    rng = np.random.default_rng(15)
    stack = rng.random((2, 17, 19, 3)).astype(np.float32)
    model = tiny_unet(depth=2, in_channels=3)
    config = InferenceConfig(tile_shape=(8, 8), **FP32)
    prediction = predict(
        model, stack, channel_axis=-1, task="semantic", config=config, return_probabilities=True
    )
    assert prediction.probabilities.shape == (2, 2, 17, 19)
    single = predict(
        model, stack[1], channel_axis=-1, task="semantic", config=config, return_probabilities=True
    )
    np.testing.assert_array_equal(prediction.probabilities[1], single.probabilities)


def test_channel_count_mismatch_is_a_clear_error():
    rgb = np.zeros((20, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expects 1 channel\(s\) but the image has 3"):
        predict(tiny_unet(depth=2), rgb, channel_axis=-1, config=InferenceConfig(**FP32))
    with pytest.raises(ValueError, match=r"looks like 3 channels.*channel_axis=-1"):
        predict(tiny_unet(depth=2, in_channels=3), rgb, config=InferenceConfig(**FP32))
    grey = np.zeros((2, 20, 20), dtype=np.uint8)  # a stack of two planes, one channel
    with pytest.raises(ValueError, match=r"expects 3 channel\(s\) but the image has 1"):
        predict(tiny_unet(depth=2, in_channels=3), grey, config=InferenceConfig(**FP32))


def test_image_planes_reads_boxes_in_channel_first_layout():
    image = np.arange(2 * 5 * 6 * 3).reshape(2, 5, 6, 3)
    planes = ImagePlanes(image, channel_axis=-1)
    assert (planes.n_planes, planes.channels, planes.height, planes.width) == (2, 3, 5, 6)
    box = planes.read(1, slice(1, 4), slice(2, 5))
    np.testing.assert_array_equal(box, np.moveaxis(image[1, 1:4, 2:5], -1, 0))
    mirrored = planes.read_mirrored(0, -2, -3, 9, 12)
    expected = np.pad(np.moveaxis(image[0], -1, 0), ((0, 0), (2, 2), (3, 3)), mode="reflect")
    np.testing.assert_array_equal(mirrored, expected)


# ---------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------


def test_instances_crossing_tile_borders_keep_one_id():
    _, truth = make_touching_nuclei((96, 128), n_nuclei=14, seed=3)
    # A probability map with a dip between touching nuclei, quantised so that
    # 1 - (1 - p) == p exactly.
    inside = (truth > 0) & ~find_boundaries(truth, mode="inner")
    foreground = ndi.gaussian_filter(inside.astype(np.float64), 1.0)
    foreground = (np.round(foreground / foreground.max() * 256) / 256).astype(np.float32)
    assert foreground.min() == 0.0 and foreground.max() == 1.0

    model = tiny_unet(depth=2)
    border = model.config.border

    def fixed_map(tile):
        crop = tile[0, border:-border, border:-border]
        return np.stack([1.0 - crop, crop])

    config = InferenceConfig(tile_shape=(8, 8), threshold=0.5, seed_threshold=0.8, **FP32)
    prediction = predict(
        model,
        foreground,  # Normalization(0, 100) maps it onto itself
        task="paper",
        normalization=Normalization(0.0, 100.0),
        config=config,
        return_probabilities=True,
        predictor=fixed_map,
    )
    np.testing.assert_array_equal(prediction.probabilities[1], foreground)
    expected = label_instances(foreground, threshold=0.5, seed_threshold=0.8)
    assert int(expected.max()) >= 10
    np.testing.assert_array_equal(prediction.labels, expected)

    # Several objects do cross tile borders, and keep one id across them.
    crossing = set()
    for start in tile_starts(96, 8, 4)[1:]:
        above, below = prediction.labels[start - 1], prediction.labels[start]
        crossing |= {int(i) for i in above[(above == below) & (above > 0)]}
    assert len(crossing) >= 5
    for object_id in np.unique(expected)[1:]:
        assert np.unique(prediction.labels[expected == object_id]).size == 1


def test_instances_mode_with_the_model():
    image, _ = make_touching_nuclei((64, 80), n_nuclei=6, seed=4)
    model = tiny_unet(depth=2)
    config = InferenceConfig(tile_shape=(12, 12), **FP32)
    prediction = predict(model, image, config=config, return_probabilities=True)
    assert prediction.labels.dtype == np.uint32
    settings = PaperInstances.default_postprocess
    expected = label_instances(
        1.0 - prediction.probabilities[0],
        threshold=settings.threshold,
        seed_threshold=settings.seed_threshold,
    )
    np.testing.assert_array_equal(prediction.labels, expected)


# ---------------------------------------------------------------------------
# Arrays larger than memory: zarr, dask, memory maps
# ---------------------------------------------------------------------------


def test_zarr_input_and_outputs(tmp_path, nuclei_image):
    model = tiny_unet(depth=2)
    config = InferenceConfig(tile_shape=(28, 28), **FP32)
    expected = predict(model, nuclei_image, config=config, return_probabilities=True)

    source = zarr_array(nuclei_image.shape, nuclei_image.dtype, (32, 32), nuclei_image)
    labels_out = zarr_array(nuclei_image.shape, np.uint32, (64, 64))
    probabilities_out = np.lib.format.open_memmap(
        tmp_path / "probabilities.npy", mode="w+", dtype=np.float32, shape=(2, 157, 203)
    )
    prediction = predict(
        model,
        source,
        config=config,
        labels_out=labels_out,
        probabilities_out=probabilities_out,
    )
    assert prediction.labels is labels_out
    assert prediction.probabilities is probabilities_out
    np.testing.assert_array_equal(labels_out[...], expected.labels)
    probabilities_out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "probabilities.npy"), expected.probabilities)


def test_dask_input_semantic_into_memmap_and_zarr(tmp_path):
    rng = np.random.default_rng(16)
    stack = rng.random((2, 45, 38)).astype(np.float32)
    model = tiny_unet(depth=2, n_classes=3)
    config = InferenceConfig(tile_shape=(12, 12), **FP32)
    expected = predict(model, stack, task="semantic", config=config, return_probabilities=True)

    labels_out = np.lib.format.open_memmap(
        tmp_path / "labels.npy", mode="w+", dtype=np.uint16, shape=(2, 45, 38)
    )
    probabilities_out = zarr_array((2, 3, 45, 38), np.float32, (1, 3, 16, 16))
    prediction = predict(
        model,
        da.from_array(stack, chunks=(1, 16, 16)),
        task="semantic",
        config=config,
        labels_out=labels_out,
        probabilities_out=probabilities_out,
    )
    assert prediction.completed
    np.testing.assert_array_equal(np.asarray(labels_out), expected.labels)
    np.testing.assert_array_equal(probabilities_out[...], expected.probabilities)


# ---------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------


def test_bf16_on_cpu_agrees_with_fp32():
    image, _ = make_touching_nuclei((48, 56), n_nuclei=5, seed=5)
    model = tiny_unet(depth=2)
    fp32 = ModelPredictor(model, device="cpu", precision="fp32")
    bf16 = ModelPredictor(model, device="cpu", precision="bf16")
    assert fp32.dtype is None
    assert bf16.dtype == torch.bfloat16

    results = {}
    for precision in ("fp32", "bf16"):
        results[precision] = predict(
            model,
            image,
            task="semantic",
            config=InferenceConfig(tile_shape=(20, 20), device="cpu", precision=precision),
            return_probabilities=True,
        )
    low, high = results["fp32"], results["bf16"]
    assert high.probabilities.dtype == np.float32
    difference = np.abs(high.probabilities - low.probabilities)
    assert difference.max() > 0  # autocast really ran in bfloat16
    assert difference.max() < 2e-2
    assert np.mean(high.labels == low.labels) > 0.98


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tile_shape": (0, 10)}, "tile_shape"),
        ({"tile_shape": (10,)}, "tile_shape"),
        ({"tile_shape": (10, 10, 10)}, "tile_shape"),
        ({"max_tile_pixels": 0}, "max_tile_pixels"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 0.5, "seed_threshold": 1.0}, "seed_threshold"),
        ({"device": "gpu"}, "device"),
        ({"precision": "fp64"}, "precision"),
    ],
)
def test_inference_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        InferenceConfig(**kwargs)


def test_inference_config_accepts_good_values():
    config = InferenceConfig(tile_shape=(64, 64), seed_threshold=None, device="cpu")
    assert config.seed_threshold is None
    assert InferenceConfig(device="cuda:1", precision="bf16").device == "cuda:1"


@pytest.mark.parametrize(
    ("labels_shape", "probabilities_shape", "name"),
    [
        ((30, 31), None, "labels_out"),
        ((1, 30, 30), None, "labels_out"),
        (None, (30, 30), "probabilities_out"),
        (None, (3, 30, 30), "probabilities_out"),
    ],
)
def test_outputs_of_the_wrong_shape_are_rejected(labels_shape, probabilities_shape, name):
    image = np.zeros((30, 30), dtype=np.float32)
    kwargs = {}
    if labels_shape is not None:
        kwargs["labels_out"] = np.zeros(labels_shape, dtype=np.uint32)
    if probabilities_shape is not None:
        kwargs["probabilities_out"] = np.zeros(probabilities_shape, dtype=np.float32)
    with pytest.raises(ValueError, match=rf"{name} must have shape"):
        predict(tiny_unet(depth=2), image, config=InferenceConfig(**FP32), **kwargs)


def test_outputs_of_the_wrong_dtype_are_rejected():
    image = np.zeros((30, 30), dtype=np.float32)
    model = tiny_unet(depth=2)
    with pytest.raises(TypeError, match="labels_out needs an integer dtype"):
        predict(model, image, labels_out=np.zeros((30, 30), dtype=np.float32))
    with pytest.raises(TypeError, match="probabilities_out needs a float dtype"):
        predict(model, image, probabilities_out=np.zeros((2, 30, 30), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1), (4, 1, 50)])
def test_one_pixel_images_are_rejected(shape):
    with pytest.raises(ValueError, match="at least 2x2"):
        predict(tiny_unet(depth=2), np.ones(shape, np.float32), config=InferenceConfig(**FP32))


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.ones(5, np.float32), {}, ValueError, "no two spatial axes"),
        (np.ones((5, 5, 3)), {"channel_axis": 3}, ValueError, "channel_axis 3 is out of range"),
        (np.ones((5, 5), bool), {}, TypeError, "numbers"),
        (np.ones((5, 5), complex), {}, TypeError, "numbers"),
        ([[1.0, 2.0], [3.0, 4.0]], {}, TypeError, "must be an array"),
        (np.ones((5, 5), np.float32), {"task": "panoptic"}, ValueError, "Unknown task"),
    ],
)
def test_bad_images_and_modes_are_rejected(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        predict(tiny_unet(depth=2), image, config=InferenceConfig(**FP32), **kwargs)


# ---------------------------------------------------------------------------
# Test-time augmentation
# ---------------------------------------------------------------------------


def symmetric_unet(depth=2):
    """A U-Net whose every kernel is invariant under the 8 flips and rotations.

    Such a network commutes with those transforms (its pooling pairs the same
    pixels in a transformed valid tile), so averaging over them changes nothing.
    """
    model = tiny_unet(depth=depth)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 4:
                kernels = [
                    torch.rot90(flipped, quarter, dims=(-2, -1))
                    for flipped in (parameter, parameter.flip(-1))
                    for quarter in range(4)
                ]
                parameter.copy_(torch.stack(kernels).mean(0))
    return model


def test_tta_equals_the_plain_pass_for_a_flip_symmetric_network():
    image = np.random.default_rng(3).random((60, 52)).astype(np.float32)
    model = symmetric_unet()
    config = InferenceConfig(tile_shape=(24, 24), **FP32)
    plain = predict(model, image, task="paper", config=config, return_probabilities=True)
    augmented = predict(
        model,
        image,
        task="paper",
        config=dataclasses.replace(config, tta=True),
        return_probabilities=True,
    )
    np.testing.assert_allclose(augmented.probabilities, plain.probabilities, atol=1e-5)
    # ...while for an ordinary network the average differs.
    ordinary = tiny_unet()
    assert not np.allclose(
        predict(ordinary, image, task="paper", config=config, return_probabilities=True)
        .probabilities,
        predict(
            ordinary, image, task="paper", config=dataclasses.replace(config, tta=True),
            return_probabilities=True,
        ).probabilities,
        atol=1e-4,
    )  # fmt: skip


def test_tta_does_not_depend_on_the_tiling():
    image = np.random.default_rng(4).random((70, 90)).astype(np.float32)
    model = tiny_unet()
    results = [
        predict(
            model,
            image,
            task="paper",
            config=InferenceConfig(tile_shape=tile, tta=True, **FP32),
            return_probabilities=True,
        ).probabilities
        for tile in ((24, 32), (80, 96))
    ]
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)
