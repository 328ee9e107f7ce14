"""Tests of the U-Net training augmentation (napari_unet.augment)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.augment import (
    AugmentConfig,
    _cubic_interpolation_matrix,
    augment,
    elastic_deform,
    gray_value_jitter,
    random_displacement_field,
    random_flip_rotate,
    warp,
)
from napari_unet.synthetic import make_touching_nuclei


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    image, labels = make_touching_nuclei((160, 160), n_nuclei=18, seed=4)
    return image.astype(np.float32) / image.max(), labels


def _symmetries(array: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square acting on the last two axes."""
    out = []
    for mirror in (False, True):
        for k in range(4):
            rotated = np.rot90(array, k, axes=(-2, -1))
            out.append(rotated[..., ::-1] if mirror else rotated)
    return out


# ---------------------------------------------------------------------------
# Displacement field
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "grid"), [((101, 61), 3), ((81, 41), 5), ((33, 33), 2)])
def test_field_equals_drawn_values_at_grid_nodes(shape, grid):
    std = 10.0
    field = random_displacement_field(shape, std=std, grid=grid, rng=7)
    nodes = np.random.default_rng(7).normal(0.0, std, size=(2, grid, grid))
    row_step = (shape[0] - 1) // (grid - 1)
    col_step = (shape[1] - 1) // (grid - 1)
    assert field.shape == (2, *shape)
    assert field.dtype == np.float32
    np.testing.assert_allclose(field[:, ::row_step, ::col_step], nodes, atol=1e-4)


def test_interpolation_matrix_is_exact_at_nodes_and_cached():
    matrix = _cubic_interpolation_matrix(21, 3)
    assert matrix.shape == (21, 3)
    np.testing.assert_allclose(matrix[[0, 10, 20]], np.eye(3), atol=1e-12)
    # A constant displacement stays constant: rows sum to one.
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    assert _cubic_interpolation_matrix(21, 3) is matrix
    assert not matrix.flags.writeable


def test_field_node_values_have_the_requested_std():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [random_displacement_field((41, 41), rng=rng)[:, ::20, ::20].ravel() for _ in range(300)]
    )
    assert values.size == 300 * 18
    assert abs(values.std() - 10.0) < 1.0
    assert abs(values.mean()) < 0.5


def test_field_is_smooth():
    for seed in range(5):
        field = random_displacement_field((572, 572), std=10.0, rng=seed)
        assert np.abs(field).max() > 5.0  # a real displacement ...
        # ... that changes by far less than a pixel from one pixel to the next.
        assert np.abs(np.diff(field, axis=1)).max() < 1.0
        assert np.abs(np.diff(field, axis=2)).max() < 1.0
        # Cubic, not piecewise linear: the slope has no kink at the centre node
        # (linear interpolation of the same nodes gives second differences of
        # about 0.04-0.1 pixel here).
        field64 = field.astype(np.float64)
        assert np.abs(np.diff(field64, n=2, axis=1)).max() < 0.01
        assert np.abs(np.diff(field64, n=2, axis=2)).max() < 0.01
        # No overshoot far beyond the node values (cubic, not a wild polynomial).
        nodes = field[:, ::285, ::285]
        assert np.abs(field).max() < 2.0 * np.abs(nodes).max()


def test_field_zero_std_is_zero():
    field = random_displacement_field((30, 40), std=0.0, rng=1)
    assert field.shape == (2, 30, 40)
    assert not field.any()


def test_field_is_deterministic_per_seed():
    a = random_displacement_field((50, 60), rng=3)
    b = random_displacement_field((50, 60), rng=3)
    c = random_displacement_field((50, 60), rng=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0


# ---------------------------------------------------------------------------
# warp
# ---------------------------------------------------------------------------


def test_warp_identity_and_dtypes():
    rng = np.random.default_rng(0)
    image = rng.random((3, 20, 24))
    labels = rng.integers(0, 5, size=(20, 24)).astype(np.uint16)
    identity = np.indices((20, 24)).astype(np.float32)
    for order in (1, 3):
        out = warp(image, identity, order=order)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, image, atol=1e-5)
    out_labels = warp(labels, identity, order=0)
    assert out_labels.dtype == np.uint16
    np.testing.assert_array_equal(out_labels, labels)


