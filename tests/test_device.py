"""Tests for napari_unet.device (device and mixed-precision choice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import device as device_module
from napari_unet.device import autocast_dtype, cpu_has_amx, cpu_has_bf16, resolve_device

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MPS = torch.device("mps")


@pytest.fixture
def no_accelerator(monkeypatch):
    """Pretend that neither CUDA nor MPS is available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


# ---------------------------------------------------------------------------
# resolve_device
# ---------------------------------------------------------------------------


def test_auto_is_cpu_without_accelerator(no_accelerator):
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU


def test_auto_on_this_machine():
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device == CPU


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "mps"


@pytest.mark.parametrize("name", ["cpu", CPU])
def test_cpu_is_always_available(name):
    assert resolve_device(name) == CPU


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_says_so(no_accelerator, name):
    with pytest.raises(ValueError, match="no CUDA GPU is available") as error:
        resolve_device(name)
    assert "'auto' or 'cpu'" in str(error.value)


def test_cuda_on_this_machine():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device("cuda")


def test_mps_without_mps_says_so(no_accelerator):
    with pytest.raises(ValueError, match="'mps' was requested but is not available"):
        resolve_device("mps")


def test_cuda_with_cuda_keeps_the_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "CPU", "", "tpu:0", "cpu0", "metal"])
def test_bad_device_strings_raise(name):
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, mps"):
        resolve_device(name)


@pytest.mark.parametrize("value", [0, None, 1.5])
def test_non_strings_raise_type_error(value):
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(value)


# ---------------------------------------------------------------------------
# autocast_dtype
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", [CPU, CUDA, MPS])
def test_fp32_never_autocasts(device):
    assert autocast_dtype(device, "fp32") is None


def test_cpu_has_amx_is_a_bool():
    assert isinstance(cpu_has_amx(), bool)


@pytest.mark.parametrize(
    ("amx", "bf16", "inference", "training"),
    [
        (True, True, None, torch.bfloat16),  # AMX: training only
        (False, True, None, torch.bfloat16),  # AVX512-BF16: training only
        (False, False, None, None),  # emulated bf16 is slower: nothing changes
    ],
)
def test_cpu_auto_uses_bf16_only_where_the_cpu_computes_it(
    monkeypatch, amx, bf16, inference, training
):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: bf16)
    assert autocast_dtype(CPU, "auto") == inference
    assert autocast_dtype(CPU) == inference
    assert autocast_dtype(CPU, "auto", "training") == training
    with pytest.raises(ValueError, match="purpose"):
        autocast_dtype(CPU, "auto", "serving")


def test_amx_counts_as_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: True)
    assert device_module.cpu_has_bf16()


def test_cpu_auto_on_this_machine():
    assert autocast_dtype(CPU, "auto") is None  # inference: the same labels on every CPU
    expected = torch.bfloat16 if cpu_has_bf16() else None
    assert autocast_dtype(CPU, "auto", "training") == expected
    assert isinstance(cpu_has_bf16(), bool)


def test_cpu_bf16_is_forced():
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16


def test_cpu_fp16_is_an_error():
    with pytest.raises(ValueError, match="float16 autocast is not supported on the CPU"):
        autocast_dtype(CPU, "fp16")


@pytest.mark.parametrize(
    ("bf16_supported", "precision", "expected"),
    [
        (True, "auto", torch.bfloat16),
        (False, "auto", torch.float16),
        (True, "bf16", torch.bfloat16),
        (True, "fp16", torch.float16),
        (False, "fp16", torch.float16),
    ],
)
def test_cuda_rules(monkeypatch, bf16_supported, precision, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert autocast_dtype(CUDA, precision) == expected


def test_cuda_bf16_without_support_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match="does not support bfloat16"):
        autocast_dtype(CUDA, "bf16")


def test_mps_stays_float32():
    assert autocast_dtype(MPS, "auto") is None
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="not supported on mps"):
            autocast_dtype(MPS, precision)


@pytest.mark.parametrize("precision", ["fp64", "half", "", None, "FP32"])
def test_bad_precision_raises(precision):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        autocast_dtype(CPU, precision)


# ---------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_model_on_cuda_with_autocast():
    from napari_unet.inference import ModelPredictor
    from napari_unet.model import UNet, UNetConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UNet(UNetConfig(base_channels=4, depth=2, dropout=0.0)).eval()
    tile = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    reference = ModelPredictor(model, device="cpu", precision="fp32")(tile)

    gpu = ModelPredictor(model, device="cuda", precision="auto")
    assert gpu.device.type == "cuda"
    assert gpu.dtype in (torch.bfloat16, torch.float16)
    assert next(gpu.model.parameters()).is_cuda
    probabilities = gpu(tile)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == reference.shape == (2, 24, 24)
    np.testing.assert_allclose(probabilities, reference, atol=3e-2)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
