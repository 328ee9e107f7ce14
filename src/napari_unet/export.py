"""Export a trained model for other tools: a BioImage Model Zoo package and ONNX.

:func:`export_bioimageio` writes a bioimage.io model package (spec 0.5, a zip):
``rdf.yaml``, the weights as a PyTorch state dict and as TorchScript, test
input and output tensors computed by this package's own inference code, a cover
image, documentation and a conda environment. The network's valid input sizes
(``min + n * step``), the output's size (the input less ``2 * border``), the
percentile normalisation (``scale_range``) and the class probabilities (softmax
over the channel axis) are all in ``rdf.yaml``; its ``config: napari-unet:``
section lets :func:`napari_unet.bioimageio.load_package` read the package back
without running anything from it. The package is checked with the
bioimage.io validator before it is written.

:func:`export_onnx` writes an ONNX model that takes normalised images of any
valid size and batch size and returns softmax probabilities; its metadata say
how to prepare inputs and what sizes are valid.

Both need the optional packages of the ``export`` extra (``pip install
"napari-unet-segmentation[export]"``); they are imported only here, when an
export runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import logging
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet import __version__
from napari_unet._atomic import atomic_destination
from napari_unet.bioimageio import CONFIG_KEY, PACKAGE_FORMAT_VERSION
from napari_unet.checkpoint import Checkpoint
from napari_unet.inference import ImagePlanes, ModelPredictor
from napari_unet.model import UNet, UNetConfig
from napari_unet.normalization import NOISY_PLANE, SMOOTHING_SIGMA, Normalization
from napari_unet.tasks import Task

__all__ = [
    "CITATION",
    "OptionalDependencyError",
    "PackageInfo",
    "export_bioimageio",
    "export_onnx",
    "onnx_metadata",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "napari-unet-segmentation[export]"'
#: The paper every exported model cites.
CITATION = {
    "text": (
        "Ronneberger, O., Fischer, P. & Brox, T. (2015). U-Net: Convolutional Networks for "
        "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
    ),
    "doi": "10.1007/978-3-319-24574-4_28",
}
#: Output side (pixels) of the test tensors and cover image of a package.
TEST_OUTPUT_SIZE = 128
#: Largest difference allowed between exported weights and the PyTorch model.
TOLERANCE = 1e-4
# Metadata keys that hold local file paths: not published in a package.
_PRIVATE_METADATA = ("training_files", "validation_files", "initial_model_file")
_INPUT_ID, _OUTPUT_ID = "raw", "probabilities"
_FILES = {
    "state_dict": "weights.pt",
    "torchscript": "weights_torchscript.pt",
    "test_input": "test_input.npy",
    "test_output": "test_output.npy",
    "cover": "cover.png",
    "documentation": "README.md",
    "environment": "environment.yaml",
}


class OptionalDependencyError(ImportError):
    """A package needed for export is not installed; the message says how to install it."""


def _optional(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise :class:`OptionalDependencyError` naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise OptionalDependencyError(
            f"{purpose} needs the optional package {name.split('.')[0]!r}"
            f"{' (' + name + ')' if '.' in name else ''}, which is not installed ({error}); "
            f"install the export extra: {INSTALL_HINT}"
        ) from error


@dataclass(frozen=True)
class PackageInfo:
    """Descriptive fields of a bioimage.io package.

    Parameters
    ----------
    name : str, optional
        Human-readable name: 5 to 128 letters, digits, spaces or ``_+-()``
        (the spec's rule). Default: "U-Net instance segmentation" or "U-Net
        semantic segmentation".
    description : str, optional
        One or two sentences; default: what the model segments and its classes.
    authors : sequence of str
        Names of the people who trained the model; bioimage.io asks for at least one.
    license : str
        SPDX identifier of the model's license (bioimage.io recommends CC-BY-4.0).
    tags : sequence of str
        Extra keywords (e.g. "nuclei", "fluorescence-light-microscopy").
    """

    name: str | None = None
    description: str | None = None
    authors: Sequence[str] = ()
    license: str = "CC-BY-4.0"
    tags: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.name is not None and not (
            5 <= len(self.name) <= 128 and re.fullmatch(r"[A-Za-z0-9_+\-() ]+", self.name)
        ):
            raise ValueError(
                f"name must be 5 to 128 letters, digits, spaces or _+-() (bioimage.io's "
                f"rule), got {self.name!r}."
            )
        if self.description is not None and not self.description.strip():
            raise ValueError("description must not be empty; leave it out for the default.")
        for field_name in ("authors", "tags"):
            values = getattr(self, field_name)
            if isinstance(values, str):
                raise TypeError(f"{field_name} must be a sequence of strings, not one string.")
            values = tuple(values)
            if not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"{field_name} must be non-empty strings, got {values!r}.")
            object.__setattr__(self, field_name, tuple(v.strip() for v in values))
        if not re.fullmatch(r"[A-Za-z0-9.+\-]+", self.license):
            raise ValueError(
                f"license must be an SPDX identifier such as CC-BY-4.0 or MIT, got "
                f"{self.license!r}."
            )


# -- shared -------------------------------------------------------------------------------------


class _Probabilities(nn.Module):
    """The U-Net followed by its task's activation, e.g. a softmax (what ONNX users get)."""

    def __init__(self, network: UNet, task: Task) -> None:
        super().__init__()
        self.network = network
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the task's outputs (class probabilities) for the centre of ``x``."""
        return self.task.activate(self.network(x))


def _size_text(config: UNetConfig) -> str:
    return (
        f"{config.min_input_size} + n*{config.size_step} pixels (n = 0, 1, 2, ...), "
        "height and width independently"
    )


def _postprocessing_text(checkpoint: Checkpoint) -> str:
    task, settings = checkpoint.task, checkpoint.postprocess
    if not task.instances or settings is None:
        return "semantic: class id = 1 + the index of the most probable channel"
    seeds = task.seeds_text
    return (
        f"instances ({task.name} head): foreground = 1 - p(background) (channel 0); objects "
        f"grow by a watershed over foreground > {settings.threshold:g} from seeds where "
        f"{seeds} > {settings.seed_threshold:g} (seeds of fewer than "
        f"{settings.min_seed_size} pixels do not count; objects of fewer than "
        f"{settings.min_size} pixels are dropped)"
    )


def _normalization_text(normalization: Normalization) -> str:
    text = (
        f"per image and channel: (x - p{normalization.low_percentile:g}) / "
        f"(p{normalization.high_percentile:g} - p{normalization.low_percentile:g}), with "
        "pN the N-th percentile of that channel's intensities (numpy.percentile, linear)"
    )
    if normalization.smooth_noisy:
        text += (
            f"; napari-unet first smooths a noisy image (estimated pixel noise above "
            f"{NOISY_PLANE:g} of that range) with a Gaussian of sigma {SMOOTHING_SIGMA:g} px "
            "(percentiles of the image as it is), which this description leaves out: "
            "smooth very dim, shot-noise-limited frames before giving them to this model"
        )
    return text


def onnx_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """Return the ``metadata_props`` written into an exported ONNX model.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model.

    Returns
    -------
    dict of str to str
        Valid input sizes, output-shape rule, normalisation, mode, classes and
        the network's config; structured values are JSON.

    Examples
    --------
    >>> from napari_unet.checkpoint import Checkpoint
    >>> from napari_unet.model import UNet, UNetConfig
    >>> meta = onnx_metadata(Checkpoint.from_model(UNet(UNetConfig(depth=2, base_channels=4))))
    >>> meta["input_size_min"], meta["input_size_step"], meta["output_border"]
    ('44', '4', '20')
    >>> meta["output_shape"]
    '(batch, 2, height - 40, width - 40)'
    """
    config = checkpoint.model_config
    border = config.border
    return {
        "napari_unet.package_version": __version__,
        "napari_unet.format_version": str(PACKAGE_FORMAT_VERSION),
        "input": (
            f"float32 (batch, {config.in_channels}, height, width): normalised intensities "
            "(see normalization)"
        ),
        "valid_input_sizes": _size_text(config),
        "input_size_min": str(config.min_input_size),
        "input_size_step": str(config.size_step),
        "output": f"float32 {checkpoint.task.outputs_text}",
        "output_border": str(border),
        "output_shape": (
            f"(batch, {config.n_classes}, height - {2 * border}, width - {2 * border})"
            if border
            else f"(batch, {config.n_classes}, height, width)"
        ),
        "output_shape_rule": (
            f"the output covers the centre of the input, {border} pixels less on each side "
            "(valid convolutions); tile large images with that much overlap, mirroring the "
            "image at its edges"
        ),
        "normalization": json.dumps(
            {
                **checkpoint.normalization.to_dict(),
                "formula": _normalization_text(checkpoint.normalization),
            }
        ),
        "mode": checkpoint.mode,
        "task": checkpoint.task.name,
        "postprocess": json.dumps(
            checkpoint.postprocess.to_dict() if checkpoint.postprocess is not None else None
        ),
        "postprocessing": _postprocessing_text(checkpoint),
        "object_area": (
            f"{checkpoint.object_area:.0f} pixels: the median object area the network was "
            "trained at; resample images so that their objects have about this area"
            if checkpoint.object_area is not None
            else "none: images are used at their own scale"
        ),
        "class_names": json.dumps(list(checkpoint.class_names)),
        "model_config": json.dumps(config.to_dict()),
        "citation": f"{CITATION['text']} doi:{CITATION['doi']}",
    }


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters' chatter that is not about the user's model."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    try:
        with warnings.catch_warnings():
            # UNet.forward checks the input size with Python integers; tracers warn that
            # such values become constants. The check only raises for invalid sizes, and
            # both exports are verified on a second input size below.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # torch.jit.trace is deprecated in favour of torch.export, but TorchScript is
            # the PyTorch format that bioimage.io consumers (bioimageio.core, deepImageJ) run.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
            # torch.export's own use of a deprecated pytree API (torch 2.13).
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
            yield
    finally:
        registration.setLevel(level)


def _check_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    if actual.shape != expected.shape:
        raise RuntimeError(
            f"{what} gives an output of shape {actual.shape}, PyTorch {expected.shape}; the "
            "export is wrong. Please report this with your torch version."
        )
    error = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not error <= TOLERANCE:
        raise RuntimeError(
            f"{what} differs from the PyTorch model by {error:.2g} (allowed {TOLERANCE:g}); "
            "the export is wrong. Please report this with your torch version."
        )


def _random_input(config: UNetConfig, rows: int, cols: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, config.in_channels, rows, cols, generator=generator)


# -- ONNX -----------------------------------------------------------------------------------


def export_onnx(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` as an ONNX model that outputs class probabilities.

    The input is ``(batch, channels, height, width)`` float32, normalised as
    the metadata say; height and width are dynamic and each must be
    ``min + n * step`` (``metadata_props`` ``input_size_min`` and
    ``input_size_step``). The output is ``(batch, n_classes, height - 2 *
    border, width - 2 * border)`` softmax probabilities. The written model is
    run with onnxruntime on two input sizes and compared with PyTorch before
    this returns.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model to export.
    path : str or path-like
        Destination ``.onnx`` file, replaced atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OptionalDependencyError
        If onnx, onnxscript or onnxruntime is missing.
    RuntimeError
        If the exported model does not reproduce the PyTorch model.
    """
    purpose = "ONNX export"
    onnx = _optional("onnx", purpose)
    _optional("onnxscript", purpose)  # the torch.export-based exporter translates with it
    onnxruntime = _optional("onnxruntime", purpose)
    from torch.export import Dim

    path = Path(path)
    config = checkpoint.model_config
    network = _Probabilities(checkpoint.build_model(), checkpoint.task).eval()
    step, smallest = config.size_step, config.min_input_size
    # Exporter choice: torch.onnx.export(dynamo=True), the default in torch 2.13, built
    # on torch.export. It follows the centre-crop arithmetic of the skip connections
    # symbolically, and "derived" dimensions say that height and width are
    # smallest + n * step, which is exactly the set of valid sizes (the legacy
    # TorchScript-based exporter also works, but is deprecated). torch.export
    # specialises dimensions whose example value is 0 or 1, so the example uses
    # n = 4 and 5 (with n counted from 2 below the smallest size) and a batch of 2.
    rows, cols = Dim("rows", min=2), Dim("cols", min=2)
    offset = smallest - 2 * step
    example = _random_input(config, smallest + 2 * step, smallest + 3 * step, batch=2)
    dynamic = ({0: Dim("batch"), 2: step * rows + offset, 3: step * cols + offset},)
    with _quiet_export(), torch.no_grad():
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=[_OUTPUT_ID],
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no model; please report this.")
    model = program.model_proto
    # Readable names for the dynamic axes (the exporter's are symbolic expressions).
    border = config.border
    out_height, out_width = (
        (f"height_minus_{2 * border}", f"width_minus_{2 * border}")
        if border
        else ("height", "width")
    )
    for value, names in (
        (model.graph.input[0], ("batch", None, "height", "width")),
        (model.graph.output[0], ("batch", None, out_height, out_width)),
    ):
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.dim_param = name
    metadata = onnx_metadata(checkpoint)
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = (
        f"U-Net (Ronneberger et al. 2015) exported by napari-unet-segmentation {__version__}. "
        f"Input: {metadata['input']}; valid height and width: {metadata['valid_input_sizes']}. "
        f"Normalisation: {_normalization_text(checkpoint.normalization)}. "
        f"Output: {metadata['output']}, shape {metadata['output_shape']}. "
        f"Classes: {', '.join(checkpoint.class_names)} ({_postprocessing_text(checkpoint)})."
    )
    onnx.checker.check_model(model)
    serialized = model.SerializeToString()
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    for size in ((smallest, smallest + step), (smallest + 3 * step, smallest)):
        x = _random_input(config, *size)
        with torch.no_grad():
            expected = network(x).numpy()
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        _check_close(actual, expected, f"The ONNX model (input {size[0]}x{size[1]})")
    with atomic_destination(path, "model.onnx") as temporary:
        temporary.write_bytes(serialized)
    logger.info("Wrote the ONNX model %s (%d bytes)", path, len(serialized))
    return path


# -- bioimage.io ----------------------------------------------------------------------------


def export_bioimageio(
    checkpoint: Checkpoint,
    path: str | os.PathLike[str],
    *,
    info: PackageInfo | None = None,
    test_image: Any | None = None,
    channel_axis: int | None = None,
) -> Path:
    """Write ``checkpoint`` as a bioimage.io model package (a zip, spec 0.5).

    Parameters
    ----------
    checkpoint : Checkpoint
        The model to export.
    path : str or path-like
        Destination ``.zip`` file, replaced atomically.
    info : PackageInfo, optional
        Name, description, authors, license and tags.
    test_image : array, optional
        Image whose first plane's centre becomes the test input and the cover
        (mirrored at its edges if it is smaller than the test input). Default:
        a synthetic image of nuclei (:func:`napari_unet.synthetic.make_touching_nuclei`).
    channel_axis : int, optional
        Channel axis of ``test_image`` (e.g. -1 for RGB), None for one channel.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OptionalDependencyError
        If bioimageio.spec is missing.
    ValueError
        If the test image does not fit the model, or the bioimage.io validator
        rejects the package (the message lists its errors).
    RuntimeError
        If the TorchScript weights do not reproduce the PyTorch model.
    """
    spec = _optional("bioimageio.spec", "bioimage.io export")
    import yaml

    info = info or PackageInfo()
    path = Path(path)
    if not checkpoint.task.softmax_outputs:
        raise ValueError(
            f"A bioimage.io package describes the outputs as a softmax over the channels, "
            f"but the {checkpoint.task.name!r} head also regresses a distance; export it "
            "as ONNX (napari-unet export --format onnx), whose metadata describe each channel."
        )
    normalization = checkpoint.normalization
    if normalization.high_percentile <= 1.0:
        raise ValueError(
            f"bioimage.io's scale_range needs a high percentile above 1, but the model uses "
            f"{normalization.high_percentile:g}; this model cannot be described as a package."
        )
    config = checkpoint.model_config
    raw = _test_input(config, test_image, channel_axis)
    low, high = normalization.statistics(raw)
    normalized = Normalization.apply(raw, low, high)
    predictor = ModelPredictor(
        checkpoint.build_model(), device="cpu", precision="fp32", task=checkpoint.task
    )
    probabilities = predictor(normalized).astype(np.float32)
    torchscript = _trace(checkpoint.build_model(), normalized, probabilities)

    # ignore_cleanup_errors: the bioimage.io validator leaves files open (a ResourceWarning),
    # which would stop the clean-up on Windows.
    with tempfile.TemporaryDirectory(
        prefix="napari-unet-export-", ignore_cleanup_errors=True
    ) as folder_name:
        folder = Path(folder_name)
        torch.save(checkpoint.state_dict, folder / _FILES["state_dict"])
        with _quiet_export():
            torch.jit.save(torchscript, str(folder / _FILES["torchscript"]))
        np.save(folder / _FILES["test_input"], raw[np.newaxis])
        np.save(folder / _FILES["test_output"], probabilities[np.newaxis])
        _write_cover(folder / _FILES["cover"], raw, low, high, probabilities, checkpoint)
        (folder / _FILES["documentation"]).write_text(
            _documentation(checkpoint, info), encoding="utf-8"
        )
        (folder / _FILES["environment"]).write_text(_environment(), encoding="utf-8")
        checksums = {key: _sha256(folder / name) for key, name in _FILES.items()}
        description = _description(spec, checkpoint, info, checksums)
        rdf = folder / "rdf.yaml"
        rdf.write_text(yaml.safe_dump(description, sort_keys=False), encoding="utf-8")
        _validate(spec, rdf)
        with atomic_destination(path, "model.zip") as temporary:
            with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(rdf, "rdf.yaml")
                for name in _FILES.values():
                    archive.write(folder / name, name)
    logger.info("Wrote the bioimage.io package %s", path)
    return path


def _test_input(config: UNetConfig, image: Any | None, channel_axis: int | None) -> np.ndarray:
    """Return the raw ``(C, H, W)`` float32 test input: ``image``'s centre or synthetic nuclei."""
    rows, cols = config.input_shape_for((TEST_OUTPUT_SIZE, TEST_OUTPUT_SIZE))
    if image is None:
        from napari_unet.synthetic import make_touching_nuclei

        nuclei, _ = make_touching_nuclei((rows, cols), seed=0)
        return np.repeat(nuclei[np.newaxis].astype(np.float32), config.in_channels, axis=0)
    planes = ImagePlanes(image, channel_axis)
    if planes.channels != config.in_channels:
        raise ValueError(
            f"The test image has {planes.channels} channel(s) (channel_axis={channel_axis}) "
            f"but the model expects {config.in_channels}; give an image of the kind the "
            "model was trained on."
        )
    top, left = (planes.height - rows) // 2, (planes.width - cols) // 2
    return planes.read_mirrored(0, top, left, rows, cols).astype(np.float32)


def _trace(
    model: UNet, normalized: np.ndarray, probabilities: np.ndarray
) -> torch.jit.ScriptModule:
    """Trace ``model`` to TorchScript (logits) and check it on two input sizes."""
    model = model.cpu().eval()
    x = torch.from_numpy(np.ascontiguousarray(normalized))[None]
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        expected = torch.softmax(traced(x), dim=1)[0].numpy()
        _check_close(expected, probabilities, "The TorchScript weights")
        step = model.config.size_step
        other = _random_input(model.config, x.shape[-2] + step, x.shape[-1] - step)
        _check_close(
            traced(other).numpy(), model(other).numpy(), "The TorchScript weights (other size)"
        )
    return traced


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _display_image(raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 picture of a normalised ``(C, h, w)`` image."""
    scaled = np.clip(Normalization.apply(raw, low, high), 0.0, 1.0)
    channels = scaled[:3] if scaled.shape[0] >= 3 else np.repeat(scaled[:1], 3, axis=0)
    return (np.moveaxis(channels, 0, -1) * 255).round().astype(np.uint8)


def _write_cover(
    path: Path,
    raw: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    probabilities: np.ndarray,
    checkpoint: Checkpoint,
) -> None:
    """Input (the region the output covers) beside the predicted labels, 2:1."""
    import imageio.v3 as iio
    from skimage.color import label2rgb

    border = checkpoint.model_config.border
    height, width = probabilities.shape[-2:]
    region = raw[:, border : border + height, border : border + width]
    task = checkpoint.task
    if task.instances:
        labels = task.label_plane(task.tile_maps(probabilities), checkpoint.postprocess)
    else:
        labels = task.tile_labels(probabilities)
    colours = (label2rgb(labels, bg_label=0, bg_color=(0, 0, 0)) * 255).round().astype(np.uint8)
    cover = np.concatenate([_display_image(region, low, high), colours], axis=1)
    zoom = max(1, 256 // height)
    cover = np.repeat(np.repeat(cover, zoom, axis=0), zoom, axis=1)
    iio.imwrite(path, cover, extension=".png")


def _default_name(checkpoint: Checkpoint) -> str:
    return f"U-Net {'instance' if checkpoint.mode == 'instances' else 'semantic'} segmentation"


def _default_description(checkpoint: Checkpoint) -> str:
    classes = ", ".join(checkpoint.class_names)
    what = "objects (instance labels)" if checkpoint.mode == "instances" else "classes"
    return (
        f"A U-Net (Ronneberger et al. 2015) trained with napari-unet-segmentation to segment "
        f"{what} in {checkpoint.model_config.in_channels}-channel 2D images; outputs the "
        f"probabilities of {classes}."
    )


def _documentation(checkpoint: Checkpoint, info: PackageInfo) -> str:
    config = checkpoint.model_config
    normalization = checkpoint.normalization
    metadata = checkpoint.metadata
    border = config.border
    training = [
        f"- {label}: {metadata[key]}"
        for key, label in (
            ("steps", "training steps"),
            ("data_shapes", "training image shapes"),
            ("stop_reason", "stopped because of"),
            ("saved_at", "saved at"),
        )
        if metadata.get(key) is not None
    ]
    validation = metadata.get("validation") or []
    if validation:
        last = validation[-1]
        scores = ", ".join(f"{key} {value:.3g}" for key, value in last.items() if key != "step")
        validation_text = (
            f"During training, the held-out validation image scored: {scores} (step "
            f"{last.get('step')}, the last validation)."
        )
    else:
        validation_text = "No held-out validation image was scored during training."
    score = "AP at IoU 0.5 (`napari_unet.metrics.average_precision`)"
    if checkpoint.mode == "semantic":
        score = "the IoU of each class (`napari_unet.metrics.iou`)"
    return "\n".join(
        [
            f"# {info.name or _default_name(checkpoint)}",
            "",
            info.description or _default_description(checkpoint),
            "",
            "A U-Net with valid (unpadded) convolutions as in Ronneberger, Fischer & Brox "
            f"(2015), exported by napari-unet-segmentation {__version__}: depth "
            f"{config.depth}, {config.base_channels} channels in the first level, "
            f"{config.padding} padding.",
            "",
            "## Input",
            "",
            f"- Axes (batch, channel, y, x), {config.in_channels} channel(s), float32.",
            f"- Height and width must each be {_size_text(config)}.",
            f"- Pre-processing (`scale_range`): {_normalization_text(normalization)}.",
            "",
            "## Output",
            "",
            "- Class probabilities (softmax over the channel axis, the `softmax` "
            f"post-processing step), one channel per class: {', '.join(checkpoint.class_names)}.",
            f"- The output covers the centre of the input: {border} pixels less on each side, "
            f"so an input of H x W gives (H - {2 * border}) x (W - {2 * border}). To segment "
            f"a large image, tile it with {border} pixels of context on each side of every "
            "tile, mirroring the image at its edges, as napari-unet does.",
            f"- Labels from the probabilities ({checkpoint.mode} mode): "
            f"{_postprocessing_text(checkpoint)}.",
            "",
            "## Training",
            "",
            *(training or ["- No training details were recorded."]),
            "",
            "## Validation",
            "",
            validation_text,
            f"To validate the model on your own data, segment held-out images with "
            f"`napari-unet segment model.zip IMAGE -o OUTDIR` and compare the labels with "
            f"ground truth, e.g. with {score}.",
            "",
            "## Use",
            "",
            "- napari-unet-segmentation reads this package as a model: "
            "`napari-unet segment model.zip IMAGE -o OUTDIR`.",
            "- bioimage.io tools run the TorchScript weights as they are; the "
            "`pytorch_state_dict` weights need `pip install napari-unet-segmentation` "
            "(see environment.yaml).",
            "",
            "## Citation",
            "",
            f"{CITATION['text']} https://doi.org/{CITATION['doi']}",
            "",
        ]
    )


def _environment() -> str:
    torch_version = _torch_version()
    major_minor = ".".join(torch_version.split(".")[:2])
    return "\n".join(
        [
            "name: napari-unet-segmentation",
            "channels:",
            "  - conda-forge",
            "  - nodefaults",
            "dependencies:",
            "  - python>=3.10",
            f"  - pytorch>={major_minor}",
            "  - pip",
            "  - pip:",
            f"      - napari-unet-segmentation>={__version__}",
            "",
        ]
    )


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe plain data: lists, string keys, finite floats (else None)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _description(
    spec: ModuleType, checkpoint: Checkpoint, info: PackageInfo, sha256: dict[str, str]
) -> dict[str, Any]:
    """Return the content of ``rdf.yaml``."""
    config = checkpoint.model_config
    normalization = checkpoint.normalization
    border, step, smallest = config.border, config.size_step, config.min_input_size
    spatial_in = [
        {"type": "space", "id": axis, "size": {"min": smallest, "step": step}}
        for axis in ("y", "x")
    ]
    spatial_out = [
        {
            "type": "space",
            "id": axis,
            "size": {"tensor_id": _INPUT_ID, "axis_id": axis, "offset": -2 * border},
        }
        for axis in ("y", "x")
    ]
    metadata = {
        key: value for key, value in checkpoint.metadata.items() if key not in _PRIVATE_METADATA
    }
    parameters = sum(value.numel() for value in checkpoint.state_dict.values())
    return {
        "format_version": spec.ModelDescr.implemented_format_version,
        "type": "model",
        "name": info.name or _default_name(checkpoint),
        "description": info.description or _default_description(checkpoint),
        "authors": [{"name": name} for name in info.authors],
        "cite": [dict(CITATION)],
        "license": info.license,
        "tags": ["unet", "segmentation", "2d", "pytorch", "napari-unet", *info.tags],
        "documentation": {
            "source": _FILES["documentation"],
            "sha256": sha256["documentation"],
        },
        "covers": [{"source": _FILES["cover"], "sha256": sha256["cover"]}],
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": _INPUT_ID,
                "description": f"Raw image; height and width {_size_text(config)}.",
                "axes": [
                    {"type": "batch"},
                    {
                        "type": "channel",
                        "channel_names": [f"channel{c}" for c in range(config.in_channels)],
                    },
                    *spatial_in,
                ],
                "test_tensor": {"source": _FILES["test_input"], "sha256": sha256["test_input"]},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": float(normalization.low_percentile),
                            "max_percentile": float(normalization.high_percentile),
                        },
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": _OUTPUT_ID,
                "description": (
                    f"Class probabilities for the centre of the input ({border} pixels less "
                    "on each side; valid convolutions)."
                ),
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(checkpoint.class_names)},
                    *spatial_out,
                ],
                "test_tensor": {
                    "source": _FILES["test_output"],
                    "sha256": sha256["test_output"],
                },
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": _FILES["state_dict"],
                "sha256": sha256["state_dict"],
                "architecture": {
                    "callable": "build_unet",
                    "import_from": "napari_unet.bioimageio",
                    "kwargs": config.to_dict(),
                },
                "pytorch_version": _torch_version(),
                "dependencies": {
                    "source": _FILES["environment"],
                    "sha256": sha256["environment"],
                },
            },
            "torchscript": {
                "source": _FILES["torchscript"],
                "sha256": sha256["torchscript"],
                "pytorch_version": _torch_version(),
                "parent": "pytorch_state_dict",
            },
        },
        "config": {
            "bioimageio": {
                "architecture_type": "U-Net",
                "architecture_description": (
                    f"Ronneberger et al. 2015 U-Net, depth {config.depth}, "
                    f"{config.base_channels} base channels, {config.padding} convolutions"
                ),
                "model_parameter_count": int(parameters),
                "task": "segmentation",
            },
            CONFIG_KEY: {
                "format_version": PACKAGE_FORMAT_VERSION,
                "package_version": __version__,
                "model_config": config.to_dict(),
                "mode": checkpoint.mode,
                "head": checkpoint.head,
                "postprocess": (
                    checkpoint.postprocess.to_dict() if checkpoint.postprocess is not None else None
                ),
                "class_names": list(checkpoint.class_names),
                "normalization": normalization.to_dict(),
                "object_area": checkpoint.object_area,
                "state_dict": _FILES["state_dict"],
                "metadata": _plain(metadata),
            },
        },
    }


def _validate(spec: ModuleType, rdf: Path) -> None:
    """Run the bioimage.io validator on the staged package; raise if it fails.

    ``perform_io_checks=True`` makes the validator open the package's own files
    (checksums, test tensors against the axes, the documentation). It needs no
    network here: the validator only fetches URLs and checks GitHub user names,
    and this description has neither (the citation is a DOI, not a URL).
    """
    descr = spec.load_description(rdf, perform_io_checks=True)
    summary = descr.validation_summary
    for warning in summary.warnings:
        logger.info("bioimage.io validator: %s: %s", ".".join(map(str, warning.loc)), warning.msg)
    if summary.status == "failed" or not isinstance(descr, spec.ModelDescr):
        errors = "; ".join(
            f"{'.'.join(map(str, error.loc))}: {error.msg}" for error in summary.errors
        )
        raise ValueError(f"The bioimage.io validator rejects the package: {errors}")
