"""Training data: normalised planes with targets and weights, and augmented tiles.

:func:`prepare_training_data` turns (image, labels) pairs into normalised
planes whose targets and loss weights come from the task
(:mod:`napari_unet.tasks`), computed once. :class:`TileSampler` then draws
random tiles of the network's input size around annotated pixels and warps
them with one combined transform (elastic deformation on a coarse 3x3 grid,
rotation, flip, shift, mirrored at the image border) plus gray-value changes;
:class:`Prefetcher` runs it in a background thread, a few tiles ahead of the
training loop (:mod:`napari_unet.training`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet._validation import check_image, check_labels, check_same_shape
from napari_unet.augment import random_displacement_field, warp
from napari_unet.inference import ImagePlanes
from napari_unet.label_kinds import check_semantic_values, read_labels, to_instances
from napari_unet.metrics import compact_ids
from napari_unet.normalization import Normalization
from napari_unet.scaling import (
    model_object_area,
    object_areas,
    resize_image,
    resize_labels,
    scale_factor,
    scaled_shape,
    typical_area,
)
from napari_unet.tasks import Task, get_task, task_for

if TYPE_CHECKING:
    from napari_unet.model import UNetConfig
    from napari_unet.training import TrainConfig

__all__ = [
    "Prefetcher",
    "TileSampler",
    "TrainingData",
    "make_sampler",
    "prepare_training_data",
    "split_planes",
]

#: More classes than this is an intensity image or instance ids, not a semantic labelling.
MAX_SEMANTIC_CLASSES = 256


@dataclass
class _Sample:
    image: np.ndarray  # (C, H, W) float32, normalised
    target: np.ndarray  # (H, W) int64 class index
    weights: np.ndarray  # (H, W) float32, 0 where not annotated
    annotated: np.ndarray  # flat indices of a subsample of annotated pixels


@dataclass
class TrainingData:
    """Normalised planes with their targets and weight maps, computed once."""

    samples: list[_Sample]
    in_channels: int
    n_classes: int
    task: Task
    shapes: list[tuple[int, ...]]
    #: Pixel areas of the annotated objects (instance tasks), for the size prior.
    object_areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: Instance tasks: the object area of the planes (:mod:`napari_unet.scaling`).
    object_area: float | None = None
    #: What the user should know about how labels were read (e.g. a binary mask).
    notes: list[str] = field(default_factory=list)
    #: Planes brought to a given object area (fine-tuning): their own object area before.
    source_object_area: float | None = None

    @property
    def n_pixels(self) -> int:
        """Annotated pixels over all planes."""
        return int(sum(int((s.weights > 0).sum()) for s in self.samples))


PairNames = tuple[str, str]


def pair_names(name: str | PairNames) -> PairNames:
    """Return what messages call a pair's image and labels (from "pair 1", or file names)."""
    return (f"{name} image", f"{name} labels") if isinstance(name, str) else name


