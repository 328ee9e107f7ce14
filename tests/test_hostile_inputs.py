"""The hostile-input sweep: every bad input is a clear refusal that costs the user nothing.

Each command-line case asserts the exit status, that the message names the
file or option at fault and says what to do, that no traceback reaches the
user, that the inputs are unchanged and that nothing exists under the output's
final name. API cases assert the exception and its advice; widget cases the
notification. The whole table runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import cli
from napari_unet.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from napari_unet.inference import InferenceConfig, predict
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import NonFiniteImageError
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.training import TrainConfig, prepare_training_data

OK, FAILURE, USAGE = 0, 1, 2
CPU = InferenceConfig(device="cpu")


def tiny_model(**config) -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet(UNetConfig(depth=2, base_channels=4, dropout=0.0, **config)).eval()


class Evil:
    """Pickles as a call to os.system: a model file that would run code."""

    def __reduce__(self):
        return (os.system, ("echo this-must-never-run",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input of the sweep, good and bad, written once."""
    folder = tmp_path_factory.mktemp("hostile")
    image, labels = make_touching_nuclei((64, 64), n_nuclei=6, seed=1)
    paths = {name: folder / name for name in (
        "image.tif", "labels.tif", "model.pt", "semantic.pt", "nan_weights.pt", "wide.pt",
        "evil.pt", "notes.txt", "empty.tif", "zero_labels.tif", "nan_image.tif",
        "two_channel.tif", "float_labels.tif", "huge_ids.tif", "many_classes.tif", "huge.tif",
        "bomb.zip", "distance.pt",
    )}  # fmt: skip
    tifffile.imwrite(paths["image.tif"], image)
    tifffile.imwrite(paths["labels.tif"], labels.astype(np.uint16))
    save_checkpoint(paths["model.pt"], Checkpoint.from_model(tiny_model(), mode="instances"))
    save_checkpoint(paths["semantic.pt"], Checkpoint.from_model(tiny_model(), mode="semantic"))
    save_checkpoint(
        paths["distance.pt"],
        Checkpoint.from_model(tiny_model(n_classes=3), mode="instances", head="distance"),
    )
    broken = tiny_model()
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    torch.save(_payload(Checkpoint.from_model(broken, mode="instances")), paths["nan_weights.pt"])
    # A few kilobytes whose description asks for a network of hundreds of gigabytes.
    wide = _payload(Checkpoint.from_model(tiny_model(), mode="instances"))
    wide["model_config"]["base_channels"] = 100_000
    torch.save(wide, paths["wide.pt"])
    torch.save({"format": "napari-unet-segmentation", "x": Evil()}, paths["evil.pt"])
    paths["notes.txt"].write_text("not an image\n")
    paths["empty.tif"].write_bytes(b"")
    tifffile.imwrite(paths["zero_labels.tif"], np.zeros((64, 64), np.uint16))
    nan_image = image.astype(np.float32)
    nan_image[10, 10] = np.nan
    tifffile.imwrite(paths["nan_image.tif"], nan_image)
    tifffile.imwrite(paths["two_channel.tif"], np.stack([image, image], axis=-1))
    tifffile.imwrite(paths["float_labels.tif"], labels.astype(np.float32) + 0.5)
    tifffile.imwrite(paths["huge_ids.tif"], labels.astype(np.uint64) * (2**40 + 7))
    many = labels.astype(np.uint32)
    many[many > 0] += 70_000
    tifffile.imwrite(paths["many_classes.tif"], many)
    # A 40000 x 40000 image in a sparse file: its header promises 1.6 GB of pixels.
    tifffile.imwrite(paths["huge.tif"], shape=(40_000, 40_000), dtype=np.uint8)
    with zipfile.ZipFile(paths["bomb.zip"], "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rdf.yaml", "type: model\n")
        archive.writestr("weights.pt", b"\0" * (64 << 20))  # 64 MiB of zeros, a few kB stored
    return paths


