"""The package as a whole: core isolation, manifest, sample data, command line."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_unet

PLUGIN = "napari-unet-segmentation"
# Modules that may import Qt, napari or magicgui: the widget layer only.
WIDGET_PREFIX = "napari_unet._widgets"


def core_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(napari_unet.__path__, prefix="napari_unet.")
        if not info.name.startswith(WIDGET_PREFIX)
    ]
    return ["napari_unet", *names]


def test_core_does_not_import_qt_napari_or_magicgui():
    modules = core_modules()
    assert "napari_unet.model" in modules and "napari_unet.synthetic" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in {'qtpy', 'napari', 'magicgui', 'PyQt5', 'PyQt6',"
        " 'PySide2', 'PySide6', 'superqt', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"core imported GUI modules: {result.stdout}"


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    assert manifest.display_name == "U-Net Segmentation"
    manifest.validate_imports()
    # The packaged file is the one napari reads.
    packaged = Path(napari_unet.__file__).with_name("napari.yaml")
    assert PluginManifest.from_file(packaged).name == PLUGIN


def test_npe2_validate_command():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(npe2), "validate", PLUGIN], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_contributed_widget_opens_from_the_viewer(make_napari_viewer):
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    names = [widget.display_name for widget in manifest.contributions.widgets]
    assert names == ["Weight map preview", "Train U-Net", "Segment", "Correct objects"]
    viewer = make_napari_viewer()
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert widget is not None and dock.widget() is not None


def test_sample_data_opens_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "touching_nuclei")
    assert [layer.name for layer in layers] == ["nuclei", "nuclei labels"]
    image, labels = viewer.layers["nuclei"], viewer.layers["nuclei labels"]
    assert image.data.shape == labels.data.shape == (256, 256)
    assert labels.data.max() > 20
    assert np.issubdtype(labels.data.dtype, np.integer)


def test_cli_version_and_help():
    exe = Path(sys.executable).with_name("napari-unet")
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"napari-unet {napari_unet.__version__}"
    helptext = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "U-Net" in helptext.stdout


@pytest.mark.parametrize("name", sorted(napari_unet.__all__))
def test_public_api_exports(name):
    assert getattr(napari_unet, name) is not None


def test_importing_the_package_does_not_load_torch():
    code = "import sys, napari_unet, napari_unet._sample_data; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        napari_unet.nothing  # noqa: B018