def split_planes(
    image: np.ndarray, labels: np.ndarray, channel_axis: int | None, name: str | PairNames
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return lists of (C, H, W) image planes and (H, W) label planes.

    Axes are read as inference reads them (:class:`ImagePlanes`), so a model
    sees the same channels in training and in use. ``name`` is the pair's
    name in messages, or the names of its image and labels (file names).
    """
    image_name, labels_name = pair_names(name)
    labels = check_labels(labels, labels_name, ndim=(2, 3), require_objects=False)
    image = check_image(image, image_name, ndim=(2, 3, 4))
    if channel_axis is None and image.ndim == labels.ndim + 1 and image.shape[-1] in (3, 4):
        channel_axis = -1  # RGB(A) as napari shows it: (..., H, W, 3)
    planes = ImagePlanes(image, channel_axis)
    if planes.plane_shape != labels.shape[:-2]:
        raise ValueError(
            f"{image_name} of shape {image.shape} (channel axis {channel_axis}) does not "
            f"match {labels_name} of shape {labels.shape}; give one 2D plane of labels per "
            "image plane."
        )
    everything = slice(None)
    images = [planes.read(plane, everything, everything) for plane in range(planes.n_planes)]
    return images, list(labels) if labels.ndim == 3 else [labels]


def prepare_training_data(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    task: str | Task = "instances",
    masks: Sequence[np.ndarray | None] | None = None,
    channel_axis: int | None = None,
    normalization: Normalization | None = None,
    n_classes: int | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    names: Sequence[PairNames] | None = None,
    object_area: float | None = None,
) -> TrainingData:
    """Turn (image, labels) pairs into normalised training planes with weight maps.

    Parameters
    ----------
    pairs : sequence of (image, labels)
        Images 2D ``(H, W)``, RGB ``(H, W, 3)`` or stacks ``(Z, H, W)``; labels
        of the same height and width (one plane per image plane).
    task : str or Task
        What to learn (:mod:`napari_unet.tasks`); "instances" is the default
        instance head.
    masks : sequence of arrays or None, optional
        Per pair, a boolean mask of fully annotated regions (same shape as the
        labels); pixels outside carry zero loss weight.
    channel_axis : int, optional
        Channel axis of the images (RGB is recognised by itself).
    normalization : Normalization, optional
        Intensity scaling; percentiles by default.
    n_classes : int, optional
        Number of classes of a semantic model (default: the largest label).
    w0, sigma : float
        Boundary weight map parameters (instance tasks).
    names : sequence of (str, str), optional
        Per pair, what messages call its image and labels (e.g. the file names);
        default "pair 1 image", "pair 1 labels", ...
    object_area : float, optional
        Instance tasks: the object area of the model being fine-tuned. Each
        plane is resampled so that its objects have it, as an image to segment
        is (:mod:`napari_unet.scaling`), and the data keep it as theirs.

    Raises
    ------
    ValueError
        If no plane holds any annotation, or shapes disagree.
    """
    task = task_for("instances") if task == "instances" else get_task(task)
    if len(pairs) == 0:
        raise ValueError("Give at least one (image, labels) pair to train on.")
    normalization = normalization or Normalization()
    masks = list(masks) if masks is not None else [None] * len(pairs)
    if len(masks) != len(pairs):
        raise ValueError(f"Got {len(masks)} masks for {len(pairs)} image/label pairs.")
    if names is not None and len(names) != len(pairs):
        raise ValueError(f"Got {len(names)} names for {len(pairs)} image/label pairs.")
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    notes: list[str] = []
    for number, ((image, labels), mask) in enumerate(zip(pairs, masks, strict=True), start=1):
        image_name, labels_name = names[number - 1] if names else pair_names(f"pair {number}")
        images, label_planes = split_planes(image, labels, channel_axis, (image_name, labels_name))
        mask_planes: list[np.ndarray | None] = [None] * len(images)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != np.shape(labels):
                raise ValueError(
                    f"{labels_name}: the annotated-region mask has shape {mask.shape} but the "
                    f"labels have shape {np.shape(labels)}."
                )
            mask_planes = [mask] if mask.ndim == 2 else list(mask)
        for plane_image, plane_labels, plane_mask in zip(
            images, label_planes, mask_planes, strict=True
        ):
            check_same_shape(plane_image, plane_labels, image_name, labels_name)
            if task.instances:
                reading = read_labels(plane_labels)
                note = reading.describe(labels_name)
                if note is not None and note not in notes:
                    notes.append(note)
                plane_labels = compact_ids(to_instances(plane_labels, reading))
                _check_looks_like_labels(plane_labels, labels_name)
            elif plane_labels.max(initial=0) > MAX_SEMANTIC_CLASSES:
                raise ValueError(
                    f"{labels_name} go up to {int(plane_labels.max())}, and in semantic mode "
                    f"each value is a class (at most {MAX_SEMANTIC_CLASSES}). If every value is "
                    "one object, use mode 'instances'; if the labels are an image, give the "
                    "image first and the labels second."
                )
            else:
                check_semantic_values(plane_labels, labels_name)
            planes.append((plane_image, plane_labels, plane_mask))
    channels = {p[0].shape[0] for p in planes}
    if len(channels) != 1:
        raise ValueError(f"All images must have the same number of channels, got {channels}.")
    if not task.instances:
        largest = max(int(p[1].max()) for p in planes)
        n_classes = n_classes or task.n_classes(largest)
        if largest > n_classes:
            raise ValueError(
                f"Labels go up to {largest} but the model has {n_classes} classes (label "
                f"values 1..{n_classes}; in semantic mode each value is a class). Relabel the "
                "classes, or, if each value is one object, train a new model in instances mode."
            )
        if n_classes < 2:
            raise ValueError(
                "Semantic mode needs at least two classes (label values 1 and 2; 0 is "
                "unlabelled). For objects on background use mode 'instances'."
            )
    else:
        n_classes = task.n_classes(0)
    samples, shapes, areas, plane_areas, source_areas = [], [], [], [], []
    for plane_image, plane_labels, plane_mask in planes:
        shape = plane_image.shape
        # As in inference: scaled with the statistics of the plane as it is; a noisy
        # plane smoothed at its own scale, then resampled.
        low, high, smoothing = normalization.prepare(plane_image)
        plane_image = Normalization.smooth(plane_image, smoothing) if smoothing else plane_image
        if task.instances and object_area is not None:
            source_areas.append(typical_area(object_areas(plane_labels, plane_mask)))
            plane_image, plane_labels, plane_mask = _at_object_area(
                plane_image, plane_labels, plane_mask, source_areas[-1], object_area
            )
        sample = _make_sample(
            Normalization.apply(plane_image, low, high),
            plane_labels,
            plane_mask,
            task,
            n_classes,
            w0,
            sigma,
        )
        if sample is not None:
            samples.append(sample)
            shapes.append(shape)
            if task.instances:
                areas.append(object_areas(plane_labels, plane_mask))
                plane_areas.append(typical_area(areas[-1]))
    if not samples:
        raise ValueError(
            "No annotation found: every label plane is empty. Paint some objects (or, in "
            "semantic mode, classes) in the labels layer, or mark annotated regions."
        )
    return TrainingData(
        samples,
        channels.pop(),
        n_classes,
        task,
        shapes,
        np.concatenate(areas) if areas else np.zeros(0, np.int64),
        object_area or (model_object_area(plane_areas) if any(plane_areas) else None),
        notes,
        model_object_area(source_areas) if any(source_areas) else None,
    )


def _at_object_area(
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    plane_area: float | None,
    object_area: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resample a ``(C, H, W)`` plane, its labels and mask to the model's ``object_area``.

    ``plane_area`` is the plane's typical object area (None: no objects, kept as it is).
    """
    factor = scale_factor(plane_area, object_area)
    if factor == 1.0:
        return image, labels, mask
    shape = scaled_shape(labels.shape, factor)
    return (
        resize_image(image, shape),
        resize_labels(labels, shape),
        None if mask is None else resize_labels(mask, shape),
    )


def _check_looks_like_labels(labels: np.ndarray, name: str) -> None:
    """Refuse an intensity image given as instance labels (image and labels swapped).

    In a label image each object is one patch of equal values; in an intensity
    image each gray value is scattered over many specks.
    """
    from skimage.measure import label

    values = int(np.unique(labels).size)
    patches = int(label(labels, background=-1, connectivity=1).max())
    if patches > 200 and patches > 4 * values:
        raise ValueError(
            f"{name} do not look like labels: their {values} values form "
            f"{patches} separate patches, where each object should be one patch. Was the "
            "image given as the labels? Give the image first and the labels second."
        )


def _make_sample(
    normalised: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    task: Task,
    n_classes: int,
    w0: float,
    sigma: float,
) -> _Sample | None:
    if task.instances:
        if mask is None and not labels.any():
            return None
        region = mask if mask is not None else np.ones(labels.shape, bool)
    else:
        region = labels > 0 if mask is None else (labels > 0) & mask
    if not region.any():
        return None
    target, weights = task.targets(labels, region, w0=w0, sigma=sigma, n_classes=n_classes)
    flat = np.flatnonzero(weights > 0)
    if flat.size > 65536:  # a subsample is enough to centre tiles on annotation
        flat = flat[:: flat.size // 65536]
    return _Sample(normalised, target, weights, flat)


class TileSampler:
    """Draws augmented training tiles; runs in a background thread."""

    def __init__(
        self,
        data: TrainingData,
        input_size: int,
        output_size: int,
        config: TrainConfig,
        rng: np.random.Generator,
    ) -> None:
        self.data, self.config, self.rng = data, config, rng
        self.input_size, self.output_size = input_size, output_size
        areas = np.array([s.annotated.size for s in data.samples], dtype=np.float64)
        self.probabilities = areas / areas.sum()
        offset = (input_size - output_size) / 2
        grid = np.indices((input_size, input_size), dtype=np.float32)
        self.grid = grid - (input_size - 1) / 2  # centred on the tile
        self.inner = (slice(int(offset), int(offset) + output_size),) * 2

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return one augmented (image, target, weights) tile."""
        rng, augment = self.rng, self.config.augment
        number = rng.choice(len(self.data.samples), p=self.probabilities)
        sample = self.data.samples[number]
        height, width = sample.target.shape
        centre = np.unravel_index(
            sample.annotated[rng.integers(sample.annotated.size)], (height, width)
        )
        # Shift so the annotated pixel lands anywhere in the output window.
        jitter = rng.uniform(-self.output_size / 2, self.output_size / 2, size=2)
        centre = np.asarray(centre, dtype=np.float32) + jitter.astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi) if self.config.rotate else 0.0
        quarter = rng.integers(4) if augment.flip_rotate else 0
        flip = bool(rng.integers(2)) if augment.flip_rotate else False
        angle += quarter * np.pi / 2
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        rows, cols = self.grid
        if flip:
            cols = -cols
        coords = np.stack([cos * rows - sin * cols, sin * rows + cos * cols])
        if augment.elastic_std > 0:
            coords += random_displacement_field(
                (self.input_size, self.input_size),
                std=augment.elastic_std,
                grid=augment.elastic_grid,
                rng=rng,
            )
        coords += centre[:, None, None]
        # warp reads only the pixels the tile needs, so the whole image is passed.
        image = warp(sample.image, coords, order=augment.image_order)
        inner = coords[:, self.inner[0], self.inner[1]]
        target = warp(sample.target, inner, order=0)
        weights = warp(sample.weights, inner, order=1)
        if not augment.is_identity:
            image = augment.gray_values(image, rng)
        return image, target, weights


class Prefetcher:
    """Run a tile sampler in a daemon thread, a few tiles ahead of the model."""

    def __init__(self, sampler: TileSampler, depth: int = 4) -> None:
        self.sampler = sampler
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="napari-unet-tiles", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item: Any = self.sampler.draw()
            except Exception as error:  # hand the error to the training loop
                item = error
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def get(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the next tile (or raise the sampler's error)."""
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread."""
        self.stop.set()
        self.thread.join(timeout=5)


def make_sampler(
    data: TrainingData, model_config: UNetConfig, tile: int, config: TrainConfig, seed: int
) -> TileSampler:
    """Return a tile sampler for the network's input ``tile`` and its output size."""
    output = model_config.output_shape((tile, tile))[0]
    return TileSampler(data, tile, output, config, np.random.default_rng(seed))
