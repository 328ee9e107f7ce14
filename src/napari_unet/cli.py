"""The ``napari-unet`` command line: train, segment, export, weight maps and models.

Five subcommands drive the same engines as the napari plugin::

    napari-unet train IMAGE LABELS [IMAGE LABELS ...] -o MODEL.pt [--mode instances|semantic]
            [--minutes M | --steps N] [--from MODEL | --new] [--device auto|cpu|cuda] [--seed S]
            [--validation IMAGE LABELS]
    napari-unet segment MODEL IMAGE [IMAGE ...] -o OUTDIR [--probabilities] [--device ...]
            [--workers N | --scheduler ADDRESS] [--block-size PX]
    napari-unet weightmap LABELS -o WEIGHTS.tif [--w0 10] [--sigma 5]
    napari-unet export MODEL.pt --format bioimageio|onnx -o MODEL.zip|MODEL.onnx [--author NAME]
    napari-unet models [add FILE --name NAME [--overwrite]]

``MODEL`` is a file or a name (:mod:`napari_unet.registry`): ``nuclei``, the
pretrained model shipped in the package, or a model added to your models folder.

Images and labels are TIFF or PNG files: 2D, stacks of 2D planes, or RGB
``(H, W, 3)``; ``segment`` also reads zarr stores and OME-Zarr images lazily
and, with ``--workers`` or ``--scheduler``, runs block by block on a dask
cluster, writing zarr stores (see :mod:`napari_unet.distributed`). Bad
arguments and unreadable files end with a one-line ``napari-unet: error: ...``
on stderr and exit status 2 (usage) or 1 (data, files, devices); Ctrl-C during
training stops after the current step, saves the model trained so far and
exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from napari_unet import __version__
from napari_unet._generators import run_to_end
from napari_unet._validation import check_finite
from napari_unet.registry import DEFAULT_START, MODELS_ENV
from napari_unet.tasks import INSTANCE_HEADS

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

PROG = "napari-unet"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_STEPS = 500
DEFAULT_BASE_CHANNELS = 16
DEFAULT_VALIDATION_EVERY = 50
#: Output side of the default training tile (380 x 380 input at depth 4, valid padding).
DEFAULT_TILE_OUTPUT = 196


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``napari-unet: error: ...``."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line error naming the help command and exit with status 2."""
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- argument types ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str, largest: int = 2**62) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    if value > largest:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 up to {largest}, got {text!r}")
    return value


def _seed(text: str) -> int:
    return _non_negative_int(text, 2**63 - 1)  # what torch.manual_seed takes


def _number(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or positive" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(f"expected a {bound} number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, allow_zero=False)


def _non_negative_float(text: str) -> float:
    return _number(text, allow_zero=True)


