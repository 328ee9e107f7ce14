"""Training engine: the paper's weighted loss, augmented tiles, a generator of events.

:func:`train_generator` yields a :class:`TrainingProgress` every step and a
:class:`ValidationResult` every ``validation_every`` steps (on the validation
pair, or on the annotations held out for calibration), and returns a
:class:`TrainingResult` (the model and its checkpoint). :func:`train` runs it
to the end. Stopping is cooperative: a ``should_stop`` callable is polled
every step and the model trained so far is returned.

Data flow: :mod:`napari_unet.sampling` prepares each (image, labels) pair
once (normalised, with the task's targets and weights) and draws augmented
tiles in a background thread, so preparing data overlaps with the model's
step. After the budget, the labelling of an instance task is calibrated
(:mod:`napari_unet.calibration`) and stored in the checkpoint.

Examples
--------
>>> import numpy as np
>>> import torch
>>> from napari_unet.training import weighted_cross_entropy
>>> logits = torch.zeros(1, 2, 1, 2)           # p = 0.5 for both classes
>>> target = torch.tensor([[[0, 1]]])
>>> weights = torch.tensor([[[1.0, 3.0]]])
>>> round(weighted_cross_entropy(logits, target, weights).item(), 4)  # (1 + 3) log 2 / 2
1.3863
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from napari_unet._generators import run_to_end
from napari_unet._validation import as_rng, check_whole_number
from napari_unet.augment import AugmentConfig
from napari_unet.calibration import Calibration, calibrate
from napari_unet.checkpoint import Checkpoint
from napari_unet.device import Precision, autocast_dtype, resolve_device
from napari_unet.inference import InferenceConfig, predict
from napari_unet.label_kinds import read_labels, to_instances
from napari_unet.metrics import average_precision
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.sampling import (
    PairNames,
    Prefetcher,
    TrainingData,
    make_sampler,
    pair_names,
    prepare_training_data,
    split_planes,
)
from napari_unet.tasks import Postprocess, Task, task_for

__all__ = [
    "TrainConfig",
    "TrainingData",
    "TrainingMessage",
    "TrainingPreview",
    "TrainingProgress",
    "TrainingResult",
    "ValidationResult",
    "prepare_training_data",
    "train",
    "train_generator",
    "weighted_cross_entropy",
]

logger = logging.getLogger(__name__)

Mode = Literal["instances", "semantic"]
MODEL_SIZES = {"small": 16, "medium": 32, "large": 64}


#: Bounds of a training budget: a shorter one ends before the first step, a longer one
#: (a typo, or infinity) would never end.
MIN_MINUTES, MAX_MINUTES = 0.01, 7 * 24 * 60
MAX_STEPS = 100_000_000
#: Seeds go to numpy and to torch.manual_seed, which takes at most 64 bits.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run.

    Parameters
    ----------
    mode : {"instances", "semantic"}
        "instances": every non-zero label is an object. "semantic": label
        values 1..K are classes, 0 is unlabelled.
    head : str, optional
        What the network learns in instances mode (:mod:`napari_unet.tasks`):
        "three-class" (background / interior / boundary; the default),
        "distance" (foreground and the distance to the object's border) or
        "paper" (background / foreground with a gap between touching objects,
        as in the paper). All use the paper's weight map.
    tessellate : bool
        Instances mode: the objects tile the image (cells between membranes,
        as in electron microscopy). Segmentation then grows the cells over the
        predicted membranes, and calibration scores the Rand error of the grown
        cells instead of AP@0.5.
    calibrate : bool
        After training, choose the thresholds and size limits that turn the
        network's maps into objects (:mod:`napari_unet.calibration`) and store
        them in the checkpoint. They are chosen on the validation pair; without
        one, on annotations held out of training: the last tenth of five or
        more fully annotated images (at most 8), else the bottom fifth of the
        rows of the largest one (when it holds at least 5 objects), else on
        the training planes themselves.
    steps : int, optional
        Number of optimisation steps (one tile each). With ``minutes`` as well,
        training stops at whichever comes first.
    minutes : float, optional
        Wall-clock budget.
    base_channels : int
        Width of the network (16 default for interactive CPU training: about 8x
        faster per step than the paper's 64; see ``docs/benchmarks.md``).
    depth, padding, batch_norm, dropout
        Passed to :class:`~napari_unet.model.UNetConfig`.
    tile_size : int
        Input tile side; must be a valid input size (380 -> 196 output at depth 4).
    optimizer : {"adam", "sgd"}
        Adam (default, for short interactive runs) or the paper's SGD with
        momentum 0.99 and batch 1.
    learning_rate : float, optional
        Peak learning rate; default 1e-3 for Adam and 1e-4 for SGD with
        momentum 0.99 (its effective step is ~100x the rate). The rate rises
        linearly over the first 2% of the budget and then decays on a cosine.
    w0, sigma : float
        Boundary weight map parameters (paper: 10 and ~5 px).
    augment : AugmentConfig
        Elastic deformation, flips/rotations, gray values.
    rotate : bool
        Also rotate tiles by a random angle (besides 90-degree steps).
    validation_every : int
        Steps between validation passes (on the validation pair, or without one
        on the annotations held out for calibration).
    seed : int, optional
        Makes a CPU run reproducible.
    device : str
        "auto", "cpu", "cuda" or "mps".
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision; "auto" only where it is faster and safe.
    normalization : Normalization
        Intensity scaling (ignored when fine-tuning: the checkpoint's is kept).
    """

    mode: Mode = "instances"
    head: str | None = None
    tessellate: bool = False
    calibrate: bool = True
    steps: int | None = 500
    minutes: float | None = None
    base_channels: int = 16
    depth: int = 4
    padding: Literal["valid", "same"] = "valid"
    batch_norm: bool = False
    dropout: float = 0.5
    tile_size: int = 380
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float | None = None
    w0: float = 10.0
    sigma: float = 5.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    rotate: bool = True
    validation_every: int = 50
    seed: int | None = 0
    device: str = "auto"
    precision: Precision = "auto"
    normalization: Normalization = field(default_factory=Normalization)

    def __post_init__(self) -> None:
        task_for(self.mode, self.head)  # checks mode and head
        if self.tessellate and self.mode != "instances":
            raise ValueError("tessellate grows objects over the image: it needs instances mode.")
        if self.steps is None and self.minutes is None:
            raise ValueError("Give a budget: steps, minutes or both.")
        if self.steps is not None:
            check_whole_number(self.steps, "steps", 1, MAX_STEPS)
        if self.minutes is not None:
            if isinstance(self.minutes, bool) or not isinstance(
                self.minutes, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"minutes must be a number, got {self.minutes!r}.")
            if not MIN_MINUTES <= self.minutes <= MAX_MINUTES:
                raise ValueError(
                    f"minutes must be from {MIN_MINUTES} (under a second trains nothing) to "
                    f"{MAX_MINUTES:,} (a week), got {self.minutes!r}."
                )
        if self.seed is not None:
            check_whole_number(self.seed, "seed", 0, MAX_SEED)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f'optimizer must be "adam" or "sgd", got {self.optimizer!r}.')
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        if self.validation_every < 1:
            raise ValueError(f"validation_every must be positive, got {self.validation_every}.")
        if self.w0 < 0 or self.sigma <= 0:
            raise ValueError(f"w0 must be >= 0 and sigma > 0, got {self.w0} and {self.sigma}.")
        self.model_config(1, 2).output_shape((self.tile_size, self.tile_size))

    def model_config(self, in_channels: int, n_classes: int) -> UNetConfig:
        """Return the network architecture for ``in_channels`` and ``n_classes``."""
        return UNetConfig(
            in_channels=in_channels,
            n_classes=n_classes,
            depth=self.depth,
            base_channels=self.base_channels,
            padding=self.padding,
            batch_norm=self.batch_norm,
            dropout=self.dropout,
        )

    @property
    def task(self) -> Task:
        """The task of ``mode`` and ``head``."""
        return task_for(self.mode, self.head)

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate after warm-up."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.optimizer == "adam" else 1e-4


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProgress:
    """Emitted after every optimisation step."""

    step: int
    total_steps: int | None
    loss: float
    elapsed: float
    images_per_second: float
    learning_rate: float
    data_wait_fraction: float


