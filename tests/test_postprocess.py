"""Tests for napari_unet.postprocess (block-wise instance labelling)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unet.postprocess import label_instances
from napari_unet.synthetic import make_touching_nuclei

# ---------------------------------------------------------------------------
# Helpers and data
# ---------------------------------------------------------------------------


def assert_same_partition(first, second):
    """Both label images split the pixels identically (ids may be permuted)."""
    first = np.asarray(first).astype(np.int64)
    second = np.asarray(second).astype(np.int64)
    assert first.shape == second.shape
    np.testing.assert_array_equal(first == 0, second == 0)
    pairs = np.unique(np.stack([first[first > 0], second[second > 0]]), axis=1)
    # One-to-one: every id of one image meets exactly one id of the other.
    assert pairs.shape[1] == np.unique(pairs[0]).size == np.unique(pairs[1]).size


def assert_contiguous(labels):
    ids = np.unique(np.asarray(labels))
    np.testing.assert_array_equal(ids, np.arange(ids.size))


def zarr_array(shape, dtype, chunks, data=None):
    if hasattr(zarr, "create_array"):  # zarr >= 3
        array = zarr.create_array(store={}, shape=shape, chunks=chunks, dtype=dtype)
    else:  # zarr 2
        array = zarr.zeros(shape, chunks=chunks, dtype=dtype)
    if data is not None:
        array[...] = data
    return array


def smooth_noise(shape=(203, 157), seed=0):
    """Random smooth field in [0, 1]: many irregular components of all sizes."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    field -= field.min()
    return (field / field.max()).astype(np.float32)


def gaussian_blobs(shape, centres, sigma=5.0, peaks=None):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    total = np.zeros(shape)
    for index, (row, col) in enumerate(centres):
        peak = 1.0 if peaks is None else peaks[index]
        total += peak * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))
    return np.clip(total, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def nuclei_foreground():
    """A U-Net-like probability: touching nuclei separated by a dip at their border."""
    _, labels = make_touching_nuclei((192, 192), seed=3)
    inner = (labels > 0) & ~find_boundaries(labels, mode="inner")
    foreground = np.clip(ndi.gaussian_filter(inner.astype(np.float32), 1.5), 0, 1)
    return foreground, labels


# ---------------------------------------------------------------------------
# Connected-component mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize(
    "block_shape", [(203, 157), (1000, 1000), (64, 64), (50, 31), (1, 40), (37, 1), (7, 5)]
)
def test_components_equal_scipy_label(block_shape, connectivity):
    foreground = smooth_noise()
    structure = ndi.generate_binary_structure(2, connectivity)
    expected, n_expected = ndi.label(foreground > 0.5, structure)
    assert n_expected > 20  # the field has many objects, some cut by every grid

    labels = label_instances(
        foreground, seed_threshold=None, block_shape=block_shape, connectivity=connectivity
    )

    assert_same_partition(labels, expected)
    assert int(labels.max()) == n_expected
    assert_contiguous(labels)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_components_with_one_pixel_blocks(connectivity):
    foreground = smooth_noise((23, 19), seed=4)
    expected, _ = ndi.label(foreground > 0.5, ndi.generate_binary_structure(2, connectivity))
    labels = label_instances(
        foreground, seed_threshold=None, block_shape=(1, 1), connectivity=connectivity
    )
    assert_same_partition(labels, expected)


@pytest.mark.parametrize(
    ("pixels", "block_shape"),
    [
        ([(1, 1), (2, 2)], (2, 2)),  # diagonal across a block corner
        ([(1, 2), (2, 1)], (2, 2)),  # anti-diagonal across a block corner
        ([(1, 0), (2, 1)], (2, 4)),  # diagonal across a horizontal border
        ([(0, 1), (1, 2)], (4, 2)),  # diagonal across a vertical border
    ],
)
@pytest.mark.parametrize("seed_threshold", [None, 0.9])
def test_diagonal_contact_merges_only_with_connectivity_2(pixels, block_shape, seed_threshold):
    foreground = np.zeros((4, 4), dtype=np.float32)
    for pixel in pixels:
        foreground[pixel] = 0.95
    kwargs = {"seed_threshold": seed_threshold, "block_shape": block_shape}

    four = label_instances(foreground, connectivity=1, **kwargs)
    eight = label_instances(foreground, connectivity=2, **kwargs)

    assert len({int(four[p]) for p in pixels}) == 2
    assert len({int(eight[p]) for p in pixels}) == 1
    assert int(four.max()) == 2 and int(eight.max()) == 1


