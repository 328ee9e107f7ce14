"""The ``napari-unet`` command line, end to end on small files.

Training runs use a tiny network (``--base-channels 4``) for a few steps, so the
models are useless but every path (reading, training, saving, tiling, writing)
runs for real.
"""

import contextlib
import io
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet import cli
from napari_unet.checkpoint import load_checkpoint
from napari_unet.registry import DEFAULT_START, default_start, load_model
from napari_unet.scaling import median_object_area
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.weights import boundary_weight_map

EXE = Path(sys.executable).with_name("napari-unet")
FAST = ["--steps", "3", "--seed", "0", "--base-channels", "4", "--tile-size", "188"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small TIFF and PNG files: two 96x96 images with labels, and a 2-plane stack."""
    folder = tmp_path_factory.mktemp("data")
    files = {}
    planes = []
    for seed in (1, 2):
        image, labels = make_touching_nuclei((96, 96), n_nuclei=6, seed=seed)
        files[f"image{seed}"] = folder / f"image{seed}.tif"
        files[f"labels{seed}"] = folder / f"labels{seed}.tif"
        tifffile.imwrite(files[f"image{seed}"], image)
        tifffile.imwrite(files[f"labels{seed}"], labels)
        planes.append((image, labels))
    files["stack"] = folder / "stack.tif"
    files["stack_labels"] = folder / "stack_labels.tif"
    tifffile.imwrite(files["stack"], np.stack([p[0] for p in planes]))
    tifffile.imwrite(files["stack_labels"], np.stack([p[1] for p in planes]))
    image, labels = planes[0]
    files["png"] = folder / "png_image.png"
    files["png_labels"] = folder / "png_labels.png"
    iio.imwrite(files["png"], (image // max(int(image.max()) // 255, 1)).astype(np.uint8))
    iio.imwrite(files["png_labels"], labels.astype(np.uint16))
    rgb = np.stack([image, image // 2, image // 3], axis=-1)
    files["rgb"] = folder / "rgb.png"
    iio.imwrite(files["rgb"], (rgb // max(int(rgb.max()) // 255, 1)).astype(np.uint8))
    files["float_labels"] = folder / "float_labels.tif"
    tifffile.imwrite(files["float_labels"], labels.astype(np.float32))
    files["small_labels"] = folder / "small_labels.tif"
    tifffile.imwrite(files["small_labels"], labels[:64, :64])
    files["corrupt"] = folder / "corrupt.pt"
    files["corrupt"].write_bytes(b"this is not a model" * 10)
    return {key: str(value) for key, value in files.items()}


def run_main(args):
    """Run ``main`` in-process; return (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli.main([str(a) for a in args])
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A model trained with the command line; (path, exit status, stdout, stderr)."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    status, out, err = run_main(
        [
            "train",
            data["image1"],
            data["labels1"],
            "-o",
            path,
            *FAST,
            "--validation",
            data["image2"],
            data["labels2"],
        ]
    )
    return path, status, out, err


def test_train_writes_a_loadable_checkpoint(trained):
    path, status, out, err = trained
    assert status == 0, err
    checkpoint = load_checkpoint(path)
    assert checkpoint.mode == "instances"
    assert checkpoint.model_config.base_channels == 4
    assert checkpoint.model_config.in_channels == 1
    assert checkpoint.metadata["steps"] == 3
    assert checkpoint.metadata["stop_reason"] == "budget"
    assert checkpoint.metadata["training_files"][0][0].endswith("image1.tif")
    # With fewer than 50 steps, validation runs at the last step.
    assert "step 3: validation AP@0.5" in out
    assert "Training ended after 3 steps" in out and "budget" in out
    assert "Traceback" not in err


def test_train_is_reproducible_with_a_seed(data, trained, tmp_path):
    path, *_ = trained
    again = tmp_path / "again.pt"
    status, _, err = run_main(
        [
            "train",
            data["image1"],
            data["labels1"],
            "-o",
            again,
            *FAST,
            "--validation",
            data["image2"],
            data["labels2"],
        ]
    )
    assert status == 0, err
    first, second = load_checkpoint(path).state_dict, load_checkpoint(again).state_dict
    assert all(np.array_equal(first[key], second[key]) for key in first)


def test_train_from_fine_tunes(data, trained, tmp_path):
    path, *_ = trained
    tuned = tmp_path / "tuned.pt"
    status, _, err = run_main(
        [
            "train",
            data["image2"],
            data["labels2"],
            "-o",
            tuned,
            "--from",
            path,
            "--steps",
            "2",
            "--base-channels",
            "8",
        ]
    )
    assert status == 0, err
    assert "--base-channels is ignored with --from" in err
    original, checkpoint = load_checkpoint(path), load_checkpoint(tuned)
    assert checkpoint.model_config == original.model_config  # architecture kept
    assert checkpoint.metadata["initial_model_file"] == str(path)
    assert original.metadata["saved_at"] in str(checkpoint.metadata["fine_tuned_from"])
    assert checkpoint.metadata["steps"] == 2
    assert not all(
        np.array_equal(original.state_dict[k], checkpoint.state_dict[k])
        for k in original.state_dict
    )


def test_train_starts_from_the_shipped_model_as_the_widget_does(data, tmp_path):
    """Without --from, instances fine-tune 'nuclei'; --new, --head and colour images do not."""
    shipped = load_model(DEFAULT_START)
    pair = [data["image1"], data["labels1"]]
    budget = ["--steps", "1", "--seed", "0"]
    status, _, err = run_main(["train", *pair, "-o", tmp_path / "a.pt", *budget])
    assert status == 0, err
    assert f"fine-tuning the shipped model {DEFAULT_START!r}" in err and "--new" in err
    tuned = load_checkpoint(tmp_path / "a.pt")
    assert tuned.metadata["initial_model_file"] == DEFAULT_START
    assert tuned.model_config == shipped.model_config
    assert tuned.object_area == shipped.object_area  # the model's object size is kept

    status, _, err = run_main(["train", *pair, "-o", tmp_path / "b.pt", *budget, "--new"])
    assert status == 0, err
    assert "fine-tuning" not in err
    assert load_checkpoint(tmp_path / "b.pt").metadata["initial_model_file"] is None
    assert default_start("instances", 3) is None and default_start("semantic") is None
    status, _, err = run_main(
        ["train", *pair, "-o", tmp_path / "c.pt", "--from", "nuclei", "--new", *budget]
    )
    assert status == 2 and "not allowed with argument" in err


def test_segment_writes_labels_and_probabilities(data, trained, tmp_path):
    path, *_ = trained
    outdir = tmp_path / "new" / "out"  # created, parents included
    status, out, err = run_main(["segment", path, data["image2"], "-o", outdir, "--probabilities"])
    assert status == 0, err
    labels = tifffile.imread(outdir / "image2.tif")
    assert labels.shape == (96, 96)
    assert labels.dtype == (np.uint16 if labels.max() <= 65535 else np.uint32)
    probabilities = tifffile.imread(outdir / "image2_prob.tif")
    # The default head: background, interior, boundary.
    assert probabilities.shape == (3, 96, 96) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert sorted(p.name for p in outdir.iterdir()) == ["image2.tif", "image2_prob.tif"]
    assert "image2.tif" in out


def test_models_by_name(data, trained, tmp_path, monkeypatch):
    """The shipped model segments before any training; a user's model is added by name."""
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path / "models"))
    status, out, err = run_main(["models"])
    assert status == 0, err
    assert "nuclei" in out and str(tmp_path / "models") in out
    status, _, err = run_main(["segment", "nuclei", data["image2"], "-o", tmp_path / "zero"])
    assert status == 0, err
    assert tifffile.imread(tmp_path / "zero" / "image2.tif").shape == (96, 96)
    model, *_ = trained
    status, out, err = run_main(["models", "add", model, "--name", "mine"])
    assert status == 0, err
    assert (tmp_path / "models" / "mine.pt").is_file() and "sha256" in out
    status, _, err = run_main(["segment", "mine", data["image2"], "-o", tmp_path / "mine"])
    assert status == 0, err
    status, _, err = run_main(["models", "add", model, "--name", "mine"])
    assert status == 1 and "already in" in err


