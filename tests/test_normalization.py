"""Tests for napari_unet.normalization (percentile normalisation)."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from napari_unet import normalization as normalization_module
from napari_unet.normalization import Normalization
from napari_unet.synthetic import make_touching_nuclei


class RecordingArray:
    """Array-like that records which boxes are read (to check subsampling)."""

    def __init__(self, data):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads = []

    def __getitem__(self, index):
        box = self.data[index]
        self.reads.append(box.size)
        return box


def test_statistics_on_known_data():
    image = np.arange(1001, dtype=np.uint16).reshape(1, 7, 143)
    low, high = Normalization(1.0, 99.0).statistics(image)
    assert low.dtype == high.dtype == np.float32
    assert low.shape == high.shape == (1,)
    # The percentiles of 0..1000 are the percentages of 1000.
    np.testing.assert_allclose(low, [10.0])
    np.testing.assert_allclose(high, [990.0])


def test_statistics_are_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack(
        [rng.normal(0, 1, (40, 50)), rng.normal(100, 10, (40, 50)), rng.uniform(-5, 5, (40, 50))]
    ).astype(np.float32)
    low, high = Normalization(2.0, 98.0).statistics(image)
    for channel in range(3):
        expected = np.percentile(image[channel], [2.0, 98.0])
        np.testing.assert_allclose([low[channel], high[channel]], expected, rtol=1e-5)


def test_apply_maps_percentiles_to_zero_and_one():
    rng = np.random.default_rng(1)
    image = rng.integers(100, 60000, size=(2, 30, 40)).astype(np.uint16)
    normalization = Normalization(1.0, 99.8)
    low, high = normalization.statistics(image)
    scaled = Normalization.apply(image, low, high)
    assert scaled.dtype == np.float32
    assert scaled.shape == image.shape
    for channel in range(2):
        result = np.percentile(scaled[channel], [1.0, 99.8])
        np.testing.assert_allclose(result, [0.0, 1.0], atol=1e-5)
        # Linear: a known pixel maps as (x - low) / (high - low).
        expected = (float(image[channel, 3, 4]) - low[channel]) / (high[channel] - low[channel])
        assert scaled[channel, 3, 4] == pytest.approx(expected, rel=1e-5)


def test_apply_works_on_tiles_with_whole_image_statistics():
    rng = np.random.default_rng(2)
    image = rng.random((1, 30, 40)).astype(np.float32)
    low, high = Normalization().statistics(image)
    whole = Normalization.apply(image, low, high)
    tile = Normalization.apply(image[:, 5:17, 9:30], low, high)
    np.testing.assert_array_equal(tile, whole[:, 5:17, 9:30])


def test_docstring_example():
    image = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
    norm = Normalization(low_percentile=0.0, high_percentile=100.0)
    low, high = norm.statistics(image)
    assert (float(low[0]), float(high[0])) == (0.0, 99.0)
    assert float(norm.apply(image, low, high).max()) == 1.0


def test_huge_images_are_subsampled(monkeypatch):
    monkeypatch.setattr(normalization_module, "MAX_STATISTICS_SAMPLES", 1000)
    rng = np.random.default_rng(3)
    data = rng.normal(500.0, 50.0, size=(2, 600, 700)).astype(np.float32)
    data[1] += 1000.0
    image = RecordingArray(data)
    normalization = Normalization(1.0, 99.0)
    low, high = normalization.statistics(image)

    # Read once, strided: about MAX_STATISTICS_SAMPLES pixels per channel, not all of them.
    assert len(image.reads) == 1
    per_channel = image.reads[0] / 2
    assert 500 <= per_channel <= 1000
    assert per_channel < 600 * 700 / 100
    # ... and still close to the percentiles of the whole image.
    full = np.percentile(data.reshape(2, -1), [1.0, 99.0], axis=1)
    np.testing.assert_allclose(low, full[0], rtol=0.02)
    np.testing.assert_allclose(high, full[1], rtol=0.02)


def test_small_images_are_not_subsampled():
    image = RecordingArray(np.random.default_rng(4).random((1, 50, 60)))
    Normalization().statistics(image)
    assert image.reads == [50 * 60]


def test_statistics_of_dask_arrays():
    rng = np.random.default_rng(5)
    data = rng.random((1, 64, 48)).astype(np.float32)
    lazy = da.from_array(data, chunks=(1, 16, 16))
    normalization = Normalization(5.0, 95.0)
    for expected, result in zip(
        normalization.statistics(data), normalization.statistics(lazy), strict=True
    ):
        np.testing.assert_array_equal(result, expected)


def test_constant_image_gives_no_nan():
    image = np.full((1, 20, 20), 7, dtype=np.uint16)
    low, high = Normalization().statistics(image)
    assert low[0] == high[0] == 7.0
    scaled = Normalization.apply(image, low, high)
    assert np.isfinite(scaled).all()
    np.testing.assert_array_equal(scaled, 0.0)
    # Only the flat channel is merely shifted; the other is scaled.
    two = np.stack([np.full((4, 4), 3.0), np.arange(16.0).reshape(4, 4)])
    scaled = Normalization.apply(two, [3.0, 0.0], [3.0, 15.0])
    np.testing.assert_array_equal(scaled[0], 0.0)
    np.testing.assert_allclose(scaled[1], np.arange(16.0).reshape(4, 4) / 15.0)


def test_to_dict_from_dict_round_trip():
    normalization = Normalization(0.5, 99.5)
    data = normalization.to_dict()
    assert data == {
        "method": "percentile",
        "low_percentile": 0.5,
        "high_percentile": 99.5,
        "smooth_noisy": True,
    }
    assert Normalization.from_dict(json.loads(json.dumps(data))) == normalization
    assert Normalization.from_dict(Normalization().to_dict()) == Normalization()
    off = Normalization(smooth_noisy=False)
    assert Normalization.from_dict(off.to_dict()) == off
    # Checkpoints written before the option smooth noisy planes too.
    old = {"method": "percentile", "low_percentile": 1.0, "high_percentile": 99.8}
    assert Normalization.from_dict(old) == Normalization()


def test_from_dict_rejects_unknown_methods():
    with pytest.raises(ValueError, match="Unknown normalisation method 'zscore'"):
        Normalization.from_dict({"method": "zscore", "low_percentile": 1, "high_percentile": 99})
    with pytest.raises(ValueError, match="Unknown normalisation method None"):
        Normalization.from_dict({"low_percentile": 1, "high_percentile": 99})


@pytest.mark.parametrize(
    ("low", "high"),
    [(50.0, 50.0), (60.0, 40.0), (-1.0, 50.0), (1.0, 100.5), (float("nan"), 99.0)],
)
def test_bad_percentiles_raise(low, high):
    with pytest.raises(ValueError, match="0 <= low_percentile < high_percentile <= 100"):
        Normalization(low, high)


def test_extreme_valid_percentiles():
    assert Normalization(0.0, 100.0).high_percentile == 100.0


# ---------------------------------------------------------------------------
# Noisy planes (shot-noise-limited frames) are smoothed
# ---------------------------------------------------------------------------


def _dim_frame(seed=0):
    """Disks of ~6 photons over a background of ~2.6, Poisson-sampled, 8-bit: a dim frame."""
    yy, xx = np.mgrid[:200, :200]
    signal = np.zeros((200, 200))
    for row, col in [(50, 50), (60, 140), (140, 70), (150, 150)]:
        signal[(yy - row) ** 2 + (xx - col) ** 2 < 20**2] = 1.0
    return np.random.default_rng(seed).poisson(2.6 + 3.4 * signal).astype(np.uint8)[None]


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_noise_level_estimates_white_noise(sigma):
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, 300)[None, None, :] * np.ones((1, 300, 1))  # smooth content
    noisy = ramp + rng.normal(0, sigma, (1, 300, 300))
    assert normalization_module.noise_level(noisy) == pytest.approx(sigma, rel=0.1)
    assert normalization_module.noise_level(ramp) < 1e-5
    assert normalization_module.noise_level(np.zeros((1, 2, 50))) == 0.0


def test_only_noisy_planes_are_smoothed():
    normalization = Normalization()
    clean = make_touching_nuclei((157, 203), n_nuclei=25, seed=1)[0][None].astype(np.float32)
    low, high, sigma = normalization.prepare(clean)
    assert sigma == 0.0
    np.testing.assert_array_equal(np.stack([low, high]), np.stack(normalization.statistics(clean)))

    dim = _dim_frame()
    low, high, sigma = normalization.prepare(dim)
    assert sigma == normalization_module.SMOOTHING_SIGMA
    # The percentiles are those of the plane as it is; smoothing and scaling commute.
    np.testing.assert_array_equal(np.stack([low, high]), np.stack(normalization.statistics(dim)))
    smoothed = Normalization.smooth(dim, sigma)
    np.testing.assert_allclose(
        Normalization.apply(smoothed, low, high),
        Normalization.smooth(Normalization.apply(dim, low, high), sigma),
        atol=1e-5,
    )
    assert normalization_module.noise_level(Normalization.apply(dim, low, high)) > 0.05
    assert normalization_module.noise_level(Normalization.apply(smoothed, low, high)) < 0.05
    # Turned off, the same frame is left as it is.
    assert Normalization(smooth_noisy=False).prepare(dim)[2] == 0.0


def test_noise_is_judged_on_a_central_window_only():
    dim = np.tile(_dim_frame(), (1, 11, 11))  # 2200 x 2200: statistics subsample it too
    normalization = Normalization()
    recording = RecordingArray(dim)
    assert normalization.prepare(recording)[2] > 0
    assert normalization_module.NOISE_WINDOW**2 in recording.reads
    assert max(recording.reads) < dim.size
