"""Tests for napari_unet.checkpoint (one self-describing, atomically written file)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

import napari_unet
from napari_unet import checkpoint as checkpoint_module
from napari_unet.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.tasks import Postprocess

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

UNPICKLED = []


def _record(value):
    UNPICKLED.append(value)
    return value


class Payload:
    """An object whose unpickling would run code (calls ``_record``)."""

    def __reduce__(self):
        return (_record, ("code ran",))


def tiny_unet(seed=0, **kwargs):
    options = {"base_channels": 4, "depth": 2, "dropout": 0.0, **kwargs}
    with torch.random.fork_rng():  # fixed weights without seeding the global generator
        torch.manual_seed(seed)
        return UNet(UNetConfig(**options)).eval()


@pytest.fixture
def saved(tmp_path):
    """A small saved checkpoint: (path, model)."""
    model = tiny_unet()
    path = tmp_path / "model.pt"
    save_checkpoint(path, Checkpoint.from_model(model, mode="instances"))
    return path, model


def rewrite(path, change):
    """Load the raw payload, apply ``change`` to it and save it back."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path):
    model = tiny_unet(in_channels=3, n_classes=3, batch_norm=True)
    # Non-trivial batch-norm buffers, so that they are checked too.
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model.train()
        model(torch.rand(2, 3, 44, 44))
    model.eval()
    checkpoint = Checkpoint.from_model(
        model,
        mode="semantic",
        class_names=("nucleus", "cytoplasm", "membrane"),
        normalization=Normalization(2.0, 98.0),
        metadata={"steps": 12, "losses": [0.9, 0.5], "train_shapes": [[64, 64]]},
    )
    path = tmp_path / "model.pt"
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    save_checkpoint(path, checkpoint)
    after = dt.datetime.now(dt.timezone.utc)

    loaded = load_checkpoint(path)
    assert loaded.model_config == model.config
    assert loaded.mode == "semantic"
    assert loaded.class_names == ("nucleus", "cytoplasm", "membrane")
    assert loaded.normalization == Normalization(2.0, 98.0)
    assert loaded.metadata["steps"] == 12
    assert loaded.metadata["losses"] == [0.9, 0.5]
    assert loaded.metadata["train_shapes"] == [[64, 64]]
    assert loaded.metadata["package_version"] == napari_unet.__version__
    saved_at = dt.datetime.fromisoformat(loaded.metadata["saved_at"])
    assert saved_at.tzinfo is not None
    assert before <= saved_at <= after
    # The caller's checkpoint learns the same metadata.
    assert checkpoint.metadata == loaded.metadata

    original = model.state_dict()
    assert loaded.state_dict.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(loaded.state_dict[key], value), key
        assert loaded.state_dict[key].device.type == "cpu"

    rebuilt = loaded.build_model()
    assert not rebuilt.training
    x = torch.rand(1, 3, 60, 60)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))


def test_default_class_names(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, Checkpoint.from_model(tiny_unet()))
    loaded = load_checkpoint(path)
    assert loaded.mode == "instances"
    assert loaded.class_names == ("background", "object")
    assert loaded.normalization == Normalization()
    semantic = Checkpoint.from_model(tiny_unet(n_classes=3), mode="semantic")
    assert semantic.class_names == ("class 1", "class 2", "class 3")


def test_checkpoint_copies_weights():
    model = tiny_unet()
    checkpoint = Checkpoint.from_model(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert not torch.equal(checkpoint.state_dict["head.weight"], model.head.weight)


def test_saving_again_replaces_the_file(saved):
    path, _ = saved
    other = tiny_unet(seed=5)
    save_checkpoint(path, Checkpoint.from_model(other, mode="semantic"))
    loaded = load_checkpoint(path)
    assert loaded.mode == "semantic"
    assert torch.equal(loaded.state_dict["head.weight"], other.head.weight)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "panoptic"}, "mode must be"),
        ({"class_names": ("a", "b", "c")}, "class_names has 3 names but the model has 2"),
        ({"object_area": 300.0, "source_object_area": 0.0}, "source_object_area must be"),
        ({"source_object_area": 300.0}, "needs the model's own object_area"),
    ],
)
def test_bad_checkpoint_contents_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpoint.from_model(tiny_unet(), **kwargs)


# ---------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------


def test_load_uses_weights_only(saved, monkeypatch):
    path, _ = saved
    calls = []
    original = torch.load

    def spying_load(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spying_load)
    load_checkpoint(path)
    assert calls and all(call.get("weights_only") is True for call in calls)


def test_code_in_a_file_is_never_run(saved):
    path, _ = saved
    UNPICKLED.clear()
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["note"] = Payload()
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)
    assert UNPICKLED == []


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_file(saved, monkeypatch, failure):
    path, model = saved
    previous = path.read_bytes()

    def failing_save(obj, destination, *args, **kwargs):
        with open(destination, "wb") as stream:
            stream.write(b"half a checkpoint" * 100)
        raise failure

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(type(failure)):
        save_checkpoint(path, Checkpoint.from_model(tiny_unet(seed=9), mode="semantic"))
    monkeypatch.undo()

    assert path.read_bytes() == previous
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file
    loaded = load_checkpoint(path)
    assert loaded.mode == "instances"
    assert torch.equal(loaded.state_dict["head.weight"], model.head.weight)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(obj, destination, *args, **kwargs):
        with open(destination, "wb") as stream:
            stream.write(b"\x00" * 10)
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint(tmp_path / "model.pt", Checkpoint.from_model(tiny_unet()))
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        save_checkpoint(tmp_path / "missing" / "model.pt", Checkpoint.from_model(tiny_unet()))
    assert list(tmp_path.iterdir()) == []