@dataclass(frozen=True)
class ValidationResult:
    """Emitted every ``validation_every`` steps: the validation pair's scores.

    Without a validation pair, the annotations held out for calibration are
    scored (when there are enough to hold out).

    ``score`` is the average precision at IoU 0.5 (instances) or the mean
    intersection over union of the classes (semantic).
    """

    step: int
    loss: float
    score: float
    score_name: str


@dataclass(frozen=True)
class TrainingMessage:
    """Something the user should know (e.g. the tile was made smaller)."""

    step: int
    text: str


@dataclass(frozen=True)
class TrainingPreview:
    """Every ``preview_every`` steps: the current model's labels for the preview image."""

    step: int
    labels: np.ndarray


@dataclass
class TrainingResult:
    """What training returns: the model, its checkpoint and why it ended.

    ``stop_reason`` is "budget" (steps or minutes used), "stopped" (asked to
    stop) or "non-finite loss" (weights restored to the last good step).
    """

    model: UNet
    checkpoint: Checkpoint
    steps: int
    stop_reason: str
    losses: list[float]
    validation: list[ValidationResult]


TrainingEvent = TrainingProgress | ValidationResult | TrainingMessage | TrainingPreview


# -- loss -------------------------------------------------------------------------------


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Compute the paper's energy: pixel-wise softmax cross-entropy weighted by w(x).

    Returns ``-sum_x w(x) log p_{l(x)}(x) / n_pixels``: the paper's
    ``E = sum w log p`` with the sign of a loss and divided by the (constant)
    number of output pixels, which only rescales the learning rate. Pixels with
    zero weight (not annotated) contribute nothing whatever their target.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, K, H, W)
    target : torch.Tensor of int64, shape (N, H, W)
    weights : torch.Tensor, shape (N, H, W)
    """
    log_p = torch.log_softmax(logits.float(), dim=1)
    picked = log_p.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    return -(weights * picked).sum() / target.numel()


# -- the loop ---------------------------------------------------------------------------


def train_generator(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig | None = None,
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    channel_axis: int | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    initial: Checkpoint | None = None,
    should_stop: Callable[[], bool] | None = None,
    metadata: dict[str, Any] | None = None,
    preview: np.ndarray | None = None,
    preview_every: int = 50,
    names: Sequence[PairNames] | None = None,
    validation_names: PairNames = ("the validation image", "the validation labels"),
) -> Generator[TrainingEvent, None, TrainingResult]:
    """Train a U-Net; yield progress events; return the :class:`TrainingResult`.

    Parameters
    ----------
    pairs : sequence of (image, labels)
        Training data (see :func:`prepare_training_data`).
    config : TrainConfig, optional
        Settings; defaults to 500 Adam steps of the small network.
    masks : sequence, optional
        Annotated-region masks, one per pair (None where fully annotated).
    channel_axis : int, optional
        Channel axis of the images.
    validation : (image, labels), optional
        A held-out pair evaluated every ``config.validation_every`` steps.
    initial : Checkpoint, optional
        Fine-tune this model instead of starting from scratch (its mode,
        channels and normalisation must match).
    should_stop : callable, optional
        Polled every step; when it returns True training ends cleanly.
    metadata : dict, optional
        Extra information stored in the checkpoint.
    preview : numpy.ndarray, optional
        One 2D image (with its channel axis, if any) segmented with the current
        model every ``preview_every`` steps and yielded as a
        :class:`TrainingPreview`, so a viewer can show training progress.
    preview_every : int
        Steps between previews.
    names : sequence of (str, str), optional
        Per pair, what error messages call its image and labels (e.g. the
        file names); default "pair 1 image", "pair 1 labels", ...
    validation_names : (str, str)
        The same for the validation pair.
    """
    config = config or TrainConfig()
    if preview is not None and (
        isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 1
    ):
        raise ValueError(f"preview_every must be a positive integer, got {preview_every!r}.")
    normalization = initial.normalization if initial is not None else config.normalization
    n_classes = initial.model_config.n_classes if initial is not None else None
    if initial is not None and initial.mode != config.mode:
        raise ValueError(
            f"The starting model was trained in {initial.mode!r} mode but training is in "
            f"{config.mode!r} mode; choose the same mode or start a new model."
        )
    if initial is not None and config.head not in (None, initial.head):
        raise ValueError(
            f"The starting model has the {initial.head!r} head but training asks for "
            f"{config.head!r}; fine-tuning keeps the model's head: choose it, or start a new "
            f"model."
        )
    # Fine-tuning keeps the starting model's head.
    task = initial.task if initial is not None else config.task
    notes: list[str] = []
    if task.instances:
        # Masks become instances before anything is held out, so that calibration
        # and validation score the same objects that training learns.
        pairs, notes = _as_instances(pairs, [pair_names(n) for n in names or []])
        if validation is not None:
            (validation,), more = _as_instances([validation], [pair_names(validation_names)])
            notes += more
    held_out = None
    if config.calibrate and task.instances and validation is None:
        # Calibration needs annotations the network does not learn from.
        held_out = _hold_out(pairs, masks, channel_axis)
        if held_out is not None:
            pairs, masks = held_out.pairs, held_out.masks
            if names is not None:
                names = [names[number] for number in held_out.kept]
    # A fine-tuned model goes on learning at its own scale (napari_unet.scaling).
    tessellate = config.tessellate or (
        initial is not None and initial.postprocess is not None and initial.postprocess.tessellate
    )
    object_area = initial.object_area if initial is not None and not tessellate else None
    data = prepare_training_data(
        pairs,
        task=task,
        masks=masks,
        channel_axis=channel_axis,
        normalization=normalization,
        n_classes=n_classes,
        w0=config.w0,
        sigma=config.sigma,
        names=names,
        object_area=object_area,
    )
    for note in notes + data.notes:
        yield TrainingMessage(0, note)
    if initial is not None:
        # The starting model's architecture wins over the config's; its tile
        # size must suit that architecture.
        model_config = initial.model_config
        if model_config.in_channels != data.in_channels:
            raise ValueError(
                f"The starting model expects {model_config.in_channels} channel(s) but the "
                f"images have {data.in_channels}; start a new model."
            )
        model_config.output_shape((config.tile_size, config.tile_size))
    else:
        model_config = config.model_config(data.in_channels, data.n_classes)
    scored = None
    start_settings = initial.postprocess if initial is not None else None
    if validation is not None:
        images, label_planes = split_planes(*validation, channel_axis, validation_names)
        labelled = [i for i, plane in enumerate(label_planes) if plane.any()]
        if not labelled:
            raise ValueError(
                f"{validation_names[1]} hold no labels (all pixels 0): paint or import the "
                "objects of the validation image, or train without a validation pair."
            )
        # Score the first annotated plane, the one prepare_training_data keeps first.
        scored = _Validation(
            prepare_training_data(
                [validation],
                task=task,
                channel_axis=channel_axis,
                normalization=normalization,
                n_classes=data.n_classes,
                w0=config.w0,
                sigma=config.sigma,
                names=[validation_names],
            ),
            images[labelled[0]],
            label_planes[labelled[0]],
            slice(None),
            object_area,
            start_settings,
            source_object_area=data.source_object_area,
        )
    elif held_out is not None:
        # Without a validation pair, the part held out for calibration is scored
        # as training goes: quality feedback beside the loss.
        image, truth, rows = held_out.planes[0]
        region = np.zeros(truth.shape, bool)
        region[rows] = True
        scored = _Validation(
            prepare_training_data(
                [(image, truth)],
                task=task,
                masks=[region],
                channel_axis=0,
                normalization=normalization,
                n_classes=data.n_classes,
                w0=config.w0,
                sigma=config.sigma,
            ),
            image,
            truth,
            rows,
            object_area,
            start_settings,
            # Not asked for: it must not cost the user's budget much.
            share=HELD_OUT_SCORING_SHARE,
            source_object_area=data.source_object_area,
        )
    device = resolve_device(config.device)
    amp = autocast_dtype(device, config.precision, "training")
    rng = as_rng(config.seed)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        if initial is not None:
            model = initial.build_model()
        else:
            model = UNet(model_config)
        result = yield from _train_loop(
            model,
            data,
            scored,
            normalization,
            config,
            device,
            amp,
            rng,
            should_stop,
            (preview, channel_axis, preview_every) if preview is not None else None,
        )
    model = result.model
    postprocess = initial.postprocess if initial is not None else None
    if config.tessellate:
        postprocess = replace(postprocess or task.default_postprocess, tessellate=True)
    calibration = None
    if config.calibrate and task.instances and result.stop_reason == "stopped":
        # Stop means now: calibrating would take seconds more.
        yield TrainingMessage(
            result.steps,
            "Training was stopped, so the labelling settings were not calibrated; the model "
            "keeps " + ("its previous" if initial is not None else "the default") + " settings "
            "(change them in the Segment widget).",
        )
    elif config.calibrate and task.instances and result.steps > 0:
        if validation is not None:
            planes, where = [(scored.image, scored.truth, slice(None))], "the validation image"
        elif held_out is not None:
            planes, where = held_out.planes, held_out.description
        else:
            planes = [
                (*plane, slice(None)) for plane in _calibration_planes(pairs, masks, channel_axis)
            ]
            where = f"{len(planes)} training plane(s) (too few objects to hold any out)"
        if planes:
            calibration = calibrate_on(
                model,
                task,
                planes,
                data.object_areas,
                normalization,
                data.object_area,
                start=postprocess,
                source_object_area=data.source_object_area,
                # A fine-tuned model's settings were chosen on its earlier annotations.
                prefer_start=initial is not None,
            )
            postprocess = calibration.postprocess
            previous = "previous" if initial is not None else "default"
            if calibration.kept_start:
                text = (
                    f"Labelling settings checked on {where}: the {previous} ones kept "
                    f"({calibration.metric} {calibration.score:.2f}); no other setting was "
                    f"clearly better on {calibration.n_objects} objects."
                )
            else:
                text = (
                    f"Labelling settings calibrated on {where}: {calibration.metric} "
                    f"{calibration.score:.2f} ({previous} settings "
                    f"{calibration.default_score:.2f})."
                )
            yield TrainingMessage(result.steps, text)
    result.checkpoint = Checkpoint.from_model(
        model,
        mode=task.mode,
        head=task.name if task.instances else None,
        postprocess=postprocess,
        class_names=initial.class_names if initial is not None else (),
        normalization=normalization,
        object_area=data.object_area,
        source_object_area=data.source_object_area,
        metadata={
            "calibration": (
                {
                    "score": calibration.score,
                    "metric": calibration.metric,
                    "default_score": calibration.default_score,
                    "planes": calibration.n_planes,
                    "on": where,
                    "objects": calibration.n_objects,
                    "kept_start": calibration.kept_start,
                    "median_object_area": float(np.median(data.object_areas)),
                }
                if calibration is not None
                else None
            ),
            "data_shapes": [list(s) for s in data.shapes],
            "steps": result.steps,
            # With the runs it was fine-tuned from.
            "total_steps": result.steps
            + (
                int(initial.metadata.get("total_steps", initial.metadata.get("steps")) or 0)
                if initial is not None
                else 0
            ),
            "stop_reason": result.stop_reason,
            "final_losses": result.losses[-20:],
            "validation": [
                {"step": v.step, "loss": v.loss, v.score_name: v.score} for v in result.validation
            ],
            "train_config": {
                "optimizer": config.optimizer,
                "learning_rate": config.peak_learning_rate,
                "tile_size": config.tile_size,
                "w0": config.w0,
                "sigma": config.sigma,
                "seed": config.seed,
            },
            "fine_tuned_from": (
                {key: initial.metadata.get(key) for key in ("saved_at", "steps", "data_shapes")}
                if initial is not None
                else None
            ),
            **(metadata or {}),
        },
    )
    return result


#: Calibration looks at up to this many fully annotated training planes and pixels.
CALIBRATION_PLANES = 8
CALIBRATION_PIXELS = 4_000_000


def _calibration_planes(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    masks: Sequence[np.ndarray | None] | None,
    channel_axis: int | None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fully annotated training planes with objects, within the calibration budget."""
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    pixels = 0
    masks = list(masks) if masks is not None else [None] * len(pairs)
    for (image, labels), mask in zip(pairs, masks, strict=True):
        if mask is not None:
            continue  # partly annotated: unmarked objects would count as false positives
        images, label_planes = split_planes(image, labels, channel_axis, "calibration")
        for plane_image, plane_labels in zip(images, label_planes, strict=True):
            if not plane_labels.any():
                continue
            if chosen and pixels + plane_labels.size > CALIBRATION_PIXELS:
                return chosen
            chosen.append((plane_image, plane_labels))
            pixels += plane_labels.size
            if len(chosen) == CALIBRATION_PLANES:
                return chosen
    return chosen


