import numpy as np
import pytest
import torch

from napari_unet import training
from napari_unet._generators import run_to_end
from napari_unet.checkpoint import Checkpoint
from napari_unet.inference import InferenceConfig, predict
from napari_unet.metrics import average_precision
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.training import (
    TrainConfig,
    TrainingMessage,
    TrainingPreview,
    TrainingProgress,
    ValidationResult,
    prepare_training_data,
    train,
    train_generator,
    weighted_cross_entropy,
)

# A tiny network and tile so that most tests take a fraction of a second.
# calibrate=False: the calibration has tests of its own (below and in test_tasks.py).
TINY = {
    "base_channels": 4,
    "depth": 2,
    "tile_size": 92,
    "device": "cpu",
    "dropout": 0.0,
    "calibrate": False,
}


def run(generator):
    events = []
    return events, run_to_end(generator, events.append)


@pytest.fixture(scope="module")
def nuclei():
    return make_touching_nuclei((96, 96), n_nuclei=8, seed=3)


def test_weighted_cross_entropy_equals_hand_computation():
    logits = np.array(
        [[[1.0, 0.0], [2.0, -1.0]], [[0.0, 0.5], [0.0, 0.0]], [[-1.0, 0.0], [1.0, 3.0]]]
    )
    target = np.array([[0, 1], [2, 2]])
    weights = np.array([[1.0, 2.0], [0.5, 0.0]])
    expected = 0.0
    for i in range(2):
        for j in range(2):
            z = logits[:, i, j]
            log_p = z[target[i, j]] - np.log(np.exp(z).sum())
            expected -= weights[i, j] * log_p
    expected /= 4
    loss = weighted_cross_entropy(
        torch.tensor(logits)[None].float(), torch.tensor(target)[None], torch.tensor(weights)[None]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_zero_weight_pixels_do_not_count_whatever_their_target():
    logits = torch.randn(1, 2, 3, 3)
    weights = torch.ones(1, 3, 3)
    weights[0, 1, 1] = 0
    target = torch.zeros(1, 3, 3, dtype=torch.int64)
    other = target.clone()
    other[0, 1, 1] = 1
    assert weighted_cross_entropy(logits, target, weights) == weighted_cross_entropy(
        logits, other, weights
    )


def test_instances_data_uses_separated_target_and_boundary_weights(nuclei):
    image, labels = nuclei
    data = prepare_training_data([(image, labels)], task="paper")
    (sample,) = data.samples
    assert data.n_classes == 2 and data.in_channels == 1
    assert sample.image.shape == (1, 96, 96) and sample.image.dtype == np.float32
    # Pixels where objects touch are background in the target and weigh most.
    touching = (labels > 0) & (sample.target == 0)
    assert touching.any()
    assert sample.weights[touching].mean() > 3 * sample.weights[labels == 0].mean()
    assert (sample.weights > 0).all()


def test_partial_annotation_mask_zeroes_the_weight_outside(nuclei):
    image, labels = nuclei
    mask = np.zeros(labels.shape, bool)
    mask[:48] = True
    (sample,) = prepare_training_data([(image, labels)], masks=[mask]).samples
    assert (sample.weights[~mask] == 0).all()
    assert (sample.weights[mask] > 0).all()
    # Annotated tiles are centred on annotated pixels only.
    rows = np.unravel_index(sample.annotated, labels.shape)[0]
    assert rows.max() < 48


def test_semantic_mode_ignores_unlabelled_pixels():
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    labels[:10] = 1
    labels[-10:] = 2
    labels[30:34, 30:34] = 3
    data = prepare_training_data([(image, labels)], task="semantic")
    (sample,) = data.samples
    assert data.n_classes == 3
    assert (sample.weights[labels == 0] == 0).all()
    assert set(np.unique(sample.target[labels > 0])) == {0, 1, 2}
    # Class balancing: the rare class 3 weighs more than the common ones.
    assert sample.weights[labels == 3].mean() > sample.weights[labels == 1].mean()


def test_stacks_train_on_annotated_planes_only_and_rgb_is_recognised(nuclei):
    image, labels = nuclei
    stack = np.stack([image, image, image])
    label_stack = np.stack([labels, np.zeros_like(labels), labels])
    data = prepare_training_data([(stack, label_stack)])
    assert len(data.samples) == 2
    rgb = np.stack([image] * 3, axis=-1)
    data = prepare_training_data([(rgb, labels)])
    assert data.in_channels == 3 and data.samples[0].image.shape == (3, 96, 96)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([(np.ones((32, 32)), np.zeros((32, 32), np.int32))], "No annotation found"),
        ([(np.ones((32, 32)), np.ones((30, 32), np.int32))], "height and width"),
        ([(np.ones((32, 32)), np.ones((32, 32)))], "integer dtype"),
        ([(np.full((32, 32), np.nan), np.ones((32, 32), np.int32))], "NaN"),
        ([], "at least one"),
    ],
)
def test_bad_training_data_raises(pairs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        prepare_training_data(pairs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": None, "minutes": None}, "Give a budget"),
        ({"steps": 0}, "steps must be a whole number from 1"),
        ({"minutes": -1}, "minutes must be from 0.01"),
        ({"tile_size": 100}, "not valid for this U-Net"),
        ({"optimizer": "rmsprop"}, "optimizer must be"),
        ({"mode": "panoptic"}, "mode must be"),
        ({"sigma": 0}, "sigma > 0"),
    ],
)
def test_bad_train_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_training_yields_progress_and_validation_and_returns_a_checkpoint(nuclei):
    image, labels = nuclei
    config = TrainConfig(steps=6, validation_every=3, **TINY)
    events, result = run(train_generator([(image, labels)], config, validation=(image, labels)))
    progress = [e for e in events if isinstance(e, TrainingProgress)]
    validation = [e for e in events if isinstance(e, ValidationResult)]
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(p.loss) and p.images_per_second > 0 for p in progress)
    assert 0 <= progress[-1].data_wait_fraction <= 1
    assert [v.step for v in validation] == [3, 6]
    assert all(v.score_name == "AP@0.5" and 0 <= v.score <= 1 for v in validation)
    assert result.steps == 6 and result.stop_reason == "budget"
    checkpoint = result.checkpoint
    assert isinstance(checkpoint, Checkpoint) and checkpoint.mode == "instances"
    assert checkpoint.metadata["steps"] == 6
    assert checkpoint.metadata["data_shapes"] == [[1, 96, 96]]
    assert len(checkpoint.metadata["validation"]) == 2


