"""Shared fixtures. Widget tests run a real napari viewer (headless under Xvfb)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_trained_models_between_tests():
    """The session's model list and border settings are global; every test starts and ends
    without models and with the paper's w0 and sigma."""
    yield
    common = sys.modules.get("napari_unet._widgets._common")
    if common is not None:
        common.trained_models.clear()
        common.border_settings.reset()


@pytest.fixture(autouse=True)
def _an_empty_models_folder(tmp_path_factory, monkeypatch):
    """Each test sees the shipped models and an empty models folder of its own, never the
    user's (what one test adds there must not appear in another)."""
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path_factory.mktemp("models")))


@pytest.fixture(autouse=True)
def _no_default_dask_client_left():
    """A default dask client left by one test once hid a broken --workers path in another."""
    yield
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return
    try:
        left = distributed.default_client()
    except ValueError:  # "No clients found": as it should be
        return
    left.close()
    pytest.fail(f"The test left a default dask client behind ({left}); use set_as_default=False.")


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    messages: list[str] = []

    def keep(event):
        messages.append(event.message)

    notification_manager.notification_ready.connect(keep)
    yield messages
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture
def one_torch_thread():
    """Run the test with one PyTorch intra-op thread, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def touching_pair():
    """Two discs that touch along a vertical line, and a lone disc (instance labels)."""
    from _instances import touching_pair_labels

    return touching_pair_labels()
