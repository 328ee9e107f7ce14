"""Reading BioImage Model Zoo packages exported by this package, as untrusted input.

A package written by :func:`napari_unet.export.export_bioimageio` is a zip file
with an ``rdf.yaml`` description (bioimage.io model spec 0.5) whose ``config``
section holds, under the ``napari-unet`` key, everything needed to rebuild a
:class:`~napari_unet.checkpoint.Checkpoint`: the network's config, the mode, the
class names, the normalisation, and the name of the PyTorch state-dict file.

:func:`load_package` reads such a package without executing anything from it:

- the zip is read member by member and never extracted; a member whose name is
  an absolute path, has a ``..`` component or is a symbolic link is refused,
  as are duplicate, encrypted and over-large members (a zip bomb);
- ``rdf.yaml`` is parsed with ``yaml.safe_load`` (no Python objects);
- the state dict is checked against the SHA-256 checksum that ``rdf.yaml``
  declares for it, and read with ``torch.load(..., weights_only=True)``; the
  TorchScript weights (a program) are never loaded.

A refusal raises :class:`PackageError`, whose message names the package, the
refused entry or file, and what to do.

Examples
--------
>>> from napari_unet.bioimageio import check_member_name
>>> check_member_name("weights/state_dict.pt") is None
True
>>> check_member_name("../evil.py")
"has a '..' component"
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from napari_unet.checkpoint import Checkpoint, CheckpointError, torch_load_problem
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import Normalization
from napari_unet.tasks import Postprocess

__all__ = [
    "CONFIG_KEY",
    "PACKAGE_FORMAT_VERSION",
    "PackageError",
    "build_unet",
    "check_member_name",
    "is_package",
    "load_package",
]

logger = logging.getLogger(__name__)

#: Key of this package's section in the ``config`` of ``rdf.yaml``.
CONFIG_KEY = "napari-unet"
#: Version of the ``config: napari-unet:`` section; newer versions are refused.
PACKAGE_FORMAT_VERSION = 1
#: File names of the description inside a package (the spec's old and new name).
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")

# Bounds on what is read from an untrusted zip. The paper's network (31 M
# parameters) has 124 MB of weights and a package holds them twice (state dict
# and TorchScript); anything beyond these bounds is damage or a zip bomb.
#: Most members a package may have.
MAX_MEMBERS = 1000
#: Largest total uncompressed size of all members, in bytes (8 GiB).
MAX_PACKAGE_BYTES = 8 << 30
#: Largest ``rdf.yaml``, in bytes.
MAX_DESCRIPTION_BYTES = 16 << 20
#: Members larger than this may not unpack more than MAX_COMPRESSION_RATIO times their
#: stored size: weights hardly compress, and a zip bomb compresses a thousandfold.
MAX_RATIO_FREE_BYTES = 1 << 20
MAX_COMPRESSION_RATIO = 100
#: State dicts up to this size are read in memory, larger ones through a temporary file.
_SPOOL_BYTES = 64 << 20
_CHUNK = 1 << 20


class PackageError(CheckpointError):
    """A file is not a bioimage.io package that this package can read safely."""


def build_unet(**kwargs: Any) -> UNet:
    """Build an untrained :class:`~napari_unet.model.UNet` from plain keyword arguments.

    This is the ``architecture`` callable of the ``pytorch_state_dict`` weights
    of exported packages (``import_from: napari_unet.bioimageio``), so that
    bioimage.io tools can rebuild the network with this package installed.

    Parameters
    ----------
    **kwargs
        Fields of :class:`~napari_unet.model.UNetConfig`.

    Returns
    -------
    UNet
        The network in evaluation mode, He-initialised until a state dict is loaded.

    Examples
    --------
    >>> net = build_unet(in_channels=1, n_classes=2, depth=2, base_channels=4)
    >>> net.config.border
    20
    """
    return UNet(UNetConfig(**kwargs)).eval()


def check_member_name(name: str) -> str | None:
    r"""Say why a zip member name is unsafe to use, or return None when it is safe.

    Unsafe names are absolute (``/etc/passwd``, ``C:/x``, ``\\server\x``) or
    have a ``..`` component; backslashes count as separators, as they do on
    Windows.

    Parameters
    ----------
    name : str
        The member name as stored in the zip.

    Returns
    -------
    str or None
        The reason, for an error message, or None.
    """
    if not name or "\x00" in name:
        return "has an empty or NUL-containing name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    return None


def is_package(path: str | os.PathLike[str]) -> bool:
    """Return True when ``path`` is a zip file with a bioimage.io description at its top.

    Only the zip's directory is read. PyTorch checkpoints are zip files too,
    but hold no ``rdf.yaml``.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name in names for name in DESCRIPTION_NAMES)