def _probability(text: str) -> float:
    value = _number(text, allow_zero=False)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-unet`` command.

    Returns
    -------
    argparse.ArgumentParser
        The parser with the ``train``, ``segment``, ``weightmap``, ``export``
        and ``models`` subcommands; ``args.run`` is the function that runs the chosen one.
    """
    parser = _Parser(
        prog=PROG,
        description=(
            "Train and apply a U-Net (Ronneberger et al. 2015) to microscopy images. "
            "The same engines drive the napari plugin 'U-Net Segmentation'."
        ),
        epilog=(
            "Images and labels are TIFF or PNG files (2D, stacks of 2D planes, or RGB). "
            f"Run '{PROG} COMMAND --help' for the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log what is read, written and computed"
    )
    device = _Parser(add_help=False)
    device.add_argument(
        "--device",
        type=_device,
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="where the network runs: auto (CUDA, then Apple MPS, then CPU; default), cpu, "
        "cuda or cuda:N",
    )

    train = commands.add_parser(
        "train",
        parents=[common, device],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a model on image/labels pairs",
        description=(
            "Train a U-Net on pairs of IMAGE and LABELS files and save it to MODEL.pt.\n\n"
            "LABELS are integer images of the image's height and width (one plane per\n"
            "image plane): in 'instances' mode 0 is background and every other id one\n"
            "object; in 'semantic' mode 1..K are classes and 0 is unlabelled.\n"
            "RGB images (H, W, 3) and channel-first images (C, H, W) are recognised\n"
            "from the shape of their labels. Ctrl-C stops after the current step and\n"
            "saves the model trained so far (exit status 130)."
        ),
        epilog=(
            "example:\n"
            f"  {PROG} train a.tif a_labels.tif b.tif b_labels.tif -o nuclei.pt --minutes 10\n"
            f"  {PROG} train c.tif c_labels.tif -o nuclei2.pt --from nuclei.pt --steps 200"
        ),
    )
    train.add_argument(
        "files",
        nargs="+",
        metavar="IMAGE LABELS",
        help="training images, each followed by its labels",
    )
    train.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="MODEL.pt",
        help="where to save the trained model (replaced if it exists)",
    )
    train.add_argument(
        "--mode",
        choices=("instances", "semantic"),
        default=None,
        help="'instances' (default; objects on background, touching objects kept apart) or "
        "'semantic' (label values are classes); with --from, the model's mode",
    )
    train.add_argument(
        "--head",
        choices=INSTANCE_HEADS,
        default=None,
        help=f"what the network learns in instances mode: '{INSTANCE_HEADS[0]}' (default; "
        "background / object interior / object boundary), 'distance' (foreground and the "
        "distance to the object's border) or 'paper' (background / foreground with a gap "
        "between touching objects, as in the paper); with --from, the model's head",
    )
    train.add_argument(
        "--tessellate",
        action="store_true",
        help="the objects tile the image (cells between membranes, as in electron "
        "microscopy): segmenting grows the cells over the predicted membranes, and the "
        "labelling is calibrated on the Rand error of the grown cells",
    )
    budget = train.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"number of training steps, one tile each (default {DEFAULT_STEPS})",
    )
    budget.add_argument(
        "--minutes",
        type=_positive_float,
        default=None,
        metavar="M",
        help="train for this many minutes instead of a number of steps",
    )
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="initial",
        default=None,
        metavar="MODEL",
        help="fine-tune this model (a name from 'models', a .pt, or a bioimage.io .zip from "
        f"'export'); without it, instances in one-channel images fine-tune '{DEFAULT_START}', "
        "the shipped model, as the Train widget does",
    )
    start.add_argument(
        "--new",
        action="store_true",
        help=f"start a new network instead of fine-tuning '{DEFAULT_START}' (implied by "
        "--head and --base-channels, which describe a new network)",
    )
    train.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="random seed; the same seed and data give the same model on a CPU (default 0)",
    )
    train.add_argument(
        "--validation",
        nargs=2,
        default=None,
        metavar=("IMAGE", "LABELS"),
        help="a held-out pair scored during training (AP@0.5 for instances, mean IoU for "
        "semantic; the first labelled plane of a stack)",
    )
    advanced = train.add_argument_group("advanced options")
    advanced.add_argument(
        "--base-channels",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"width of a new network (default {DEFAULT_BASE_CHANNELS}; the paper uses 64); "
        "ignored with --from",
    )
    advanced.add_argument(
        "--tile-size",
        type=_positive_int,
        default=None,
        metavar="PX",
        help="side of the training tiles in pixels; must be a valid U-Net input size "
        "(default 380 for a new network)",
    )
    advanced.add_argument(
        "--validation-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"steps between validation passes (default {DEFAULT_VALIDATION_EVERY}, or the "
        "number of steps when fewer)",
    )
    train.set_defaults(run=_run_train)

    segment = commands.add_parser(
        "segment",
        parents=[common, device],
        help="segment images with a trained model",
        description=(
            "Segment each IMAGE with MODEL (a name from 'models', such as the pretrained "
            "'nuclei', a MODEL.pt or an exported MODEL.zip) and write "
            "OUTDIR/<image name>.tif: instance labels (uint16, or uint32 when there are more "
            "than 65535 objects) or, for a semantic model, class ids, with the image's planes, "
            "height and width."
        ),
    )
    segment.add_argument(
        "model",
        metavar="MODEL",
        help="a model name (see 'models'), a model saved by 'train' (MODEL.pt) or a "
        "bioimage.io package made by 'export' (MODEL.zip)",
    )
    segment.add_argument("images", nargs="+", metavar="IMAGE", help="images to segment")
    segment.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTDIR",
        help="folder for the results (created if missing; files in it are replaced)",
    )
    segment.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <image name>_prob.tif: float32 class probabilities, the class axis "
        "after the plane axes",
    )
    labelling = segment.add_argument_group(
        "labelling objects",
        "An instance model stores the settings calibrated on its training annotations; "
        "these options override them.",
    )
    labelling.add_argument(
        "--threshold",
        type=_probability,
        default=None,
        metavar="P",
        help="foreground probability above which a pixel belongs to an object",
    )
    labelling.add_argument(
        "--seed-threshold",
        type=_probability,
        default=None,
        metavar="P",
        help="value above which pixels seed an object (interior probability for the "
        "three-class head, distance to the border over the object's largest for the "
        "distance head, foreground probability for the paper's)",
    )
    labelling.add_argument(
        "--min-size",
        type=_non_negative_int,
        default=None,
        metavar="PX",
        help="drop objects smaller than this many pixels",
    )
    labelling.add_argument(
        "--tessellate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grow the objects over every pixel so that they tile the image (cells between "
        "membranes in electron microscopy), or not; default: as the model was trained "
        "('train --tessellate')",
    )
    labelling.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the 8 flips and rotations (8x slower)",
    )
    labelling.add_argument(
        "--object-diameter",
        type=_object_diameter,
        default="auto",
        metavar="PX|auto|off",
        help="typical object diameter in the images, in pixels: each image is resampled so "
        "that its objects have the size the model was trained at. 'auto' (default) "
        "estimates it per image (a second pass only where it differs); 'off' segments "
        "every image at its own scale. Block-wise (large-image) segmentation uses the "
        "images' own scale.",
    )
    large = segment.add_argument_group(
        "large images",
        "Zarr stores and OME-Zarr images (and TIFFs with --workers or --scheduler) are read "
        "lazily and segmented block by block into OUTDIR/<image name>.zarr (a zarr store "
        "holding 'labels'; with --probabilities also 'probabilities' and the head's maps). "
        "See docs/large-data.md.",
    )
    cluster = large.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="start a local dask cluster of N single-threaded worker processes",
    )
    cluster.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing dask cluster, e.g. tcp://10.0.0.1:8786; OUTDIR must be on a "
        "file system that every worker sees",
    )
    large.add_argument(
        "--block-size",
        type=_positive_int,
        default=2048,
        metavar="PX",
        help="side of a block (one task, one output chunk) in pixels (default 2048)",
    )
    segment.set_defaults(run=_run_segment)

    weightmap = commands.add_parser(
        "weightmap",
        parents=[common],
        help="compute the U-Net loss weight map of a label image",
        description=(
            "Write the float32 boundary weight map (eq. 2 of Ronneberger et al. 2015) of "
            "an instance label image: class-balancing weights plus w0 * exp(-(d1 + d2)^2 / "
            "(2 sigma^2)) in the gaps between objects. A stack is done plane by plane."
        ),
    )
    weightmap.add_argument("labels", metavar="LABELS", help="an integer instance label image")
    weightmap.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="WEIGHTS.tif",
        help="where to write the weight map (a .tif file; replaced if it exists)",
    )
    weightmap.add_argument(
        "--w0",
        type=_non_negative_float,
        default=10.0,
        help="weight of the border term (default 10, as in the paper)",
    )
    weightmap.add_argument(
        "--sigma",
        type=_positive_float,
        default=5.0,
        help="width of the border term in pixels (default 5, as in the paper)",
    )
    weightmap.set_defaults(run=_run_weightmap)

    export = commands.add_parser(
        "export",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="export a model as a bioimage.io package or an ONNX file",
        description=(
            "Export MODEL.pt for other tools (needs the export extra:\n"
            f"{_EXPORT_EXTRA}).\n\n"
            "--format bioimageio writes a BioImage Model Zoo package (.zip): rdf.yaml, the\n"
            "weights as a PyTorch state dict and as TorchScript, test input and output,\n"
            "a cover image and documentation; it is checked with the bioimage.io\n"
            "validator before it is written, and 'segment' reads it like MODEL.pt.\n"
            "--format onnx writes an ONNX model (.onnx) that takes normalised images of\n"
            "any valid size and returns class probabilities; its metadata give the valid\n"
            "sizes, the output size and the normalisation."
        ),
        epilog=(
            "example:\n"
            f"  {PROG} export nuclei.pt --format bioimageio -o nuclei.zip --author 'Ada Lovelace'\n"
            f"  {PROG} export nuclei.pt --format onnx -o nuclei.onnx"
        ),
    )
    export.add_argument(
        "model",
        metavar="MODEL",
        help="a model saved by 'train', a package made by 'export', or a model name",
    )
    export.add_argument(
        "--format", required=True, choices=("bioimageio", "onnx"), help="what to write"
    )
    export.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="MODEL.zip for bioimageio, MODEL.onnx for onnx (replaced if it exists)",
    )
    package = export.add_argument_group("bioimage.io package options")
    package.add_argument(
        "--name", default=None, help="name of the model (5 to 128 letters, digits, spaces, _+-())"
    )
    package.add_argument("--description", default=None, help="one or two sentences")
    package.add_argument(
        "--author",
        dest="authors",
        action="append",
        default=None,
        metavar="NAME",
        help="who trained the model (repeat for several authors)",
    )
    package.add_argument(
        "--license", default=None, metavar="SPDX", help="license of the model (default CC-BY-4.0)"
    )
    package.add_argument(
        "--test-image",
        default=None,
        metavar="IMAGE",
        help="image whose centre becomes the package's test input and cover (default: a "
        "synthetic image of nuclei)",
    )
    export.set_defaults(run=_run_export)

    models = commands.add_parser(
        "models",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list the models available by name, or add one",
        description=(
            "List the models that 'segment MODEL' and 'train --from MODEL' take by name: the\n"
            "pretrained models shipped in the package and those in your models folder\n"
            f"(${MODELS_ENV} when set, else your user data folder). 'models add FILE\n"
            "--name NAME' copies a model there with its sha256, which is checked at every\n"
            "load."
        ),
        epilog=(
            "example:\n"
            f"  {PROG} models\n"
            f"  {PROG} models add run3.pt --name my-cells\n"
            f"  {PROG} segment my-cells image.tif -o out"
        ),
    )
    models.add_argument("action", nargs="?", choices=("list", "add"), default="list")
    models.add_argument("file", nargs="?", metavar="FILE", help="the model file to add")
    models.add_argument("--name", default=None, help="the name to add it under")
    models.add_argument(
        "--overwrite", action="store_true", help="replace a model of that name in the folder"
    )
    models.set_defaults(run=_run_models)
    return parser


# -- models -----------------------------------------------------------------------------


def _run_models(args: argparse.Namespace) -> int:
    from napari_unet.registry import add_model, available_models, models_folder

    if args.action == "add":
        if args.file is None or args.name is None:
            raise UsageError("models add needs the model FILE and --name NAME")
        entry = add_model(args.file, args.name, overwrite=args.overwrite)
        print(f"added {entry.name!r}: {entry.path} (sha256 {entry.sha256})")
        return EXIT_OK
    if args.file is not None or args.name is not None:
        raise UsageError("FILE and --name are for 'models add'")
    entries = available_models()
    width = max(len(entry.name) for entry in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.source:<7}  {entry.description}")
    print(f"\nyour models folder: {models_folder()} (set {MODELS_ENV} to use another)")
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when a file, the data or the device is not usable, 2
        for bad arguments, 130 when interrupted with Ctrl-C.
    """
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C from here on is a KeyboardInterrupt, handled below (the entry point
        # lets it end the program at once while the imports run).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    _configure_logging(args.verbose)
    try:
        if args.command != "weightmap" and not _import_torch_uninterrupted():
            raise KeyboardInterrupt
        return args.run(args)
    except UsageError as error:
        _print_error(error)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as error:
        _print_error(f"not enough memory ({error or 'allocation failed'}); {_MEMORY_ADVICE}")
        return EXIT_FAILURE
    except (ValueError, TypeError, OSError) as error:  # CheckpointError is a ValueError
        _print_error(error)
        return EXIT_FAILURE
    except RuntimeError as error:
        if _is_out_of_memory(error):
            _print_error(
                "the GPU ran out of memory; try --device cpu, or close other programs using the GPU"
            )
            return EXIT_FAILURE
        if "can't allocate memory" in str(error):  # PyTorch's CPU allocator
            _print_error(f"not enough memory; {_MEMORY_ADVICE}")
            return EXIT_FAILURE
        raise


_MEMORY_ADVICE = (
    "segment large images block by block with --workers N (it reads the image in pieces), "
    "train on smaller images or crops, or close other programs"
)


def _import_torch_uninterrupted() -> bool:
    """Import PyTorch with Ctrl-C held back; return False if it was pressed meanwhile.

    An interrupt inside PyTorch's C++ initialisation can abort the process
    (SIGABRT) instead of raising KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread() or "torch" in sys.modules:
        return True
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    return not pressed


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError)


def _configure_logging(verbose: bool) -> None:
    package = logging.getLogger("napari_unet")
    package.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(format=f"{PROG}: %(name)s: %(message)s", stream=sys.stderr)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _print_error(message: object) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


def _note(text: str, *, error: bool = True) -> None:
    """Print a line without breaking a progress bar (stderr by default)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr if error else sys.stdout)


