"""Models by name: the shipped model, the user's folder, paths, and hash checks."""

import json
import re

import pytest

from napari_unet import registry
from napari_unet.checkpoint import Checkpoint, save_checkpoint
from napari_unet.model import UNet, UNetConfig
from napari_unet.registry import (
    MODELS_ENV,
    ModelHashError,
    add_model,
    available_models,
    load_model,
    models_folder,
    resolve,
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty models folder of the user's, through the environment variable."""
    path = tmp_path / "models"
    monkeypatch.setenv(MODELS_ENV, str(path))
    return path


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "run3.pt"
    net = UNet(UNetConfig(base_channels=4, depth=2, n_classes=3))
    save_checkpoint(path, Checkpoint.from_model(net, mode="instances", head="three-class"))
    return path


def test_the_shipped_model_loads_by_name_and_its_hash_is_checked(folder):
    (shipped,) = [entry for entry in available_models() if entry.name == "nuclei"]
    assert shipped.source == "shipped" and shipped.path.is_file()
    assert shipped.path.stat().st_size <= 10 * 2**20  # the package stays small
    checkpoint = load_model("nuclei")
    assert checkpoint.task.instances and checkpoint.model_config.in_channels == 1
    assert checkpoint.object_area is not None  # for images at other magnifications


def test_a_shipped_model_whose_content_changed_is_refused(folder, monkeypatch):
    (shipped,) = [entry for entry in available_models() if entry.name == "nuclei"]
    tampered = [registry.ModelEntry("nuclei", shipped.path, "shipped", "0" * 64, "")]
    monkeypatch.setattr(registry, "_shipped", lambda: tampered)
    with pytest.raises(ModelHashError, match=r"damaged or was replaced.*reinstall"):
        load_model("nuclei")


def test_users_models_are_added_listed_and_checked(folder, model_file):
    entry = add_model(model_file, "my-cells")
    assert entry.path == folder / "my-cells.pt"
    assert (folder / "my-cells.sha256").read_text().split()[0] == entry.sha256
    assert resolve("my-cells") == entry
    assert [e.name for e in available_models()][-1] == "my-cells"
    assert isinstance(load_model("my-cells"), Checkpoint)
    with pytest.raises(ValueError, match="already in"):
        add_model(model_file, "my-cells")
    add_model(model_file, "my-cells", overwrite=True)
    # A changed file no longer matches the hash recorded when it was added.
    with open(entry.path, "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelHashError, match="add it again"):
        load_model("my-cells")


def test_names_paths_and_mistakes(folder, model_file, tmp_path):
    assert resolve(model_file).source == "file"
    assert models_folder() == folder
    with pytest.raises(FileNotFoundError, match="nuclei"):
        resolve("no-such-model")  # the message lists what is available
    with pytest.raises(ValueError, match="model name"):
        add_model(model_file, "../escape")
    with pytest.raises(ValueError, match="shipped model"):
        add_model(model_file, "nuclei")
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt"):
        add_model(not_a_model, "notes")
    assert not folder.exists() or not any(folder.iterdir())  # nothing was copied


def test_the_manifest_names_existing_files_with_their_hashes():
    from importlib import resources

    folder = resources.files("napari_unet") / "models"
    manifest = json.loads((folder / "manifest.json").read_text())
    for info in manifest.values():
        assert registry.sha256_of(str(folder / info["file"])) == info["sha256"]
        assert re.fullmatch("[0-9a-f]{64}", info["sha256"])