#: Share of the rows of the largest training image held out for calibration when
#: there are too few images to hold whole ones out, and the fewest objects there.
HOLD_OUT_FRACTION = 0.2
#: The largest share of the training time spent scoring the held-out part as training goes.
HELD_OUT_SCORING_SHARE = 0.03
MIN_HELD_OUT_OBJECTS = 5


@dataclass
class _HeldOut:
    """Training pairs and masks without the part held out, and that part for calibration."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    masks: list[np.ndarray | None]
    planes: list[tuple[np.ndarray, np.ndarray, slice]]  # (C, H, W) image, labels, rows scored
    description: str
    kept: list[int]  # which of the given pairs are still trained on


def _hold_out(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    masks: Sequence[np.ndarray | None] | None,
    channel_axis: int | None,
) -> _HeldOut | None:
    """Set aside annotations for calibration, or return None.

    Whole images when there are five or more fully annotated 2D images (the
    last tenth, at most ``CALIBRATION_PLANES``), else the bottom
    ``HOLD_OUT_FRACTION`` of the rows of the largest one; None when that part
    would hold fewer than ``MIN_HELD_OUT_OBJECTS`` objects.
    """
    pairs = list(pairs)
    masks = list(masks) if masks is not None else [None] * len(pairs)
    full = [
        number
        for number, ((_, labels), mask) in enumerate(zip(pairs, masks, strict=True))
        if mask is None and np.ndim(labels) == 2 and np.any(labels)
    ]
    if len(full) >= 5:
        chosen = full[-min(CALIBRATION_PLANES, max(1, round(0.1 * len(full)))) :]
        planes = []
        for number in chosen:
            images, label_planes = split_planes(*pairs[number], channel_axis, "calibration")
            planes.append((images[0], label_planes[0], slice(None)))
        kept = [number for number in range(len(pairs)) if number not in chosen]
        return _HeldOut(
            [pairs[number] for number in kept],
            [masks[number] for number in kept],
            planes,
            f"{len(chosen)} training image(s) held out of training",
            kept,
        )
    if not full:
        return None
    number = max(full, key=lambda n: np.size(pairs[n][1]))
    image, labels = pairs[number]
    height = np.shape(labels)[0]
    cut = round(height * (1 - HOLD_OUT_FRACTION))
    band = np.asarray(labels)[cut:]
    if len(np.unique(band[band > 0])) < MIN_HELD_OUT_OBJECTS:
        return None
    mask = np.zeros(np.shape(labels), bool)
    mask[:cut] = True
    masks[number] = mask
    images, label_planes = split_planes(image, labels, channel_axis, "calibration")
    return _HeldOut(
        pairs,
        masks,
        [(images[0], label_planes[0], slice(cut, height))],
        f"rows {cut}-{height - 1} of training image {number + 1}, held out of training",
        list(range(len(pairs))),
    )


def calibrate_on(
    model: UNet,
    task: Task,
    planes: Sequence[tuple[np.ndarray, np.ndarray, slice]],
    object_areas: np.ndarray,
    normalization: Normalization,
    object_area: float | None = None,
    device: str = "cpu",
    start: Postprocess | None = None,
    prefer_start: bool = False,
    source_object_area: float | None = None,
) -> Calibration:
    """Segment ``(C, H, W)`` image planes once and calibrate the labelling on their labels.

    Each plane comes with the rows to score: the whole plane is segmented (for
    context), the maps and labels of those rows are compared, leaving out the
    objects cut in two where the rows begin. Planes are
    segmented as a user's images will be: brought to the model's
    ``object_area`` when it has one (the estimate starting at
    ``source_object_area``, as for a fine-tuned model's users), so the size
    limits found apply there. ``start`` and ``prefer_start`` are passed to
    :func:`~napari_unet.calibration.calibrate` (``start.tessellate`` chooses the
    score).
    """
    maps, scales, ignore = [], [], []
    for image, labels, rows in planes:
        prediction = predict(
            model,
            image,
            channel_axis=0,
            task=task,
            normalization=normalization,
            # The precision segmentation will use ("auto"), so the settings fit its maps.
            config=InferenceConfig(device=device),
            return_probabilities=True,
            object_area=object_area,
            source_object_area=source_object_area,
            postprocess=start,
        )
        maps.append(task.tile_maps(np.asarray(prediction.probabilities))[:, rows])
        scales.append(prediction.scales[0])
        ignore.append(_cut_objects(labels, rows))
    if object_area is not None:
        object_areas = np.array([object_area])  # sizes are relative to the model's objects
    truths = [labels[rows] for _, labels, rows in planes]
    return calibrate(
        task,
        maps,
        truths,
        object_areas,
        start=start,
        scales=scales,
        ignore=ignore,
        prefer_start=prefer_start,
    )


def _cut_objects(labels: np.ndarray, rows: slice) -> np.ndarray | None:
    """Within ``rows``, the pixels of the objects that the rows' first edge cuts in two."""
    first = rows.start or 0
    if first == 0:
        return None
    crossing = np.intersect1d(labels[first - 1], labels[first])
    return np.isin(labels[rows], crossing[crossing > 0])


def _train_loop(
    model: UNet,
    data: TrainingData,
    scored: _Validation | None,
    normalization: Normalization,
    config: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
    rng: np.random.Generator,
    should_stop: Callable[[], bool] | None,
    preview: tuple[np.ndarray, int | None, int] | None = None,
) -> Generator[TrainingEvent, None, TrainingResult]:
    model = model.to(device).to(memory_format=torch.channels_last).train()
    parameters = model.parameters()
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            parameters, lr=config.peak_learning_rate
        )
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.peak_learning_rate, momentum=0.99)
    tile = config.tile_size
    sampler_seed = int(rng.integers(2**63))
    prefetch = Prefetcher(make_sampler(data, model.config, tile, config, sampler_seed))
    losses: list[float] = []
    validations: list[ValidationResult] = []
    good_state = _copy_state(model)
    start = time.perf_counter()
    waited = 0.0
    step = 0
    stop_reason = "budget"
    try:
        while True:
            elapsed = time.perf_counter() - start
            progress = _progress(step, elapsed, config)
            if progress >= 1.0:
                break
            if should_stop is not None and should_stop():
                stop_reason = "stopped"
                break
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(progress, config)
            before = time.perf_counter()
            image, target, weights = prefetch.get()
            waited += time.perf_counter() - before
            try:
                loss = _step(model, optimizer, image, target, weights, device, amp, data.task)
            except torch.cuda.OutOfMemoryError:
                smaller = _smaller_tile(model.config, tile)
                if smaller is None:
                    raise
                prefetch.close()
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                yield TrainingMessage(
                    step,
                    f"The GPU ran out of memory with {tile}x{tile} tiles; continuing with "
                    f"{smaller}x{smaller}.",
                )
                tile = smaller
                prefetch = Prefetcher(
                    make_sampler(data, model.config, tile, config, sampler_seed + step)
                )
                continue
            if not math.isfinite(loss):
                model.load_state_dict(good_state)
                stop_reason = "non-finite loss"
                yield TrainingMessage(
                    step,
                    f"The loss became {loss} at step {step + 1}; training stopped and the "
                    f"weights of step {step} were kept. Try a lower learning rate.",
                )
                break
            step += 1
            losses.append(loss)
            _store_state(model, good_state)
            elapsed = time.perf_counter() - start
            yield TrainingProgress(
                step=step,
                total_steps=config.steps,
                loss=loss,
                elapsed=elapsed,
                images_per_second=step / max(elapsed, 1e-9),
                learning_rate=optimizer.param_groups[0]["lr"],
                data_wait_fraction=waited / max(elapsed, 1e-9),
            )
            if (
                scored is not None
                and step % config.validation_every == 0
                and scored.affordable(elapsed)
            ):
                began = time.perf_counter()
                result = _validate(model, step, scored, normalization, device)
                scored.seconds += time.perf_counter() - began
                validations.append(result)
                yield result
                model.train()
            if preview is not None and step % preview[2] == 0:
                image, channel_axis, _ = preview
                labels = predict(
                    model,
                    image,
                    channel_axis=channel_axis,
                    task=data.task,
                    normalization=normalization,
                    config=InferenceConfig(device=str(device), precision="fp32"),
                    object_area=data.object_area,
                    source_object_area=data.source_object_area,
                ).labels
                yield TrainingPreview(step, np.asarray(labels))
                model.train()
    finally:
        prefetch.close()
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the GPU memory back when training ends
    return TrainingResult(model, None, step, stop_reason, losses, validations)  # type: ignore[arg-type]