def _keys_cubic(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel, a = -0.75 (written out, as the reference)."""
    x, a = np.abs(distance), -0.75
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    index = np.abs(index) % (2 * (size - 1))
    return np.where(index >= size, 2 * (size - 1) - index, index)


def test_warp_kernels_and_mirrored_borders_match_references():
    """Linear is scipy's; cubic is Keys' convolution; both mirror about the border pixels."""
    rng = np.random.default_rng(3)
    image = rng.random((20, 30))
    # Positions inside, on and well past every edge (up to 8 pixels out).
    coordinates = np.stack([rng.uniform(-8, 27, size=(40, 50)), rng.uniform(-8, 37, size=(40, 50))])
    linear = warp(image, coordinates, order=1)
    expected = ndi.map_coordinates(image, coordinates, order=1, mode="mirror")
    np.testing.assert_allclose(linear, expected, atol=1e-5)
    rows, cols = coordinates
    top, left = np.floor(rows).astype(int), np.floor(cols).astype(int)
    expected = np.zeros(rows.shape)
    for dr in range(-1, 3):
        for dc in range(-1, 3):
            r, c = top + dr, left + dc
            expected += (
                _keys_cubic(rows - r)
                * _keys_cubic(cols - c)
                * image[_mirror(r, 20), _mirror(c, 30)]
            )
    np.testing.assert_allclose(warp(image, coordinates, order=3), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["mirror", "nearest", "constant"])
def test_warp_nearest_is_exact_for_large_ids_and_agrees_with_linear_modes(mode):
    """Nearest reads whole pixels (ids above float32's 2**24 stay exact), as the others pad."""
    labels = (np.arange(35, dtype=np.int64).reshape(5, 7) + 2**40) * 3
    rng = np.random.default_rng(0)
    # Off the half-pixel ties, where rounding may go either way.
    coordinates = np.round(rng.uniform(-4, 10, size=(2, 30, 30))) + rng.uniform(
        -0.4, 0.4, size=(2, 30, 30)
    )
    out = warp(labels, coordinates, order=0, mode=mode)
    assert out.dtype == np.int64
    assert set(np.unique(out)) <= set(np.unique(labels)) | {0}
    # Nearest of the ids agrees with linear interpolation at the rounded positions.
    exact = warp((labels - 2**40 * 3).astype(np.float64), np.round(coordinates), order=1, mode=mode)
    present = out != 0
    np.testing.assert_allclose(out[present] - 2**40 * 3, exact[present], atol=1e-3)
    if mode == "constant":
        outside = (np.round(coordinates) < 0).any(0) | (np.round(coordinates[0]) > 4)
        outside |= np.round(coordinates[1]) > 6
        assert (out[outside] == 0).all() and (out[~outside] != 0).all()


def test_warp_shift_and_output_shape():
    image = np.arange(100, dtype=np.float64).reshape(10, 10)
    rows, cols = np.indices((4, 5), dtype=np.float64)
    out = warp(image, np.stack([rows + 2, cols + 3]), order=1)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, image[2:6, 3:8])


# ---------------------------------------------------------------------------
# Elastic deformation
# ---------------------------------------------------------------------------


def test_same_field_for_image_labels_and_weights(nuclei):
    _, labels = nuclei
    image = labels.astype(np.float64)
    weights = labels.astype(np.float32) + 1.0
    for seed in range(3):
        out_image, out_labels, out_weights = elastic_deform(
            image, labels, weights, image_order=0, rng=seed
        )
        np.testing.assert_array_equal(out_image, out_labels)
        assert out_labels.dtype == labels.dtype
        assert set(np.unique(out_labels)) <= set(np.unique(labels))
        assert out_weights.dtype == np.float32
        assert out_weights.min() >= 1.0 - 1e-6  # linear: stays within the input range


def test_the_field_is_random_displacement_field_added_to_identity():
    # Linear interpolation reproduces linear ramps exactly, so the output shows the
    # coordinates that were used; cubic convolution (a = -0.75) within a fifth of a pixel.
    shape = (200, 200)
    rows, cols = np.indices(shape, dtype=np.float64)
    field = random_displacement_field(shape, rng=11)
    inner = (slice(60, 140), slice(60, 140))
    for order, tolerance in ((1, 1e-3), (3, 0.2)):
        out_image, _, out_weights = elastic_deform(
            cols, None, rows + 1.0, image_order=order, rng=11
        )
        np.testing.assert_allclose(out_image[inner], (cols + field[1])[inner], atol=tolerance)
        np.testing.assert_allclose(out_weights[inner], (rows + 1 + field[0])[inner], atol=1e-3)


def test_labels_keep_dtype_and_gain_no_ids(nuclei):
    _, labels = nuclei
    for dtype in (np.uint8, np.uint16, np.int64):
        lab = labels.astype(dtype)
        _, out, _ = elastic_deform(np.zeros(lab.shape), lab, rng=2)
        assert out.dtype == dtype
        assert set(np.unique(out)) <= set(np.unique(lab))


def test_weights_stay_non_negative(nuclei):
    _, labels = nuclei
    weights = np.where(labels > 0, 10.0, 0.0) * np.random.default_rng(0).random(labels.shape)
    for seed in range(3):
        _, _, out = elastic_deform(labels.astype(float), weights=weights, rng=seed)
        assert out.min() >= 0.0
        assert out.max() > 1.0


@pytest.mark.parametrize("image_order", [1, 3])
def test_zero_std_is_identity(nuclei, image_order):
    image, labels = nuclei
    weights = (labels > 0).astype(np.float64) * 5.0
    out_image, out_labels, out_weights = elastic_deform(
        image, labels, weights, std=0.0, image_order=image_order, rng=0
    )
    # Positions reach grid_sample in float32, a few 1e-5 pixels off the pixel centres.
    np.testing.assert_allclose(out_image, image, atol=1e-4 * np.abs(image).max())
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(out_weights, weights, atol=1e-4 * 5.0)


def test_deformation_is_real_but_moderate(nuclei):
    image, labels = nuclei
    area = np.count_nonzero(labels)
    for seed in range(3):
        out_image, out_labels, _ = elastic_deform(image, labels, rng=seed)
        assert np.abs(out_image - image).max() > 0.2
        changed = np.count_nonzero(out_labels != labels)
        assert changed > 0.05 * area
        assert abs(np.count_nonzero(out_labels) - area) < 0.25 * area
        # Most objects survive the deformation.
        assert len(np.unique(out_labels)) >= 0.8 * len(np.unique(labels))


def test_multichannel_channels_get_the_same_deformation(nuclei):
    image, labels = nuclei
    stack = np.stack([image, 2.0 * image + 1.0, labels.astype(np.float32)])
    out, out_labels, _ = elastic_deform(stack, labels, image_order=3, rng=5)
    assert out.shape == stack.shape
    np.testing.assert_allclose(out[1], 2.0 * out[0] + 1.0, atol=1e-4)
    single, _, _ = elastic_deform(image, image_order=3, rng=5)
    np.testing.assert_allclose(out[0], single, atol=1e-6)
    nearest, nearest_labels, _ = elastic_deform(stack, labels, image_order=0, rng=5)
    np.testing.assert_array_equal(nearest[2], nearest_labels)
    np.testing.assert_array_equal(nearest_labels, out_labels)


# ---------------------------------------------------------------------------
# Flips and rotations
# ---------------------------------------------------------------------------


def test_flip_rotate_is_a_joint_symmetry_and_all_eight_occur():
    rng = np.random.default_rng(0)
    image = rng.random((2, 6, 6)).astype(np.float32)
    labels = np.arange(36, dtype=np.int32).reshape(6, 6)
    weights = rng.random((6, 6))
    sym_image, sym_labels, sym_weights = (_symmetries(a) for a in (image, labels, weights))
    seen = set()
    for _ in range(200):
        out_image, out_labels, out_weights = random_flip_rotate(image, labels, weights, rng=rng)
        matches = [i for i, s in enumerate(sym_labels) if np.array_equal(out_labels, s)]
        assert len(matches) == 1
        (index,) = matches
        np.testing.assert_array_equal(out_image, sym_image[index])
        np.testing.assert_array_equal(out_weights, sym_weights[index])
        for out, original in ((out_image, image), (out_labels, labels), (out_weights, weights)):
            assert out.flags["C_CONTIGUOUS"]
            assert out.dtype == original.dtype
            assert not np.shares_memory(out, original)
        seen.add(index)
    assert seen == set(range(8))


def test_flip_rotate_keeps_non_square_shapes():
    labels = np.arange(6 * 9, dtype=np.int32).reshape(6, 9)
    image = labels.astype(np.float64)[np.newaxis].repeat(3, axis=0)
    allowed = [s for s in _symmetries(labels) if s.shape == labels.shape]
    assert len(allowed) == 4
    seen = set()
    rng = np.random.default_rng(1)
    for _ in range(100):
        out_image, out_labels, out_weights = random_flip_rotate(image, labels, rng=rng)
        assert out_weights is None
        assert out_image.shape == image.shape
        matches = [i for i, s in enumerate(allowed) if np.array_equal(out_labels, s)]
        assert len(matches) == 1
        np.testing.assert_array_equal(out_image[1], out_labels)
        seen.add(matches[0])
    assert seen == set(range(4))


def test_flip_rotate_is_deterministic_per_seed():
    image = np.arange(64.0).reshape(8, 8)
    draws = [random_flip_rotate(image, rng=seed)[0] for seed in range(20)]
    again = [random_flip_rotate(image, rng=seed)[0] for seed in range(20)]
    for a, b in zip(draws, again, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Gray values
# ---------------------------------------------------------------------------

NEUTRAL = {"gamma": (1.0, 1.0), "gain": (1.0, 1.0), "offset": 0.0, "noise": 0.0}


def test_jitter_is_deterministic_finite_float32(nuclei):
    image, _ = nuclei
    a = gray_value_jitter(image, rng=3)
    b = gray_value_jitter(image, rng=3)
    c = gray_value_jitter(image, rng=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32
    assert a.shape == image.shape
    assert np.isfinite(a).all()
    assert gray_value_jitter(image.astype(np.float64), rng=0).dtype == np.float32


def test_jitter_neutral_settings_are_identity(nuclei):
    image, _ = nuclei
    np.testing.assert_array_equal(gray_value_jitter(image, rng=0, **NEUTRAL), image)


def test_jitter_constant_image_gives_no_nan():
    image = np.full((16, 16), 0.3, dtype=np.float32)
    for seed in range(10):
        out = gray_value_jitter(image, rng=seed)
        assert np.isfinite(out).all()
    gamma_only = gray_value_jitter(image, **{**NEUTRAL, "gamma": (2.0, 2.0)}, rng=0)
    np.testing.assert_array_equal(gamma_only, image)


def test_jitter_gamma_keeps_the_range_and_allows_negative_values():
    image = np.linspace(-1.0, 3.0, 50).reshape(5, 10)
    out = gray_value_jitter(image, **{**NEUTRAL, "gamma": (2.0, 2.0)}, rng=0)
    expected = ((image + 1.0) / 4.0) ** 2 * 4.0 - 1.0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(3.0)
    # Multichannel: each channel keeps its own range.
    stack = np.stack([image, 10 * image])
    out = gray_value_jitter(stack, gamma=(0.5, 2.0), gain=(1, 1), offset=0, noise=0, rng=1)
    np.testing.assert_allclose(out.min(axis=(1, 2)), [-1.0, -10.0], rtol=1e-5)
    np.testing.assert_allclose(out.max(axis=(1, 2)), [3.0, 30.0], rtol=1e-5)


def test_jitter_gain_is_log_uniform_in_range():
    image = np.ones((2, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    gains = np.array(
        [
            gray_value_jitter(image, **{**NEUTRAL, "gain": (0.5, 2.0)}, rng=rng)[0, 0]
            for _ in range(400)
        ]
    )
    assert gains.min() >= 0.5 and gains.max() <= 2.0
    assert abs(np.log2(gains).mean()) < 0.1  # log-uniform: symmetric around 1
    assert gains.min() < 0.6 and gains.max() > 1.8


def test_jitter_offset_and_noise():
    image = np.zeros((64, 64), dtype=np.float32)
    offsets = [gray_value_jitter(image, **{**NEUTRAL, "offset": 0.1}, rng=s) for s in range(200)]
    for out in offsets[:5]:
        assert np.ptp(out) == 0.0  # the offset is one number for the whole image
    assert np.std([out[0, 0] for out in offsets]) == pytest.approx(0.1, rel=0.2)
    stds = [gray_value_jitter(image, **{**NEUTRAL, "noise": 0.05}, rng=s).std() for s in range(30)]
    assert max(stds) <= 0.05 * 1.1
    assert max(stds) > 0.03 and min(stds) < 0.02


# ---------------------------------------------------------------------------
# Config and augment()
# ---------------------------------------------------------------------------


def test_config_defaults_and_none():
    config = AugmentConfig()
    assert (config.elastic_std, config.elastic_grid, config.flip_rotate) == (10.0, 3, True)
    assert (config.gamma, config.gain, config.offset, config.noise) == (
        (0.5, 2.0),
        (0.5, 2.0),
        0.1,
        0.05,
    )
    assert not config.is_identity
    assert AugmentConfig.none().is_identity
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.elastic_std = 3.0  # type: ignore[misc]
    assert AugmentConfig(gamma=[0.8, 1.25]).gamma == (0.8, 1.25)


def test_augment_none_is_identity(nuclei):
    image, labels = nuclei
    weights = (labels > 0).astype(np.float32) + 0.5
    stack = np.stack([image, image**2])
    for img in (image, stack):
        out_image, out_labels, out_weights = augment(
            img, labels, weights, AugmentConfig.none(), rng=0
        )
        np.testing.assert_array_equal(out_image, img)
        np.testing.assert_array_equal(out_labels, labels)
        np.testing.assert_array_equal(out_weights, weights)
        assert not np.shares_memory(out_labels, labels)


def test_augment_default_changes_data_consistently(nuclei):
    image, labels = nuclei
    weights = (labels > 0).astype(np.float32) + 0.5
    out_image, out_labels, out_weights = augment(image, labels, weights, rng=9)
    again = augment(image, labels, weights, rng=9)
    np.testing.assert_array_equal(out_image, again[0])
    np.testing.assert_array_equal(out_labels, again[1])
    assert out_image.dtype == np.float32 and out_weights.dtype == np.float32
    assert out_labels.dtype == labels.dtype
    assert not np.allclose(out_image, image)
    assert set(np.unique(out_labels)) <= set(np.unique(labels))
    assert out_weights.min() >= 0.0
    # Weights follow the labels (same flip and deformation): foreground weight
    # 1.5, background 0.5, mixed only along the linearly interpolated borders.
    agree = (out_labels > 0) == (out_weights > 1.0)
    assert agree.mean() > 0.97


def test_augment_order_flip_then_elastic(nuclei):
    # With gray values off, augment() equals flip/rotate followed by the elastic
    # deformation drawn from the same generator.
    image, labels = nuclei
    config = AugmentConfig(gamma=(1, 1), gain=(1, 1), offset=0, noise=0)
    out_image, out_labels, _ = augment(image, labels, None, config, rng=21)
    rng = np.random.default_rng(21)
    flipped, flipped_labels, _ = random_flip_rotate(image, labels, rng=rng)
    expected, expected_labels, _ = elastic_deform(flipped, flipped_labels, rng=rng)
    np.testing.assert_array_equal(out_image, expected)
    np.testing.assert_array_equal(out_labels, expected_labels)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


def test_bad_inputs_name_the_parameter():
    image = np.zeros((32, 32), dtype=np.float32)
    labels = np.zeros((32, 32), dtype=np.int32)
    with pytest.raises(ValueError, match="labels"):
        elastic_deform(image, np.zeros((32, 30), dtype=np.int32))
    with pytest.raises(ValueError, match="weights"):
        random_flip_rotate(image, labels, np.zeros((30, 32)))
    with pytest.raises(ValueError, match="weights"):
        elastic_deform(image, labels, -np.ones((32, 32)))
    with pytest.raises(ValueError, match="image"):
        elastic_deform(np.zeros((1, 2, 32, 32)), labels)
    with pytest.raises(ValueError, match="image"):
        elastic_deform(np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="image"):
        gray_value_jitter(np.full((32, 32), np.inf))
    with pytest.raises(TypeError, match="labels"):
        elastic_deform(image, labels.astype(np.float32))
    with pytest.raises(ValueError, match="std"):
        elastic_deform(image, std=-1.0)
    with pytest.raises(ValueError, match="std"):
        random_displacement_field((8, 8), std=float("nan"))
    with pytest.raises(ValueError, match="grid"):
        random_displacement_field((8, 8), grid=1)
    with pytest.raises(TypeError, match="grid"):
        random_displacement_field((8, 8), grid=3.0)
    with pytest.raises(ValueError, match="shape"):
        random_displacement_field((8, 0))
    with pytest.raises(ValueError, match="shape"):
        random_displacement_field((8, 8, 8))
    with pytest.raises(ValueError, match="image_order"):
        elastic_deform(image, image_order=7)
    with pytest.raises(TypeError, match="rng"):
        elastic_deform(image, rng="seed")
    with pytest.raises(TypeError, match="rng"):
        random_flip_rotate(image, rng=1.5)
    with pytest.raises(TypeError, match="rng"):
        gray_value_jitter(image, rng=[1])
    with pytest.raises(ValueError, match="gamma"):
        gray_value_jitter(image, gamma=(2.0, 1.0))
    with pytest.raises(ValueError, match="gain"):
        gray_value_jitter(image, gain=(0.0, 1.0))
    with pytest.raises(ValueError, match="noise"):
        gray_value_jitter(image, noise=-0.1)
    with pytest.raises(TypeError, match="config"):
        augment(image, config={"elastic_std": 0})


def test_warp_bad_inputs():
    image = np.zeros((8, 8))
    identity = np.indices((8, 8)).astype(float)
    with pytest.raises(ValueError, match="coordinates"):
        warp(image, identity[0], order=1)
    with pytest.raises(ValueError, match="coordinates"):
        warp(image, np.full((2, 8, 8), np.nan), order=1)
    with pytest.raises(ValueError, match="order"):
        warp(image, identity, order=7)
    with pytest.raises(TypeError, match="order"):
        warp(image, identity, order=1.0)
    with pytest.raises(ValueError, match="mode"):
        warp(image, identity, order=1, mode="bogus")
    with pytest.raises(TypeError, match="array"):
        warp(np.zeros((8, 8), dtype=bool), identity, order=0)
    with pytest.raises(ValueError, match="array"):
        warp(np.zeros((8,)), identity, order=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"gamma": (2.0, 0.5)}, "gamma"),
        ({"gamma": (0.0, 2.0)}, "gamma"),
        ({"gain": (1.0,)}, "gain"),
        ({"gain": (1.0, float("inf"))}, "gain"),
        ({"offset": -0.1}, "offset"),
        ({"noise": -1}, "noise"),
        ({"elastic_std": -1.0}, "elastic_std"),
        ({"elastic_grid": 1}, "elastic_grid"),
        ({"image_order": 0}, "image_order"),
    ],
)
def test_bad_config_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AugmentConfig(**kwargs)


def test_bad_config_types():
    with pytest.raises(TypeError, match="flip_rotate"):
        AugmentConfig(flip_rotate="yes")
    with pytest.raises(TypeError, match="elastic_grid"):
        AugmentConfig(elastic_grid=2.5)
