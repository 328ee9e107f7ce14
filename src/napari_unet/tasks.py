"""What a task means, in one place: targets, loss, tile outputs, labelling.

A *task* is what the network learns from the user's labels and how its output
becomes labels again. Each task is one small object, looked up by name (the
name a checkpoint stores):

``"paper"``
    Ronneberger et al. (2015): two classes, background and foreground, with a
    one-pixel background gap cut between touching objects and the paper's
    weight map ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2)``. Objects
    are the seeded watershed of the foreground probability.
``"three-class"``
    Background, object *interior* and object *boundary* (the object pixels
    that touch another object or the background). The interior of touching
    objects is separated by their boundaries, so seeds are the confident
    interior and the watershed grows them over the foreground; boundaries are
    no longer a one-pixel gap the network must get exactly right. The paper's
    class balance and border term weigh the pixels.
``"distance"``
    Background / foreground, plus a regressed distance from each object pixel
    to the object's border, divided by the largest distance in that object (so
    1 at every object's centre, whatever its size, and 0 at its border and in
    the background). Seeds are the object centres (distance above the seed
    threshold) and the watershed floods the foreground downhill on the
    distance, as StarDist and Cellpose-style distance maps do.
``"semantic"``
    Label values 1..K are classes, 0 is unlabelled; the output is the most
    probable class.

Instance tasks keep per-pixel *maps* while a plane is segmented (the
foreground probability, and the interior probability for ``three-class``) and
turn the finished plane into labels with :class:`Postprocess` settings, which
training calibrates on the user's annotations and the checkpoint stores.

Examples
--------
>>> import numpy as np
>>> from napari_unet.tasks import get_task
>>> labels = np.zeros((8, 12), np.int32)
>>> labels[2:6, 1:6], labels[2:6, 6:11] = 1, 2       # two touching squares
>>> target, weights = get_task("three-class").targets(labels, w0=10, sigma=2)
>>> target[4]                                          # 0 bg, 1 interior, 2 boundary
array([0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0])
>>> get_task("paper").targets(labels, w0=10, sigma=2)[0][4]
array([0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_HEAD",
    "INSTANCE_HEADS",
    "DistanceInstances",
    "PaperInstances",
    "Postprocess",
    "Semantic",
    "Task",
    "ThreeClassInstances",
    "get_task",
    "task_for",
]

Mode = Literal["instances", "semantic"]


@dataclass(frozen=True)
class Postprocess:
    """How an instance task turns its maps into objects.

    Parameters
    ----------
    threshold : float
        A pixel belongs to an object when its foreground probability exceeds
        this.
    seed_threshold : float or None
        Seeds are the components of the seed map (the foreground for
        ``paper``, the interior for ``three-class``, the normalised distance
        to the border for ``distance``) above this; None labels the connected
        components of the foreground.
    min_seed_size : int
        Seeds with fewer pixels do not start an object of their own; their
        pixels go to a neighbouring seed. Training sets it from the typical
        size of the annotated objects, so that holes and peaks in an object's
        probability do not cut it into pieces.
    min_size : int
        Objects with fewer pixels are dropped.
    tessellate : bool
        Grow the objects over every pixel, so they tile the image (cells
        between membranes in electron microscopy).

    Examples
    --------
    >>> Postprocess(threshold=0.4).to_dict()["threshold"]
    0.4
    >>> Postprocess(threshold=1.5)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be between 0 and 1 (a probability), got 1.5.
    """

    threshold: float = 0.5
    seed_threshold: float | None = 0.8
    min_seed_size: int = 0
    min_size: int = 0
    tessellate: bool = False

    def __post_init__(self) -> None:
        for name in ("threshold", "seed_threshold"):
            value = getattr(self, name)
            if value is None and name == "seed_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{name} must be a number between 0 and 1, got {value!r}.")
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (a probability), got {value}.")
            object.__setattr__(self, name, float(value))
        for name in ("min_seed_size", "min_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number of pixels >= 0, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.tessellate and self.seed_threshold is None:
            raise ValueError("tessellate needs a seed_threshold: the objects grow from seeds.")

    def at_scale(self, factor: float) -> Postprocess:
        """Return these settings for maps resampled by ``1 / factor`` (sizes are areas).

        A model labels at its own object size; an image resampled by ``factor``
        to reach it has objects ``factor**2`` times smaller in area.
        """
        if factor == 1.0:
            return self
        return replace(
            self,
            min_seed_size=round(self.min_seed_size / factor**2),
            min_size=round(self.min_size / factor**2),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-like values (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Postprocess:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        return cls(**values)


class Task:
    """Base class of the tasks; see the module docstring."""

    name: ClassVar[str]
    mode: ClassVar[Mode]
    description: ClassVar[str]
    #: Maps an instance task keeps per plane until it is labelled.
    map_names: ClassVar[tuple[str, ...]] = ()
    default_postprocess: ClassVar[Postprocess] = Postprocess()
    #: What the activated outputs are, for exported models' metadata.
    outputs_text: ClassVar[str] = "class probabilities (softmax over axis 1, the class axis)"
    #: Where seeds come from, in words (instance tasks).
    seeds_text: ClassVar[str] = "foreground"
    #: True when :meth:`activate` is a softmax over all outputs.
    softmax_outputs: ClassVar[bool] = True

    @property
    def instances(self) -> bool:
        """True when the labels are objects (each id one object)."""
        return self.mode == "instances"

    def n_classes(self, largest_label: int) -> int:
        """Return the number of outputs for labels whose largest value is ``largest_label``."""
        raise NotImplementedError

    def class_names(self, n_classes: int) -> tuple[str, ...]:
        """Names of the network's output classes."""
        raise NotImplementedError

    def targets(
        self,
        labels: np.ndarray,
        region: np.ndarray | None = None,
        *,
        w0: float = 10.0,
        sigma: float = 5.0,
        n_classes: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the class of every pixel (int64) and its loss weight (float32).

        ``region`` marks the annotated pixels (default: all); pixels outside it
        get weight 0. Class weights balance the classes over the region.
        """
        raise NotImplementedError

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Return the paper's weighted cross entropy, normalised by the number of pixels."""
        from napari_unet.training import weighted_cross_entropy

        return weighted_cross_entropy(logits, target, weights)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn the network's ``(N, outputs, h, w)`` scores into what tiles write: probabilities."""
        import torch

        return torch.softmax(logits, dim=1)

    def logits_from(self, outputs: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`activate` up to a constant, so :meth:`loss` can score kept outputs."""
        import torch

        return torch.log(outputs.clamp_min(1e-12))

    def tile_maps(self, probabilities: np.ndarray) -> np.ndarray:
        """Instance tasks: the maps ``(len(map_names), h, w)`` of a tile's probabilities."""
        raise TypeError(f"The {self.name!r} task writes labels per tile, not maps.")

    def tile_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Semantic tasks: the class ids 1..K of a tile's probabilities."""
        raise TypeError(f"The {self.name!r} task labels whole planes from its maps.")

    def label_plane(
        self, maps: Any, postprocess: Postprocess | None = None, out: Any | None = None
    ) -> Any:
        """Instance tasks: the objects of one plane from its maps.

        ``maps`` is indexable as ``maps[k]`` for each of :attr:`map_names` (a
        numpy array, or a lazily read zarr plane); ``out`` an optional integer
        array to write into. Block-wise, so planes larger than memory work.
        """
        from napari_unet.postprocess import label_instances

        settings = postprocess or self.default_postprocess
        return label_instances(
            maps[0],
            seed_map=maps[1] if len(self.map_names) > 1 else None,
            threshold=settings.threshold,
            seed_threshold=settings.seed_threshold,
            min_seed_size=settings.min_seed_size,
            min_size=settings.min_size,
            tessellate=settings.tessellate,
            out=out,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _balanced(target: np.ndarray, region: np.ndarray, n_classes: int) -> np.ndarray:
    """Class weights n / (n_present * n_k) over ``region``; absent classes weigh 0."""
    counts = np.bincount(target[region], minlength=n_classes).astype(np.float64)
    present = counts > 0
    return np.where(present, region.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)


def _border_term(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Return the paper's ``w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` on the gaps between objects."""
    from napari_unet.weights import boundary_weight_map

    if not labels.any():
        return np.zeros(labels.shape, np.float32)
    return boundary_weight_map(labels, w0=w0, sigma=sigma, class_weights=(0.0, 0.0))


def _instance_weights(
    classes: np.ndarray,
    n_classes: int,
    labels: np.ndarray,
    region: np.ndarray | None,
    w0: float,
    sigma: float,
) -> np.ndarray:
    """Return the paper's weights: class balance over ``region``, border term; 0 outside."""
    region = np.ones(labels.shape, bool) if region is None else region
    weights = _balanced(classes, region, n_classes)[classes].astype(np.float32)
    weights += _border_term(labels, w0, sigma)
    return np.where(region, weights, 0.0).astype(np.float32)


class PaperInstances(Task):
    """The paper's head: background / foreground with a gap between touching objects."""

    name = "paper"
    mode = "instances"
    description = "background / foreground with a gap between touching objects (the paper's)"
    map_names = ("foreground",)
    default_postprocess = Postprocess(threshold=0.5, seed_threshold=0.8)

    def n_classes(self, largest_label: int) -> int:  # noqa: D102
        return 2

    def class_names(self, n_classes: int) -> tuple[str, ...]:  # noqa: D102
        return ("background", "object")

    def targets(self, labels, region=None, *, w0=10.0, sigma=5.0, n_classes=None):  # noqa: D102
        from napari_unet.weights import separate_touching_objects

        target = (separate_touching_objects(labels) > 0).astype(np.int64)
        return target, _instance_weights(target, 2, labels, region, w0, sigma)

    def tile_maps(self, probabilities: np.ndarray) -> np.ndarray:  # noqa: D102
        return (1.0 - probabilities[:1]).astype(np.float32)


class ThreeClassInstances(Task):
    """Background / interior / boundary: seeds from the interior, objects over the foreground."""

    name = "three-class"
    mode = "instances"
    description = "background / object interior / object boundary"
    map_names = ("foreground", "interior")
    default_postprocess = Postprocess(threshold=0.5, seed_threshold=0.6)
    seeds_text = "p(interior) (channel 1)"

    def n_classes(self, largest_label: int) -> int:  # noqa: D102
        return 3

    def class_names(self, n_classes: int) -> tuple[str, ...]:  # noqa: D102
        return ("background", "interior", "boundary")

    def targets(self, labels, region=None, *, w0=10.0, sigma=5.0, n_classes=None):  # noqa: D102
        from skimage.segmentation import find_boundaries

        target = np.zeros(labels.shape, np.int64)
        target[labels > 0] = 1
        target[find_boundaries(labels, connectivity=1, mode="inner") & (labels > 0)] = 2
        return target, _instance_weights(target, 3, labels, region, w0, sigma)

    def tile_maps(self, probabilities: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.stack([1.0 - probabilities[0], probabilities[1]]).astype(np.float32)


#: Distances are stored in the integer target as ``1 + round(d * _DISTANCE_STEPS)``
#: for object pixels and 0 for background, so one nearest-neighbour warp moves
#: both the class and the distance of every pixel.
_DISTANCE_STEPS = 1000


def normalised_border_distance(labels: np.ndarray) -> np.ndarray:
    """Return each object pixel's distance to its object's border over the object's largest.

    The border is the object's own outermost pixels (those touching the
    background or another object); they are 1 pixel from it. Values are in
    (0, 1] inside objects, exactly 1 at each object's most central pixel(s),
    and 0 in the background.

    Examples
    --------
    >>> labels = np.zeros((1, 9), np.int32)
    >>> labels[0, 1:8] = 1
    >>> normalised_border_distance(labels)[0].round(2).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    objects = labels > 0
    if not objects.any():
        return np.zeros(labels.shape, np.float32)
    interior = objects & ~find_boundaries(labels, connectivity=1, mode="inner")
    # Image edges count as far away: edt measures to the nearest zero.
    distance = ndimage.distance_transform_edt(interior) + objects
    from napari_unet.metrics import compact_ids

    ids = compact_ids(labels).astype(np.intp, copy=False)
    largest = np.zeros(int(ids.max()) + 1)
    np.maximum.at(largest, ids[objects], distance[objects])
    return np.where(objects, distance / np.maximum(largest[ids], 1), 0.0).astype(np.float32)


class DistanceInstances(Task):
    """Background / foreground plus each pixel's normalised distance to its object's border."""

    name = "distance"
    mode = "instances"
    description = "background / foreground and the distance to the object's border"
    map_names = ("foreground", "distance")
    default_postprocess = Postprocess(threshold=0.5, seed_threshold=0.5)
    outputs_text = (
        "channels 0-1: probabilities of background and object (softmax over the two); "
        "channel 2: each object pixel's distance to its object's border divided by the "
        "object's largest (sigmoid; 1 at the centre, 0 in the background)"
    )
    seeds_text = "the distance to the border (channel 2)"
    softmax_outputs = False

    def n_classes(self, largest_label: int) -> int:  # noqa: D102
        return 3  # two class scores and one distance

    def class_names(self, n_classes: int) -> tuple[str, ...]:  # noqa: D102
        return ("background", "object", "distance to border")

    def targets(self, labels, region=None, *, w0=10.0, sigma=5.0, n_classes=None):  # noqa: D102
        distance = normalised_border_distance(labels)
        target = np.where(
            labels > 0, 1 + np.rint(distance * _DISTANCE_STEPS).astype(np.int64), 0
        ).astype(np.int64)
        objects = (labels > 0).astype(np.int64)  # the classes the weights balance
        return target, _instance_weights(objects, 2, labels, region, w0, sigma)

    def loss(self, logits, target, weights):
        """Weighted cross entropy of the classes plus weighted binary cross entropy of distance.

        Both use the pixel weights (class balance and the paper's border term,
        which also stresses the distance where touching objects meet).
        """
        import torch.nn.functional as F

        from napari_unet.training import weighted_cross_entropy

        objects = (target > 0).long()
        classes = weighted_cross_entropy(logits[:, :2], objects, weights)
        distance = (target - 1).clamp(min=0).float() / _DISTANCE_STEPS
        regression = F.binary_cross_entropy_with_logits(
            logits[:, 2].float(), distance, reduction="none"
        )
        return classes + (weights * regression).sum() / target.numel()

    def activate(self, logits):  # noqa: D102
        import torch

        return torch.cat([super().activate(logits[:, :2]), torch.sigmoid(logits[:, 2:])], 1)

    def logits_from(self, outputs):  # noqa: D102
        import torch

        classes = super().logits_from(outputs[:, :2])
        return torch.cat([classes, torch.logit(outputs[:, 2:], eps=1e-6)], 1)

    def tile_maps(self, probabilities: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.stack([1.0 - probabilities[0], probabilities[2]]).astype(np.float32)


class Semantic(Task):
    """Label values 1..K are classes; 0 is unlabelled and does not count in the loss."""

    name = "semantic"
    mode = "semantic"
    description = "classes 1..K (0 is unlabelled)"

    def n_classes(self, largest_label: int) -> int:  # noqa: D102
        return int(largest_label)

    def class_names(self, n_classes: int) -> tuple[str, ...]:  # noqa: D102
        return tuple(f"class {k}" for k in range(1, n_classes + 1))

    def targets(self, labels, region=None, *, w0=10.0, sigma=5.0, n_classes=None):  # noqa: D102
        annotated = labels > 0
        if region is not None:
            annotated &= region
        n_classes = n_classes or int(labels.max())
        target = np.where(annotated, labels.astype(np.int64) - 1, 0)
        class_weights = _balanced(target, annotated, n_classes)
        weights = np.where(annotated, class_weights[target], 0.0).astype(np.float32)
        return target, weights

    def tile_labels(self, probabilities: np.ndarray) -> np.ndarray:  # noqa: D102
        # Classes are 1..K, as in the training labels.
        return np.argmax(probabilities, axis=0) + 1

    def label_plane(self, maps, postprocess=None, out=None):  # noqa: D102
        raise TypeError("A semantic task writes its labels per tile; there is nothing to label.")


_TASKS: dict[str, type[Task]] = {
    task.name: task for task in (PaperInstances, ThreeClassInstances, DistanceInstances, Semantic)
}
#: The instance heads a user can choose, the default first.
INSTANCE_HEADS: tuple[str, ...] = ("three-class", "distance", "paper")
DEFAULT_HEAD = INSTANCE_HEADS[0]


def get_task(name: str | Task) -> Task:
    """Return the task called ``name`` (a :class:`Task` is returned as it is).

    Examples
    --------
    >>> get_task("paper").map_names
    ('foreground',)
    >>> get_task("unknown")
    Traceback (most recent call last):
    ...
    ValueError: Unknown task 'unknown'; choose one of paper, three-class, distance, semantic.
    """
    if isinstance(name, Task):
        return name
    try:
        return _TASKS[name]()
    except (KeyError, TypeError):
        raise ValueError(f"Unknown task {name!r}; choose one of {', '.join(_TASKS)}.") from None


def task_for(mode: str, head: str | None = None) -> Task:
    """Return the task of a mode ("instances" or "semantic") and an instance head.

    ``head`` None means the default head for instances. Checkpoints written
    before heads existed hold only the mode: read them with
    ``task_for(mode, "paper")``.

    Examples
    --------
    >>> task_for("instances").name, task_for("instances", "paper").name
    ('three-class', 'paper')
    >>> task_for("semantic").name
    'semantic'
    """
    if mode == "semantic":
        if head not in (None, "semantic"):
            raise ValueError(f"Semantic mode has no instance head; got head {head!r}.")
        return Semantic()
    if mode != "instances":
        raise ValueError(f'mode must be "instances" or "semantic", got {mode!r}.')
    head = head or DEFAULT_HEAD
    if head not in INSTANCE_HEADS:
        raise ValueError(
            f"Unknown instance head {head!r}; choose one of {', '.join(INSTANCE_HEADS)}."
        )
    return get_task(head)


def with_overrides(postprocess: Postprocess, **changes: Any) -> Postprocess:
    """Return ``postprocess`` with the settings in ``changes`` that are not None replaced."""
    return replace(postprocess, **{k: v for k, v in changes.items() if v is not None})
