"""Saving and loading trained models: one self-describing file.

A checkpoint holds a format version, the network's constructor config, the
intensity normalisation, the mode and class names, training metadata (data
shapes, steps, losses, date, package version) and the ``state_dict``. It is
read with ``torch.load(..., weights_only=True)`` (no code runs from the file)
and the weights are loaded with strict key matching into a network rebuilt
from the saved config, so nothing has to be repeated at prediction time.

Writes are atomic: the file is written beside its destination and renamed
over it, so an interrupted save never destroys the previous model.

Examples
--------
>>> import tempfile, pathlib
>>> from napari_unet.model import UNet, UNetConfig
>>> from napari_unet.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
>>> net = UNet(UNetConfig(base_channels=4, depth=2))
>>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
>>> save_checkpoint(path, Checkpoint.from_model(net, mode="instances"))
>>> loaded = load_checkpoint(path)
>>> loaded.mode, loaded.model_config == net.config
('instances', True)
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from napari_unet import __version__
from napari_unet._atomic import atomic_destination
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.tasks import Postprocess, Task, task_for

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "load_model_file",
    "save_checkpoint",
]

FORMAT_VERSION = 1
#: Bounds of a stored object area (pixels): anything else is a damaged file.
MIN_OBJECT_AREA, MAX_OBJECT_AREA = 1.0, 1e8
_MAGIC = "napari-unet-segmentation checkpoint"
Mode = Literal["instances", "semantic"]


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this package."""


