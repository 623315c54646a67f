"""Shared fixtures. Tests that need the real datasets in ../shared/data skip cleanly without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The datasets folder (`../shared/data` beside the clone, or $DIFFMF_SHARED_DATA), or None."""
    env = os.environ.get("DIFFMF_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if (path / "manifest.csv").is_file() else None


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present (it is not part of a user's clone)")
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run beside other work on a 2-core machine; keep them from fighting over the cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights file of the tiny preset, freshly initialised (seed 0), shared by the fuse, API and Ray tests."""
    from diffmf_cli.models import create_model
    from diffmf_cli.weights import save_weights

    torch.manual_seed(0)
    model = create_model("tiny")
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, model, {"name": "tiny test model (random)"})
    return path
