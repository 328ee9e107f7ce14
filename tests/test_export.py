"""Model exchange: bioimage.io packages and ONNX, and reading packages as untrusted input.

A tiny network (depth 2, 4 base channels: valid sizes 44 + 4n, border 20) is
exported once per module through the command line; the tests then check the
files against PyTorch, against this package's own inference, and against the
bioimage.io validator (offline), and feed crafted zips to the reader.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import socket
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_unet import cli
from napari_unet.bioimageio import PackageError, build_unet, load_package
from napari_unet.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model_file,
    save_checkpoint,
)
from napari_unet.export import (
    OptionalDependencyError,
    PackageInfo,
    export_bioimageio,
    export_onnx,
    onnx_metadata,
)
from napari_unet.inference import InferenceConfig, predict
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.synthetic import make_touching_nuclei
from napari_unet.tasks import Postprocess

BORDER = 20  # depth 2, valid padding
DOI = "10.1007/978-3-319-24574-4_28"
EXTRA_HINT = 'pip install "napari-unet-segmentation[export]"'


def run_main(args):
    """Run ``main`` in-process; return (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli.main([str(a) for a in args])
    return status, stdout.getvalue(), stderr.getvalue()


def tiny_checkpoint(seed=0, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = UNet(UNetConfig(depth=2, base_channels=4, dropout=0.0)).eval()
    return Checkpoint.from_model(model, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def model_pt(folder):
    """A saved checkpoint whose metadata hold a local path, a nan and a validation score."""
    checkpoint = tiny_checkpoint(
        mode="instances",
        postprocess=Postprocess(threshold=0.4, seed_threshold=0.7, min_seed_size=9, min_size=4),
        normalization=Normalization(2.0, 98.0),
        metadata={
            "steps": 3,
            "validation": [{"step": 3, "loss": 0.5, "AP@0.5": 0.25}],
            "training_files": [["/home/someone/private/image.tif", "labels.tif"]],
            "final_losses": [0.7, float("nan")],
        },
    )
    path = folder / "model.pt"
    save_checkpoint(path, checkpoint)
    return path


@pytest.fixture(scope="module")
def image_tif(folder):
    """A 100x100 synthetic image: smaller than the 168x168 test input, so it is mirrored."""
    image, _ = make_touching_nuclei((100, 100), n_nuclei=8, seed=3)
    path = folder / "image.tif"
    tifffile.imwrite(path, image)
    return path


@pytest.fixture(scope="module")
def package(folder, model_pt, image_tif):
    """``napari-unet export --format bioimageio``: (path, exit status, stdout, stderr)."""
    path = folder / "model.zip"
    status, out, err = run_main(
        [
            "export",
            model_pt,
            "--format",
            "bioimageio",
            "-o",
            path,
            "--author",
            "Ada Lovelace",
            "--author",
            "Alan Turing",
            "--name",
            "Tiny nuclei U-Net",
            "--test-image",
            image_tif,
        ]
    )
    return path, status, out, err


@pytest.fixture(scope="module")
def onnx_file(folder, model_pt):
    """``napari-unet export --format onnx``: (path, exit status, stdout, stderr)."""
    path = folder / "model.onnx"
    status, out, err = run_main(["export", model_pt, "--format", "onnx", "-o", path])
    return path, status, out, err


def read_rdf(path):
    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def read_npy(path, name):
    with zipfile.ZipFile(path) as archive:
        return np.load(io.BytesIO(archive.read(name)), allow_pickle=False)


def no_network(monkeypatch):
    """Make every attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---------------------------------------------------------------------------
# bioimage.io package
# ---------------------------------------------------------------------------


def test_cli_writes_the_package(package):
    path, status, out, err = package
    assert status == 0, err
    assert f"-> {path} (bioimage.io package, validated)" in out
    assert "Traceback" not in err
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_package_validates_offline(package, monkeypatch):
    """The bioimage.io validator accepts the package, with its file checks on, offline.

    ``perform_io_checks=True`` hashes the package's files and loads the test
    tensors against the axes; the description holds no URL and no GitHub user
    name, the only things the validator would fetch, so no network is used
    (``no_network`` would fail the test otherwise).
    """
    from bioimageio.spec import ModelDescr, load_description

    path, status, _, err = package
    assert status == 0, err
    no_network(monkeypatch)
    descr = load_description(path, perform_io_checks=True)
    summary = descr.validation_summary
    assert isinstance(descr, ModelDescr), summary.format()
    assert summary.status != "failed", summary.format()
    assert summary.errors == []
    assert descr.format_version.startswith("0.5.")
    assert [author.name for author in descr.authors] == ["Ada Lovelace", "Alan Turing"]


def test_package_describes_the_network(package):
    path, *_ = package
    rdf = read_rdf(path)
    assert rdf["name"] == "Tiny nuclei U-Net"
    assert rdf["cite"][0]["doi"] == DOI
    assert "Ronneberger" in rdf["cite"][0]["text"]
    assert rdf["license"] == "CC-BY-4.0"

    (inp,) = rdf["inputs"]
    assert [axis["type"] for axis in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [axis.get("id") for axis in inp["axes"][2:]] == ["y", "x"]
    for axis in inp["axes"][2:]:
        assert axis["size"] == {"min": 44, "step": 4}
    (pre,) = inp["preprocessing"]
    assert pre == {
        "id": "scale_range",
        "kwargs": {"axes": ["y", "x"], "min_percentile": 2.0, "max_percentile": 98.0},
    }

    (out,) = rdf["outputs"]
    assert out["axes"][1]["channel_names"] == ["background", "object"]
    for axis, name in zip(out["axes"][2:], ("y", "x"), strict=True):
        assert axis["size"] == {"tensor_id": inp["id"], "axis_id": name, "offset": -2 * BORDER}
    assert out["postprocessing"] == [{"id": "softmax", "kwargs": {"axis": "channel"}}]

    weights = rdf["weights"]
    assert set(weights) == {"pytorch_state_dict", "torchscript"}
    architecture = weights["pytorch_state_dict"]["architecture"]
    assert architecture["import_from"] == "napari_unet.bioimageio"
    assert architecture["callable"] == "build_unet"
    assert weights["torchscript"]["parent"] == "pytorch_state_dict"

    ours = rdf["config"]["napari-unet"]
    assert ours["model_config"]["depth"] == 2
    assert ours["mode"] == "instances"
    assert ours["class_names"] == ["background", "object"]
    assert ours["normalization"]["low_percentile"] == 2.0
    assert ours["state_dict"] == weights["pytorch_state_dict"]["source"]
    # Local paths stay private; a nan becomes null (YAML without nan).
    assert "training_files" not in ours["metadata"]
    assert "/home/someone" not in json.dumps(rdf)
    assert ours["metadata"]["final_losses"] == [0.7, None]


def test_package_files_match_their_checksums_and_hold_no_code(package):
    import hashlib

    path, *_ = package
    rdf = read_rdf(path)
    declared = {
        rdf["documentation"]["source"]: rdf["documentation"]["sha256"],
        rdf["covers"][0]["source"]: rdf["covers"][0]["sha256"],
        rdf["inputs"][0]["test_tensor"]["source"]: rdf["inputs"][0]["test_tensor"]["sha256"],
        rdf["outputs"][0]["test_tensor"]["source"]: rdf["outputs"][0]["test_tensor"]["sha256"],
        **{entry["source"]: entry["sha256"] for entry in rdf["weights"].values()},
    }
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name, sha256 in declared.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == sha256, name
        cover = archive.read(rdf["covers"][0]["source"])
        readme = archive.read("README.md").decode()
    assert not [name for name in names if name.endswith(".py")]
    assert cover.startswith(b"\x89PNG")
    assert "## Validation" in readme and DOI in readme and "44 + n*4" in readme


def test_test_tensors_come_from_our_inference(package, image_tif, model_pt):
    """The test output is what ``predict`` (mirrored overlap-tile) gives for the same pixels."""
    path, *_ = package
    test_input = read_npy(path, "test_input.npy")
    test_output = read_npy(path, "test_output.npy")
    assert test_input.shape == (1, 1, 168, 168) and test_input.dtype == np.float32
    assert test_output.shape == (1, 2, 168 - 2 * BORDER, 168 - 2 * BORDER)
    np.testing.assert_allclose(test_output.sum(axis=1), 1.0, atol=1e-5)
    # The test input is the --test-image, mirrored at its edges to the input size.
    image = tifffile.imread(image_tif).astype(np.float32)
    np.testing.assert_array_equal(test_input[0, 0], np.pad(image, 34, mode="reflect"))
    # With depth 2 the border (20) is a multiple of 2**depth, so the valid output
    # equals the centre of the whole-image prediction.
    checkpoint = load_checkpoint(model_pt)
    prediction = predict(
        checkpoint.build_model(),
        test_input[0, 0],
        normalization=checkpoint.normalization,
        config=InferenceConfig(device="cpu", precision="fp32"),
        return_probabilities=True,
    )
    centre = prediction.probabilities[:, BORDER:-BORDER, BORDER:-BORDER]
    np.testing.assert_allclose(test_output[0], centre, atol=1e-5)


def scale_range(raw, low, high, eps=1e-6):
    """bioimage.io ``scale_range`` per sample and channel, written from the spec."""
    lo = np.percentile(raw, low, axis=(2, 3), keepdims=True)
    hi = np.percentile(raw, high, axis=(2, 3), keepdims=True)
    return ((raw - lo) / (hi - lo + eps)).astype(np.float32)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated")
def test_every_weight_format_reproduces_the_test_output(package, tmp_path):
    """The rdf's own pipeline (scale_range, weights, softmax) gives the test output."""
    path, *_ = package
    rdf = read_rdf(path)
    test_input = read_npy(path, "test_input.npy")
    test_output = read_npy(path, "test_output.npy")
    kwargs = rdf["inputs"][0]["preprocessing"][0]["kwargs"]
    x = torch.from_numpy(
        scale_range(test_input, kwargs["min_percentile"], kwargs["max_percentile"])
    )

    entry = rdf["weights"]["pytorch_state_dict"]
    architecture = entry["architecture"]
    factory = getattr(
        importlib.import_module(architecture["import_from"]), architecture["callable"]
    )
    network = factory(**architecture["kwargs"])
    with zipfile.ZipFile(path) as archive:
        state = torch.load(
            io.BytesIO(archive.read(entry["source"])), map_location="cpu", weights_only=True
        )
        archive.extract(rdf["weights"]["torchscript"]["source"], tmp_path)
    network.load_state_dict(state, strict=True)
    # Our own file: loading TorchScript (a program) is fine here, never in the reader.
    scripted = torch.jit.load(tmp_path / rdf["weights"]["torchscript"]["source"])
    with torch.no_grad():
        for model in (network, scripted):
            probabilities = torch.softmax(model(x), dim=1).numpy()
            np.testing.assert_allclose(probabilities, test_output, atol=1e-4)
        # TorchScript keeps the spatial size dynamic: another valid size, batch of 2.
        other = torch.rand(2, 1, 44 + 4 * 3, 44 + 4 * 7, generator=torch.Generator().manual_seed(1))
        np.testing.assert_allclose(scripted(other).numpy(), network(other).numpy(), atol=1e-5)


def test_package_reads_back_as_the_checkpoint(package, model_pt):
    path, *_ = package
    original = load_checkpoint(model_pt)
    for loaded in (load_package(path), load_model_file(path)):
        assert loaded.model_config == original.model_config
        assert loaded.mode == original.mode
        assert loaded.head == original.head == "paper"
        assert loaded.postprocess == original.postprocess
        assert loaded.class_names == original.class_names
        assert loaded.normalization == original.normalization
        assert loaded.state_dict.keys() == original.state_dict.keys()
        for key, value in original.state_dict.items():
            assert torch.equal(loaded.state_dict[key], value), key
        assert loaded.metadata["steps"] == 3
        assert loaded.metadata["loaded_from"] == "bioimageio"
        assert "training_files" not in loaded.metadata
    assert load_model_file(model_pt).metadata["steps"] == 3  # a .pt still loads as before


def test_reading_a_package_runs_no_code(package, monkeypatch):
    path, *_ = package
    calls = []
    original = torch.load

    def spying_load(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    def no_torchscript(*args, **kwargs):
        raise AssertionError("the reader loaded TorchScript")

    def no_pickle(*args, **kwargs):
        raise AssertionError("the reader unpickled something")

    monkeypatch.setattr(torch, "load", spying_load)
    monkeypatch.setattr(torch.jit, "load", no_torchscript)
    monkeypatch.setattr("pickle.load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    load_package(path)
    assert calls and all(call.get("weights_only") is True for call in calls)


def test_segment_accepts_the_package(package, model_pt, image_tif, folder):
    path, *_ = package
    results = {}
    for model in (model_pt, path):
        outdir = folder / f"segment_{model.suffix[1:]}"
        status, _, err = run_main(
            ["segment", model, image_tif, "-o", outdir, "--device", "cpu", "--probabilities"]
        )
        assert status == 0, err
        results[model.suffix] = tifffile.imread(outdir / "image_prob.tif")
    np.testing.assert_array_equal(results[".pt"], results[".zip"])


def test_segment_help_names_every_kind_of_model():
    status, out, _ = run_main(["segment", "--help"])
    assert status == 0
    text = " ".join(out.split())  # argparse wraps lines
    assert "a model name (see 'models')" in text
    assert "(MODEL.pt)" in text and "(MODEL.zip)" in text


# ---------------------------------------------------------------------------
# Untrusted packages
# ---------------------------------------------------------------------------


def rebuild(source, target, *, replace=None, drop=(), extra=()):
    """Copy the package ``source`` to ``target`` with members replaced, dropped or added."""
    replace = replace or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, old.read(info))
            new.writestr(info.filename, data)
        for entry, data in extra:
            new.writestr(entry, data)
    return target


def change_rdf(source, target, change):
    rdf = read_rdf(source)
    change(rdf)
    return rebuild(source, target, replace={"rdf.yaml": yaml.safe_dump(rdf)})


def symlink(name, destination):
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so external_attr holds the file mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, destination


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.txt", "'..' component"),
        ("weights/../../evil.txt", "'..' component"),
        ("..\\evil.txt", "'..' component"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("\\\\server\\share\\evil.txt", "absolute path"),
    ],
)
def test_unsafe_member_names_are_refused(package, tmp_path, entry, reason):
    path, *_ = package
    evil = rebuild(path, tmp_path / "evil.zip", extra=[(entry, b"pwned")])
    with pytest.raises(PackageError, match=reason) as error:
        load_model_file(evil)
    assert repr(entry) in str(error.value)
    assert "refusing" in str(error.value)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_symlink_member_is_refused(package, tmp_path):
    path, *_ = package
    # A link named like the weights would make an extracting reader read /etc/passwd.
    evil = rebuild(
        path,
        tmp_path / "link.zip",
        drop=("README.md",),
        extra=[symlink("README.md", "/etc/passwd")],
    )
    with pytest.raises(PackageError, match=r"'README\.md' is a symbolic link"):
        load_package(evil)


def test_duplicate_member_is_refused(package, tmp_path):
    path, *_ = package
    with pytest.warns(UserWarning, match="Duplicate name"):
        evil = rebuild(path, tmp_path / "twice.zip", extra=[("weights.pt", b"other")])
    with pytest.raises(PackageError, match=r"'weights\.pt' appears twice"):
        load_package(evil)


def test_tampered_weights_fail_the_checksum(package, tmp_path):
    """Valid weights of another model are refused: the rdf's sha256 does not match."""
    path, *_ = package
    other = io.BytesIO()
    torch.save(tiny_checkpoint(seed=7).state_dict, other)
    tampered = rebuild(path, tmp_path / "tampered.zip", replace={"weights.pt": other.getvalue()})
    with pytest.raises(PackageError, match=r"checksum of 'weights\.pt' does not match"):
        load_package(tampered)


def test_weights_without_a_checksum_are_refused(package, tmp_path):
    path, *_ = package

    def drop_sha(rdf):
        del rdf["weights"]["pytorch_state_dict"]["sha256"]

    with pytest.raises(PackageError, match="declares no SHA-256 checksum for the weights"):
        load_package(change_rdf(path, tmp_path / "nosha.zip", drop_sha))


def test_zip_bomb_is_refused(package, tmp_path, monkeypatch):
    import napari_unet.bioimageio as bioimageio

    path, *_ = package
    bomb = tmp_path / "bomb.zip"
    rebuild(path, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(8 << 20))  # 8 MiB of zeros, a few KB packed
    assert bomb.stat().st_size < path.stat().st_size + (1 << 20)
    monkeypatch.setattr(bioimageio, "MAX_PACKAGE_BYTES", 4 << 20)
    # Refused for unpacking a thousandfold, before its size is even added up.
    with pytest.raises(PackageError, match=r"'zeros\.bin' would unpack 10\d\d times larger"):
        load_package(bomb)
    monkeypatch.setattr(bioimageio, "MAX_COMPRESSION_RATIO", 10_000)
    with pytest.raises(PackageError, match=r"more than 4194304 bytes \(at entry 'zeros\.bin'\)"):
        load_package(bomb)


def test_weights_larger_than_their_network_are_refused_before_unpacking(package, tmp_path):
    """Random bytes (no compression ratio to catch) that the described network cannot hold."""
    path, *_ = package
    huge = np.random.default_rng(0).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    bigger = rebuild(path, tmp_path / "bigger.zip", replace={"weights.pt": huge})
    # The checksum would fail too, but only after unpacking; the size fails first.
    with pytest.raises(PackageError, match="more than the network it describes can have"):
        load_package(bigger)


def test_too_many_members_are_refused(package, tmp_path, monkeypatch):
    import napari_unet.bioimageio as bioimageio

    path, *_ = package
    monkeypatch.setattr(bioimageio, "MAX_MEMBERS", 5)
    with pytest.raises(PackageError, match="entries, more than a model package has"):
        load_package(path)


def test_zip_that_is_not_a_package(tmp_path):
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(PackageError, match=r"not a bioimage\.io package: it has no rdf\.yaml"):
        load_model_file(path)


def test_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(PackageError, match="is not a zip file"):
        load_model_file(path)


def test_package_from_another_tool(package, tmp_path):
    path, *_ = package

    def foreign(rdf):
        del rdf["config"]["napari-unet"]

    with pytest.raises(PackageError, match="not one exported by napari-unet-segmentation"):
        load_model_file(change_rdf(path, tmp_path / "foreign.zip", foreign))


def test_description_that_is_not_a_model(package, tmp_path):
    path, *_ = package
    with pytest.raises(PackageError, match="'dataset' description, not a model"):
        load_package(
            change_rdf(path, tmp_path / "data.zip", lambda rdf: rdf.update(type="dataset"))
        )


def test_newer_package_format(package, tmp_path):
    path, *_ = package

    def newer(rdf):
        rdf["config"]["napari-unet"]["format_version"] = 99

    with pytest.raises(PackageError, match="upgrade the package"):
        load_package(change_rdf(path, tmp_path / "newer.zip", newer))


def test_damaged_model_description(package, tmp_path):
    path, *_ = package

    def damage(rdf):
        rdf["config"]["napari-unet"]["model_config"]["depth"] = 3  # weights are depth 2

    with pytest.raises(PackageError, match="do not match"):
        load_package(change_rdf(path, tmp_path / "damaged.zip", damage))


def test_yaml_tags_are_not_executed(package, tmp_path):
    path, *_ = package
    evil = b"!!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(PackageError, match="not readable YAML"):
        load_package(rebuild(path, tmp_path / "yaml.zip", replace={"rdf.yaml": evil}))


def test_package_error_is_a_checkpoint_error():
    assert issubclass(PackageError, CheckpointError)
    assert issubclass(PackageError, ValueError)


def test_cli_reports_a_refused_package_in_one_line(package, tmp_path, image_tif):
    path, *_ = package
    evil = rebuild(path, tmp_path / "evil.zip", extra=[("../evil.txt", b"x")])
    status, _, err = run_main(["segment", evil, image_tif, "-o", tmp_path / "out"])
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("napari-unet: error: ")
    assert "'../evil.txt'" in err


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


def test_cli_writes_the_onnx_model(onnx_file):
    path, status, out, err = onnx_file
    assert status == 0, err
    assert f"-> {path} (ONNX model" in out
    assert "Traceback" not in err


def test_onnx_matches_pytorch_for_several_sizes(onnx_file, model_pt):
    import onnxruntime

    path, status, _, err = onnx_file
    assert status == 0, err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = load_checkpoint(model_pt).build_model()
    generator = torch.Generator().manual_seed(2)
    for batch, height, width in ((1, 44, 44), (2, 60, 76), (1, 108, 52)):
        x = torch.rand(batch, 1, height, width, generator=generator)
        (actual,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = torch.softmax(network(x), dim=1).numpy()
        assert actual.shape == (batch, 2, height - 2 * BORDER, width - 2 * BORDER)
        np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_onnx_metadata_say_how_to_use_it(onnx_file, model_pt):
    import onnx

    path, *_ = onnx_file
    model = onnx.load(str(path))
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert props == onnx_metadata(load_checkpoint(model_pt))
    assert props["input_size_min"] == "44" and props["input_size_step"] == "4"
    assert props["output_border"] == "20"
    assert props["output_shape"] == "(batch, 2, height - 40, width - 40)"
    assert json.loads(props["normalization"])["low_percentile"] == 2.0
    assert props["mode"] == "instances"
    assert json.loads(props["class_names"]) == ["background", "object"]
    dims = [
        [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in (model.graph.input[0], model.graph.output[0])
    ]
    assert dims == [
        ["batch", 1, "height", "width"],
        ["batch", 2, "height_minus_40", "width_minus_40"],
    ]


def test_distance_head_exports_its_activation_to_onnx_and_not_to_bioimageio(tmp_path):
    """ONNX users get two probabilities and a sigmoid distance; bioimage.io says no clearly."""
    import onnxruntime

    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = UNet(UNetConfig(depth=2, base_channels=4, n_classes=3, dropout=0.0)).eval()
    checkpoint = Checkpoint.from_model(model, mode="instances", head="distance")
    path = export_onnx(checkpoint, tmp_path / "distance.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 1, 60, 64, generator=torch.Generator().manual_seed(0))
    (actual,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(actual[:, :2], torch.softmax(logits[:, :2], 1), atol=1e-5)
    np.testing.assert_allclose(actual[:, 2], torch.sigmoid(logits[:, 2]), atol=1e-5)
    assert "distance" in onnx_metadata(checkpoint)["output"]
    with pytest.raises(ValueError, match="export it as ONNX"):
        export_bioimageio(checkpoint, tmp_path / "distance.zip")
    assert not (tmp_path / "distance.zip").exists()


# ---------------------------------------------------------------------------
# Command line and optional dependencies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "bioimageio", "-o", "{dir}/model.onnx"], "name it *.zip"),
        (["--format", "onnx", "-o", "{dir}/model.zip"], "name it *.onnx"),
        (["--format", "onnx", "-o", "{dir}/m.onnx", "--author", "A"], "--author: only for"),
        (["--format", "bioimageio", "-o", "{dir}/m.zip", "--name", "a/b"], "name must be"),
        (["--format", "bioimageio", "-o", "{dir}/missing/m.zip"], "does not exist"),
        (["--format", "tflite", "-o", "{dir}/m.zip"], "invalid choice"),
    ],
)
def test_cli_usage_errors(model_pt, tmp_path, args, message):
    args = [arg.replace("{dir}", str(tmp_path)) for arg in args]
    status, _, err = run_main(["export", model_pt, *args])
    assert status == 2
    assert message in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite_its_input(package):
    path, *_ = package
    before = path.read_bytes()
    status, _, err = run_main(["export", path, "--format", "bioimageio", "-o", path])
    assert status == 2
    assert "is one of the input files" in err
    assert path.read_bytes() == before


def test_cli_missing_or_corrupt_model(tmp_path):
    status, _, err = run_main(
        ["export", tmp_path / "none.pt", "--format", "onnx", "-o", tmp_path / "m.onnx"]
    )
    assert status == 1 and "No model file" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model" * 10)
    status, _, err = run_main(["export", corrupt, "--format", "onnx", "-o", tmp_path / "m.onnx"])
    assert status == 1 and "not a readable model file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]


def test_rejected_package_keeps_the_previous_file(model_pt, tmp_path):
    """The bioimage.io validator rejects an unknown license; nothing is replaced."""
    target = tmp_path / "model.zip"
    target.write_bytes(b"previous")
    status, _, err = run_main(
        ["export", model_pt, "--format", "bioimageio", "-o", target, "--license", "Not-A-License"]
    )
    assert status == 1
    assert "bioimage.io validator rejects the package" in err and "license" in err
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


@pytest.mark.parametrize(
    ("fmt", "module", "blocked"),
    [("onnx", "onnx", ["onnx"]), ("bioimageio", "bioimageio", ["bioimageio", "bioimageio.spec"])],
)
def test_missing_optional_package(model_pt, tmp_path, monkeypatch, fmt, module, blocked):
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    suffix = ".onnx" if fmt == "onnx" else ".zip"
    status, _, err = run_main(["export", model_pt, "--format", fmt, "-o", tmp_path / f"m{suffix}"])
    assert status == 1
    assert EXTRA_HINT in err and repr(module) in err
    assert list(tmp_path.iterdir()) == []


def test_missing_optional_package_in_the_api(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(OptionalDependencyError, match=r"napari-unet-segmentation\[export\]"):
        export_onnx(tiny_checkpoint(), tmp_path / "m.onnx")


def test_core_imports_without_the_export_packages():
    code = (
        "import sys\n"
        "for name in ('onnx', 'onnxruntime', 'onnxscript', 'bioimageio'):\n"
        "    sys.modules[name] = None\n"
        "import napari_unet.export, napari_unet.bioimageio, napari_unet.cli\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "abc"}, ValueError, "name must be 5 to 128"),
        ({"name": "model/v2"}, ValueError, "name must be 5 to 128"),
        ({"authors": "Ada Lovelace"}, TypeError, "not one string"),
        ({"authors": ["Ada", " "]}, ValueError, "authors must be non-empty"),
        ({"license": "CC BY 4.0"}, ValueError, "SPDX identifier"),
        ({"description": "  "}, ValueError, "description must not be empty"),
    ],
)
def test_package_info_checks_its_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        PackageInfo(**kwargs)


def test_build_unet_is_the_papers_network():
    net = build_unet(depth=2, base_channels=4)
    assert isinstance(net, UNet) and not net.training
    assert net.config == UNetConfig(depth=2, base_channels=4)