def load_package(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a bioimage.io package written by this package's ``export`` as a checkpoint.

    Parameters
    ----------
    path : str or path-like
        The ``.zip`` package.

    Returns
    -------
    Checkpoint
        The model, its mode, class names, normalisation and training metadata;
        ``metadata["loaded_from"]`` is ``"bioimageio"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    PackageError
        If the file is not a zip, not a bioimage.io model package, not one
        exported by this package, has unsafe or over-large members, or its
        weights do not match their declared checksum. The message names the
        refused entry or file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}; check the path.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise PackageError(
            f"{path} is not a zip file, so not a bioimage.io package ({error}); give a "
            "package exported with 'napari-unet export --format bioimageio' or a .pt model."
        ) from error
    with archive:
        members = _safe_members(archive, path)
        description_name = next((name for name in DESCRIPTION_NAMES if name in members), None)
        if description_name is None:
            raise PackageError(
                f"{path} is a zip file but not a bioimage.io package: it has no rdf.yaml at "
                "its top level. Give a package exported with 'napari-unet export --format "
                "bioimageio' or a .pt model."
            )
        description = _read_description(archive, members[description_name], path)
        settings = _our_settings(description, path)
        weights_name = settings.get("state_dict")
        if not isinstance(weights_name, str) or weights_name not in members:
            raise PackageError(
                f"{path}: its rdf.yaml names the state-dict file {weights_name!r}, which is not "
                "in the package; export the model again."
            )
        expected = _declared_sha256(description, weights_name, path)
        config = _model_config(settings, path)
        _check_weights_size(members[weights_name], config, path)
        with _verified_copy(archive, members[weights_name], expected, path) as stream:
            state_dict = _load_state_dict(stream, weights_name, path)
    checkpoint = _checkpoint_from(settings, config, state_dict, path)
    logger.info("Read the bioimage.io package %s (%s mode)", path, checkpoint.mode)
    return checkpoint


# -- the zip --------------------------------------------------------------------------------