# -- shared checks ----------------------------------------------------------------------


def _check_output_file(
    path: Path, inputs: Sequence[str | os.PathLike[str]] = (), *, example: str = "model.pt"
) -> Path:
    """Refuse an output that is a folder, lies in a missing folder, or is an input."""
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; give a file name such as {path / example}")
    if not path.parent.is_dir():
        raise UsageError(f"-o {path}: the folder {path.parent} does not exist; create it first")
    for source in inputs:
        if Path(source).exists() and _same_file(path, Path(source)):
            raise UsageError(f"-o {path} is one of the input files; choose another name")
    return path


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.exists() and os.path.samefile(first, second)
    except OSError:
        return False


@contextmanager
def _stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """Make the first Ctrl-C set ``stop``; a second one raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _note(
            f"{PROG}: stopping after this step and saving the model "
            "(press Ctrl-C again to quit without saving)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- train ------------------------------------------------------------------------------


def _pair_channel_axis(
    image_shape: tuple[int, ...], labels_shape: tuple[int, ...]
) -> int | str | None:
    """Where the channels of an image are, judged from its labels' shape.

    Returns None (one channel), -1 (``(..., H, W, C)``, e.g. RGB), -3
    (``(..., C, H, W)``) or ``"mismatch"``.
    """
    if image_shape == labels_shape:
        return None
    if len(image_shape) == len(labels_shape) + 1:
        if image_shape[:-1] == labels_shape:
            return -1
        if image_shape[:-3] + image_shape[-2:] == labels_shape:
            return -3
    return "mismatch"


def _read_pair(image_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Read one image/labels pair; return the image channels-last when it has channels."""
    from napari_unet.io import read_image

    image = read_image(image_path)
    labels = read_image(labels_path, labels=True)
    if labels.ndim not in (2, 3):
        raise ValueError(
            f"{labels_path}: labels must be 2D or a stack of 2D planes, got shape {labels.shape}"
        )
    axis = _pair_channel_axis(image.shape, labels.shape)
    if axis == "mismatch":
        raise ValueError(
            f"{image_path} has shape {image.shape} but {labels_path} has shape {labels.shape}; "
            "the labels need the image's height and width and one plane per image plane"
        )
    if axis is None:
        return image, labels, 1
    image = np.moveaxis(image, int(axis), -1)
    return image, labels, int(image.shape[-1])