def test_fixed_seed_makes_a_cpu_run_reproducible(nuclei):
    image, labels = nuclei
    config = TrainConfig(steps=4, seed=7, **TINY)
    first = train([(image, labels)], config)
    second = train([(image, labels)], config)
    assert first.losses == second.losses
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key])
    other = train([(image, labels)], TrainConfig(steps=4, seed=8, **TINY))
    assert other.losses != first.losses


def test_training_does_not_touch_the_global_torch_rng(nuclei):
    image, labels = nuclei
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train([(image, labels)], TrainConfig(steps=2, **TINY))
    assert torch.equal(torch.rand(3), expected)


def test_should_stop_ends_training_cleanly(nuclei):
    image, labels = nuclei
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    result = train([(image, labels)], TrainConfig(steps=100, **TINY), should_stop=should_stop)
    assert result.steps == 3 and result.stop_reason == "stopped"
    assert result.checkpoint.metadata["stop_reason"] == "stopped"


def test_minutes_budget_stops_on_time(nuclei):
    image, labels = nuclei
    result = train([(image, labels)], TrainConfig(steps=None, minutes=0.01, **TINY))
    assert result.stop_reason == "budget" and result.steps >= 1


def test_non_finite_loss_restores_the_last_good_weights(nuclei, monkeypatch):
    image, labels = nuclei
    real_step = training._step
    snapshots = []

    def step(model, *args):
        if len(snapshots) == 3:
            return float("nan")
        loss = real_step(model, *args)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(training, "_step", step)
    events, result = run(train_generator([(image, labels)], TrainConfig(steps=20, **TINY)))
    assert result.stop_reason == "non-finite loss" and result.steps == 3
    messages = [e.text for e in events if isinstance(e, TrainingMessage)]
    assert len(messages) == 1 and "nan" in messages[0] and "step 3" in messages[0]
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, snapshots[-1][key])


