"""Models by name: shipped in the package, kept in the user's models folder, or a path.

A *model reference* is what a user types or picks: ``"nuclei"``, ``"my-cells"`` or
``"/data/run3/model.pt"``. :func:`resolve` turns it into a :class:`ModelEntry`, in
this order:

1. an existing file: that file;
2. a model shipped inside the package (its manifest, ``models/manifest.json``,
   names the file and its sha256);
3. a model in the user's models folder: ``<folder>/<name>.pt`` or
   ``<folder>/<name>.zip``, with its sha256 in ``<name>.sha256`` beside it when it
   was added with :func:`add_model`.

The folder is ``$NAPARI_UNET_MODELS`` when that is set (a shared folder on an
offline cluster), else the platform's user data folder
(``platformdirs.user_data_dir("napari-unet")/models``). :func:`load_model` checks
the sha256 of every model that has one before reading it, and refuses a file
whose content changed. Nothing here touches the network: a remote model would
be one more kind of entry (a URL and a hash, fetched into the user's folder
once) behind the same :func:`resolve` and :func:`load_model`.

Examples
--------
>>> from napari_unet.registry import available_models
>>> "nuclei" in [entry.name for entry in available_models()]
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from napari_unet._atomic import atomic_destination

if TYPE_CHECKING:
    from napari_unet.checkpoint import Checkpoint

__all__ = [
    "DEFAULT_START",
    "MODELS_ENV",
    "ModelEntry",
    "ModelHashError",
    "add_model",
    "available_models",
    "default_start",
    "load_model",
    "models_folder",
    "resolve",
    "sha256_of",
]

#: The shipped model that training of instances starts from unless the user chooses: on
#: the nuclei image, 5 CPU minutes of fine-tuning it beat as many from scratch
#: (docs/benchmarks.md).
DEFAULT_START = "nuclei"
#: Environment variable that overrides the user's models folder.
MODELS_ENV = "NAPARI_UNET_MODELS"
MODEL_SUFFIXES = (".pt", ".zip")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Source = Literal["shipped", "user", "file"]


def default_start(mode: str, in_channels: int = 1) -> str | None:
    """Return the model that training starts from when the user does not choose one.

    The one rule of the Train widget and ``napari-unet train``: a model of
    instances in one-channel images fine-tunes :data:`DEFAULT_START`; anything
    else (semantic classes, colour images) starts a new network (None).

    Examples
    --------
    >>> default_start("instances"), default_start("semantic"), default_start("instances", 3)
    ('nuclei', None, None)
    """
    return DEFAULT_START if mode == "instances" and in_channels == 1 else None


class ModelHashError(ValueError):
    """A model file's content does not match the sha256 recorded for it."""


@dataclass(frozen=True)
class ModelEntry:
    """One model a reference resolves to.

    Parameters
    ----------
    name : str
        What the user types (a file's path for ``source="file"``).
    path : pathlib.Path
        The model file (``.pt`` checkpoint or bioimage.io ``.zip``).
    source : {"shipped", "user", "file"}
        Shipped in the package, in the user's models folder, or a path.
    sha256 : str or None
        The expected content hash; None when none was recorded.
    description : str
        One line for lists and menus.
    """

    name: str
    path: Path
    source: Source
    sha256: str | None = None
    description: str = ""


