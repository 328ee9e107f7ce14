"""Intensity normalisation shared by training and inference.

A checkpoint records how its training images were scaled, so that inference
scales new images the same way. Each image plane and channel is mapped
linearly so that its ``low_percentile`` goes to 0 and its ``high_percentile``
to 1 (robust to hot pixels and to the camera offset, and independent of the
bit depth).

Shot-noise-limited frames (a few gray levels, each pixel mostly photon noise)
are smoothed before the network: a plane whose estimated pixel noise, in
normalised units, exceeds ``NOISY_PLANE`` is filtered with a Gaussian of
``SMOOTHING_SIGMA`` pixels, in training and in inference alike (the
percentiles are those of the plane as it is). Microscopy
frames of ordinary quality (all 724 DSB 2018 stage 1 fields among them, at
most 0.041) stay below the limit and are left as they are.

Examples
--------
>>> import numpy as np
>>> from napari_unet.normalization import Normalization
>>> image = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
>>> norm = Normalization(low_percentile=0.0, high_percentile=100.0)
>>> low, high = norm.statistics(image)
>>> float(low[0]), float(high[0])
(0.0, 99.0)
>>> float(norm.apply(image, low, high).max())
1.0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from napari_unet._validation import NonFiniteImageError

__all__ = ["NonFiniteImageError", "Normalization"]


# Percentiles are estimated on at most this many pixels per channel, so that huge
# or lazily loaded images are never read whole just to scale them.
MAX_STATISTICS_SAMPLES = 1 << 22
#: Pixel noise is estimated on a central window of at most this many pixels a side.
NOISE_WINDOW = 512
#: Estimated pixel noise (standard deviation, normalised units) above which a plane is
#: smoothed. The 724 DSB 2018 stage 1 fields reach 0.041 and the nuclei image 0.026; a
#: frame of 15 gray levels with shot noise is at 0.11 (docs/benchmarks.md).
NOISY_PLANE = 0.05
#: Gaussian sigma, in pixels, for noisy planes (the best of 0.7-2 on the dim benchmark).
SMOOTHING_SIGMA = 1.0
#: The Gaussian is cut off this many sigmas from its centre (scipy's default).
SMOOTHING_TRUNCATE = 4.0


def noise_level(normalised: np.ndarray) -> float:
    """Estimate the pixel noise of a normalised ``(C, H, W)`` array (largest channel).

    Immerkaer's estimator (1996): the mean absolute response to a mask that
    cancels smooth image content, scaled to a Gaussian standard deviation.
    Fine texture counts a little as noise, which the margin of ``NOISY_PLANE``
    above ordinary images allows for.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> round(noise_level(rng.normal(0.5, 0.1, (1, 256, 256))), 2)
    0.1
    """
    array = np.asarray(normalised, dtype=np.float32)
    if array.shape[-2] < 3 or array.shape[-1] < 3:
        return 0.0
    response = (
        array[:, :-2, :-2]
        + array[:, :-2, 2:]
        + array[:, 2:, :-2]
        + array[:, 2:, 2:]
        - 2 * (array[:, 1:-1, :-2] + array[:, 1:-1, 2:] + array[:, :-2, 1:-1] + array[:, 2:, 1:-1])
        + 4 * array[:, 1:-1, 1:-1]
    )
    per_channel = np.abs(response).mean(axis=(1, 2)) * math.sqrt(math.pi / 2) / 6
    return float(per_channel.max())


@dataclass(frozen=True)
class Normalization:
    """Per-channel percentile normalisation.

    Parameters
    ----------
    low_percentile, high_percentile : float
        Percentiles mapped to 0 and 1; ``0 <= low < high <= 100``.
    smooth_noisy : bool
        Smooth planes whose pixel noise exceeds ``NOISY_PLANE`` (see the module
        docstring). Checkpoints from before this option get it too: their
        networks never saw such noise either.
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.8
    smooth_noisy: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                "Normalization needs 0 <= low_percentile < high_percentile <= 100, got "
                f"{self.low_percentile} and {self.high_percentile}."
            )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-compatible description (stored in checkpoints)."""
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Normalization:
        """Rebuild from :meth:`to_dict` output."""
        if data.get("method") != "percentile":
            raise ValueError(f"Unknown normalisation method {data.get('method')!r}.")
        return cls(
            float(data["low_percentile"]),
            float(data["high_percentile"]),
            bool(data.get("smooth_noisy", True)),
        )

    def statistics(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the low and high percentiles of each channel of a ``(C, H, W)`` image.

        Large images are subsampled on a regular grid (at most
        ``MAX_STATISTICS_SAMPLES`` pixels per channel); ``image`` may be any
        array that supports strided slicing (numpy, zarr, dask).
        """
        height, width = image.shape[-2:]
        stride = max(1, math.ceil(math.sqrt(height * width / MAX_STATISTICS_SAMPLES)))
        sample = np.asarray(image[:, ::stride, ::stride], dtype=np.float32)
        sample = sample.reshape(sample.shape[0], -1)
        if not np.isfinite(sample).all():
            raise NonFiniteImageError()
        low, high = np.percentile(sample, [self.low_percentile, self.high_percentile], axis=1)
        return low.astype(np.float32), high.astype(np.float32)

    @staticmethod
    def apply(image: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Scale a ``(C, h, w)`` array with per-channel ``low`` and ``high``; float32 out.

        A channel whose percentiles coincide (a constant image) is only shifted.
        Raises :class:`NonFiniteImageError` for NaN or infinite values, which
        the subsampled :meth:`statistics` of a large image may not have seen.
        """
        low = np.asarray(low, np.float32)[:, None, None]
        scale = np.asarray(high, np.float32)[:, None, None] - low
        scale = np.where(scale > 0, scale, np.float32(1.0))
        scaled = (np.asarray(image, dtype=np.float32) - low) / scale
        if not np.isfinite(scaled).all():
            raise NonFiniteImageError()
        return scaled

    def prepare(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Return the statistics of a ``(C, H, W)`` plane and its smoothing sigma (0.0: none).

        The one decision that training and inference share: the plane is scaled
        with its own percentiles and, when its pixel noise exceeds
        ``NOISY_PLANE``, smoothed with :meth:`smooth` before the network
        (smoothing and scaling commute). The noise is judged on a central
        window (``NOISE_WINDOW`` a side), so that a lazily loaded plane is not
        read whole just to decide.
        """
        low, high = self.statistics(plane)
        if not self.smooth_noisy:
            return low, high, 0.0
        height, width = plane.shape[-2:]
        top, left = max(0, (height - NOISE_WINDOW) // 2), max(0, (width - NOISE_WINDOW) // 2)
        window = plane[:, top : top + NOISE_WINDOW, left : left + NOISE_WINDOW]
        noisy = noise_level(self.apply(window, low, high)) > NOISY_PLANE
        return low, high, SMOOTHING_SIGMA if noisy else 0.0

    @staticmethod
    def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smooth each channel of a ``(C, H, W)`` array (mirrored edges); float32."""
        from scipy import ndimage

        array = np.asarray(image, dtype=np.float32)
        if sigma <= 0:
            return array
        return ndimage.gaussian_filter(
            array, sigma=(0, sigma, sigma), mode="mirror", truncate=SMOOTHING_TRUNCATE
        )

    @staticmethod
    def smoothing_reach(sigma: float) -> int:
        """Pixels around a pixel that :meth:`smooth` reads (0 for no smoothing).

        A part of a plane read with this margin and smoothed equals the same
        part of the whole plane smoothed.
        """
        return int(SMOOTHING_TRUNCATE * sigma + 0.5) if sigma > 0 else 0