def _smaller_tile(model_config: UNetConfig, tile: int) -> int | None:
    """Return the largest valid input size at most 3/4 of ``tile``, or None."""
    wanted = int(tile * 0.75)
    size = model_config.input_shape_for((max(wanted - 2 * model_config.border, 1), 1))[0]
    while size > wanted and size - model_config.size_step >= model_config.min_input_size:
        size -= model_config.size_step
    return size if size < tile else None


def _as_instances(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], names: Sequence[tuple[str, str]]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Return the pairs with masks made instances (:mod:`napari_unet.label_kinds`), and notes."""
    converted, notes = [], []
    for number, (image, labels) in enumerate(pairs, start=1):
        reading = read_labels(labels)
        name = names[number - 1][1] if names else f"pair {number} labels"
        note = reading.describe(name)
        if note is not None:
            notes.append(note)
        converted.append((image, to_instances(labels, reading)))
    return converted, notes


def _progress(step: int, elapsed: float, config: TrainConfig) -> float:
    """Fraction of the budget used (steps or minutes, whichever is further)."""
    fractions = []
    if config.steps is not None:
        fractions.append(step / config.steps)
    if config.minutes is not None:
        fractions.append(elapsed / (60.0 * config.minutes))
    return max(fractions)


def _learning_rate(progress: float, config: TrainConfig) -> float:
    """Linear warm-up over the first 2% of the budget, then cosine decay to 1%."""
    peak = config.peak_learning_rate
    warmup = 0.02
    if progress < warmup:
        return peak * max(progress / warmup, 0.05)
    cosine = 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / (1 - warmup), 1.0)))
    return peak * (0.01 + 0.99 * cosine)


def _copy_state(model: UNet) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _store_state(model: UNet, buffers: dict[str, torch.Tensor]) -> None:
    """Copy the weights into preallocated ``buffers`` (no allocation per step)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            buffers[key].copy_(value)