def test_segment_stack_keeps_the_planes(data, trained, tmp_path):
    path, *_ = trained
    status, _, err = run_main(["segment", path, data["stack"], "-o", tmp_path, "--probabilities"])
    assert status == 0, err
    assert tifffile.imread(tmp_path / "stack.tif").shape == (2, 96, 96)
    assert tifffile.imread(tmp_path / "stack_prob.tif").shape == (2, 3, 96, 96)


def test_train_with_the_paper_head_and_segment_with_labelling_options(data, tmp_path):
    model = tmp_path / "paper.pt"
    command = ["train", data["image1"], data["labels1"], "-o", model, "--head", "paper"]
    status, _, err = run_main([*command, "--tessellate", *FAST])
    assert status == 0, err
    checkpoint = load_checkpoint(model)
    assert checkpoint.head == "paper" and checkpoint.model_config.n_classes == 2
    assert "training plane" in checkpoint.metadata["calibration"]["on"]  # 6 nuclei: none held out
    assert checkpoint.postprocess.tessellate  # and calibrated on the Rand error:
    assert checkpoint.metadata["calibration"]["metric"] == "1 - Rand error"
    options = ["--threshold", "0.4", "--seed-threshold", "0.6", "--min-size", "5"]
    status, _, err = run_main(
        ["segment", model, data["image2"], "-o", tmp_path, *options, "--no-tessellate"]
    )
    assert status == 0, err
    assert (tifffile.imread(tmp_path / "image2.tif") == 0).any()
    status, _, err = run_main(["segment", model, data["image2"], "-o", tmp_path / "tiled", "--tta"])
    assert status == 0, err
    assert (tifffile.imread(tmp_path / "tiled" / "image2.tif") > 0).all()  # the model's choice
    assert checkpoint.object_area == pytest.approx(
        median_object_area(tifffile.imread(data["labels1"]))
    )
    # The model's object size, given: the image is resampled, its labels keep its shape.
    status, _, err = run_main(
        ["segment", model, data["image2"], "-o", tmp_path / "sized", "--object-diameter", "8"]
    )
    assert status == 0, err
    sized = tifffile.imread(tmp_path / "sized" / "image2.tif")
    assert sized.shape == tifffile.imread(data["image2"]).shape and sized.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threshold", "1.5"], "probability"),
        (["--min-size", "-3"], "integer >= 0"),
    ],
)
def test_bad_labelling_options_are_usage_errors(data, trained, tmp_path, options, message):
    path, *_ = trained
    status, _, err = run_main(["segment", path, data["image2"], "-o", tmp_path, *options])
    assert status == 2 and message in err


