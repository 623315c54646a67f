"""The shipped weights, pixel by pixel: a crop of a sample pair fused by each shipped model against the fusion
stored when those weights were shipped (tests/data/shipped_fusion, written by tests/data/make_shipped_fusion.py).
A wrong file, a renamed or mis-wired layer, or a change in the engine's numerics shows here."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
from make_shipped_fusion import CASES, fuse_crop  # noqa: E402

from diffmf_cli.errors import CheckpointError  # noqa: E402
from diffmf_cli.io.images import read_image  # noqa: E402
from diffmf_cli.weights import resolve_weights  # noqa: E402


@pytest.mark.parametrize("model", sorted(CASES))
def test_shipped_model_reproduces_the_stored_fusion(model):
    try:
        path = resolve_weights(model)
    except CheckpointError as exc:
        pytest.skip(f"the shipped {model} weights are not installed ({exc})")
    stored = json.loads((DATA / "shipped_fusion" / "weights.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == stored[model], (
        f"{path} is not the file the stored fusion was made with: after replacing shipped weights, run "
        "python tests/data/make_shipped_fusion.py and look at the PNGs it writes")
    expected = read_image(DATA / "shipped_fusion" / f"{model}.png")
    got, _ = fuse_crop(model)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    # Bit-identical on this machine; another CPU's float rounding may move a pixel by one grey level.
    assert diff.max() <= 1 and diff.mean() < 0.02, (int(diff.max()), float(diff.mean()))