def models_folder() -> Path:
    """Return the user's models folder (``$NAPARI_UNET_MODELS``, or the platform's)."""
    override = os.environ.get(MODELS_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-unet", appauthor=False)) / "models"


def _shipped() -> list[ModelEntry]:
    folder = resources.files("napari_unet") / "models"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return [
        ModelEntry(
            name,
            Path(str(folder / info["file"])),
            "shipped",
            info["sha256"],
            info.get("description", ""),
        )
        for name, info in manifest.items()
    ]


def _user_models(folder: Path) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MODEL_SUFFIXES or not path.is_file():
            continue
        recorded = path.with_suffix(".sha256")
        sha256 = recorded.read_text(encoding="utf-8").split()[0] if recorded.is_file() else None
        entries.append(ModelEntry(path.stem, path, "user", sha256, f"your model, {path.name}"))
    return entries


def available_models() -> list[ModelEntry]:
    """Return the shipped models, then those in the user's models folder."""
    shipped = _shipped()
    names = {entry.name for entry in shipped}
    # A user's model cannot hide a shipped one of the same name: the shipped one is listed.
    return shipped + [entry for entry in _user_models(models_folder()) if entry.name not in names]


def resolve(reference: str | os.PathLike[str]) -> ModelEntry:
    """Return the model that ``reference`` names: a file, a shipped model or a user's model.

    Raises
    ------
    FileNotFoundError
        If it is none of them; the message lists the names available.
    """
    path = Path(reference).expanduser()
    if path.is_file():
        return ModelEntry(str(reference), path, "file")
    text = str(reference)
    for entry in available_models():
        if entry.name == text:
            return entry
    names = ", ".join(entry.name for entry in available_models())
    raise FileNotFoundError(
        f"No model file or model named {text!r}. Give the path of a model file (.pt, or a "
        f"bioimage.io .zip), or one of: {names} (models in {models_folder()}; "
        f"set {MODELS_ENV} to use another folder)."
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Return the sha256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(reference: str | os.PathLike[str]) -> Checkpoint:
    """Resolve ``reference`` (:func:`resolve`), check its sha256 if known, and read it.

    Raises
    ------
    FileNotFoundError
        If ``reference`` names no model.
    ModelHashError
        If the file's content differs from its recorded sha256.
    napari_unet.checkpoint.CheckpointError
        If the file is not a readable model.
    """
    from napari_unet.checkpoint import load_model_file

    entry = resolve(reference)
    if entry.sha256 is not None:
        actual = sha256_of(entry.path)
        if actual != entry.sha256:
            remedy = (
                "reinstall napari-unet-segmentation"
                if entry.source == "shipped"
                else f"add it again (napari-unet models add FILE --name {entry.name})"
            )
            raise ModelHashError(
                f"The model {entry.name!r} ({entry.path}) is damaged or was replaced: its "
                f"sha256 is {actual[:12]}… but {entry.sha256[:12]}… was recorded. Do not use "
                f"it; {remedy}."
            )
    return load_model_file(entry.path)


def add_model(path: str | os.PathLike[str], name: str, *, overwrite: bool = False) -> ModelEntry:
    """Copy a model file into the user's models folder under ``name``, with its sha256.

    The model is read first (a file that is not a model is refused), then
    copied atomically; an existing model of that name is replaced only with
    ``overwrite=True``.

    Raises
    ------
    ValueError
        If ``name`` is not a simple name, is a shipped model's, or is taken.
    """
    from napari_unet.checkpoint import load_model_file

    if not _NAME.match(name):
        raise ValueError(
            f"A model name is letters, digits, '.', '_' and '-' (at most 64), starting with a "
            f"letter or digit; got {name!r}."
        )
    if name in {entry.name for entry in _shipped()}:
        raise ValueError(f"{name!r} is the name of a shipped model; choose another name.")
    source = Path(path)
    load_model_file(source)  # refuses what is not a model, with a message
    suffix = ".zip" if source.suffix.lower() == ".zip" else ".pt"
    folder = models_folder()
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / f"{name}{suffix}"
    taken = [folder / f"{name}{other}" for other in MODEL_SUFFIXES]
    if not overwrite and any(candidate.exists() for candidate in taken):
        raise ValueError(
            f"A model named {name!r} is already in {folder}; choose another name, or replace "
            f"it (overwrite=True, or --overwrite)."
        )
    for candidate in taken:
        if candidate != destination and candidate.exists():
            candidate.unlink()
    with atomic_destination(destination, f"{name}{suffix}") as partial:
        shutil.copyfile(source, partial)
    sha256 = sha256_of(destination)
    with atomic_destination(destination.with_suffix(".sha256"), f"{name}.sha256") as partial:
        partial.write_text(f"{sha256}  {destination.name}\n", encoding="utf-8")
    return ModelEntry(name, destination, "user", sha256, f"your model, {destination.name}")