def test_head_and_semantic_mode_do_not_mix(data, tmp_path):
    status, _, err = run_main(
        ["train", data["image1"], data["labels1"], "-o", tmp_path / "m.pt", "--mode",
         "semantic", "--head", "paper", *FAST]
    )  # fmt: skip
    assert status == 2 and "semantic" in err


def test_train_on_a_stack(data, tmp_path):
    model = tmp_path / "stack.pt"
    status, _, err = run_main(
        ["train", data["stack"], data["stack_labels"], "-o", model, *FAST, "--steps", "2"]
    )
    assert status == 0, err
    assert load_checkpoint(model).metadata["data_shapes"] == [[1, 96, 96], [1, 96, 96]]


def test_validation_stack_and_binary_mask_warning(data, tmp_path):
    labels = tifffile.imread(data["stack_labels"])
    empty_first = tmp_path / "validation_labels.tif"
    tifffile.imwrite(empty_first, np.stack([np.zeros_like(labels[0]), labels[1]]))
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, (tifffile.imread(data["labels1"]) > 0).astype(np.uint8) * 255)
    status, out, err = run_main(
        [
            "train",
            data["image1"],
            mask,
            "-o",
            tmp_path / "m.pt",
            *FAST,
            "--steps",
            "1",
            "--validation",
            data["stack"],
            empty_first,
        ]
    )
    assert status == 0, err
    assert "validating on plane 1" in err
    assert "gives the same id (255)" in err
    assert "step 1: validation AP@0.5" in out


def test_weightmap_equals_the_engine(data, tmp_path):
    target = tmp_path / "weights.tif"
    status, out, err = run_main(
        ["weightmap", data["labels1"], "-o", target, "--w0", "8", "--sigma", "4"]
    )
    assert status == 0, err
    assert "weights.tif" in out
    written = tifffile.imread(target)
    expected = boundary_weight_map(tifffile.imread(data["labels1"]), w0=8.0, sigma=4.0)
    assert written.dtype == np.float32
    np.testing.assert_array_equal(written, expected)


def test_png_input(data, trained, tmp_path):
    model = tmp_path / "png.pt"
    status, _, err = run_main(
        ["train", data["png"], data["png_labels"], "-o", model, *FAST, "--steps", "2"]
    )
    assert status == 0, err
    status, _, err = run_main(["segment", model, data["png"], "-o", tmp_path])
    assert status == 0, err
    assert tifffile.imread(tmp_path / "png_image.tif").shape == (96, 96)
    status, _, err = run_main(["weightmap", data["png_labels"], "-o", tmp_path / "w.tif"])
    assert status == 0, err


def test_rgb_images_train_a_three_channel_model(data, trained, tmp_path):
    model = tmp_path / "rgb.pt"
    status, _, err = run_main(
        ["train", data["rgb"], data["png_labels"], "-o", model, *FAST, "--steps", "2"]
    )
    assert status == 0, err
    assert load_checkpoint(model).model_config.in_channels == 3
    status, _, err = run_main(["segment", model, data["rgb"], "-o", tmp_path])
    assert status == 0, err
    assert tifffile.imread(tmp_path / "rgb.tif").shape == (96, 96)
    # A grey model refuses an RGB image with a clear message.
    grey_model, *_ = trained
    status, _, err = run_main(["segment", grey_model, data["rgb"], "-o", tmp_path / "grey"])
    assert status == 1
    assert "RGB" in err and "single-channel" in err