def _safe_members(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """Check every member of ``archive``; return the files by name or raise PackageError."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PackageError(
            f"{path} has {len(infos)} entries, more than a model package has (at most "
            f"{MAX_MEMBERS}); refusing it. Export the model again."
        )
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        reason = check_member_name(name)
        if reason is None and stat.S_ISLNK(info.external_attr >> 16):
            reason = "is a symbolic link"
        if reason is None and info.flag_bits & 0x1:
            reason = "is encrypted"
        if reason is None and name in members:
            reason = "appears twice"
        if reason is not None:
            raise PackageError(
                f"{path}: refusing the package because its entry {name!r} {reason}; a model "
                "package holds plain, unencrypted files, each once. Do not use this file; "
                "export the model again."
            )
        if info.file_size > MAX_RATIO_FREE_BYTES and (
            info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            raise PackageError(
                f"{path}: refusing the package because its entry {name!r} would unpack "
                f"{info.file_size / max(info.compress_size, 1):.0f} times larger "
                f"({info.file_size} bytes from {info.compress_size}); model files do not "
                "compress like that, so it is damaged or a zip bomb. Export the model again."
            )
        total += info.file_size
        if total > MAX_PACKAGE_BYTES:
            raise PackageError(
                f"{path}: refusing the package because its entries unpack to more than "
                f"{MAX_PACKAGE_BYTES} bytes (at entry {name!r}); it is damaged or a zip bomb."
            )
        if not info.is_dir():
            members[name] = info
    return members


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path, out: IO[bytes]
) -> str:
    """Copy a member to ``out``, at most ``limit`` bytes; return its SHA-256 hex digest."""
    digest = hashlib.sha256()
    size = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > min(limit, info.file_size):
                    raise PackageError(
                        f"{path}: refusing the package because its entry {info.filename!r} "
                        f"unpacks to more bytes than allowed ({min(limit, info.file_size)}); "
                        "it is damaged or a zip bomb."
                    )
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        raise PackageError(
            f"{path}: the entry {info.filename!r} cannot be read ({error}); the package is "
            "damaged. Export the model again."
        ) from error
    return digest.hexdigest()


def _read_description(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path
) -> dict[str, Any]:
    import yaml

    if info.file_size > MAX_DESCRIPTION_BYTES:
        raise PackageError(
            f"{path}: refusing the package because its {info.filename} is {info.file_size} "
            f"bytes, larger than a model description can be ({MAX_DESCRIPTION_BYTES})."
        )
    buffer = io.BytesIO()
    _read_member(archive, info, MAX_DESCRIPTION_BYTES, path, buffer)
    try:
        # safe_load builds only plain data (no Python objects, no code).
        description = yaml.safe_load(buffer.getvalue().decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PackageError(
            f"{path}: its {info.filename} is not readable YAML ({error}); the package is damaged."
        ) from error
    if not isinstance(description, dict):
        raise PackageError(f"{path}: its {info.filename} is not a bioimage.io description.")
    if description.get("type") != "model":
        raise PackageError(
            f"{path} is a bioimage.io {description.get('type', 'resource')!r} description, "
            "not a model; give a model package exported with 'napari-unet export'."
        )
    return description


def _our_settings(description: Mapping[str, Any], path: Path) -> dict[str, Any]:
    config = description.get("config")
    settings = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if not isinstance(settings, dict):
        raise PackageError(
            f"{path} is a bioimage.io model, but not one exported by napari-unet-segmentation "
            f"(its rdf.yaml has no 'config: {CONFIG_KEY}:' section), so this plugin cannot "
            "rebuild it. Run it with a bioimage.io tool (e.g. bioimageio.core), or use a "
            "model trained with napari-unet."
        )
    version = settings.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PackageError(f"{path}: its '{CONFIG_KEY}' section has no valid format_version.")
    if version > PACKAGE_FORMAT_VERSION:
        from napari_unet import __version__

        raise PackageError(
            f"{path} was exported in package format {version}, newer than this version of "
            f"napari-unet-segmentation ({__version__}) reads (up to {PACKAGE_FORMAT_VERSION}); "
            "upgrade the package."
        )
    return settings


def _declared_sha256(description: Mapping[str, Any], name: str, path: Path) -> str:
    """Return the SHA-256 that ``rdf.yaml`` declares for the weights file ``name``."""
    weights = description.get("weights")
    entries = weights.values() if isinstance(weights, dict) else ()
    for entry in entries:
        if isinstance(entry, dict) and entry.get("source") == name:
            sha256 = entry.get("sha256")
            if isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
                return sha256.lower()
    raise PackageError(
        f"{path}: its rdf.yaml declares no SHA-256 checksum for the weights {name!r}, so they "
        "cannot be verified; refusing them. Export the model again."
    )


def _model_config(settings: Mapping[str, Any], path: Path) -> UNetConfig:
    """Return the network the package describes (UNetConfig bounds it: no huge network)."""
    try:
        return UNetConfig(**settings["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise _damaged(path, error) from error


def _damaged(path: Path, error: Exception) -> PackageError:
    return PackageError(
        f"{path} has a damaged '{CONFIG_KEY}' model description in its rdf.yaml: {error}"
    )


def _check_weights_size(info: zipfile.ZipInfo, config: UNetConfig, path: Path) -> None:
    """Refuse weights larger than the declared network can have, before unpacking them."""
    with torch.device("meta"):  # shapes only, nothing allocated
        parameters = sum(p.numel() for p in UNet(config).parameters())
    largest = 8 * parameters + (1 << 20)  # float64 at most, plus the pickle's overhead
    if info.file_size > largest:
        raise PackageError(
            f"{path}: its weights {info.filename!r} unpack to {info.file_size} bytes, more "
            f"than the network it describes can have ({largest}); it is damaged or a zip "
            "bomb. Export the model again."
        )


@contextmanager
def _verified_copy(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, sha256: str, path: Path
) -> Iterator[IO[bytes]]:
    """Copy a member to a spooled temporary file, check its checksum, yield it rewound."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as copy:
        actual = _read_member(archive, info, MAX_PACKAGE_BYTES, path, copy)
        if actual != sha256:
            raise PackageError(
                f"{path}: the checksum of {info.filename!r} does not match the one its "
                f"rdf.yaml declares (sha256 {actual}, expected {sha256}): the file was "
                "changed or damaged after export. Refusing it; use an intact copy or "
                "export the model again."
            )
        copy.seek(0)
        yield copy


def _load_state_dict(stream: IO[bytes], name: str, path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise PackageError(
            f"{path}: its weights {name!r} {torch_load_problem(error)}; export the model again."
        ) from error
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in state_dict.items()
    ):
        raise PackageError(
            f"{path}: its weights {name!r} are not a state dict (names and tensors); "
            "export the model again."
        )
    return state_dict


def _checkpoint_from(
    settings: Mapping[str, Any],
    config: UNetConfig,
    state_dict: dict[str, torch.Tensor],
    path: Path,
) -> Checkpoint:
    try:
        checkpoint = Checkpoint(
            model_config=config,
            state_dict=state_dict,
            mode=settings["mode"],
            head=settings.get("head"),
            postprocess=(
                Postprocess.from_dict(settings["postprocess"])
                if settings.get("postprocess") is not None
                else None
            ),
            class_names=tuple(str(name) for name in settings["class_names"]),
            normalization=Normalization.from_dict(settings["normalization"]),
            metadata={**dict(settings.get("metadata") or {}), "loaded_from": "bioimageio"},
            object_area=settings.get("object_area"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise _damaged(path, error) from error
    try:
        checkpoint.build_model()  # strict key check now, so errors surface at load time
    except CheckpointError as error:
        raise PackageError(f"{path}: {error}") from error
    return checkpoint