def _validation_plane(
    image: np.ndarray, labels: np.ndarray, labels_path: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first labelled plane of a validation pair (the engine scores one plane)."""
    if labels.ndim == 2:  # an empty one is refused by training, naming the file
        return image, labels
    labelled = [index for index, plane in enumerate(labels) if plane.any()]
    if not labelled:
        raise ValueError(
            f"{labels_path}: the validation labels are empty (all pixels 0); give labels "
            "with objects, or train without --validation"
        )
    index = labelled[0]
    if len(labels) > 1:
        _note(f"{PROG}: validating on plane {index} of {labels_path}")
    return image[index], labels[index]


def _warn_if_binary(labels: np.ndarray, labels_path: str) -> None:
    """Warn when instance labels are a mask: one id shared by separate objects."""
    from scipy import ndimage as ndi

    foreground = labels[labels > 0]
    if foreground.min() != foreground.max():
        return
    planes = labels if labels.ndim == 3 else labels[np.newaxis]
    regions = max(ndi.label(plane > 0)[1] for plane in planes)
    if regions > 1:
        _note(
            f"{PROG}: warning: {labels_path} gives the same id ({foreground.min()}) to "
            f"{regions} separate regions; in 'instances' mode give each object its own id "
            "(e.g. skimage.measure.label) so that touching objects are kept apart"
        )


def _budget_text(config: Any) -> str:
    if config.minutes is not None and config.steps is not None:
        return f"{config.steps} steps or {config.minutes:g} minutes"
    if config.minutes is not None:
        return f"{config.minutes:g} minutes"
    return f"{config.steps} steps"


def _run_train(args: argparse.Namespace) -> int:
    from napari_unet.checkpoint import save_checkpoint
    from napari_unet.device import resolve_device
    from napari_unet.registry import default_start, load_model

    files: list[str] = list(args.files)
    if len(files) % 2:
        raise UsageError(
            f"train takes IMAGE LABELS pairs, got {len(files)} files (an odd number); "
            "give each image followed by its labels"
        )
    inputs = [*files, *(args.validation or ()), *([args.initial] if args.initial else [])]
    output = _check_output_file(Path(args.output), [f for f in inputs if f != args.initial])
    if args.base_channels is not None and args.initial is not None:
        _note(f"{PROG}: warning: --base-channels is ignored with --from (the model is kept)")
    resolve_device(args.device)  # an unavailable device fails before the data is read

    initial = load_model(args.initial) if args.initial is not None else None
    mode = args.mode or (initial.mode if initial is not None else "instances")
    if args.head is not None and mode == "semantic":
        raise UsageError("--head chooses an instance head; leave it out in semantic mode")
    if args.tessellate and mode == "semantic":
        raise UsageError("--tessellate grows objects over the image; it needs instances mode")
    if initial is not None and args.head not in (None, initial.head):
        raise UsageError(
            f"{args.initial} has the {initial.head!r} head but --head is {args.head!r}; "
            "leave out --head to fine-tune it, or leave out --from to start a new model"
        )
    if initial is not None and initial.mode != mode:
        raise ValueError(
            f"{args.initial} was trained in {initial.mode!r} mode but --mode is {mode!r}; "
            "leave out --mode to fine-tune it, or leave out --from to start a new model"
        )
    pair_paths = list(zip(files[::2], files[1::2], strict=True))
    pairs, channels = [], set()
    for image_path, labels_path in pair_paths:
        image, labels, n_channels = _read_pair(image_path, labels_path)
        if not labels.any():
            _note(f"{PROG}: warning: {labels_path} holds no labels; that pair is not used")
        elif mode == "instances":
            _warn_if_binary(labels, labels_path)
        pairs.append((image, labels))
        channels.add(n_channels)
    validation = None
    if args.validation is not None:
        image, labels, n_channels = _read_pair(*args.validation)
        validation = _validation_plane(image, labels, args.validation[1])
        channels.add(n_channels)
    if len(channels) > 1:
        raise ValueError(
            f"the images have different numbers of channels ({sorted(channels)}); train on "
            "images of one kind (all grey, or all RGB)"
        )
    n_channels = channels.pop()
    if initial is not None and initial.model_config.in_channels != n_channels:
        raise ValueError(
            f"{args.initial} expects images with {initial.model_config.in_channels} "
            f"channel(s) but the training images have {n_channels}; start a new model "
            "(leave out --from)"
        )
    if not any(labels.any() for _, labels in pairs):
        raise ValueError(
            "every labels file is empty (all pixels 0), so there is nothing to learn from; "
            "paint or import the objects into the labels files"
        )
    starting_model = args.initial
    new_network = args.new or args.head is not None or args.base_channels is not None
    if starting_model is None and not new_network:
        starting_model = default_start(mode, n_channels)
        initial = load_model(starting_model) if starting_model is not None else None

    config = _train_config(args, mode, initial)
    if initial is not None and args.initial is None:
        _note(f"{PROG}: fine-tuning the shipped model {starting_model!r} (--new: a new network)")
    channel_axis = -1 if n_channels > 1 else None
    metadata = {
        "command": "napari-unet train",
        "training_files": [[image, labels] for image, labels in pair_paths],
        "validation_files": list(args.validation) if args.validation else None,
        "initial_model_file": starting_model,
    }
    stop = threading.Event()
    from napari_unet.training import train_generator

    events = train_generator(
        pairs,
        config,
        channel_axis=channel_axis,
        validation=validation,
        initial=initial,
        should_stop=stop.is_set,
        metadata=metadata,
        names=pair_paths,
        **({"validation_names": tuple(args.validation)} if args.validation else {}),
    )
    with _stop_on_sigint(stop):
        result = _drive_training(events, config, f"train ({config.mode})")

    if result.steps == 0:
        _note(f"{PROG}: stopped before the first step; no model saved")
        return EXIT_INTERRUPTED if result.stop_reason == "stopped" else EXIT_FAILURE
    save_checkpoint(output, result.checkpoint)
    final_loss = result.losses[-1] if result.losses else float("nan")
    reasons = {
        "budget": f"the budget ({_budget_text(config)}) is used",
        "stopped": "stopped with Ctrl-C",
        "non-finite loss": "the loss became non-finite (weights of the last good step kept)",
    }
    reason = reasons.get(result.stop_reason, result.stop_reason)
    print(f"Training ended after {result.steps} steps: {reason}. Last loss {final_loss:.4f}.")
    print(f"Saved the model to {output}")
    if result.stop_reason == "stopped":
        return EXIT_INTERRUPTED
    if result.stop_reason == "non-finite loss":
        _print_error(
            f"training diverged; the saved model is that of step {result.steps}. Try again "
            "with another --seed or more data"
        )
        return EXIT_FAILURE
    return EXIT_OK


def _train_config(args: argparse.Namespace, mode: str, initial: Any) -> Any:
    """Build the :class:`TrainConfig`; invalid values are usage errors."""
    from napari_unet.model import UNetConfig
    from napari_unet.training import TrainConfig

    steps = args.steps if args.minutes is None else None
    if steps is None and args.minutes is None:
        steps = DEFAULT_STEPS
    architecture: dict[str, Any]
    if initial is not None:
        # Fine-tuning keeps the model; TrainConfig checks the tile against the same one.
        model_config = initial.model_config
        architecture = {
            "base_channels": model_config.base_channels,
            "depth": model_config.depth,
            "padding": model_config.padding,
            "batch_norm": model_config.batch_norm,
            "dropout": model_config.dropout,
        }
    else:
        architecture = {"base_channels": args.base_channels or DEFAULT_BASE_CHANNELS}
        model_config = UNetConfig(**architecture)
    tile = args.tile_size
    if tile is None:
        tile = model_config.input_shape_for((DEFAULT_TILE_OUTPUT, DEFAULT_TILE_OUTPUT))[0]
    validation_every = args.validation_every
    if validation_every is None:
        validation_every = min(DEFAULT_VALIDATION_EVERY, steps or DEFAULT_VALIDATION_EVERY)
    try:
        return TrainConfig(
            mode=mode,
            head=args.head,
            tessellate=args.tessellate,
            steps=steps,
            minutes=args.minutes,
            tile_size=tile,
            validation_every=validation_every,
            seed=args.seed,
            device=args.device,
            **architecture,
        )
    except ValueError as error:
        raise UsageError(_one_line(error).replace("Input height", "--tile-size")) from error


def _drive_training(events: Any, config: Any, description: str) -> Any:
    """Run the training generator with a progress bar on a terminal; return its result."""
    from napari_unet.training import TrainingMessage, TrainingProgress, ValidationResult

    total = config.steps if config.minutes is None else None
    with _progress_bar(description, "step", total=total, leave=True) as bar:

        def show(event: object) -> None:
            if isinstance(event, TrainingProgress):
                bar.update(event.step - bar.n)
                postfix = {"loss": f"{event.loss:.4f}"}
                if config.minutes is not None:
                    left = max(60.0 * config.minutes - event.elapsed, 0.0)
                    postfix["left"] = time.strftime("%M:%S", time.gmtime(left))
                bar.set_postfix(postfix, refresh=False)
            elif isinstance(event, ValidationResult):
                _note(
                    f"step {event.step}: validation {event.score_name} {event.score:.3f}, "
                    f"loss {event.loss:.4f}",
                    error=False,
                )
            elif isinstance(event, TrainingMessage):
                _note(f"{PROG}: {event.text}")

        return run_to_end(events, show)


# -- segment ----------------------------------------------------------------------------


def _model_channel_axis(shape: tuple[int, ...], in_channels: int, path: str) -> int | None:
    """Return the channel axis of an image for a model with ``in_channels`` inputs."""
    if in_channels == 1:
        if len(shape) == 3 and shape[-1] in (2, 3, 4) and min(shape[:2]) > 4:
            kind = "an RGB image" if shape[-1] in (3, 4) else "a two-channel image"
            raise ValueError(
                f"{path} is {kind} (shape {shape}) but the model was trained on "
                "single-channel images; save one channel (or a grey version) of it, or use "
                "a model trained on this kind of image"
            )
        if len(shape) < 2:
            raise ValueError(f"{path}: expected a 2D image or a stack, got shape {shape}")
        return None
    if len(shape) >= 3 and shape[-1] == in_channels:
        return -1
    if len(shape) >= 3 and shape[-3] == in_channels:
        return -3
    raise ValueError(
        f"{path} has shape {shape} but the model expects {in_channels} channels, as "
        f"(H, W, {in_channels}) or ({in_channels}, H, W)"
    )


def _progress_bar(name: str, unit: str, total: int | None = None, leave: bool = False) -> Any:
    """Return a tqdm bar on stderr; it shows only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        desc=name,
        leave=leave,
    )