def test_out_of_memory_retries_with_a_smaller_tile(nuclei, monkeypatch):
    image, labels = nuclei
    real_step = training._step
    failed = []

    def step(model, optimizer, image_tile, *args):
        if not failed:
            failed.append(image_tile.shape)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        step.tiles.append(image_tile.shape)
        return real_step(model, optimizer, image_tile, *args)

    step.tiles = []
    monkeypatch.setattr(training, "_step", step)
    config = TrainConfig(steps=2, **{**TINY, "tile_size": 124})
    events, result = run(train_generator([(image, labels)], config))
    messages = [e.text for e in events if isinstance(e, TrainingMessage)]
    assert len(messages) == 1 and "124x124" in messages[0] and "out of memory" in messages[0]
    assert failed[0][-1] == 124 and all(shape[-1] < 124 for shape in step.tiles)
    assert result.steps == 2


def test_fine_tuning_starts_from_the_checkpoint(nuclei):
    image, labels = nuclei
    first = train([(image, labels)], TrainConfig(steps=2, **TINY))
    tuned = train([(image, labels)], TrainConfig(steps=1, **TINY), initial=first.checkpoint)
    assert tuned.model.config == first.model.config
    assert tuned.checkpoint.normalization == first.checkpoint.normalization
    assert tuned.checkpoint.metadata["fine_tuned_from"] is not None
    # Zero steps of change would equal the start: one step changes the weights a little.
    start = first.checkpoint.state_dict
    moved = [not torch.equal(start[k], v) for k, v in tuned.model.state_dict().items()]
    assert any(moved)
    with pytest.raises(ValueError, match="trained in 'instances' mode"):
        train(
            [(image, labels)],
            TrainConfig(steps=1, mode="semantic", **TINY),
            initial=first.checkpoint,
        )


def test_semantic_training_runs_and_predicts_classes():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    image[:, 32:] += 2.0
    labels = np.zeros((64, 64), np.int32)
    labels[:, :20] = 1
    labels[:, 44:] = 2
    result = train([(image, labels)], TrainConfig(mode="semantic", steps=30, **TINY))
    prediction = predict(result.model, image, task="semantic", config=InferenceConfig(device="cpu"))
    assert set(np.unique(prediction.labels)) <= {1, 2}
    assert prediction.labels.shape == image.shape


@pytest.mark.slow
def test_training_on_synthetic_nuclei_reaches_ap_0_8_on_a_held_out_image():
    """The median of three seeds: 500 steps leave single runs spread from 0.4 to 0.96."""
    image, labels = make_touching_nuclei((256, 256), seed=0)
    held_out, truth = make_touching_nuclei((256, 256), seed=2)
    scores = []
    for seed in range(3):
        result = train([(image, labels)], TrainConfig(steps=500, seed=seed, device="cpu"))
        checkpoint = result.checkpoint
        assert checkpoint.task.name == "three-class"  # the default head
        prediction = predict(
            result.model,
            held_out,
            task=checkpoint.task,
            postprocess=checkpoint.postprocess,
            normalization=checkpoint.normalization,
            config=InferenceConfig(device="cpu"),
        )
        scores.append(average_precision(truth, prediction.labels, 0.5))
    assert np.median(scores) >= 0.8, scores


@pytest.mark.parametrize("with_validation", [True, False])
def test_training_calibrates_the_labelling_and_says_where(nuclei, with_validation):
    image, labels = nuclei
    validation = (image, labels) if with_validation else None
    config = TrainConfig(steps=3, **{**TINY, "calibrate": True})
    events, result = run(train_generator([(image, labels)], config, validation=validation))
    messages = [e.text for e in events if isinstance(e, TrainingMessage)]
    assert len(messages) == 1 and messages[0].startswith("Labelling settings")
    assert ("validation image" in messages[0]) == with_validation
    calibration = result.checkpoint.metadata["calibration"]
    assert ("validation" in calibration["on"]) == with_validation
    assert calibration["score"] >= calibration["default_score"]
    assert result.checkpoint.postprocess is not None


