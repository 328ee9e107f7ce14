"""Synthetic fluorescence images of nuclei with known instance labels.

The generator is the plugin's sample data and the test data of the project: it
needs no network and no files, and it is deterministic for a given seed.

Nuclei are ellipses with a dome-shaped intensity profile (a projected ellipsoid),
a per-nucleus brightness and a faint texture. A share of them is placed against
an existing nucleus so that the two touch along a shared border, which is the
case the U-Net boundary weights are made for. The image is blurred by a Gaussian
point-spread function and degraded by Poisson (shot) and Gaussian (read) noise.

Examples
--------
>>> from napari_unet.synthetic import make_touching_nuclei
>>> image, labels = make_touching_nuclei((128, 128), n_nuclei=12, seed=1)
>>> image.dtype, labels.dtype, image.shape == labels.shape
(dtype('uint16'), dtype('int32'), True)
>>> int(labels.max())
12
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet._validation import as_rng, check_positive

__all__ = ["make_touching_nuclei"]


@dataclass(frozen=True)
class _Nucleus:
    row: float
    col: float
    semi_major: float
    semi_minor: float
    angle: float
    brightness: float

    def radius_towards(self, direction: float) -> float:
        """Distance from the centre to the ellipse border along ``direction`` (radians)."""
        relative = direction - self.angle
        return 1.0 / np.hypot(
            np.cos(relative) / self.semi_major, np.sin(relative) / self.semi_minor
        )


def make_touching_nuclei(
    shape: tuple[int, int] = (256, 256),
    n_nuclei: int | None = None,
    *,
    radius_range: tuple[float, float] = (7.0, 13.0),
    touching_fraction: float = 0.5,
    blur_sigma: float = 1.5,
    photons: float = 300.0,
    read_noise: float = 4.0,
    seed: np.random.Generator | int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a fluorescence-like image of nuclei, some touching, with its instance labels.

    Parameters
    ----------
    shape : tuple of int
        Height and width of the image, each at least 32.
    n_nuclei : int, optional
        Number of nuclei to place. Defaults to one per 1200 pixels (about 55 on
        256x256). Fewer are placed when the image has no room left.
    radius_range : tuple of float
        Smallest and largest semi-axis of the nuclei, in pixels.
    touching_fraction : float
        Share of nuclei placed against an already placed one, in [0, 1].
    blur_sigma : float
        Standard deviation of the Gaussian point-spread function, in pixels
        (0 for none).
    photons : float
        Expected photon count at the brightest nucleus centre; lower is noisier.
    read_noise : float
        Standard deviation of the Gaussian camera noise, in counts.
    seed : numpy.random.Generator or int or None
        Source of randomness; the same seed gives the same image.

    Returns
    -------
    image : numpy.ndarray of uint16, shape ``shape``
        The noisy fluorescence image (camera offset 100 counts).
    labels : numpy.ndarray of int32, shape ``shape``
        Instance labels: 0 background, 1..N the nuclei.
    """
    shape = _check_shape(shape)
    low, high = (float(r) for r in radius_range)
    if not 1.0 <= low <= high:
        raise ValueError(
            f"radius_range must be (low, high) with 1 <= low <= high, got {radius_range}."
        )
    if not 0.0 <= touching_fraction <= 1.0:
        raise ValueError(f"touching_fraction must be in [0, 1], got {touching_fraction}.")
    check_positive(blur_sigma, "blur_sigma", allow_zero=True)
    check_positive(photons, "photons")
    check_positive(read_noise, "read_noise", allow_zero=True)
    if n_nuclei is None:
        n_nuclei = max(1, round(shape[0] * shape[1] / 1200))
    if isinstance(n_nuclei, bool) or not isinstance(n_nuclei, (int, np.integer)) or n_nuclei < 1:
        raise ValueError(f"n_nuclei must be a positive integer, got {n_nuclei!r}.")
    rng = as_rng(seed)

    nuclei = _place_nuclei(shape, int(n_nuclei), low, high, touching_fraction, rng)
    labels, profile = _rasterise(shape, nuclei, rng)
    image = _acquire(profile, blur_sigma, photons, read_noise, rng)
    return image, labels


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 32 for s in shape):
        raise ValueError(f"shape must be two integers >= 32 (height, width), got {shape}.")
    return int(shape[0]), int(shape[1])