def _label_dtype(labels: np.ndarray) -> type[np.unsignedinteger[Any]]:
    largest = int(labels.max()) if labels.size else 0
    return np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32


def _run_segment(args: argparse.Namespace) -> int:
    from napari_unet.device import resolve_device
    from napari_unet.inference import ImagePlanes, predict_generator
    from napari_unet.io import read_image, write_tiff
    from napari_unet.registry import load_model

    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"-o {outdir} is a file; give a folder for the results")
    for image_path in args.images:
        # Before any work (and before a cluster starts): a typo should not cost an hour.
        if not Path(image_path).exists():
            raise FileNotFoundError(f"No such file or folder: {image_path}.")
    lazily = _segments_lazily(args)
    targets: dict[Path, str] = {}
    for image_path in args.images:
        if lazily:
            names = [f"{_image_name(image_path)}.zarr"]
        else:
            names = [f"{Path(image_path).stem}.tif"]
        if args.probabilities and not lazily:
            names.append(f"{Path(image_path).stem}_prob.tif")
        for name in names:
            target = outdir / name
            if target in targets:
                raise UsageError(
                    f"{image_path} and {targets[target]} would both be written to {target}; "
                    "segment them into different folders"
                )
            targets[target] = image_path
    for target in targets:
        for image_path in [*args.images, args.model]:
            if _same_file(target, Path(image_path)):
                raise UsageError(
                    f"writing {target} would replace the input {image_path}; choose another -o"
                )
    resolve_device(args.device)
    checkpoint = load_model(args.model)
    if lazily:
        return _segment_large_images(args, checkpoint, outdir)
    model = checkpoint.build_model()
    in_channels = checkpoint.model_config.in_channels
    config = _inference_config(args)
    outdir.mkdir(parents=True, exist_ok=True)

    for image_path in args.images:
        _check_fits_in_memory(image_path, checkpoint, args.probabilities)
        image = read_image(image_path)
        channel_axis = _model_channel_axis(image.shape, in_channels, image_path)
        check_finite(image, image_path)  # before any work, naming the file
        tiles = predict_generator(
            model,
            image,
            channel_axis=channel_axis,
            config=config,
            return_probabilities=args.probabilities,
            **{**checkpoint.inference_settings(), "postprocess": _postprocess(args, checkpoint)},
        )
        n_planes = ImagePlanes(image, channel_axis).n_planes
        with _progress_bar(Path(image_path).name, "tile") as bar:

            def show(tile: Any, bar: Any = bar, n_planes: int = n_planes) -> None:
                if bar.total is None:
                    bar.total = tile.count * n_planes
                    bar.refresh()
                bar.update()

            prediction = run_to_end(tiles, show)
        labels = np.asarray(prediction.labels)
        labels = labels.astype(_label_dtype(labels), copy=False)
        stem = Path(image_path).stem
        plane_axes = "Q" * (labels.ndim - 2)
        target = outdir / f"{stem}.tif"
        write_tiff(target, labels, axes=f"{plane_axes}YX")
        if checkpoint.mode == "instances":
            summary = f"{int(labels.max()) if labels.size else 0} objects"
        else:
            summary = f"classes {sorted(int(v) for v in np.unique(labels))}"
        print(f"{image_path} -> {target} ({summary})")
        if args.probabilities:
            probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
            prob_target = outdir / f"{stem}_prob.tif"
            write_tiff(prob_target, probabilities, axes=f"{plane_axes}CYX")
            print(f"{image_path} -> {prob_target} (probabilities)")
    return EXIT_OK