def test_a_tessellating_model_is_calibrated_on_the_rand_error(nuclei):
    image, labels = nuclei
    config = TrainConfig(steps=3, **{**TINY, "calibrate": True}, tessellate=True)
    events, result = run(train_generator([(image, labels)], config, validation=(image, labels)))
    (message,) = [e.text for e in events if isinstance(e, TrainingMessage)]
    assert "Rand error" in message
    assert result.checkpoint.metadata["calibration"]["metric"] == "1 - Rand error"
    assert result.checkpoint.postprocess.tessellate
    with pytest.raises(ValueError, match="instances mode"):
        TrainConfig(mode="semantic", tessellate=True)


def test_calibration_holds_out_whole_images_when_there_are_enough():
    pairs = [make_touching_nuclei((64, 64), n_nuclei=4, seed=seed) for seed in range(12)]
    held_out = training._hold_out(pairs, None, None)
    assert len(held_out.pairs) == 11 and len(held_out.planes) == 1
    np.testing.assert_array_equal(held_out.planes[0][1], pairs[-1][1])
    assert "1 training image(s) held out" in held_out.description


def test_calibration_holds_out_the_bottom_rows_of_one_image():
    image, labels = make_touching_nuclei((200, 160), n_nuclei=40, seed=3)
    held_out = training._hold_out([(image, labels)], None, None)
    ((_, _, rows),) = held_out.planes
    assert rows == slice(160, 200) and "rows 160-199" in held_out.description
    (mask,) = held_out.masks
    assert mask[:160].all() and not mask[160:].any()  # not learnt from
    # Too few objects in the bottom rows: nothing is held out.
    sparse = labels.copy()
    sparse[150:] = 0
    assert training._hold_out([(image, sparse)], None, None) is None
    # Partly annotated images are never held out.
    assert training._hold_out([(image, labels)], [np.ones(labels.shape, bool)], None) is None


def test_a_head_is_kept_when_fine_tuning(nuclei):
    image, labels = nuclei
    first = train([(image, labels)], TrainConfig(steps=1, head="paper", **TINY))
    assert first.checkpoint.head == "paper" and first.model.config.n_classes == 2
    tuned = train([(image, labels)], TrainConfig(steps=1, **TINY), initial=first.checkpoint)
    assert tuned.checkpoint.head == "paper"
    with pytest.raises(ValueError, match="keeps the model's head"):
        train([(image, labels)], TrainConfig(steps=1, head="three-class", **TINY),
              initial=first.checkpoint)  # fmt: skip


def test_the_distance_head_trains_validates_and_predicts_a_distance(nuclei):
    image, labels = nuclei
    config = TrainConfig(steps=4, validation_every=2, head="distance", **TINY)
    events, result = run(train_generator([(image, labels)], config, validation=(image, labels)))
    validation = [e for e in events if isinstance(e, ValidationResult)]
    assert len(validation) == 2 and all(np.isfinite(v.loss) for v in validation)
    checkpoint = result.checkpoint
    assert checkpoint.task.name == "distance" and checkpoint.model_config.n_classes == 3
    prediction = predict(
        result.model, image, task=checkpoint.task, config=InferenceConfig(device="cpu"),
        return_probabilities=True,
    )  # fmt: skip
    outputs = np.asarray(prediction.probabilities)
    # Two class probabilities that sum to 1, and a distance in [0, 1].
    assert np.allclose(outputs[:2].sum(axis=0), 1, atol=1e-5)
    assert outputs[2].min() >= 0 and outputs[2].max() <= 1
    assert prediction.labels.shape == image.shape


def test_fine_tuning_checks_the_tile_against_the_starting_architecture(nuclei):
    image, labels = nuclei
    same = train(
        [(image, labels)],
        TrainConfig(steps=1, padding="same", **{**TINY, "depth": 3, "tile_size": 96}),
    )
    with pytest.raises(ValueError, match="same padding"):
        train([(image, labels)], TrainConfig(steps=1, **TINY), initial=same.checkpoint)
    tuned = train(
        [(image, labels)],
        TrainConfig(steps=1, **{**TINY, "tile_size": 96}),
        initial=same.checkpoint,
    )
    assert tuned.model.config.padding == "same"


