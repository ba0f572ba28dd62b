from __future__ import annotations

import os

import numpy as np
import pytest


def pytest_configure(config):
    # COCO info dates: files written before and after midnight (or a test's monkeypatch.undo()) stay byte-identical
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1764547200")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # -n N: one torch thread per worker, so N workers share N cores
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty CLIPSAM_HOME and no network for weights."""
    home = tmp_path_factory.mktemp("clipsam_home")
    monkeypatch.setenv("CLIPSAM_HOME", str(home))
    monkeypatch.delenv("CLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


@pytest.fixture(scope="session")
def scene():
    from clipsam.testing import synthetic_scene

    return synthetic_scene()


@pytest.fixture(scope="session")
def tiny():
    """One tiny real-architecture segmenter shared by the session (models are read-only)."""
    from clipsam.testing import tiny_segmenter

    return tiny_segmenter(seed=0)


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()


@pytest.fixture(scope="session")
def chelsea_path(tmp_path_factory, chelsea):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(chelsea).save(path)
    return path


@pytest.fixture()
def registry():
    """The checkpoint registry, restored after a test registers its own entries."""
    from clipsam import weights as W

    saved = dict(W.REGISTRY)
    yield W.REGISTRY
    W.REGISTRY.clear()
    W.REGISTRY.update(saved)
