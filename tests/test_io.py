"""Opening large images lazily: zarr, OME-Zarr and TIFF (napari_unet.io)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.io import is_zarr_store, open_image, open_image_dask

IMAGE = (np.arange(2 * 70 * 90) % 997).astype(np.uint16).reshape(2, 70, 90)


def ome_zarr(path, *, version: str, nested_in_ome: bool):
    """An OME-Zarr image with two levels; level 1 is half the size."""
    group = zarr.open_group(str(path), mode="w")
    for level, data in enumerate([IMAGE, IMAGE[:, ::2, ::2]]):
        array = group.create_array(str(level), shape=data.shape, chunks=(1, 32, 32), dtype="u2")
        array[...] = data
    multiscales = [
        {
            "version": version,
            "axes": [{"name": "z"}, {"name": "y"}, {"name": "x"}],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    if nested_in_ome:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = multiscales
    return group


@pytest.mark.parametrize(("version", "nested"), [("0.4", False), ("0.5", True)])
def test_ome_zarr_opens_the_full_resolution(tmp_path, version, nested):
    ome_zarr(tmp_path / "image.ome.zarr", version=version, nested_in_ome=nested)
    array = open_image(tmp_path / "image.ome.zarr")
    assert isinstance(array, zarr.Array)
    assert array.shape == IMAGE.shape
    np.testing.assert_array_equal(array[:, 10:20, 30:45], IMAGE[:, 10:20, 30:45])


def test_bioformats2raw_layout_opens_its_first_image(tmp_path):
    root = zarr.open_group(str(tmp_path / "converted.zarr"), mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    ome_zarr(tmp_path / "converted.zarr" / "0", version="0.4", nested_in_ome=False)
    assert open_image(tmp_path / "converted.zarr").shape == IMAGE.shape


def test_plain_zarr_array_and_single_array_group(tmp_path):
    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(70, 90), dtype="u2")
    array[...] = IMAGE[0]
    np.testing.assert_array_equal(open_image(tmp_path / "a.zarr")[...], IMAGE[0])
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(70, 90), dtype="u2")[...] = IMAGE[1]
    np.testing.assert_array_equal(open_image(tmp_path / "g.zarr")[...], IMAGE[1])
    # A folder of any name is recognised by its metadata.
    assert is_zarr_store(tmp_path / "g.zarr" / "raw") and not is_zarr_store(tmp_path)


def test_tiff_is_read_through_zarr_and_dask(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", IMAGE, tile=(32, 32))
    array = open_image(tmp_path / "stack.tif")
    assert isinstance(array, zarr.Array) and array.chunks == (1, 32, 32)
    np.testing.assert_array_equal(array[1, 5:50, 7:70], IMAGE[1, 5:50, 7:70])
    lazy = open_image_dask(tmp_path / "stack.tif")
    assert isinstance(lazy, da.Array) and lazy.chunksize == (1, 32, 32)
    np.testing.assert_array_equal(lazy.compute(), IMAGE)


def test_unsupported_inputs_say_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file"):
        open_image(tmp_path / "missing.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a zarr store"):
        open_image(tmp_path / "folder")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="cannot be opened without reading them whole"):
        open_image(tmp_path / "image.png")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        open_image(tmp_path / "broken.tif")
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="u2")
    group.create_array("mask", shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match=r"2 arrays \(mask, raw\).*two.zarr/mask"):
        open_image(tmp_path / "two.zarr")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match="without arrays"):
        open_image(tmp_path / "empty.zarr")