def test_validation_scores_the_first_annotated_plane(nuclei):
    image, labels = nuclei
    stack = np.stack([image, image])
    label_stack = np.stack([np.zeros_like(labels), labels])
    config = TrainConfig(steps=2, validation_every=2, **TINY)
    events, _ = run(train_generator([(image, labels)], config, validation=(stack, label_stack)))
    (result,) = [e for e in events if isinstance(e, ValidationResult)]
    # An untrained model finds something, so AP against the empty plane would be 0
    # with a finite loss from the other plane; against the annotated one it is consistent.
    alone = run(train_generator([(image, labels)], config, validation=(image, labels)))[0]
    (expected,) = [e for e in alone if isinstance(e, ValidationResult)]
    assert result.loss == pytest.approx(expected.loss) and result.score == expected.score


def test_without_a_validation_pair_the_held_out_rows_are_scored_as_training_goes(monkeypatch):
    """Quality feedback beside the loss, on the rows held out for calibration."""
    image, labels = make_touching_nuclei((128, 128), n_nuclei=40, seed=5)
    config = TrainConfig(steps=4, validation_every=2, **{**TINY, "calibrate": True})
    # Scoring may take a small share of the time only; after one pass, none here.
    monkeypatch.setattr(training, "HELD_OUT_SCORING_SHARE", 0.0)
    events, _ = run(train_generator([(image, labels)], config))
    assert [e.step for e in events if isinstance(e, ValidationResult)] == [2]
    monkeypatch.setattr(training, "HELD_OUT_SCORING_SHARE", 1e9)
    events, result = run(train_generator([(image, labels)], config))
    messages = [e.text for e in events if isinstance(e, TrainingMessage)]
    assert any("held out of training" in text for text in messages)
    validation = [e for e in events if isinstance(e, ValidationResult)]
    assert [v.step for v in validation] == [2, 4]
    assert all(v.score_name == "AP@0.5" and np.isfinite(v.loss) for v in validation)
    # The last score is the final network's AP on those rows, with the default labelling.
    cut = round(labels.shape[0] * (1 - training.HOLD_OUT_FRACTION))
    prediction = predict(
        result.model, image, task=result.checkpoint.task,
        config=InferenceConfig(device="cpu", precision="fp32"),
    )  # fmt: skip
    expected = average_precision(labels[cut:], prediction.labels[cut:], 0.5)
    assert validation[-1].score == pytest.approx(expected)


def test_training_reads_channel_axes_like_inference(nuclei):
    image, labels = nuclei
    two_channels = np.stack([image, image[::-1]])  # (C, H, W)
    data = prepare_training_data([(two_channels, labels)], channel_axis=0)
    assert data.in_channels == 2
    stack = np.stack([two_channels, two_channels])  # (Z, C, H, W)
    data = prepare_training_data([(stack, np.stack([labels, labels]))], channel_axis=1)
    assert len(data.samples) == 2 and data.samples[0].image.shape == (2, 96, 96)
    np.testing.assert_array_equal(
        data.samples[0].image[1], prepare_training_data([(image[::-1], labels)]).samples[0].image[0]
    )
    with pytest.raises(ValueError, match="one 2D plane of labels per image plane"):
        prepare_training_data([(np.stack([image] * 3), np.stack([labels] * 2))])


def test_preview_labels_every_n_steps(nuclei):
    image, labels = nuclei
    config = TrainConfig(steps=4, **TINY)
    events, _ = run(
        train_generator([(image, labels)], config, preview=image[:40, :50], preview_every=2)
    )
    previews = [event for event in events if isinstance(event, TrainingPreview)]
    assert [preview.step for preview in previews] == [2, 4]
    assert all(preview.labels.shape == (40, 50) for preview in previews)


def test_preview_every_must_be_a_positive_integer(nuclei):
    with pytest.raises(ValueError, match="preview_every"):
        next(train_generator([nuclei], preview=nuclei[0], preview_every=0))
