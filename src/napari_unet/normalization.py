"""Intensity normalisation shared by training and inference.

A checkpoint records how its training images were scaled, so that inference
scales new images the same way. Each image plane and channel is mapped
linearly so that its ``low_percentile`` goes to 0 and its ``high_percentile``
to 1 (robust to hot pixels and to the camera offset, and independent of the
bit depth).

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


@dataclass(frozen=True)
class Normalization:
    """Per-channel percentile normalisation.

    Parameters
    ----------
    low_percentile, high_percentile : float
        Percentiles mapped to 0 and 1; ``0 <= low < high <= 100``.
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.8

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
        return cls(float(data["low_percentile"]), float(data["high_percentile"]))

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