def _step(
    model: UNet,
    optimizer: torch.optim.Optimizer,
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None,
    task: Task,
) -> float:
    inputs = torch.from_numpy(image)[None].to(device).contiguous(memory_format=torch.channels_last)
    target_t = torch.from_numpy(target.astype(np.int64, copy=False))[None].to(device)
    weights_t = torch.from_numpy(weights)[None].to(device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(inputs)
    loss = task.loss(logits, target_t, weights_t)
    value = float(loss.detach())
    if math.isfinite(value):
        loss.backward()
        optimizer.step()
    return value


@dataclass
class _Validation:
    """What is scored every ``validation_every`` steps.

    A validation pair, or without one the annotations held out for calibration.
    """

    data: TrainingData  # targets and weights of the whole plane, at its own scale
    image: np.ndarray  # (C, H, W)
    truth: np.ndarray  # (H, W)
    rows: slice  # the rows scored
    object_area: float | None  # the model's, when fine-tuning
    postprocess: Postprocess | None  # the labelling to score (None: the task's default)
    #: At most this share of the training time (None: every ``validation_every`` steps).
    share: float | None = None
    seconds: float = 0.0  # spent scoring so far
    source_object_area: float | None = None  # a fine-tuned model's start of the estimate

    def affordable(self, elapsed: float) -> bool:
        """Whether scoring now keeps the time spent on it within ``share``."""
        return self.share is None or self.seconds <= self.share * elapsed


def _validate(
    model: UNet,
    step: int,
    scored: _Validation,
    normalization: Normalization,
    device: torch.device,
) -> ValidationResult:
    """Loss and score of the current model on the validation plane.

    The whole plane goes through the same overlap-tile inference as a user's
    image; the loss and the score are taken on its scored rows.
    """
    data, rows = scored.data, scored.rows
    sample = data.samples[0]
    prediction = predict(
        model,
        scored.image,
        channel_axis=0,
        task=data.task,
        normalization=normalization,
        postprocess=scored.postprocess,
        config=InferenceConfig(device=str(device), precision="fp32"),
        return_probabilities=True,
        object_area=scored.object_area,
        source_object_area=scored.source_object_area,
    )
    probabilities = torch.from_numpy(np.asarray(prediction.probabilities))[None]
    loss = float(
        data.task.loss(
            data.task.logits_from(probabilities),
            torch.from_numpy(sample.target)[None],
            torch.from_numpy(sample.weights)[None],
        )
    )
    labels = np.asarray(prediction.labels)
    if data.task.instances:
        score = average_precision(scored.truth[rows], labels[rows], 0.5)
        return ValidationResult(step, loss, score, "AP@0.5")
    annotated = sample.weights > 0
    ious = []
    for k in range(data.n_classes):
        truth_k = (sample.target == k) & annotated
        pred_k = (labels == k + 1) & annotated
        union = (truth_k | pred_k).sum()
        if union:
            ious.append((truth_k & pred_k).sum() / union)
    return ValidationResult(step, loss, float(np.mean(ious)) if ious else 0.0, "mean IoU")


def train(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], config: TrainConfig | None = None, **kwargs: Any
) -> TrainingResult:
    """Run :func:`train_generator` to the end and return its :class:`TrainingResult`."""
    return run_to_end(train_generator(pairs, config, **kwargs))