@pytest.mark.parametrize("seed_threshold", [None, 0.9])
def test_cell_crossing_block_borders_has_one_id(seed_threshold):
    # A disk centred on a block corner: it lies in four blocks.
    foreground = gaussian_blobs((64, 64), [(32, 32)], sigma=8.0)
    labels = label_instances(foreground, seed_threshold=seed_threshold, block_shape=(32, 32))
    cell = foreground > 0.5
    assert cell[31, 31] and cell[32, 32] and cell[31, 32] and cell[32, 31]
    assert np.unique(labels[cell]).tolist() == [1]
    assert not labels[~cell].any()


# ---------------------------------------------------------------------------
# Seeded watershed
# ---------------------------------------------------------------------------


def test_watershed_splits_touching_blobs_that_components_merge():
    foreground = gaussian_blobs((32, 48), [(16, 16), (16, 30)])
    saddle = float(foreground[16, 23])
    assert 0.5 < saddle < 0.9  # touching in the mask, apart in the seeds

    merged = label_instances(foreground, seed_threshold=None)
    split = label_instances(foreground, seed_threshold=0.9, block_shape=(16, 16))

    assert int(merged.max()) == 1
    assert int(split.max()) == 2
    assert split[16, 16] != split[16, 30]
    # The border between the two lies at the saddle, halfway.
    assert split[16, 21] == split[16, 16] and split[16, 25] == split[16, 30]


def test_component_without_seed_becomes_an_object(caplog):
    foreground = gaussian_blobs((40, 80), [(20, 15), (20, 60)], peaks=[1.0, 0.7])
    assert foreground[:, 40:].max() < 0.9  # the right blob has no seed pixel

    with caplog.at_level(logging.WARNING, logger="napari_unet.postprocess"):
        labels = label_instances(foreground, seed_threshold=0.9, block_shape=(16, 16))

    assert "could not be reached" not in caplog.text  # a seed, not the halo fallback

    right = foreground[:, 40:] > 0.5
    assert right.sum() > 30
    assert np.unique(labels[:, 40:][right]).size == 1
    assert int(labels[:, 40:][right][0]) != int(labels[20, 15])
    assert_contiguous(labels)
    assert int(labels.max()) == 2


def test_watershed_labels_every_mask_pixel_and_splits_nuclei(nuclei_foreground):
    foreground, truth = nuclei_foreground
    mask = foreground > 0.5

    split = label_instances(foreground, block_shape=(64, 64), halo=16)
    merged = label_instances(foreground, seed_threshold=None, block_shape=(64, 64))

    assert (split[mask] > 0).all()
    assert not split[~mask].any()
    assert_contiguous(split)
    # Nearly every nucleus gets its own id; connected components merge many.
    assert int(split.max()) >= 0.95 * int(truth.max())
    assert int(merged.max()) < 0.75 * int(split.max())


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("block_shape", [(64, 64), (50, 37), (17, 23)])
def test_blockwise_watershed_equals_whole_image(nuclei_foreground, block_shape, connectivity):
    foreground, _ = nuclei_foreground
    whole = label_instances(foreground, block_shape=foreground.shape, connectivity=connectivity)
    # A halo wider than a nucleus is enough on cell-like data.
    blockwise = label_instances(
        foreground, block_shape=block_shape, connectivity=connectivity, halo=24
    )
    assert_same_partition(blockwise, whole)


def test_blockwise_watershed_with_image_wide_halo_is_exact_on_any_data():
    # Irregular, percolating components where a small halo is not enough: with a
    # halo covering the image every block sees all markers, which are read back
    # from `out` after neighbouring blocks were already flooded.
    foreground = smooth_noise((90, 70), seed=2)
    whole = label_instances(foreground, block_shape=(90, 70), seed_threshold=0.8)
    blockwise = label_instances(foreground, block_shape=(13, 11), seed_threshold=0.8, halo=90)
    assert int(whole.max()) > 10
    assert_same_partition(blockwise, whole)


