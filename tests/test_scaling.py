"""Object size: planes trained at one object area, images brought to it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unet.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from napari_unet.inference import InferenceConfig, predict
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.sampling import prepare_training_data
from napari_unet.scaling import (
    MAX_FACTOR,
    area_of_diameter,
    median_object_area,
    model_object_area,
    resize_image,
    scale_factor,
    scaled_shape,
)
from napari_unet.tasks import Postprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FP32 = {"device": "cpu", "precision": "fp32"}


def discs(shape, radius, spacing, seed=0):
    """Separate discs of ``radius`` on a jittered grid: (image in [0, 1], labels)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, np.int32)
    next_id = 1
    for r in range(spacing // 2, shape[0] - math.ceil(radius), spacing):
        for c in range(spacing // 2, shape[1] - math.ceil(radius), spacing):
            r0, c0 = r + rng.integers(-2, 3), c + rng.integers(-2, 3)
            labels[(rows - r0) ** 2 + (cols - c0) ** 2 <= radius**2] = next_id
            next_id += 1
    return (labels > 0).astype(np.float32), labels


def tiny_unet():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet(UNetConfig(depth=2, base_channels=4, dropout=0.0)).eval()


def foreground_predictor(border):
    """A "paper" network that sees the image itself as the foreground probability."""

    def predictor(tile):
        crop = np.clip(tile[0, border:-border, border:-border], 0.0, 1.0)
        return np.stack([1.0 - crop, crop]).astype(np.float32)

    return predictor


def test_model_area_and_factors_follow_the_rule():
    assert model_object_area([100.0, 120.0, 90.0]) == 100.0
    assert model_object_area([900.0, 1000.0, None, 1100.0]) == 1000.0
    with pytest.raises(ValueError, match="No plane has objects"):
        model_object_area([None, 0.0])
    assert scale_factor(100.0, 400.0) == 2.0
    assert scale_factor(1600.0, 400.0) == 0.5
    assert scale_factor(380.0, 400.0) == 1.0  # dead band
    assert scale_factor(1.0, 400.0) == MAX_FACTOR  # limited
    assert scale_factor(None, 400.0) == scale_factor(100.0, None) == 1.0
    assert math.isclose(area_of_diameter(20.0), math.pi * 100.0)


def test_resizing_and_the_object_area():
    image = np.full((2, 10, 12), 7.0, np.float32)
    small = resize_image(image, scaled_shape(image.shape, 0.5))
    assert small.shape == (2, 5, 6) and np.allclose(small, 7.0)
    _, labels = discs((64, 64), 5, 20)
    assert median_object_area(labels) == np.median(np.bincount(labels.ravel())[1:])
    masked = np.zeros(labels.shape, bool)
    assert median_object_area(labels, masked) is None  # no object wholly inside


def test_training_data_records_the_planes_object_area():
    small_image, small_labels = discs((96, 96), 5, 24)
    large_image, large_labels = discs((192, 192), 10, 48, seed=1)
    data = prepare_training_data(
        [(small_image, small_labels), (large_image, large_labels), (large_image, large_labels)],
        task="three-class",
    )
    assert data.object_area == median_object_area(large_labels)  # the median plane
    assert [s[-2:] for s in data.shapes] == [(96, 96), (192, 192), (192, 192)]  # as given
    semantic = prepare_training_data([(small_image, (small_labels > 0) + 1)], task="semantic")
    assert semantic.object_area is None


def test_fine_tuning_data_are_brought_to_the_models_object_area():
    """Discs of ~80 px for a model that knows ~320 px: planes, labels and masks doubled."""
    image, labels = discs((96, 80), 5, 24)
    mask = np.zeros(labels.shape, bool)
    mask[:60] = True
    model_area = 4.0 * median_object_area(labels)
    data = prepare_training_data(
        [(image, labels)], task="three-class", masks=[mask], object_area=model_area
    )
    (sample,) = data.samples
    assert sample.image.shape == (1, 192, 160)  # twice the size
    assert (sample.weights[120:] == 0).all() and (sample.weights[:118] > 0).any()  # the mask
    assert data.object_area == model_area  # the model keeps its scale
    assert np.median(data.object_areas) == pytest.approx(model_area, rel=0.1)
    assert data.shapes == [(1, 96, 80)]  # as given
    # Where the planes came from: the start of a fine-tuned model's size estimate.
    assert data.source_object_area == median_object_area(labels)
    assert prepare_training_data([(image, labels)]).source_object_area is None  # a new model
    # Objects of the model's size are used as they are.
    same = prepare_training_data([(image, labels)], object_area=median_object_area(labels))
    assert same.samples[0].image.shape == (1, 96, 80)


def test_calibration_chooses_sizes_at_the_model_scale():
    """Specks of 5 px and objects of ~30 px, in an image at half the model's scale."""
    from napari_unet.calibration import calibrate
    from napari_unet.tasks import get_task

    truth = np.zeros((64, 64), np.int32)
    rows, cols = np.mgrid[0:64, 0:64]
    for number, (r, c) in enumerate([(10, 10), (10, 40), (40, 10), (40, 40)], start=1):
        truth[(rows - r) ** 2 + (cols - c) ** 2 <= 9] = number
    foreground = (truth > 0).astype(np.float32)
    for r, c in [(25, 25), (25, 55), (55, 25), (58, 58)]:
        foreground[r : r + 1, c : c + 5] = 1.0  # specks: not in the truth
    task = get_task("paper")
    model_sized = np.array([120.0])  # the model's objects: 4x these in area
    best = calibrate(task, [foreground[None]], [truth], model_sized, scales=[2.0])
    assert best.score == 1.0
    assert best.postprocess.min_size == 36  # 0.3 x 120 at the model's scale: 9 px here
    with pytest.raises(ValueError, match="one scale per map"):
        calibrate(task, [foreground[None]], [truth], model_sized, scales=[2.0, 1.0])


@pytest.mark.parametrize("diameter", [7.0, 40.0])
def test_auto_finds_the_object_size_and_labels_at_the_image_scale(diameter):
    """Objects 2.9x smaller and 1.9x larger than the model's are found, one for one."""
    image, truth = discs((160, 160), diameter / 2, int(diameter * 2.5))
    model = tiny_unet()
    model_area = area_of_diameter(20.0)
    settings = Postprocess(threshold=0.5, seed_threshold=None, min_size=round(0.3 * model_area))
    result = predict(
        model,
        image,
        task="paper",
        postprocess=settings,
        normalization=Normalization(0.0, 100.0),
        config=InferenceConfig(**FP32),
        predictor=foreground_predictor(model.config.border),
        object_area=model_area,
    )
    expected = 20.0 / diameter
    assert result.scales[0] == pytest.approx(expected, rel=0.2)
    assert result.labels.shape == image.shape
    # At the image's own scale min_size would drop every 7 px disc; scaled, none is lost.
    assert result.labels.max() == truth.max()
    for object_id in range(1, truth.max() + 1):
        found = np.unique(result.labels[truth == object_id])
        found = found[found > 0]
        assert found.size == 1
        overlap = (truth == object_id) & (result.labels == found[0])
        union = (truth == object_id) | (result.labels == found[0])
        assert overlap.sum() / union.sum() > 0.85


def test_a_fine_tuned_models_estimate_starts_at_the_scale_it_was_fine_tuned_at():
    """Discs half the model's diameter: one pass at 2x from the source scale, two from 1x."""
    image, _ = discs((96, 96), 5, 24)
    model = tiny_unet()
    passes = []
    segment = foreground_predictor(model.config.border)

    def counting(tile):
        passes.append(tile.shape)
        return segment(tile)

    kwargs = {
        "task": "paper",
        "postprocess": Postprocess(threshold=0.5, seed_threshold=None),
        "normalization": Normalization(0.0, 100.0),
        "predictor": counting,
        "object_area": area_of_diameter(20.0),
        "config": InferenceConfig(tile_shape=(400, 400), **FP32),  # one tile per pass
    }
    assert predict(model, image, **kwargs).scales == [pytest.approx(2.0, rel=0.05)]
    from_own_scale = len(passes)
    passes.clear()
    started = predict(model, image, source_object_area=area_of_diameter(10.0), **kwargs)
    assert started.scales == [2.0]
    assert len(passes) == 1 < from_own_scale  # the 2x pass found objects of the model's size


def test_a_given_diameter_or_off_sets_the_factor():
    image, _ = discs((96, 96), 5, 24)
    model = tiny_unet()
    kwargs = {
        "task": "paper",
        "postprocess": Postprocess(threshold=0.5, seed_threshold=None),
        "normalization": Normalization(0.0, 100.0),
        "predictor": foreground_predictor(model.config.border),
        "object_area": area_of_diameter(20.0),
        "return_probabilities": True,
    }
    given = predict(model, image, config=InferenceConfig(object_diameter=10.0, **FP32), **kwargs)
    assert given.scales == [2.0]
    assert given.probabilities.shape == (2, 96, 96)
    np.testing.assert_allclose(given.probabilities[1], image, atol=0.51)  # resampled back
    off = predict(model, image, config=InferenceConfig(object_diameter="off", **FP32), **kwargs)
    assert off.scales == [1.0]
    np.testing.assert_array_equal(off.probabilities[1], image)
    unknown = predict(
        model, image, config=InferenceConfig(**FP32), **{**kwargs, "object_area": None}
    )
    assert unknown.scales == [1.0]
    # Cells that tile the image are not resampled by their size ("auto"), only when asked.
    tiling = {**kwargs, "postprocess": Postprocess(seed_threshold=0.6, tessellate=True)}
    assert predict(model, image, config=InferenceConfig(**FP32), **tiling).scales == [1.0]
    asked = InferenceConfig(object_diameter=10.0, **FP32)
    assert predict(model, image, config=asked, **tiling).scales == [2.0]
    with pytest.raises(ValueError, match="object_diameter"):
        InferenceConfig(object_diameter=0.0)
    with pytest.raises(ValueError, match="object_diameter"):
        InferenceConfig(object_diameter="big")


def test_tiles_stream_onto_the_image_grid_when_resampled():
    image, _ = discs((96, 96), 5, 24)
    model = tiny_unet()
    from napari_unet.inference import predict_generator

    generator = predict_generator(
        model,
        image,
        task="paper",
        postprocess=Postprocess(threshold=0.5, seed_threshold=None),
        normalization=Normalization(0.0, 100.0),
        config=InferenceConfig(object_diameter=10.0, tile_shape=(64, 64), **FP32),
        predictor=foreground_predictor(model.config.border),
        object_area=area_of_diameter(20.0),
    )
    covered = np.zeros(image.shape, bool)
    for tile in generator:
        rows, cols = tile.region
        assert tile.probabilities.shape[-2:] == covered[rows, cols].shape
        covered[rows, cols] = True
    assert covered.all()


def test_postprocess_sizes_scale_as_areas():
    settings = Postprocess(min_seed_size=40, min_size=100)
    assert settings.at_scale(1.0) is settings
    assert settings.at_scale(2.0) == Postprocess(min_seed_size=10, min_size=25)
    assert settings.at_scale(0.5).min_size == 400


def test_checkpoints_keep_the_object_area(tmp_path):
    net = UNet(UNetConfig(depth=2, base_channels=4))
    path = tmp_path / "model.pt"
    save_checkpoint(path, Checkpoint.from_model(net, mode="instances", object_area=452.0))
    assert load_checkpoint(path).object_area == 452.0
    # Files from before object sizes were kept load without one.
    payload = torch.load(path, weights_only=True)
    del payload["object_area"]
    torch.save(payload, path)
    assert load_checkpoint(path).object_area is None
    payload["object_area"] = -3.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="object_area"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="Only instance models"):
        Checkpoint.from_model(
            UNet(UNetConfig(depth=2, base_channels=4, n_classes=3)),
            mode="semantic",
            object_area=400.0,
        )