def test_semantic_mode(data, tmp_path):
    labels = tifffile.imread(data["labels1"])
    classes = tmp_path / "classes.tif"
    tifffile.imwrite(classes, np.where(labels > 0, 2, 1).astype(np.uint8))
    model = tmp_path / "semantic.pt"
    status, _, err = run_main(
        ["train", data["image1"], classes, "-o", model, "--mode", "semantic", *FAST, "--steps", "2"]
    )
    assert status == 0, err
    assert load_checkpoint(model).mode == "semantic"
    status, _, err = run_main(["segment", model, data["image1"], "-o", tmp_path / "out"])
    assert status == 0, err
    result = tifffile.imread(tmp_path / "out" / "image1.tif")
    assert result.dtype == np.uint16 and set(np.unique(result)) <= {1, 2}


def test_ctrl_c_stops_training_and_saves(data, tmp_path, monkeypatch, request):
    import napari_unet.training as training

    # As in a terminal, whatever pytest inherited (a background job ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    real = training.train_generator

    def interrupted(*args, **kwargs):
        events = real(*args, **kwargs)
        first = next(events)
        signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C now
        yield first
        return (yield from events)

    monkeypatch.setattr(training, "train_generator", interrupted)
    model = tmp_path / "stopped.pt"
    status, out, err = run_main(
        ["train", data["image1"], data["labels1"], "-o", model, *FAST, "--steps", "1000"]
    )
    assert status == 130
    assert "stopping after this step" in err and "stopped with Ctrl-C" in out
    checkpoint = load_checkpoint(model)
    assert checkpoint.metadata["stop_reason"] == "stopped"
    assert 1 <= checkpoint.metadata["steps"] < 1000
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_help_and_no_command(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "advanced options" in text and "--base-channels" in text and "--from" in text
    assert cli.main([]) == 0
    assert "segment" in capsys.readouterr().out


def one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("napari-unet: error: ")


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("odd number of files", 2, "odd number"),
        ("missing file", 1, "No such file"),
        ("labels shape mismatch", 1, "has shape (64, 64)"),
        ("float labels", 1, "integer image"),
        ("minutes and steps", 2, "not allowed with argument"),
        ("corrupt model", 1, "not a readable model file"),
        ("output is a folder", 2, "is a folder"),
        ("weight map output is a folder", 2, "is a folder"),
        ("mode differs from the model", 1, "'instances' mode"),
        ("invalid tile size", 2, "--tile-size 100 is not valid"),
        ("missing -o folder", 2, "does not exist"),
        ("segment over its input", 2, "would replace the input"),
        ("negative sigma", 2, "argument --sigma"),
    ],
)
def test_errors_are_one_line(case, status, expected, data, trained, tmp_path):
    model, *_ = trained
    out = tmp_path / "model.pt"
    image, labels = data["image1"], data["labels1"]
    args = {
        "odd number of files": ["train", image, labels, image, "-o", out],
        "missing file": ["train", image, tmp_path / "nope.tif", "-o", out, *FAST],
        "labels shape mismatch": ["train", image, data["small_labels"], "-o", out, *FAST],
        "float labels": ["train", image, data["float_labels"], "-o", out, *FAST],
        "minutes and steps": ["train", image, labels, "-o", out, "--minutes", "1", "--steps", "3"],
        "corrupt model": ["segment", data["corrupt"], image, "-o", tmp_path],
        "output is a folder": ["train", image, labels, "-o", tmp_path, *FAST],
        "weight map output is a folder": ["weightmap", labels, "-o", tmp_path / "x.tif"],
        "mode differs from the model": [
            "train",
            image,
            labels,
            "-o",
            out,
            "--from",
            model,
            "--mode",
            "semantic",
            "--steps",
            "1",
        ],
        "invalid tile size": ["train", image, labels, "-o", out, "--tile-size", "100"],
        "missing -o folder": ["train", image, labels, "-o", tmp_path / "a" / "m.pt"],
        "segment over its input": ["segment", model, image, "-o", Path(image).parent],
        "negative sigma": ["weightmap", labels, "-o", tmp_path / "w.tif", "--sigma", "-1"],
    }[case]
    if case == "weight map output is a folder":
        (tmp_path / "x.tif").mkdir()
    code, _, err = run_main(args)
    assert code == status, err
    assert one_line_error(err), err
    assert expected in err
    assert "Traceback" not in err
    assert not out.exists()


def test_installed_command(data, tmp_path):
    target = tmp_path / "weights.tif"
    result = subprocess.run(
        [str(EXE), "weightmap", data["labels2"], "-o", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = boundary_weight_map(tifffile.imread(data["labels2"]))
    np.testing.assert_array_equal(tifffile.imread(target), expected)

    result = subprocess.run(
        [str(EXE), "segment", data["corrupt"], data["image1"], "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert one_line_error(result.stderr) and "Traceback" not in result.stderr