@dataclass
class Checkpoint:
    """A trained model and everything needed to use it again.

    Attributes
    ----------
    model_config : UNetConfig
        Architecture; the network is rebuilt from it.
    state_dict : dict
        The network's weights.
    mode : {"instances", "semantic"}
        What the labels mean (objects, or classes 1..K).
    head : str, optional
        The instance head (:mod:`napari_unet.tasks`): "three-class",
        "distance" or "paper". Files written before heads existed have none and are
        the paper's.
    postprocess : Postprocess, optional
        How an instance model's maps become objects, as calibrated after
        training; default the task's defaults.
    class_names : tuple of str
        Name of each output class, background first.
    normalization : Normalization
        How input intensities were scaled during training.
    metadata : dict
        JSON-like training information (shapes, steps, losses, date, version).
    object_area : float, optional
        Instance models: the median object area (pixels) the training planes
        were resampled to (:mod:`napari_unet.scaling`); images are brought to
        it before segmentation. None: the model segments images as they are
        (semantic models, and files from before object sizes were kept).
    source_object_area : float, optional
        A fine-tuned model: the typical object area of the images it was
        fine-tuned on, at their own scale. Estimating an image's object size
        starts there (the user's next images are most likely of the same
        experiment) instead of at the image's own scale. None: new models, whose
        training images were used as they are, and older files.
    """

    model_config: UNetConfig
    state_dict: dict[str, torch.Tensor]
    mode: Mode = "instances"
    class_names: tuple[str, ...] = ()
    normalization: Normalization = field(default_factory=Normalization)
    metadata: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    postprocess: Postprocess | None = None
    object_area: float | None = None
    source_object_area: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("instances", "semantic"):
            raise ValueError(f'mode must be "instances" or "semantic", got {self.mode!r}.')
        if self.object_area is not None and self.mode != "instances":
            raise ValueError("Only instance models have an object size.")
        self.object_area = _checked_area(self.object_area, "object_area")
        self.source_object_area = _checked_area(self.source_object_area, "source_object_area")
        if self.source_object_area is not None and self.object_area is None:
            raise ValueError("source_object_area needs the model's own object_area.")
        if self.mode == "instances" and self.head is None:
            self.head = "paper"  # files from before heads existed
        task = self.task
        if task.instances and task.n_classes(0) != self.model_config.n_classes:
            raise ValueError(
                f"The {task.name!r} head has {task.n_classes(0)} outputs but the network "
                f"has {self.model_config.n_classes}."
            )
        if self.postprocess is None and task.instances:
            self.postprocess = task.default_postprocess
        if not self.class_names:
            self.class_names = task.class_names(self.model_config.n_classes)
        if len(self.class_names) != self.model_config.n_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but the model has "
                f"{self.model_config.n_classes} classes."
            )

    @classmethod
    def from_model(cls, model: UNet, **kwargs: Any) -> Checkpoint:
        """Capture ``model``'s config and a CPU copy of its weights."""
        state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
        return cls(model_config=model.config, state_dict=state, **kwargs)

    def build_model(self) -> UNet:
        """Rebuild the network and load the weights (strict key matching)."""
        model = UNet(self.model_config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except (RuntimeError, TypeError) as error:  # wrong keys or shapes; not a dict
            raise CheckpointError(
                f"The checkpoint's weights do not match its own network description: {error}"
            ) from error
        damaged = [
            name
            for name, value in self.state_dict.items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]
        if damaged:
            raise CheckpointError(
                f"The model's weights hold NaN or infinite values ({', '.join(damaged[:3])}): "
                "the file is damaged or its training diverged. Train again (a lower learning "
                "rate helps) or use another model file."
            )
        return model.eval()

    @property
    def task(self) -> Task:
        """What the model's outputs mean and how they become labels."""
        return task_for(self.mode, self.head)

    def inference_settings(self) -> dict[str, Any]:
        """Return the keyword arguments of :func:`~napari_unet.inference.predict` it implies.

        Its task, labelling, normalisation and object size: what segmenting
        with the model means wherever it is done. Override one by building a
        new dict, e.g. ``{**checkpoint.inference_settings(), "postprocess": mine}``.
        """
        return {
            "task": self.task,
            "postprocess": self.postprocess,
            "normalization": self.normalization,
            "object_area": self.object_area,
            "source_object_area": self.source_object_area,
        }


def _checked_area(area: object, name: str) -> float | None:
    if area is None:
        return None
    if not (
        isinstance(area, (int, float))
        and not isinstance(area, bool)
        and MIN_OBJECT_AREA <= area <= MAX_OBJECT_AREA
    ):
        raise ValueError(
            f"{name} must be a pixel area from {MIN_OBJECT_AREA} to {MAX_OBJECT_AREA:,}, "
            f"got {area!r}."
        )
    return float(area)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename).

    ``metadata`` gains ``saved_at`` and ``package_version``.
    """
    metadata = {
        **checkpoint.metadata,
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
    }
    payload = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "model_config": checkpoint.model_config.to_dict(),
        "mode": checkpoint.mode,
        "head": checkpoint.head,
        "postprocess": (
            checkpoint.postprocess.to_dict() if checkpoint.postprocess is not None else None
        ),
        "class_names": list(checkpoint.class_names),
        "normalization": checkpoint.normalization.to_dict(),
        "object_area": checkpoint.object_area,
        "source_object_area": checkpoint.source_object_area,
        "metadata": metadata,
        "state_dict": checkpoint.state_dict,
    }
    with atomic_destination(path, "model.pt") as temporary:
        torch.save(payload, temporary)
    checkpoint.metadata = metadata


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is corrupt, truncated, from another program or from a newer
        version of this package; the message says which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}; check the path.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(f"{path} {torch_load_problem(error)}") from error
    if not isinstance(payload, dict) or payload.get("format") != _MAGIC:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a napari-unet-segmentation model; train one "
            f"with this plugin or the `napari-unet train` command."
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version!r}, newer than this version of "
            f"napari-unet-segmentation ({__version__}) reads (up to {FORMAT_VERSION}); "
            f"upgrade the package."
        )
    try:
        checkpoint = Checkpoint(
            model_config=UNetConfig(**payload["model_config"]),
            state_dict=payload["state_dict"],
            mode=payload["mode"],
            head=payload.get("head"),
            postprocess=(
                Postprocess.from_dict(payload["postprocess"])
                if payload.get("postprocess") is not None
                else None
            ),
            class_names=tuple(payload["class_names"]),
            normalization=Normalization.from_dict(payload["normalization"]),
            metadata=dict(payload.get("metadata", {})),
            object_area=payload.get("object_area"),
            source_object_area=payload.get("source_object_area"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has a damaged model description: {error}") from error
    try:
        checkpoint.build_model()  # strict key and finiteness checks now, at load time
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return checkpoint


def torch_load_problem(error: Exception) -> str:
    """Say why ``torch.load(..., weights_only=True)`` refused a file, without PyTorch's advice.

    PyTorch suggests loading again with ``weights_only=False``, which would run
    whatever code the file holds: never right for a file from elsewhere.
    """
    import pickle

    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in text:
        return (
            "holds objects other than weights and settings (it would run code), so it was "
            "not opened; use a model file written by napari-unet-segmentation"
        )
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in text:
        return (
            "is not a readable model file (not in PyTorch's format); give the .pt file written by "
            "napari-unet train or the Train U-Net widget, or an exported .zip package"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return (
        "is not a readable model file (damaged, truncated, or not a PyTorch file: "
        f"{type(error).__name__}{': ' + first_line if first_line else ''}); check that it is the "
        "model you meant"
    )


def load_model_file(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a model file: a checkpoint (``.pt``) or a bioimage.io package (``.zip``).

    Packages are those written by ``napari-unet export --format bioimageio``
    and are read by :func:`napari_unet.bioimageio.load_package`, which refuses
    unsafe or tampered packages. Anything else is read by
    :func:`load_checkpoint`. Neither runs code from the file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a readable model; a
        :class:`~napari_unet.bioimageio.PackageError` for a refused package.
    """
    from napari_unet.bioimageio import is_package, load_package

    path = Path(path)
    if is_package(path) or (path.suffix.lower() == ".zip" and not _is_torch_file(path)):
        return load_package(path)
    return load_checkpoint(path)


def _is_torch_file(path: Path) -> bool:
    """Tell whether ``path`` is in PyTorch's zip format (with ``<name>/data.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