def _check_fits_in_memory(image_path: str, checkpoint: Any, probabilities: bool) -> None:
    """Refuse, before reading, an image whose in-memory segmentation would not fit in RAM."""
    from napari_unet.io import declared_shape

    shape, itemsize = declared_shape(image_path)
    task = checkpoint.task
    # The image as read and as float32, the labels, the maps (and all outputs when kept).
    per_pixel = itemsize + 4 + 4 + 4 * len(task.map_names)
    if probabilities:
        per_pixel += 4 * checkpoint.model_config.n_classes
    need = math.prod(shape) * per_pixel
    have = _physical_memory()
    if have is not None and need > 0.8 * have:
        raise ValueError(
            f"{image_path} (shape {tuple(shape)}) needs about {need / 2**30:.1f} GiB to segment "
            f"in memory, more than this machine has ({have / 2**30:.1f} GiB); segment it "
            "block by block with --workers N, which reads it in pieces and writes a zarr "
            "result (see docs/large-data.md)"
        )


def _physical_memory() -> int | None:
    """Bytes of RAM, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _inference_config(args: argparse.Namespace) -> Any:
    """Return the segment command's device, labelling overrides and test-time augmentation."""
    from napari_unet.inference import InferenceConfig

    try:
        return InferenceConfig(
            device=args.device,
            threshold=args.threshold,
            seed_threshold=args.seed_threshold,
            min_size=args.min_size,
            tta=args.tta,
            object_diameter=args.object_diameter,
        )
    except ValueError as error:
        raise UsageError(_one_line(error)) from error