def test_halo_fallback_never_leaves_mask_pixels_at_zero(caplog):
    # A long bar seeded only at its left end: blocks far from the seed cannot
    # reach it within the (capped) halo.
    foreground = np.zeros((10, 100), dtype=np.float32)
    foreground[3:7, 2:98] = 0.7
    foreground[3:7, 2:6] = 0.95
    mask = foreground > 0.5

    with caplog.at_level(logging.WARNING, logger="napari_unet.postprocess"):
        labels = label_instances(foreground, block_shape=(10, 10), halo=2)

    assert "could not be reached" in caplog.text
    assert (labels[mask] > 0).all()
    # The block next to the seeded one reaches the seed once its halo is doubled.
    assert (labels[3:7, 2:20] == labels[4, 3]).all()
    assert (labels[3:7, 30:98] != labels[4, 3]).all()
    assert_contiguous(labels)
    assert int(labels.max()) == 2  # seeded part + one unreached part, not one per block
    for object_id in range(1, int(labels.max()) + 1):
        assert ndi.label(labels == object_id)[1] == 1  # every object is connected

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_unet.postprocess"):
        wide = label_instances(foreground, block_shape=(10, 10), halo=100)
    assert "could not be reached" not in caplog.text
    assert np.unique(wide[mask]).tolist() == [1]


# ---------------------------------------------------------------------------
# Storage: zarr, memmap, out
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed_threshold", [None, 0.9])
def test_zarr_foreground_and_out(nuclei_foreground, seed_threshold):
    foreground, _ = nuclei_foreground
    expected = label_instances(foreground, seed_threshold=seed_threshold)
    source = zarr_array(foreground.shape, "float32", (40, 40), foreground)
    out = zarr_array(foreground.shape, "uint16", (32, 48))

    result = label_instances(
        source, seed_threshold=seed_threshold, out=out, block_shape=(64, 80), halo=24
    )

    assert result is out
    assert np.dtype(out.dtype) == np.uint16
    assert_same_partition(out[...], expected)
    assert_contiguous(out[...])


@pytest.mark.parametrize("seed_threshold", [None, 0.9])
def test_memmap_out(nuclei_foreground, tmp_path, seed_threshold):
    foreground, _ = nuclei_foreground
    expected = label_instances(foreground, seed_threshold=seed_threshold)
    path = tmp_path / "labels.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=foreground.shape)
    out[...] = 12345  # stale content must be overwritten

    label_instances(foreground, seed_threshold=seed_threshold, out=out, block_shape=(70, 70))
    out.flush()
    del out

    assert_same_partition(np.load(path), expected)


def test_default_out_is_new_uint32_array():
    foreground = gaussian_blobs((20, 20), [(10, 10)])
    labels = label_instances(foreground)
    assert isinstance(labels, np.ndarray)
    assert labels.dtype == np.uint32 and labels.shape == (20, 20)


def test_min_size_removes_small_objects_and_keeps_ids_contiguous():
    foreground = np.zeros((30, 30), dtype=np.float32)
    foreground[2:4, 2:4] = 0.95  # 4 pixels
    foreground[10:20, 10:20] = 0.95  # 100 pixels
    foreground[25, 25] = 0.95  # 1 pixel
    foreground[2:8, 20:28] = 0.95  # 48 pixels

    for seed_threshold in (None, 0.9):
        labels = label_instances(
            foreground, seed_threshold=seed_threshold, min_size=5, block_shape=(8, 8)
        )
        assert int(labels.max()) == 2
        assert_contiguous(labels)
        assert not labels[2:4, 2:4].any() and labels[25, 25] == 0
        assert np.unique(labels[10:20, 10:20]).size == 1


def test_failed_check_leaves_out_untouched():
    foreground = gaussian_blobs((40, 40), [(10, 10)])
    foreground[39, 39] = np.nan  # in the last block
    out = np.full((40, 40), 7, dtype=np.uint16)
    with pytest.raises(ValueError, match="NaN"):
        label_instances(foreground, out=out, block_shape=(16, 16))
    assert (out == 7).all()


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

