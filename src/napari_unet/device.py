"""Choice of compute device and of mixed precision, made once per run.

``"auto"`` takes CUDA, then Apple MPS, then the CPU. Mixed precision is used
only where it is both safe and faster:

- CUDA: bfloat16 autocast where the GPU supports it, else float16.
- CPU, training: bfloat16 autocast where the processor computes bfloat16 in
  hardware (AVX512-BF16 or AMX; :func:`cpu_has_bf16`). On 2 cores of an
  AVX512-BF16 CPU it trained 1.55x the supervised pixels per minute
  (``benchmarks/data_pipeline.py``) and reached a higher median AP@0.5 in five
  minutes (0.789 against 0.769, ``benchmarks/training.py``). Elsewhere
  float32: emulated bf16 (AVX2 only) was up to 20x *slower*.
- CPU, inference: float32. bfloat16 was 1.7x faster with the same AP on 2
  cores of an AVX512-BF16 CPU and 1.64x on 2 cores of an AMX CPU, but on both
  the foreground of 0.2% of the pixels changed (99.80% and 99.78% agreement,
  ``benchmarks/inference_precision.py``), short of the 99.9% a default must
  keep, and the same model would segment differently from one CPU to the
  next; ``precision="bf16"`` asks for it.
- MPS: float32.

Examples
--------
>>> from napari_unet.device import resolve_device, autocast_dtype
>>> resolve_device("cpu").type
'cpu'
>>> autocast_dtype(resolve_device("cpu"), "fp32") is None
True
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

__all__ = ["Precision", "autocast_dtype", "cpu_has_amx", "cpu_has_bf16", "resolve_device"]

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Purpose = Literal["training", "inference"]
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` into a device.

    Raises
    ------
    ValueError
        If the requested device is not available, with what to choose instead.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', got {type(device).__name__}.")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = device.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but no CUDA GPU is available to PyTorch; "
            "choose 'auto' or 'cpu' (or install a CUDA build of PyTorch)."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but is not available; choose 'auto' or 'cpu'.")
    return torch.device(device)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (where bfloat16 matrix work is fast)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:  # pragma: no cover - depends on the build
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), not emulated."""
    if cpu_has_amx():
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:  # not Linux: only AMX is detected
        pass
    return False


def autocast_dtype(
    device: torch.device, precision: Precision = "auto", purpose: Purpose = "inference"
) -> torch.dtype | None:
    """Return the autocast dtype to use on ``device``, or None for float32.

    ``precision="auto"`` applies the rules in the module docstring, which differ
    for ``purpose`` "training" and "inference" on the CPU; the other values
    force a choice (``"bf16"`` and ``"fp16"`` raise where unsupported).
    """
    if purpose not in ("training", "inference"):
        raise ValueError(f'purpose must be "training" or "inference", got {purpose!r}.')
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}."
        )
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            raise ValueError("This GPU does not support bfloat16; use precision 'fp16' or 'fp32'.")
        return torch.float16
    if device.type == "cpu":
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp16":
            raise ValueError("float16 autocast is not supported on the CPU; use 'bf16' or 'fp32'.")
        if purpose == "training":
            return torch.bfloat16 if cpu_has_bf16() else None
        return None
    if precision != "auto":
        raise ValueError(f"Mixed precision is not supported on {device.type}; use 'fp32'.")
    return None