def _object_diameter(text: str) -> float | str:
    """``--object-diameter``: "auto", "off" or a number of pixels."""
    if text in ("auto", "off"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'off' or a diameter in pixels, got {text!r}"
        ) from None


def _postprocess(args: argparse.Namespace, checkpoint: Any) -> Any:
    """Return the model's labelling settings, tessellating when asked."""
    from dataclasses import replace

    if checkpoint.postprocess is None:
        if args.tessellate:
            raise UsageError("--tessellate needs an instance model; this one is semantic")
        return None
    if args.tessellate is None:
        return checkpoint.postprocess
    return replace(checkpoint.postprocess, tessellate=args.tessellate)


# -- segment: large images --------------------------------------------------------------

#: Endings removed from an input's name to name its zarr result (longest first).
_IMAGE_ENDINGS = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png")


def _segments_lazily(args: argparse.Namespace) -> bool:
    """Whether ``segment`` takes the block-wise path: a cluster is given, or an input is zarr."""
    from napari_unet.io import is_zarr_store

    if args.workers is not None or args.scheduler is not None:
        return True
    return any(Path(path).suffix.lower() == ".zarr" or is_zarr_store(path) for path in args.images)


def _image_name(path: str) -> str:
    """Return the input's file name without its image endings (``a.ome.zarr`` -> ``a``)."""
    name = Path(path).name
    for ending in _IMAGE_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return Path(path).stem


@contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """Yield a dask client of a new local cluster (``workers``) or of ``scheduler``, or None."""
    if workers is None and scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    # set_as_default=False: the client is passed on explicitly, and a default one would
    # stay in dask's global config (sending every later compute to a cluster) when
    # connecting fails.
    if scheduler is not None:
        try:
            # Probed first: a Client that fails to connect hangs for a minute when it is
            # collected, and then prints a traceback.
            _probe_scheduler(scheduler)
            client = Client(scheduler, set_as_default=False)
        except Exception as error:  # refused, timed out, or not a dask scheduler at all
            raise ConnectionError(
                f"cannot connect to a dask scheduler at {scheduler} ({type(error).__name__}: "
                f"{error}); check that the scheduler runs and give its own address, e.g. "
                "tcp://HOST:8786 as 'dask scheduler' prints it, not its dashboard's (:8787)"
            ) from error
        with client:
            yield client
        return
    # The dashboard (if bokeh is installed) on a free port: 8787 may be taken.
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _probe_scheduler(address: str, timeout: float = 10.0) -> None:
    """Raise unless a dask scheduler answers at ``address`` (one short exchange)."""
    import asyncio

    from distributed.comm import connect

    async def identity() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout + 5))
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer within {timeout + 5:g} s") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise ConnectionError("something answered, but not a dask scheduler")


