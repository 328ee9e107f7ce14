"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2).

The image is cut into tiles whose *outputs* cover it; each tile's input
carries ``border`` extra pixels of context on every side, taken from the image
or, at the image edge, mirrored. With the valid U-Net an output pixel depends
only on the input within ``border`` pixels of it, and max-pooling makes the
result depend on the tile origin modulo ``2**depth``. Tile origins are therefore
placed on multiples of ``2**depth``: the stitched result then equals one
forward pass over the whole mirrored image, whatever the tile size.

Inference is a generator: it yields a :class:`TileResult` as each tile
finishes (so a viewer can show it at once) and returns the full result last;
:func:`predict` runs it to the end. Memory is bounded by the tile, not by the
image: the input may be a numpy, zarr or dask array or a memory map, read one
tile at a time, and the outputs may be preallocated zarr arrays or memory maps.

Examples
--------
>>> import numpy as np
>>> from napari_unet.inference import tile_starts
>>> tile_starts(100, tile=40, align=16)
[0, 32, 64]
>>> tile_starts(30, tile=40, align=16)
[0]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from napari_unet._generators import run_to_end
from napari_unet.device import (
    DEVICE_CHOICES,
    PRECISION_CHOICES,
    Precision,
    autocast_dtype,
    resolve_device,
)
from napari_unet.model import UNet
from napari_unet.normalization import Normalization
from napari_unet.scaling import (
    MAX_FACTOR,
    area_of_diameter,
    median_object_area,
    resize_image,
    resize_maps,
    scale_factor,
    scaled_shape,
)
from napari_unet.tasks import Postprocess, Task, get_task, with_overrides

__all__ = [
    "ImagePlanes",
    "InferenceConfig",
    "ModelPredictor",
    "Prediction",
    "TileResult",
    "predict",
    "predict_generator",
    "test_time_augmented",
    "tile_geometry",
    "tile_starts",
    "tiled_predict",
    "without_channel_axis",
]