def _place_nuclei(
    shape: tuple[int, int],
    n_nuclei: int,
    low: float,
    high: float,
    touching_fraction: float,
    rng: np.random.Generator,
) -> list[_Nucleus]:
    nuclei: list[_Nucleus] = []
    for _ in range(n_nuclei * 60):
        if len(nuclei) == n_nuclei:
            break
        semi_major = rng.uniform(low, high)
        semi_minor = semi_major / rng.uniform(1.0, 1.5)
        semi_minor = max(semi_minor, low * 0.8)
        angle = rng.uniform(0, np.pi)
        brightness = rng.uniform(0.45, 1.0)
        if nuclei and rng.random() < touching_fraction:
            # Put the new nucleus against a placed one, overlapping by a few
            # pixels so that, once each pixel goes to the nearer nucleus, the two
            # share a straight border.
            anchor = nuclei[rng.integers(len(nuclei))]
            direction = rng.uniform(0, 2 * np.pi)
            probe = _Nucleus(0, 0, semi_major, semi_minor, angle, brightness)
            distance = (
                anchor.radius_towards(direction) + probe.radius_towards(direction + np.pi)
            ) * rng.uniform(0.8, 0.92)
            row = anchor.row + distance * np.sin(direction)
            col = anchor.col + distance * np.cos(direction)
        else:
            row = rng.uniform(0, shape[0])
            col = rng.uniform(0, shape[1])
        candidate = _Nucleus(row, col, semi_major, semi_minor, angle, brightness)
        margin = semi_minor * 0.5
        if not (margin <= row < shape[0] - margin and margin <= col < shape[1] - margin):
            continue
        if all(_far_enough(candidate, other) for other in nuclei):
            nuclei.append(candidate)
    return nuclei


def _far_enough(a: _Nucleus, b: _Nucleus) -> bool:
    """Whether two nuclei overlap by no more than a touching border allows."""
    direction = np.arctan2(b.row - a.row, b.col - a.col)
    reach = a.radius_towards(direction) + b.radius_towards(direction + np.pi)
    return bool(np.hypot(b.row - a.row, b.col - a.col) >= 0.78 * reach)


def _rasterise(
    shape: tuple[int, int], nuclei: list[_Nucleus], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the labels and the noise-free intensity profile of the nuclei."""
    labels = np.zeros(shape, dtype=np.int32)
    profile = np.zeros(shape, dtype=np.float64)
    # Normalised elliptical radius of the nucleus that owns each pixel so far:
    # where nuclei overlap, a pixel goes to the one whose centre is relatively nearer.
    owner_radius = np.full(shape, np.inf)
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= max(float(np.abs(texture).max()), 1e-12)
    for index, nucleus in enumerate(nuclei, start=1):
        extent = int(np.ceil(nucleus.semi_major)) + 1
        r0, r1 = max(int(nucleus.row) - extent, 0), min(int(nucleus.row) + extent + 1, shape[0])
        c0, c1 = max(int(nucleus.col) - extent, 0), min(int(nucleus.col) + extent + 1, shape[1])
        rows, cols = np.mgrid[r0:r1, c0:c1]
        dy, dx = rows - nucleus.row, cols - nucleus.col
        cos, sin = np.cos(nucleus.angle), np.sin(nucleus.angle)
        along = (dx * cos + dy * sin) / nucleus.semi_major
        across = (-dx * sin + dy * cos) / nucleus.semi_minor
        radius = np.hypot(along, across)
        window = (slice(r0, r1), slice(c0, c1))
        wins = (radius < 1.0) & (radius < owner_radius[window])
        owner_radius[window][wins] = radius[wins]
        labels[window][wins] = index
        dome = np.sqrt(np.clip(1.0 - radius**2, 0.0, 1.0))
        value = nucleus.brightness * (0.35 + 0.65 * dome) * (1.0 + 0.2 * texture[window])
        profile[window][wins] = value[wins]
    # A nucleus can lose pixels to later ones; keep ids contiguous 1..N.
    present = np.unique(labels)
    present = present[present > 0]
    if present.size and present[-1] != present.size:
        lookup = np.zeros(int(present[-1]) + 1, dtype=np.int32)
        lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
        labels = lookup[labels]
    return labels, profile


def _acquire(
    profile: np.ndarray,
    blur_sigma: float,
    photons: float,
    read_noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blur, add background and noise, and digitise like a camera."""
    signal = ndi.gaussian_filter(profile, blur_sigma) if blur_sigma > 0 else profile
    background = 0.06 + 0.03 * ndi.gaussian_filter(rng.standard_normal(profile.shape), 20.0)
    expected = np.clip(signal + background, 0.0, None) * photons
    counts = rng.poisson(expected).astype(np.float64)
    counts += rng.normal(0.0, read_noise, size=counts.shape) if read_noise > 0 else 0.0
    return np.clip(np.rint(counts + 100.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)