GOOD = gaussian_blobs((20, 20), [(10, 10)])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"foreground": np.zeros((2, 20, 20), np.float32)}, ValueError, "each 2D plane"),
        ({"foreground": np.zeros((20, 20), np.uint8)}, TypeError, "floating-point"),
        ({"foreground": np.zeros((0, 5), np.float32)}, ValueError, "empty"),
        ({"foreground": GOOD * 3}, ValueError, r"probabilities in \[0, 1\].*sigmoid"),
        ({"foreground": "image"}, TypeError, "foreground must be a numpy array"),
        ({"threshold": 0.0}, ValueError, "threshold must be strictly between 0 and 1"),
        ({"threshold": 1.5}, ValueError, "threshold must be strictly between 0 and 1"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a number"),
        ({"seed_threshold": 1.0}, ValueError, "seed_threshold must be strictly between"),
        ({"threshold": 0.6, "seed_threshold": 0.6}, ValueError, "greater than threshold"),
        ({"min_size": -1}, ValueError, "min_size must be at least 0"),
        ({"min_size": 2.5}, TypeError, "min_size must be an integer"),
        ({"halo": -4}, ValueError, "halo must be at least 0"),
        ({"block_shape": (0, 16)}, ValueError, "block_shape must be two positive integers"),
        ({"block_shape": 16}, ValueError, "block_shape must be two positive integers"),
        ({"block_shape": (16, 16, 16)}, ValueError, "block_shape must be two positive"),
        ({"connectivity": 3}, ValueError, "connectivity must be 1"),
        ({"out": np.zeros((20, 21), np.uint32)}, ValueError, "same shape as foreground"),
        ({"out": np.zeros((20, 20), np.float32)}, TypeError, "integer dtype"),
        ({"out": np.zeros((20, 20), bool)}, TypeError, "integer dtype"),
        ({"out": [[0] * 20] * 20}, TypeError, "out must be a writable 2D array"),
    ],
)
def test_bad_inputs_raise_helpful_errors(kwargs, error, match):
    kwargs = {"foreground": GOOD, **kwargs}
    foreground = kwargs.pop("foreground")
    with pytest.raises(error, match=match):
        label_instances(foreground, **kwargs)


def test_nan_foreground_is_rejected():
    foreground = GOOD.copy()
    foreground[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        label_instances(foreground)


def test_read_only_out_is_rejected():
    out = np.zeros((20, 20), np.uint32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        label_instances(GOOD, out=out)


@pytest.mark.parametrize("seed_threshold", [None, 0.9])
def test_too_many_objects_for_out_dtype(seed_threshold):
    foreground = np.zeros((40, 40), dtype=np.float32)
    foreground[::2, ::2] = 0.95  # 400 isolated pixels
    with pytest.raises(ValueError, match=r"dtype uint8, which holds ids up to 255.*400"):
        label_instances(foreground, seed_threshold=seed_threshold, out=np.zeros((40, 40), np.uint8))
    labels = label_instances(
        foreground, seed_threshold=seed_threshold, out=np.zeros((40, 40), np.uint16)
    )
    assert int(labels.max()) == 400


@pytest.mark.parametrize("connectivity", [1, 2])
def test_flooding_only_contested_parts_equals_the_watershed_of_the_whole_domain(connectivity):
    """Parts with one marker id or none are filled directly; the result is the watershed's."""
    from skimage.segmentation import watershed

    from napari_unet.postprocess import _flood

    rng = np.random.default_rng(connectivity)
    structure = ndi.generate_binary_structure(2, connectivity)
    seen = set()  # parts with no marker id, one, and several
    for _ in range(5):
        priority = ndi.gaussian_filter(rng.random((120, 160)), 3)
        domain = priority > np.quantile(priority, 0.7)  # many parts, apart from each other
        # Markers: a few small blobs (some parts get none, some one id, some several).
        markers = np.zeros(domain.shape, np.int32)
        for number, (row, col) in enumerate(rng.integers(0, (120, 160), size=(25, 2)), 1):
            markers[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = number
        markers[~domain] = 0
        parts, _ = ndi.label(domain, structure)
        ids_per_part = [
            len(np.unique(markers[(parts == p) & (markers > 0)])) for p in range(1, parts.max() + 1)
        ]
        seen.update(min(n, 2) for n in ids_per_part)
        expected = watershed(-priority, markers, mask=domain, connectivity=connectivity)
        np.testing.assert_array_equal(
            _flood(priority, markers, domain, structure, connectivity), expected
        )
    assert seen == {0, 1, 2}
