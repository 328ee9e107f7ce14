"""napari-unet-segmentation: a paper-faithful U-Net for napari.

The package root exports the compute core (no Qt, napari or magicgui
imports), so it can be used from scripts, the command line and notebooks:

>>> import napari_unet
>>> napari_unet.UNetConfig(base_channels=64).output_shape((572, 572))
(388, 388)

Names are imported on first use, so that napari can read the plugin manifest
and offer the sample data without loading PyTorch. The napari widgets live in
their own modules, loaded by napari through ``napari.yaml``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "UNet": "model",
    "UNetConfig": "model",
    "boundary_weight_map": "weights",
    "separate_touching_objects": "weights",
    "elastic_deform": "augment",
    "augment": "augment",
    "AugmentConfig": "augment",
    "make_touching_nuclei": "synthetic",
    "iou": "metrics",
    "average_precision": "metrics",
    "match_instances": "metrics",
    "rand_error": "metrics",
    "Normalization": "normalization",
    "label_instances": "postprocess",
    "Postprocess": "tasks",
    "get_task": "tasks",
    "calibrate": "calibration",
    "InferenceConfig": "inference",
    "predict": "inference",
    "predict_generator": "inference",
    "segment_to_zarr": "distributed",
    "segment_to_zarr_generator": "distributed",
    "TrainConfig": "training",
    "train": "training",
    "train_generator": "training",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_model_file": "checkpoint",
    "load_model": "registry",
    "available_models": "registry",
    "load_package": "bioimageio",
    "export_bioimageio": "export",
    "export_onnx": "export",
}
_SUBMODULES = {"synthetic", "metrics"}

__all__ = ["__version__", *_EXPORTS, *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"napari_unet.{_EXPORTS[name]}")
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"napari_unet.{name}")
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
