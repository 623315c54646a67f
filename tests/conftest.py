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