def _segment_large_images(args: argparse.Namespace, checkpoint: Any, outdir: Path) -> int:
    """Segment block by block into ``OUTDIR/<name>.zarr``, here or on a dask cluster."""
    try:
        import dask.array as da

        from napari_unet.distributed import overview_strides, segment_to_zarr_generator
        from napari_unet.inference import without_channel_axis
        from napari_unet.io import LAZY_SUFFIXES, is_zarr_store, open_image, read_image

        if args.workers is not None or args.scheduler is not None:
            import distributed  # noqa: F401 (checked here, used by _dask_client)
        import zarr  # noqa: F401 (the results are zarr stores)
    except ImportError as error:
        from napari_unet.io import LARGE_DATA_EXTRA

        name = error.name or "a package"
        _print_error(f"segmenting large images needs {name}; install it with {LARGE_DATA_EXTRA}")
        return EXIT_FAILURE
    config = _inference_config(args)
    in_channels = checkpoint.model_config.in_channels
    outdir.mkdir(parents=True, exist_ok=True)
    with _dask_client(args.workers, args.scheduler) as client:
        if client is not None:
            _note(f"{PROG}: running on the dask cluster at {client.scheduler.address}")
        for image_path in args.images:
            lazy = Path(image_path).suffix.lower() in LAZY_SUFFIXES or is_zarr_store(image_path)
            # Lazy inputs go by path, so that every worker opens the file itself.
            source: Any = image_path if lazy else read_image(image_path)
            shape = tuple(open_image(image_path).shape if lazy else source.shape)
            channel_axis = _model_channel_axis(shape, in_channels, image_path)
            target = outdir / f"{_image_name(image_path)}.zarr"
            blocks = segment_to_zarr_generator(
                checkpoint,
                source,
                target,
                block_shape=(args.block_size, args.block_size),
                channel_axis=channel_axis,
                config=config,
                postprocess=_postprocess(args, checkpoint),
                probabilities=args.probabilities,
                client=client,
                overwrite=True,  # as for TIFF results: files in OUTDIR are replaced
                # Overview levels, so that napari (napari-unet's reader) shows a large
                # result without reading the whole store on every redraw.
                levels=overview_strides(without_channel_axis(shape, channel_axis)),
            )
            with _progress_bar(Path(image_path).name, "block") as bar:

                def show(block: Any, bar: Any = bar) -> None:
                    if bar.total is None:
                        bar.total = block.count
                        bar.refresh()
                    bar.update()

                result = run_to_end(blocks, show)
            labels = da.from_zarr(result.labels)
            if checkpoint.mode == "instances":
                # Ids are 1..N without gaps, so the largest is the number of objects.
                largest = int(labels.max().compute(scheduler="threads")) if labels.size else 0
                summary = f"{largest} objects"
            else:
                classes = da.unique(labels).compute(scheduler="threads")
                summary = f"classes {sorted(int(v) for v in classes)}"
            print(f"{image_path} -> {target} ({summary})")
    return EXIT_OK


# -- export -----------------------------------------------------------------------------

_EXPORT_EXTRA = 'pip install "napari-unet-segmentation[export]"'
_EXPORT_SUFFIX = {"bioimageio": ".zip", "onnx": ".onnx"}


def _run_export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    suffix = _EXPORT_SUFFIX[args.format]
    if output.suffix.lower() != suffix:
        raise UsageError(
            f"-o {output}: --format {args.format} writes a {suffix} file; name it *{suffix}"
        )
    package_options = {
        "--name": args.name,
        "--description": args.description,
        "--author": args.authors,
        "--license": args.license,
        "--test-image": args.test_image,
    }
    given = [flag for flag, value in package_options.items() if value is not None]
    if args.format != "bioimageio" and given:
        raise UsageError(f"{', '.join(given)}: only for --format bioimageio")
    inputs = [args.model, *([args.test_image] if args.test_image else [])]
    _check_output_file(output, inputs, example=f"model{suffix}")

    from napari_unet.export import (
        OptionalDependencyError,
        PackageInfo,
        export_bioimageio,
        export_onnx,
    )
    from napari_unet.registry import load_model

    try:
        info = PackageInfo(
            name=args.name,
            description=args.description,
            authors=tuple(args.authors or ()),
            license=args.license or PackageInfo.license,
        )
    except ValueError as error:
        raise UsageError(_one_line(error)) from error
    checkpoint = load_model(args.model)
    try:
        if args.format == "onnx":
            export_onnx(checkpoint, output)
            summary = "ONNX model; see its metadata for the valid input sizes"
        else:
            test_image, channel_axis = None, None
            if args.test_image is not None:
                from napari_unet.io import read_image

                test_image = read_image(args.test_image)
                channel_axis = _model_channel_axis(
                    test_image.shape, checkpoint.model_config.in_channels, args.test_image
                )
                check_finite(test_image, args.test_image)
            if not info.authors:
                _note(
                    f"{PROG}: note: no --author given; name who trained the model before "
                    "sharing the package on bioimage.io"
                )
            export_bioimageio(
                checkpoint, output, info=info, test_image=test_image, channel_axis=channel_axis
            )
            summary = "bioimage.io package, validated"
    except OptionalDependencyError as error:
        _print_error(error)
        return EXIT_FAILURE
    print(f"{args.model} -> {output} ({summary})")
    return EXIT_OK


# -- weightmap --------------------------------------------------------------------------


def _run_weightmap(args: argparse.Namespace) -> int:
    from napari_unet.io import read_image, write_tiff
    from napari_unet.weights import boundary_weight_map

    output = Path(args.output)
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"-o {output}: the weight map is written as TIFF; name it *.tif")
    _check_output_file(output, [args.labels], example="weights.tif")
    labels = read_image(args.labels, labels=True)
    if labels.ndim not in (2, 3):
        raise ValueError(
            f"{args.labels}: expected a 2D label image or a stack of them, got shape {labels.shape}"
        )
    planes = []
    for index, plane in enumerate(labels if labels.ndim == 3 else [labels]):
        where = f", plane {index}" if labels.ndim == 3 else ""
        try:
            planes.append(boundary_weight_map(plane, w0=args.w0, sigma=args.sigma))
        except ValueError as error:
            raise ValueError(f"{args.labels}{where}: {error}") from error
    weights = np.stack(planes) if labels.ndim == 3 else planes[0]
    weights = weights.astype(np.float32, copy=False)
    write_tiff(output, weights, axes="Q" * (weights.ndim - 2) + "YX")
    print(
        f"{args.labels} -> {output} (weights {float(weights.min()):.3g} to "
        f"{float(weights.max()):.3g})"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