def _payload(checkpoint: Checkpoint) -> dict:
    """The dictionary save_checkpoint writes, to be damaged on purpose."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, checkpoint)
        return torch.load(path, weights_only=True)


def fingerprint(path: Path) -> tuple:
    if not path.exists():
        return (None,)
    if path.is_dir():
        return ("dir", sorted(p.name for p in path.iterdir()))
    stat = path.stat()
    if stat.st_size > 10 << 20:  # the sparse huge image: size and time suffice
        return (stat.st_size, stat.st_mtime_ns)
    return (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


def run_cli(args: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    return code, stderr.getvalue()


@dataclass(frozen=True)
class Case:
    """One command line, its exit status and what its message must contain."""

    args: str  # {name} is a file of the fixture, {out} the output
    code: int
    says: tuple[str, ...]  # fragments of the message, case-insensitive
    out: str = "out.pt"


TRAIN = "train {image.tif} {labels.tif} -o {out} --steps 1 --base-channels 4"
SEGMENT = "segment {model.pt} {image.tif} -o {out}"
CASES = {
    # train: files
    "train/image missing": Case(
        "train {dir}/missing.tif {labels.tif} -o {out}", FAILURE, ("missing.tif", "no such")
    ),
    "train/labels missing": Case(
        "train {image.tif} {dir}/gone.tif -o {out}", FAILURE, ("gone.tif", "no such")
    ),
    "train/image is text": Case(
        "train {notes.txt} {labels.tif} -o {out}", FAILURE, ("notes.txt", "give a tiff")
    ),
    "train/image is an empty file": Case(
        "train {empty.tif} {labels.tif} -o {out}", FAILURE, ("empty.tif", "not a readable")
    ),
    "train/labels are floats": Case(
        "train {image.tif} {float_labels.tif} -o {out}", FAILURE, ("float_labels.tif", "integer")
    ),
    "train/labels of another shape": Case(
        "train {image.tif} {two_channel.tif} -o {out}", FAILURE, ("shape",)
    ),
    "train/image and labels swapped": Case(
        "train {labels.tif} {image.tif} -o {out} --steps 1",
        FAILURE,
        ("image.tif", "do not look like labels", "image first"),
    ),
    "train/no annotation": Case(
        "train {image.tif} {zero_labels.tif} -o {out}", FAILURE, ("empty", "paint")
    ),
    "train/image with a NaN pixel": Case(
        "train {nan_image.tif} {labels.tif} -o {out}", FAILURE, ("nan_image.tif", "nan", "replace")
    ),
    "train/semantic labels up to 70000": Case(
        "train {image.tif} {many_classes.tif} -o {out} --mode semantic",
        FAILURE,
        ("many_classes.tif", "at most 256", "instances"),
    ),
    "train/output is an input": Case(
        "train {image.tif} {labels.tif} -o {labels.tif}", USAGE, ("labels.tif",), out=""
    ),
    "train/output folder missing": Case(
        "train {image.tif} {labels.tif} -o {dir}/no/such/model.pt",
        USAGE,
        ("does not exist",),
        out="",
    ),
    # train: options
    "train/steps 0": Case(TRAIN.replace("--steps 1", "--steps 0"), USAGE, ("--steps",)),
    "train/steps 2.7": Case(TRAIN.replace("--steps 1", "--steps 2.7"), USAGE, ("--steps",)),
    "train/minutes inf": Case(
        "train {image.tif} {labels.tif} -o {out} --minutes inf", USAGE, ("--minutes",)
    ),
    "train/minutes nan": Case(
        "train {image.tif} {labels.tif} -o {out} --minutes nan", USAGE, ("--minutes",)
    ),
    "train/minutes 1e-9": Case(
        "train {image.tif} {labels.tif} -o {out} --minutes 1e-9",
        USAGE,
        ("minutes must be from 0.01",),
    ),
    "train/seed too large": Case(TRAIN + f" --seed {2**70}", USAGE, ("--seed", "up to")),
    "train/seed negative": Case(TRAIN + " --seed -1", USAGE, ("--seed",)),
    "train/base channels 100000": Case(
        TRAIN.replace("--base-channels 4", "--base-channels 100000"),
        FAILURE,
        ("base_channels must be at most",),
    ),
    "train/tile size not valid": Case(TRAIN + " --tile-size 101", USAGE, ("--tile-size", "use")),
    "train/head with semantic mode": Case(
        TRAIN + " --mode semantic --head paper", USAGE, ("head", "semantic")
    ),
    "train/tessellate with semantic mode": Case(
        TRAIN + " --mode semantic --tessellate", USAGE, ("--tessellate", "instances")
    ),
    "train/unknown head": Case(TRAIN + " --head magic", USAGE, ("--head", "magic")),
    "train/odd number of files": Case("train {image.tif} -o {out}", USAGE, ("image", "labels")),
    # train: validation and starting models
    "train/validation labels empty": Case(
        TRAIN + " --validation {image.tif} {zero_labels.tif}",
        FAILURE,
        ("zero_labels.tif", "validation"),
    ),
    "train/validation labels an empty file": Case(
        TRAIN + " --validation {image.tif} {empty.tif}", FAILURE, ("empty.tif",)
    ),
    "train/from a TIFF": Case(
        TRAIN + " --from {image.tif}", FAILURE, ("image.tif", "not a readable model file")
    ),
    "train/from a file that would run code": Case(
        TRAIN + " --from {evil.pt}", FAILURE, ("evil.pt", "would run code", "not opened")
    ),
    "train/from NaN weights": Case(
        TRAIN + " --from {nan_weights.pt}", FAILURE, ("nan_weights.pt", "nan", "train again")
    ),
    "train/from a 2 KB file asking for 360 GB": Case(
        TRAIN + " --from {wide.pt}", FAILURE, ("wide.pt", "base_channels must be at most")
    ),
    "train/from a semantic model on instance labels": Case(
        "train {image.tif} {labels.tif} -o {out} --steps 1 --from {semantic.pt}",
        FAILURE,
        ("classes", "instances mode"),
    ),
    "train/from a zip bomb": Case(TRAIN + " --from {bomb.zip}", FAILURE, ("bomb.zip", "zip bomb")),
    # segment
    "segment/model missing": Case(
        "segment {dir}/none.pt {image.tif} -o {out}", FAILURE, ("none.pt",), out="out"
    ),
    "segment/unknown model name": Case(
        "segment no-such-model {image.tif} -o {out}",
        FAILURE,
        ("no-such-model", "nuclei", "NAPARI_UNET_MODELS"),
        out="out",
    ),
    "segment/model is a TIFF": Case(
        "segment {image.tif} {image.tif} -o {out}",
        FAILURE,
        ("not a readable model file",),
        out="out",
    ),
    "segment/model would run code": Case(
        "segment {evil.pt} {image.tif} -o {out}", FAILURE, ("evil.pt", "would run code"), out="out"
    ),
    "segment/model with NaN weights": Case(
        "segment {nan_weights.pt} {image.tif} -o {out}",
        FAILURE,
        ("nan_weights.pt", "nan", "train again"),
        out="out",
    ),
    "segment/model asking for 360 GB": Case(
        "segment {wide.pt} {image.tif} -o {out}", FAILURE, ("base_channels",), out="out"
    ),
    "segment/package that is a zip bomb": Case(
        "segment {bomb.zip} {image.tif} -o {out}", FAILURE, ("zip bomb",), out="out"
    ),
    "segment/image missing": Case(
        "segment {model.pt} {dir}/nothing.tif -o {out}", FAILURE, ("nothing.tif",), out="out"
    ),
    "segment/image is text": Case(
        "segment {model.pt} {notes.txt} -o {out}", FAILURE, ("notes.txt",), out="out"
    ),
    "segment/image with a NaN pixel": Case(
        "segment {model.pt} {nan_image.tif} -o {out}",
        FAILURE,
        ("nan_image.tif", "nan", "replace"),
        out="out",
    ),
    "segment/two channels for a grey model": Case(
        "segment {model.pt} {two_channel.tif} -o {out}",
        FAILURE,
        ("two_channel.tif", "two-channel", "one channel"),
        out="out",
    ),
    "segment/40000 x 40000 in memory": Case(
        "segment {model.pt} {huge.tif} -o {out}", FAILURE, ("huge.tif", "--workers"), out="out"
    ),
    "segment/output is a file": Case(
        "segment {model.pt} {image.tif} -o {labels.tif}", USAGE, ("is a file",), out=""
    ),
    "segment/threshold 1.5": Case(SEGMENT + " --threshold 1.5", USAGE, ("--threshold",), out="out"),
    "segment/threshold nan": Case(SEGMENT + " --threshold nan", USAGE, ("--threshold",), out="out"),
    "segment/seed threshold 0": Case(
        SEGMENT + " --seed-threshold 0", USAGE, ("--seed-threshold",), out="out"
    ),
    "segment/min size negative": Case(
        SEGMENT + " --min-size -3", USAGE, ("--min-size",), out="out"
    ),
    "segment/object diameter words": Case(
        SEGMENT + " --object-diameter big", USAGE, ("--object-diameter", "auto"), out="out"
    ),
    "segment/object diameter 0": Case(
        SEGMENT + " --object-diameter 0", USAGE, ("object_diameter",), out="out"
    ),
    "segment/object diameter nan": Case(
        SEGMENT + " --object-diameter nan", USAGE, ("object_diameter",), out="out"
    ),
    "segment/workers 0": Case(SEGMENT + " --workers 0", USAGE, ("--workers",), out="out"),
    "segment/workers and scheduler": Case(
        SEGMENT + " --workers 2 --scheduler tcp://127.0.0.1:1", USAGE, ("--scheduler",), out="out"
    ),
    "segment/scheduler garbage": Case(
        SEGMENT + " --scheduler garbage", FAILURE, ("garbage", "tcp://host:8786"), out="out"
    ),
    "segment/tessellate a semantic model": Case(
        "segment {semantic.pt} {image.tif} -o {out} --tessellate",
        USAGE,
        ("--tessellate", "semantic"),
        out="out",
    ),
    # models
    "models/add without a name": Case("models add {model.pt}", USAGE, ("--name",)),
    "models/add a TIFF": Case(
        "models add {image.tif} --name cells", FAILURE, ("not a readable model file",)
    ),
    "models/add under a shipped name": Case(
        "models add {model.pt} --name nuclei", FAILURE, ("shipped model", "another name")
    ),
    # weightmap
    "weightmap/labels missing": Case(
        "weightmap {dir}/absent.tif -o {out}", FAILURE, ("absent.tif",), out="w.tif"
    ),
    "weightmap/w0 negative": Case(
        "weightmap {labels.tif} -o {out} --w0 -1", USAGE, ("--w0",), out="w.tif"
    ),
    "weightmap/sigma 0": Case(
        "weightmap {labels.tif} -o {out} --sigma 0", USAGE, ("--sigma",), out="w.tif"
    ),
    "weightmap/labels are floats": Case(
        "weightmap {float_labels.tif} -o {out}", FAILURE, ("float_labels.tif",), out="w.tif"
    ),
    "weightmap/output is the labels": Case(
        "weightmap {labels.tif} -o {labels.tif}", USAGE, ("labels.tif",), out=""
    ),
    # export
    "export/model missing": Case(
        "export {dir}/void.pt --format onnx -o {out}", FAILURE, ("void.pt",), out="m.onnx"
    ),
    "export/wrong ending": Case(
        "export {model.pt} --format onnx -o {out}", USAGE, ("*.onnx",), out="m.zip"
    ),
    "export/NaN test image": Case(
        "export {model.pt} --format bioimageio -o {out} --test-image {nan_image.tif}",
        FAILURE,
        ("nan_image.tif", "nan", "replace"),
        out="m.zip",
    ),
    "export/distance head to bioimage.io": Case(
        "export {distance.pt} --format bioimageio -o {out}", FAILURE, ("onnx",), out="m.zip"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_refuses_clearly(name, files, tmp_path):
    case = CASES[name]
    out = tmp_path / case.out if case.out else None
    values = {key: str(path) for key, path in files.items()}
    values.update(dir=str(tmp_path), out=str(out) if out else "")
    args = [re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], a) for a in case.args.split()]
    inputs = [Path(a) for a in args if Path(a).is_relative_to(files["model.pt"].parent)]
    before = {path: fingerprint(path) for path in inputs}
    code, err = run_cli(args)
    assert code == case.code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and all(line.startswith("napari-unet") for line in lines), err
    message = lines[-1]  # warnings may come first; the error is one line, last
    assert message.startswith("napari-unet: error:"), err
    for fragment in case.says:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    assert {path: fingerprint(path) for path in inputs} == before
    if out is not None:
        leftovers = [out] if out.suffix else list(out.glob("*")) if out.exists() else []
        assert not any(p.exists() for p in leftovers), leftovers


# -- correct results where the input is odd but valid ---------------------------------------


def test_ids_near_2_to_the_40_train_as_objects(files, tmp_path):
    code, err = run_cli(
        ["train", str(files["image.tif"]), str(files["huge_ids.tif"]), "-o",
         str(tmp_path / "m.pt"), "--steps", "1", "--base-channels", "4"]
    )  # fmt: skip
    assert code == OK, err
    assert load_checkpoint(tmp_path / "m.pt").metadata["steps"] == 1


# -- the API -------------------------------------------------------------------------------


def _nan_image():
    image = make_touching_nuclei((64, 64), seed=0)[0].astype(np.float32)
    image[5, 5] = np.inf
    return image


API_CASES = {
    "predict/NaN image": (
        lambda: predict(tiny_model(), _nan_image(), config=InferenceConfig(device="cpu")),
        NonFiniteImageError,
        "replace them",
    ),
    "predict/RGB without channel_axis": (
        lambda: predict(tiny_model(), np.zeros((64, 64, 3), np.float32)),
        ValueError,
        "channel_axis=-1",
    ),
    "predict/two channels without channel_axis": (
        lambda: predict(tiny_model(), np.zeros((64, 64, 2), np.float32)),
        ValueError,
        "one channel",
    ),
    "predict/a network that overflows": (
        lambda: predict(_overflowing_model(), _labels_pair()[0], config=CPU),
        ValueError,
        "output is not finite",
    ),
    "TrainConfig/steps 2.7": (lambda: TrainConfig(steps=2.7), ValueError, "whole number"),
    "TrainConfig/steps '5'": (lambda: TrainConfig(steps="5"), ValueError, "whole number"),
    "TrainConfig/minutes inf": (
        lambda: TrainConfig(steps=None, minutes=float("inf")),
        ValueError,
        "a week",
    ),
    "TrainConfig/minutes nan": (
        lambda: TrainConfig(steps=None, minutes=float("nan")),
        ValueError,
        "minutes must be",
    ),
    "TrainConfig/minutes 1e-9": (
        lambda: TrainConfig(steps=None, minutes=1e-9),
        ValueError,
        "trains nothing",
    ),
    "TrainConfig/seed 2**70": (lambda: TrainConfig(seed=2**70), ValueError, "seed must be"),
    "TrainConfig/base channels 100000": (
        lambda: TrainConfig(base_channels=100_000),
        ValueError,
        "at most 256",
    ),
    "UNetConfig/70000 classes": (lambda: UNetConfig(n_classes=70_000), ValueError, "at most"),
    "UNetConfig/too wide at the bottom": (
        lambda: UNetConfig(base_channels=256, depth=6),
        ValueError,
        "smaller depth",
    ),
    "prepare/labels are an image": (
        lambda: prepare_training_data([(_labels_pair()[1], _labels_pair()[0])]),
        ValueError,
        "image first",
    ),
    "prepare/semantic 70000 classes": (
        lambda: prepare_training_data(
            [(_labels_pair()[0], _labels_pair()[1] + 70_000)], task="semantic"
        ),
        ValueError,
        "at most 256",
    ),
}


def _overflowing_model() -> UNet:
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.fill_(3e38)  # finite weights, infinite scores
    return model


def _labels_pair():
    image, labels = make_touching_nuclei((64, 64), seed=0)
    return image, labels


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_refuses_clearly(name):
    call, error_type, advice = API_CASES[name]
    with pytest.raises(error_type, match=advice):
        call()


def test_nan_weights_fail_at_load_and_name_the_file(files):
    with pytest.raises(CheckpointError, match=r"nan_weights\.pt.*NaN"):
        load_checkpoint(files["nan_weights.pt"])


def test_huge_ids_are_renumbered_not_allocated():
    image, labels = make_touching_nuclei((64, 64), seed=0)
    data = prepare_training_data([(image, labels.astype(np.uint64) * (2**40 + 7))])
    assert len(data.object_areas) == len(np.unique(labels)) - 1


# -- the widgets ---------------------------------------------------------------------------


def _train_widget_result(qtbot, widget) -> None:
    """Start training; wait for the worker when the widget did not refuse at once."""
    if widget.start() is not None:
        qtbot.waitUntil(lambda: not widget.slot.running, timeout=60_000)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("labels that are an image", "do not look like labels"),
        ("a NaN pixel in the image", "NaN"),
        ("labels up to 70000 in semantic mode", "at most 256"),
    ],
)
def test_train_widget_refuses_clearly(make_napari_viewer, qtbot, notes, case, says):
    from _layers import assert_unchanged, layer_snapshot
    from napari_unet._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    image, labels = make_touching_nuclei((96, 96), seed=0)
    image = image.astype(np.float32)
    if case == "labels that are an image":
        labels = (image * 255).astype(np.int32)
    elif case == "a NaN pixel in the image":
        image[3, 3] = np.nan
    else:
        labels = np.where(labels > 0, labels + 70_000, 0)
    viewer.add_image(image, name="image")
    viewer.add_labels(labels, name="labels")
    before = layer_snapshot(viewer)
    widget = TrainWidget(viewer)
    if case.endswith("semantic mode"):
        widget.mode.value = "semantic"
    widget.budget_unit.value = "steps"
    widget.budget.value = 1
    _train_widget_result(qtbot, widget)
    assert widget.checkpoint is None
    assert says.lower() in notes[-1].lower()
    assert_unchanged(viewer, before)


def test_segment_widget_refuses_a_nan_image_before_adding_a_layer(make_napari_viewer, notes):
    from napari_unet._widgets._common import PLUGIN_NAME, trained_models

    viewer = make_napari_viewer()
    image = make_touching_nuclei((64, 64), seed=0)[0].astype(np.float32)
    image[0, 0] = np.nan
    viewer.add_image(image, name="nuclei")
    trained_models.add(Checkpoint.from_model(tiny_model(), mode="instances"), "tiny")
    _, gui = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Segment")
    assert gui() is None
    assert "NaN" in notes[-1] and "'nuclei'" in notes[-1]
    assert [layer.name for layer in viewer.layers] == ["nuclei"]


def test_train_widget_says_what_to_do_when_memory_runs_out():
    from napari_unet._widgets._common import Failure

    message = Failure(MemoryError()).message("Training")
    assert "ran out of memory" in message and "Crop the image" in message


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 1.2, 2.0])
def test_ctrl_c_early_is_a_clean_interruption(files, tmp_path, delay):
    """Ctrl-C while PyTorch loads or data is read: exit 130, one line, no traceback or abort."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", "train", str(files["image.tif"]),
         str(files["labels.tif"]), "-o", str(tmp_path / "m.pt"), "--steps", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == OK:  # finished before the signal: nothing to check
        return
    # 130, or ended by the SIGINT itself once the message is out (a shell reports
    # both as 130); never -6 (SIGABRT).
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, err)
    assert "Traceback" not in err
    assert "interrupted" in err or "stopped" in err


@pytest.mark.slow
def test_ctrl_c_while_the_command_starts_prints_no_traceback(files, tmp_path):
    """The installed command: Ctrl-C during its first imports just ends it."""
    import signal
    import subprocess
    import sys
    import time

    command = Path(sys.executable).parent / "napari-unet"
    if not command.exists():
        pytest.skip("the napari-unet command is not installed next to this Python")
    process = subprocess.Popen(
        [str(command), "segment", str(files["model.pt"]), str(files["image.tif"]), "-o",
         str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.3)  # inside the imports: NumPy's (ended at once) or PyTorch's (held back)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode in (0, 130, -signal.SIGINT), (process.returncode, err)
    assert "Traceback" not in err