def test_save_onto_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        save_checkpoint(tmp_path, Checkpoint.from_model(tiny_unet()))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Damaged and foreign files
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file at"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_loading_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file at"):
        load_checkpoint(tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a readable model file"):
        load_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="not a readable model file"):
        load_checkpoint(path)


def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged, truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [{"a": 1}, torch.zeros(3), [1, 2, 3]])
def test_foreign_pytorch_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not a napari-unet-segmentation model"):
        load_checkpoint(path)


def test_plain_state_dict_is_foreign(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_unet().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a napari-unet-segmentation model"):
        load_checkpoint(path)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "1", None])
def test_newer_or_unknown_format_version(saved, version):
    path, _ = saved

    def change(payload):
        payload["format_version"] = version

    rewrite(path, change)
    with pytest.raises(CheckpointError, match="upgrade the package") as error:
        load_checkpoint(path)
    assert repr(version) in str(error.value)


def test_a_file_from_before_heads_loads_as_the_paper_head(saved):
    """Older files hold no head and no labelling settings: the paper's head, its defaults."""
    path, _ = saved

    def drop(payload):
        del payload["head"], payload["postprocess"]

    rewrite(path, drop)
    loaded = load_checkpoint(path)
    assert loaded.head == "paper" and loaded.task.name == "paper"
    assert loaded.postprocess == loaded.task.default_postprocess


def test_head_and_labelling_settings_round_trip(tmp_path):
    model = tiny_unet(n_classes=3)
    settings = Postprocess(threshold=0.4, seed_threshold=0.3, min_seed_size=7, min_size=2)
    path = tmp_path / "three.pt"
    save_checkpoint(
        path,
        Checkpoint.from_model(model, mode="instances", head="three-class", postprocess=settings),
    )
    loaded = load_checkpoint(path)
    assert loaded.task.name == "three-class" and loaded.postprocess == settings
    assert loaded.class_names == ("background", "interior", "boundary")
    with pytest.raises(ValueError, match="has 3 outputs but the network has 2"):
        Checkpoint.from_model(tiny_unet(), mode="instances", head="three-class")


def test_object_areas_round_trip_and_reach_inference(tmp_path):
    """A fine-tuned model's source object area is kept and handed to predict()."""
    path = tmp_path / "tuned.pt"
    tuned = Checkpoint.from_model(tiny_unet(), object_area=284.0, source_object_area=496)
    save_checkpoint(path, tuned)
    loaded = load_checkpoint(path)
    assert (loaded.object_area, loaded.source_object_area) == (284.0, 496.0)
    settings = loaded.inference_settings()
    assert (settings["object_area"], settings["source_object_area"]) == (284.0, 496.0)


def test_damaged_labelling_settings_are_refused(saved):
    path, _ = saved
    rewrite(path, lambda payload: payload.__setitem__("postprocess", {"threshold": 7}))
    with pytest.raises(CheckpointError, match="damaged model description"):
        load_checkpoint(path)


def test_older_format_version_is_read(saved):
    """Versions up to the current one load (the current one is the oldest today)."""
    path, _ = saved
    assert FORMAT_VERSION >= 1
    rewrite(path, lambda payload: payload.__setitem__("format_version", FORMAT_VERSION))
    assert load_checkpoint(path).mode == "instances"


def test_renamed_weight(saved):
    path, _ = saved

    def change(payload):
        state = payload["state_dict"]
        state["final.weight"] = state.pop("head.weight")

    rewrite(path, change)
    with pytest.raises(CheckpointError, match="do not match") as error:
        load_checkpoint(path)
    assert "head.weight" in str(error.value)
    assert "final.weight" in str(error.value)


def test_missing_weight(saved):
    path, _ = saved
    rewrite(path, lambda payload: payload["state_dict"].pop("down.0.0.bias"))
    with pytest.raises(CheckpointError, match=r"do not match[\s\S]*down\.0\.0\.bias"):
        load_checkpoint(path)


def test_weight_of_the_wrong_shape(saved):
    path, _ = saved

    def change(payload):
        payload["state_dict"]["head.weight"] = torch.zeros(3, 4, 1, 1)

    rewrite(path, change)
    with pytest.raises(CheckpointError, match=r"do not match[\s\S]*head\.weight"):
        load_checkpoint(path)


@pytest.mark.parametrize("weights", [[1, 2], "weights", None])
def test_weights_that_are_not_a_dict(saved, weights):
    path, _ = saved
    rewrite(path, lambda payload: payload.__setitem__("state_dict", weights))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda payload: payload.pop("model_config"),
        lambda payload: payload["model_config"].__setitem__("depth", 0),
        lambda payload: payload["model_config"].__setitem__("kernel", 5),
        lambda payload: payload.__setitem__("mode", "panoptic"),
        lambda payload: payload.__setitem__("class_names", ["only one"]),
        lambda payload: payload.__setitem__("normalization", {"method": "zscore"}),
        lambda payload: payload.pop("state_dict"),
    ],
    ids=[
        "no-config",
        "bad-depth",
        "unknown-field",
        "bad-mode",
        "class-count",
        "normalisation",
        "no-weights",
    ],
)
def test_damaged_description(saved, change):
    path, _ = saved
    rewrite(path, change)
    with pytest.raises(CheckpointError, match="damaged model description"):
        load_checkpoint(path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert checkpoint_module.CheckpointError is CheckpointError


def test_saved_model_gets_ordinary_file_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = tmp_path / "model.pt"
        save_checkpoint(path, Checkpoint.from_model(tiny_unet()))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