logger = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of overlap-tile inference.

    Parameters
    ----------
    tile_shape : tuple of int, optional
        Output size (height, width) of one tile, rounded up to a size the
        network can produce. By default the image is covered with the fewest
        input pixels by tiles of at most ``max_tile_pixels`` output pixels.
    max_tile_pixels : int
        Upper bound on the output pixels of an automatically chosen tile; it
        bounds memory (about 0.5 KB per pixel for the default network).
    threshold : float, optional
        Foreground probability above which a pixel belongs to an object
        (instance tasks). None keeps the model's (calibrated) setting.
    seed_threshold : float, optional
        Probability above which pixels seed the watershed that splits touching
        objects. None keeps the model's setting.
    min_seed_size, min_size : int, optional
        Smallest seed and smallest object, in pixels; None keeps the model's.
    tta : bool
        Test-time augmentation: average the probabilities of the 8 flips and
        rotations of every tile (8x the time; the result does not depend on
        the tiling).
    object_diameter : float or {"auto", "off"}
        Instance models that know their object size (:mod:`napari_unet.scaling`):
        the typical object diameter in the image, in pixels, so that the image
        is resampled to the model's object size; "auto" estimates it per plane
        (a plane whose objects already have the model's size is segmented
        once), except for cells that tile the image (``tessellate``), whose
        size is no measure of the scale; "off" segments every image at its
        own scale.
    device : str
        "auto", "cpu", "cuda" or "mps".
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision; "auto" uses it on a GPU and keeps float32 on the CPU (see
        :mod:`napari_unet.device`).
    """

    tile_shape: tuple[int, int] | None = None
    max_tile_pixels: int = 1 << 21
    threshold: float | None = None
    seed_threshold: float | None = None
    min_seed_size: int | None = None
    min_size: int | None = None
    tta: bool = False
    object_diameter: float | str = "auto"
    device: str = "auto"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if self.tile_shape is not None and (
            len(self.tile_shape) != 2 or any(int(s) < 1 for s in self.tile_shape)
        ):
            raise ValueError(f"tile_shape must be two positive integers, got {self.tile_shape}.")
        if self.max_tile_pixels < 1:
            raise ValueError(f"max_tile_pixels must be positive, got {self.max_tile_pixels}.")
        self.postprocess(Postprocess())  # checks the overrides
        if not isinstance(self.tta, bool):
            raise TypeError(f"tta must be True or False, got {self.tta!r}.")
        if self.object_diameter not in ("auto", "off") and not (
            isinstance(self.object_diameter, (int, float, np.integer, np.floating))
            and not isinstance(self.object_diameter, bool)
            and 1.0 <= self.object_diameter <= 10_000.0
        ):
            raise ValueError(
                'object_diameter must be "auto", "off" or a diameter in pixels from 1 to '
                f"10,000, got {self.object_diameter!r}."
            )
        if not isinstance(self.device, str) or self.device.split(":")[0] not in DEVICE_CHOICES:
            raise ValueError(
                f"device must be one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N'), "
                f"got {self.device!r}."
            )
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}."
            )

    def postprocess(self, base: Postprocess) -> Postprocess:
        """Return ``base`` (a model's settings) with this config's overrides applied."""
        return with_overrides(
            base,
            threshold=self.threshold,
            seed_threshold=self.seed_threshold,
            min_seed_size=self.min_seed_size,
            min_size=self.min_size,
        )


@dataclass(frozen=True)
class TileResult:
    """One finished tile: where it lies and what the network predicted there.

    Attributes
    ----------
    plane : int
        Index of the 2D plane in a stack (0 for a 2D image).
    index, count : int
        Tile number within the plane and number of tiles of the plane.
    region : tuple of slice
        Rows and columns of the plane covered by ``probabilities``.
    probabilities : numpy.ndarray
        ``(n_classes, h, w)`` class probabilities of the region.
    scale : float
        The factor the plane was resampled by for this pass (1.0: as it is);
        a plane brought to the model's object size runs a second pass.
    """

    plane: int
    index: int
    count: int
    region: tuple[slice, slice]
    probabilities: np.ndarray
    scale: float = 1.0


@dataclass
class Prediction:
    """The result of inference on a whole image.

    Attributes
    ----------
    labels : array
        Instance labels (``instances`` mode) or class ids (``semantic``), with
        the image's plane and spatial shape.
    probabilities : array or None
        ``(..., n_classes, H, W)`` probabilities when requested.
    completed : bool
        False when inference was stopped early; tiles not reached are 0.
    scales : list of float
        Per plane, the factor the plane was resampled by to bring its objects
        to the model's object size (1.0: segmented at its own scale). The
        labelling sizes apply at that scale: label the kept maps again with
        ``postprocess.at_scale(scale)``.
    """

    labels: Any
    probabilities: Any | None
    completed: bool = True
    scales: list[float] = field(default_factory=list)


class ImagePlanes:
    """Read 2D planes of an image, one box at a time, in ``(C, h, w)`` layout.

    Parameters
    ----------
    image : array
        numpy, zarr or dask array (or memory map) with at least two axes. The
        last two axes that are not ``channel_axis`` are the spatial axes; any
        other axes index planes of a stack.
    channel_axis : int, optional
        Axis holding channels (e.g. -1 for RGB), or None for one channel.
    """

    def __init__(self, image: Any, channel_axis: int | None = None) -> None:
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            raise TypeError(f"image must be an array, got {type(image).__name__}.")
        shape = tuple(int(s) for s in image.shape)
        if channel_axis is not None:
            if not -len(shape) <= channel_axis < len(shape):
                raise ValueError(
                    f"channel_axis {channel_axis} is out of range for an image of shape {shape}."
                )
            channel_axis %= len(shape)
        other = [axis for axis in range(len(shape)) if axis != channel_axis]
        if len(other) < 2:
            raise ValueError(
                f"image of shape {shape} has no two spatial axes besides the channel axis."
            )
        dtype = np.dtype(image.dtype)
        if dtype.kind == "b" or not (
            np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
        ):
            raise TypeError(f"image must hold numbers, got dtype {dtype}.")
        self.image = image
        self.channel_axis = channel_axis
        self.spatial_axes = tuple(other[-2:])
        self.plane_axes = tuple(other[:-2])
        self.plane_shape = tuple(shape[axis] for axis in self.plane_axes)
        self.height, self.width = (shape[axis] for axis in self.spatial_axes)
        self.channels = 1 if channel_axis is None else shape[channel_axis]
        if channel_axis is None and len(shape) >= 3 and 2 <= shape[-1] <= 4 < shape[-2]:
            # Planes a few pixels wide are channels read as space: (H, W, 3) as H planes.
            raise ValueError(
                f"image of shape {shape} looks like {shape[-1]} channels on its last axis, "
                f"which would make planes {shape[-1]} pixels wide; pass channel_axis=-1 for a "
                "model trained on that many channels, or give one channel (image[..., 0]) "
                "to a single-channel model."
            )
        if self.height < 2 or self.width < 2:
            raise ValueError(f"image planes must be at least 2x2 pixels, got {shape}.")

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (1 for a single image)."""
        return math.prod(self.plane_shape)

    def read(self, plane: int, rows: slice, cols: slice) -> np.ndarray:
        """Return ``(C, h, w)`` pixels of one plane as a numpy array."""
        plane_index = np.unravel_index(plane, self.plane_shape) if self.plane_shape else ()
        index: list[Any] = [slice(None)] * len(self.image.shape)
        for axis, value in zip(self.plane_axes, plane_index, strict=True):
            index[axis] = int(value)
        index[self.spatial_axes[0]] = rows
        index[self.spatial_axes[1]] = cols
        box = np.asarray(self.image[tuple(index)])
        if self.channel_axis is None:
            return box[np.newaxis]
        # Remaining axes keep their order: put the channel axis first.
        return np.moveaxis(
            box,
            int(self.channel_axis > self.spatial_axes[0])
            + int(self.channel_axis > self.spatial_axes[1]),
            0,
        )

    def plane_view(self, plane: int) -> _PlaneView:
        """Strided-slicing view of one plane in ``(C, H, W)`` layout (for statistics)."""
        return _PlaneView(self, plane)

    def read_mirrored(self, plane: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Read a box that may extend past the image; the outside is mirrored.

        Mirroring (numpy's "reflect") extends the image as in the paper's
        overlap-tile strategy. The mirrored pixels come from the whole plane,
        so the box equals the same box of ``np.pad(plane, ..., mode="reflect")``
        even where the mirror reaches past the part of the box inside the image.
        """
        rows = _reflect_indices(top, height, self.height)
        cols = _reflect_indices(left, width, self.width)
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        box = self.read(plane, slice(r0, r1), slice(c0, c1))
        if r0 == top and c0 == left and r1 - r0 == height and c1 - c0 == width:
            return box
        return box[:, (rows - r0)[:, None], (cols - c0)[None, :]]


def _reflect_indices(start: int, count: int, length: int) -> np.ndarray:
    """Map ``start .. start + count - 1`` into ``[0, length)`` by mirroring at the edges.

    The same mapping as ``np.pad(..., mode="reflect")`` (edge pixels not
    repeated), also for pads longer than the axis.
    """
    period = 2 * (length - 1)
    index = np.abs(np.arange(start, start + count)) % period
    return np.where(index >= length, period - index, index)


class _PlaneView:
    """Minimal array-like over one plane, so normalisation can subsample it."""

    def __init__(self, planes: ImagePlanes, plane: int) -> None:
        self._planes, self._plane = planes, plane
        self.shape = (planes.channels, planes.height, planes.width)

    def __getitem__(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        channels, rows, cols = index
        return self._planes.read(self._plane, rows, cols)[channels]


def tile_starts(length: int, tile: int, align: int) -> list[int]:
    """Start positions of output tiles covering ``[0, length)``.

    Starts are multiples of ``align``, spread evenly, the first at 0 and the last
    at the smallest aligned position from which a tile reaches the end (a tile
    may run past the end by less than ``align``). Consecutive tiles overlap;
    overlapping outputs are identical.
    """
    if tile < 1 or align < 1 or length < 1:
        raise ValueError(f"length, tile and align must be positive, got {length}, {tile}, {align}.")
    if tile >= length:
        return [0]
    step = (tile // align) * align
    if step == 0:
        raise ValueError(f"tile ({tile}) must be at least the alignment ({align}).")
    last = math.ceil((length - tile) / align) * align
    count = math.ceil(last / step) + 1
    starts = sorted({round(x / align) * align for x in np.linspace(0, last, count)})
    return [int(s) for s in starts]


def tiled_predict(
    planes: ImagePlanes,
    plane: int,
    predictor: Predictor,
    *,
    border: int,
    tile_shape: tuple[int, int],
    align: int,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TileResult, None, bool]:
    """Run ``predictor`` over overlapping tiles of one plane; yield each tile's output.

    Parameters
    ----------
    planes : ImagePlanes
        The image.
    plane : int
        Which plane.
    predictor : callable
        Maps a ``(C, h + 2 border, w + 2 border)`` float32 input tile to
        ``(K, h, w)`` outputs (any callable: tests use trivial ones).
    border : int
        Context pixels on each side of an output tile.
    tile_shape : tuple of int
        Output tile (height, width).
    align : int
        Tile origins are multiples of this (``2**depth`` for a U-Net).
    prepare : callable, optional
        Applied to each raw input tile before ``predictor`` (normalisation).
    should_stop : callable, optional
        Checked before every tile; when it returns True the generator stops.

    Returns
    -------
    bool
        True when every tile was processed (the generator's return value).
    """
    rows = tile_starts(planes.height, tile_shape[0], align)
    cols = tile_starts(planes.width, tile_shape[1], align)
    count = len(rows) * len(cols)
    for index, (top, left) in enumerate((r, c) for r in rows for c in cols):
        if should_stop is not None and should_stop():
            return False
        tile = planes.read_mirrored(
            plane,
            top - border,
            left - border,
            tile_shape[0] + 2 * border,
            tile_shape[1] + 2 * border,
        )
        if prepare is not None:
            tile = prepare(tile)
        output = predictor(tile)
        height = min(tile_shape[0], planes.height - top)
        width = min(tile_shape[1], planes.width - left)
        region = (slice(top, top + height), slice(left, left + width))
        yield TileResult(plane, index, count, region, output[:, :height, :width])
    return True


class ModelPredictor:
    """Wrap a :class:`~napari_unet.model.UNet` as a tile predictor returning probabilities.

    Runs under ``torch.inference_mode`` in ``channels_last`` memory format (1.35-1.8x
    faster convolutions on CPU), with autocast where :func:`autocast_dtype` says
    it is faster and safe.
    """

    def __init__(
        self,
        model: UNet,
        device: str = "auto",
        precision: Precision = "auto",
        task: Task | str = "paper",
    ) -> None:
        self.task = get_task(task)
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.model = model.to(self.device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.config = model.config

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Return the task's ``(n_classes, h, w)`` outputs for a ``(C, H, W)`` tile."""
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32))[None]
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(batch)
            outputs = self.task.activate(logits.float())[0].cpu().numpy()
        if not np.isfinite(outputs).all():
            # Finite inputs and weights, yet NaN out: an overflow, not the user's image.
            raise ValueError(
                "The network's output is not finite for this image (an overflow); try "
                "precision 'fp32', or a model trained on images like this one."
            )
        return outputs


def choose_tile_shape(
    height: int, width: int, model_config: Any, max_tile_pixels: int
) -> tuple[int, int]:
    """Pick the output tile that covers the image with the fewest input pixels.

    Among tilings of ``n_rows x n_cols`` tiles of equal size whose output has
    at most ``max_tile_pixels`` pixels, take the one whose tiles' inputs (output
    plus the border on each side) add up to the least area.
    """
    border, step = model_config.border, model_config.size_step

    def covering(length: int, parts: int) -> int:
        wanted = max(math.ceil(length / parts), step)
        size = model_config.input_shape_for((wanted, 1))[0]
        return model_config.output_shape((size, size))[0]

    def input_area(length: int, tile: int) -> int:
        return len(tile_starts(length, tile, step)) * (tile + 2 * border)

    smallest = covering(1, 1)
    # Tiles within the budget come first (fewest input pixels among them); only
    # when none fits (a budget below the smallest tile) take the smallest tile.
    best: tuple[tuple[bool, int], tuple[int, int]] | None = None
    for n_rows in range(1, math.ceil(height / smallest) + 1):
        tile_h = covering(height, n_rows)
        # Fewest columns whose tiles fit the budget (tile width shrinks with n).
        low, high = 1, math.ceil(width / smallest)
        while low < high:
            middle = (low + high) // 2
            if tile_h * covering(width, middle) <= max_tile_pixels:
                high = middle
            else:
                low = middle + 1
        tile_w = covering(width, low)
        area = tile_h * tile_w
        if area > max_tile_pixels:
            key = (True, area)
        else:
            key = (False, input_area(height, tile_h) * input_area(width, tile_w))
        if best is None or key < best[0]:
            best = (key, (tile_h, tile_w))
    assert best is not None
    return best[1]


def without_channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, ...]:
    """Return ``shape`` without its channel axis: the shape of the image's labels.

    Examples
    --------
    >>> without_channel_axis((5, 512, 256, 3), -1)
    (5, 512, 256)
    >>> without_channel_axis((512, 256), None)
    (512, 256)
    """
    if channel_axis is None:
        return tuple(shape)
    axis = channel_axis % len(shape)
    return tuple(shape[:axis]) + tuple(shape[axis + 1 :])


def tile_geometry(
    model_config: Any, config: InferenceConfig, spatial: tuple[int, int]
) -> tuple[tuple[int, int], int]:
    """Return the output tile shape and the context border used to cover ``spatial``.

    ``config.tile_shape`` is rounded up to a size the network can produce;
    without it the tile is chosen by :func:`choose_tile_shape` for an image of
    shape ``spatial``. The border is the valid network's lost margin, or two
    alignment steps for a "same"-padded network (whose output is then cropped).
    :func:`predict_generator` and the block-wise
    :func:`~napari_unet.distributed.segment_to_zarr` share this arithmetic, so
    that the same settings give the same tiles.
    """
    if config.tile_shape is not None:
        wanted = tuple(max(int(size), model_config.size_step) for size in config.tile_shape)
        tile_shape = model_config.output_shape(model_config.input_shape_for(wanted))
    else:
        tile_shape = choose_tile_shape(*spatial, model_config, config.max_tile_pixels)
    border = model_config.border if model_config.padding == "valid" else 2 * model_config.size_step
    return (int(tile_shape[0]), int(tile_shape[1])), int(border)


def predict_generator(
    model: UNet,
    image: Any,
    *,
    channel_axis: int | None = None,
    task: str | Task = "paper",
    postprocess: Postprocess | None = None,
    normalization: Normalization | None = None,
    config: InferenceConfig | None = None,
    return_probabilities: bool = False,
    labels_out: Any | None = None,
    probabilities_out: Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    predictor: Predictor | None = None,
    object_area: float | None = None,
    source_object_area: float | None = None,
) -> Generator[TileResult, None, Prediction]:
    """Segment an image or a stack tile by tile; yield tiles, return the result.

    Parameters
    ----------
    model : UNet
        The trained network (its config gives the tiling arithmetic).
    image : array
        2D image, stack of 2D planes, optionally with a channel axis; numpy,
        zarr, dask or memory-mapped.
    channel_axis : int, optional
        Axis of channels (-1 for RGB); must match the model's ``in_channels``.
    task : str or Task
        What the network's outputs mean (:mod:`napari_unet.tasks`): an
        instance head ("three-class", "distance", "paper"), whose maps become objects when
        a plane is finished, or "semantic" (the most probable class per pixel).
        A checkpoint says which: ``checkpoint.task``.
    postprocess : Postprocess, optional
        How an instance task's maps become objects; default the task's
        defaults (a checkpoint's calibrated settings: ``checkpoint.postprocess``).
        ``config``'s threshold settings override it.
    normalization : Normalization, optional
        How to scale intensities (from the checkpoint); default percentiles.
    config : InferenceConfig, optional
        Tiling, thresholds, device and precision.
    return_probabilities : bool
        Also return class probabilities (``(..., K, H, W)`` float32).
    labels_out, probabilities_out : array, optional
        Preallocated outputs (e.g. zarr arrays or memory maps) of the right
        shape; labels need an integer dtype.
    should_stop : callable, optional
        Polled before every tile; inference then stops and returns what is done.
    predictor : callable, optional
        Replaces the model's forward pass (for tests and custom back ends).
    object_area : float, optional
        The median object area the model was trained at
        (``checkpoint.object_area``); with it, ``config.object_diameter``
        resamples each plane to that size (:mod:`napari_unet.scaling`).
    source_object_area : float, optional
        A fine-tuned model's ``checkpoint.source_object_area`` (the typical
        object area of its training images at their own scale): an estimated
        object size starts from the scale those images were trained at, not
        from the image's own. A network fine-tuned at 0.76x can cut objects
        left at 1x into pieces of the model's size, which an estimate started
        there then takes for the right size (docs/benchmarks.md).

    Yields
    ------
    TileResult
        Each finished tile.

    Returns
    -------
    Prediction
        Labels (and probabilities) for the whole image.
    """
    config = config or InferenceConfig()
    normalization = normalization or Normalization()
    task = get_task(task)
    settings = config.postprocess(postprocess or task.default_postprocess)
    planes = ImagePlanes(image, channel_axis)
    model_config = model.config
    if planes.channels != model_config.in_channels:
        raise ValueError(
            f"The model expects {model_config.in_channels} channel(s) but the image has "
            f"{planes.channels} (channel_axis={channel_axis}); choose the matching channel axis "
            f"or a model trained on this kind of image."
        )
    n_classes = model_config.n_classes
    check_outputs(task, n_classes)
    spatial = (planes.height, planes.width)
    labels = (
        labels_out
        if labels_out is not None
        else np.zeros((*planes.plane_shape, *spatial), dtype=labels_dtype(task))
    )
    _check_out(labels, (*planes.plane_shape, *spatial), "labels_out")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise TypeError(f"labels_out needs an integer dtype, got {np.dtype(labels.dtype)}.")
    probabilities = probabilities_out
    if probabilities is None and return_probabilities:
        probabilities = np.zeros((*planes.plane_shape, n_classes, *spatial), dtype=np.float32)
    if probabilities is not None:
        _check_out(probabilities, (*planes.plane_shape, n_classes, *spatial), "probabilities_out")
        if not np.issubdtype(np.dtype(probabilities.dtype), np.floating):
            raise TypeError(
                f"probabilities_out needs a float dtype, got {np.dtype(probabilities.dtype)}."
            )
    predictor = predictor or ModelPredictor(model, config.device, config.precision, task)
    tile_shape, border = tile_geometry(model_config, config, spatial)
    if model_config.padding == "same":
        predictor = _crop_predictor(predictor, border)
    if config.tta:
        predictor = test_time_augmented(predictor)
    logger.info("Tiling %s with output tiles of %s (border %d)", spatial, tile_shape, border)

    rescaling = task.instances and object_area is not None and config.object_diameter != "off"
    if rescaling and config.object_diameter == "auto" and settings.tessellate:
        # Cells that tile the image (EM) vary in size through a stack, while the
        # membranes between them, which set the network's scale, do not.
        rescaling = False
        logger.info("Cells tile the image: segmenting at the image's own scale.")
    completed = True
    scales: list[float] = []
    for plane in range(planes.n_planes):
        index = np.unravel_index(plane, planes.plane_shape) if planes.plane_shape else ()
        low, high, sigma = normalization.prepare(planes.plane_view(plane))
        smoothed = (
            Normalization.smooth(planes.read_mirrored(plane, 0, 0, *spatial), sigma)
            if sigma and _fits_in_memory(spatial, "smoothed against its noise")
            else None
        )
        factor, passes = 1.0, 1
        if rescaling and config.object_diameter == "auto":
            passes = MAX_PASSES
            if source_object_area is not None:
                factor = scale_factor(source_object_area, object_area)
        elif rescaling:
            factor = scale_factor(area_of_diameter(float(config.object_diameter)), object_area)
        factor = factor if _fits_resampled(spatial, factor) else 1.0
        while True:
            run = _ScaledPass(planes, plane, factor, task, probabilities is not None, smoothed)
            tiles = tiled_predict(
                run.planes,
                run.plane,
                predictor,
                border=border,
                tile_shape=tile_shape
                if factor == 1.0
                else tile_geometry(model_config, config, run.spatial)[0],
                align=model_config.size_step,
                prepare=lambda tile, low=low, high=high: Normalization.apply(tile, low, high),
                should_stop=should_stop,
            )
            while True:
                try:
                    result = next(tiles)
                except StopIteration as stop:
                    completed = bool(stop.value)
                    break
                run.keep(result)
                if factor == 1.0 and not task.instances:
                    labels[(*index, *result.region)] = task.tile_labels(result.probabilities)
                if factor == 1.0 and probabilities is not None:
                    probabilities[(*index, slice(None), *result.region)] = result.probabilities
                yield run.in_image(result, spatial)
            passes -= 1
            if not completed or passes == 0:
                break
            # Estimate the object size from this pass's objects, taken at the model's
            # scale; without the smallest-object rule, which assumes that scale.
            found = task.label_plane(run.maps, replace(settings, min_size=0))
            step = scale_factor(median_object_area(np.asarray(found)), object_area)
            better = float(np.clip(factor * step, 1.0 / MAX_FACTOR, MAX_FACTOR))
            if better == factor or not _fits_resampled(spatial, better):
                break
            factor = better
        scales.append(factor)
        if factor != 1.0 and probabilities is not None and run.probabilities is not None:
            probabilities[(*index, slice(None))] = resize_maps(run.probabilities, spatial)
        if run.maps is not None:
            maps = run.maps if factor == 1.0 else resize_maps(run.maps, spatial)
            # Label straight into a numpy (or memory-mapped) output: one full-plane
            # copy less, and label_instances checks that the dtype holds every id.
            in_place = labels[index] if isinstance(labels, np.ndarray) else None
            plane_labels = task.label_plane(maps, settings.at_scale(factor), out=in_place)
            if in_place is None:
                labels[index] = plane_labels
            del maps, plane_labels
        del run
        if not completed:
            break
    return Prediction(
        labels=labels, probabilities=probabilities, completed=completed, scales=scales
    )


#: With an estimated object size, at most this many passes of the network per plane.
MAX_PASSES = 3
#: Planes are resampled in memory; beyond this many pixels they keep their own scale.
MAX_RESAMPLED_PIXELS = 1 << 26


def _fits_resampled(spatial: tuple[int, int], factor: float) -> bool:
    """Whether a plane can be resampled by ``factor`` in memory (else: logged)."""
    if factor == 1.0:
        return True
    height, width = scaled_shape(spatial, factor)
    if max(height * width, spatial[0] * spatial[1]) <= MAX_RESAMPLED_PIXELS:
        return True
    logger.warning(
        "A %dx%d plane resampled by %.2f would not fit in memory; it is segmented at its "
        "own scale.",
        *spatial,
        factor,
    )
    return False


def _fits_in_memory(spatial: tuple[int, int], what: str) -> bool:
    """Whether a whole plane can be read into memory to be ``what`` (else: logged)."""
    if spatial[0] * spatial[1] <= MAX_RESAMPLED_PIXELS:
        return True
    logger.warning("A %dx%d plane is too large to be %s; it is left as it is.", *spatial, what)
    return False


class _ScaledPass:
    """One pass of the network over a plane resampled by ``factor`` (1.0: as it is).

    A plane that is resampled or ``smoothed`` (a noisy plane, see
    :meth:`Normalization.prepare`) is held in memory, so that its tiles stay
    exact; otherwise tiles are read lazily from the image. Keeps
    the instance maps (and, when asked, the probabilities) of the pass at its
    own scale, and maps its tiles back onto the image for streaming.
    """

    def __init__(
        self,
        planes: ImagePlanes,
        plane: int,
        factor: float,
        task: Task,
        keep_probabilities: bool,
        smoothed: np.ndarray | None = None,
    ) -> None:
        self.factor, self.task, self.image_plane = factor, task, plane
        self.in_memory = factor != 1.0 or smoothed is not None
        if not self.in_memory:
            self.planes, self.plane = planes, plane
        else:
            whole = (
                smoothed
                if smoothed is not None
                else planes.read_mirrored(plane, 0, 0, planes.height, planes.width)
            )
            if factor != 1.0:
                whole = resize_image(whole, scaled_shape((planes.height, planes.width), factor))
            self.planes, self.plane = ImagePlanes(whole, channel_axis=0), 0
        self.spatial = (self.planes.height, self.planes.width)
        self.maps = (
            np.zeros((len(task.map_names), *self.spatial), np.float32) if task.instances else None
        )
        self.probabilities: np.ndarray | None = None
        self._keep_probabilities = keep_probabilities and factor != 1.0

    def keep(self, result: TileResult) -> None:
        rows, cols = result.region
        if self.maps is not None:
            self.maps[:, rows, cols] = self.task.tile_maps(result.probabilities)
        if self._keep_probabilities:
            if self.probabilities is None:
                self.probabilities = np.zeros(
                    (len(result.probabilities), *self.spatial), np.float32
                )
            self.probabilities[:, rows, cols] = result.probabilities

    def in_image(self, result: TileResult, spatial: tuple[int, int]) -> TileResult:
        """Return the tile where it lies in the image (resampled when the pass is)."""
        if not self.in_memory:
            return result
        if self.factor == 1.0:
            return replace(result, plane=self.image_plane)
        rows, cols = result.region
        factor = self.factor
        region = tuple(
            slice(math.floor(part.start / factor), min(size, math.ceil(part.stop / factor)))
            for part, size in zip((rows, cols), spatial, strict=True)
        )
        shape = (region[0].stop - region[0].start, region[1].stop - region[1].start)
        return TileResult(
            self.image_plane,
            result.index,
            result.count,
            region,
            resize_maps(result.probabilities, shape),
            factor,
        )


def predict(model: UNet, image: Any, **kwargs: Any) -> Prediction:
    """Run :func:`predict_generator` to the end and return its :class:`Prediction`."""
    return run_to_end(predict_generator(model, image, **kwargs))


def labels_dtype(task: Task) -> np.dtype:
    """Object ids need 32 bits; class ids 16."""
    return np.dtype(np.uint32 if task.instances else np.uint16)


def check_outputs(task: Task, n_classes: int) -> None:
    """Refuse a network whose number of outputs does not suit ``task``."""
    if task.instances and task.n_classes(0) != n_classes:
        raise ValueError(
            f"The network has {n_classes} outputs but the {task.name!r} task reads "
            f"{task.n_classes(0)}; use the task the model was trained with "
            f"(checkpoint.task)."
        )


def test_time_augmented(predictor: Predictor) -> Predictor:
    """Average ``predictor`` over the 8 flips and rotations of each tile.

    Every transform is undone on the output before averaging. A valid U-Net's
    pooling pairs the same pixels in a flipped tile (its sizes are even at
    every pooling level), so the augmented result still does not depend on
    how the image is tiled.

    Examples
    --------
    >>> import numpy as np
    >>> shift_right = lambda tile: np.roll(tile, 1, axis=-1)   # not flip-symmetric
    >>> tile = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> bool(np.allclose(test_time_augmented(lambda t: t * 2)(tile), tile * 2))
    True
    >>> bool(np.allclose(test_time_augmented(shift_right)(tile), shift_right(tile)))
    False
    """

    def augmented(tile: np.ndarray) -> np.ndarray:
        total = None
        for flip in (False, True):
            flipped = tile[..., ::-1] if flip else tile
            for quarter in range(4):
                output = predictor(np.ascontiguousarray(np.rot90(flipped, quarter, axes=(-2, -1))))
                output = np.rot90(output, -quarter, axes=(-2, -1))
                output = output[..., ::-1] if flip else output
                total = output.astype(np.float32) if total is None else total + output
        assert total is not None
        return total / np.float32(8)

    return augmented


def _crop_predictor(predictor: Predictor, border: int) -> Predictor:
    """For "same" padding: keep the centre of the output, like a valid network."""

    def cropped(tile: np.ndarray) -> np.ndarray:
        output = predictor(tile)
        return output[:, border:-border, border:-border]

    return cropped


def _check_out(array: Any, shape: Sequence[int], name: str) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}.")
