"""Weights files: round trip, atomic writes, and refusal of every file that cannot be trusted."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from diffmf_cli import weights
from diffmf_cli.errors import CheckpointError
from diffmf_cli.models import DiffMFConfig, create_model
from diffmf_cli.weights import load_weights, read_metadata, resolve_weights, save_weights


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("tiny")


def _saved(tmp_path: Path, model, name="w.safetensors", meta=None) -> Path:
    return save_weights(tmp_path / name, model, meta if meta is not None else {"name": "test", "steps": 3})


def test_round_trip_gives_same_tensors_outputs_and_metadata(tmp_path, tiny):
    meta = {"name": "unit", "steps": 7, "seed": 1, "metrics": {"VIF": 0.5}, "data": ["a/b"]}
    path = _saved(tmp_path, tiny, meta=meta)
    loaded, got = load_weights(path)
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert got["name"] == "unit" and got["steps"] == 7 and got["metrics"] == {"VIF": 0.5}
    assert DiffMFConfig.from_dict(got["config"]) == tiny.config
    assert loaded.config == tiny.config
    assert not loaded.training
    ir, vis = torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24)
    tiny.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ir, vis), tiny(ir, vis))
    assert read_metadata(path)["steps"] == 7


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, tiny, monkeypatch):
    path = _saved(tmp_path, tiny)
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise RuntimeError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(RuntimeError):
        save_weights(path, tiny, {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_refuses_pickles_without_unpickling(tmp_path, tiny):
    torch_file = tmp_path / "model.pt"
    torch.save(tiny.state_dict(), torch_file)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_weights(torch_file)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError):
        load_weights(evil)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1])
def test_refuses_truncated_files(tmp_path, tiny, keep):
    path = _saved(tmp_path, tiny)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_weights(cut)


def test_refuses_garbage_and_directories(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 40)
    with pytest.raises(CheckpointError, match="not JSON"):
        load_weights(junk)
    text = tmp_path / "text.safetensors"
    text.write_text("hello world, this is not a weights file")
    with pytest.raises(CheckpointError):
        load_weights(text)
    with pytest.raises(CheckpointError, match="not a file"):
        load_weights(tmp_path)


def test_refuses_plain_safetensors_without_diffmf_config(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="not a diffmf weights file"):
        load_weights(path)


def _rewrite(path: Path, out: Path, tensors=None, config=None):
    """Re-save a weights file with edited tensors and/or config (as other code might have written it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    if tensors is not None:
        stored = tensors(stored)
    if config is not None:
        meta["config"] = json.dumps(config(json.loads(meta["config"])))
    save_file(stored, str(out), metadata=meta)
    return out


def test_refuses_mismatched_tensor_names_and_shapes(tmp_path, tiny):
    path = _saved(tmp_path, tiny)
    first = next(iter(tiny.state_dict()))

    dropped = _rewrite(path, tmp_path / "dropped.safetensors",
                       tensors=lambda t: {k: v for k, v in t.items() if k != first})
    with pytest.raises(CheckpointError, match="1 missing"):
        load_weights(dropped)

    extra = _rewrite(path, tmp_path / "extra.safetensors",
                     tensors=lambda t: {**t, "extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(extra)

    def grow(t):
        t = dict(t)
        t[first] = torch.zeros(*t[first].shape[:-1], t[first].shape[-1] + 1) if t[first].dim() else torch.zeros(2)
        return t

    reshaped = _rewrite(path, tmp_path / "reshaped.safetensors", tensors=grow)
    with pytest.raises(CheckpointError, match="has shape"):
        load_weights(reshaped)


def test_refuses_config_this_code_cannot_build(tmp_path, tiny):
    path = _saved(tmp_path, tiny)
    unknown = _rewrite(path, tmp_path / "unknown.safetensors",
                       config=lambda c: {**c, "no_such_option": 3})
    with pytest.raises(CheckpointError, match="config does not match"):
        load_weights(unknown)


def test_refuses_weights_of_another_config(tmp_path, tiny):
    """Weights of one preset with the config of another: names/shapes differ, so it must refuse."""
    path = _saved(tmp_path, tiny)
    other = create_model("cpu").config.to_dict()
    mixed = _rewrite(path, tmp_path / "mixed.safetensors", config=lambda c: other)
    with pytest.raises(CheckpointError, match="do not match|has shape"):
        load_weights(mixed)


def test_resolve_shipped_names(tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(weights, "_SEARCH_DIRS", (tmp_path / "repo", tmp_path / "pkg"))
    with pytest.raises(CheckpointError, match="shipped model 'medical' is not installed"):
        resolve_weights("medical")
    save_weights(tmp_path / "pkg" / weights.SHIPPED_MODELS["ir-vis"], tiny, {"name": "pkg"})
    assert resolve_weights(None) == tmp_path / "pkg" / "diffmf_ir_vis.safetensors"
    save_weights(tmp_path / "repo" / weights.SHIPPED_MODELS["ir-vis"], tiny, {"name": "repo"})
    assert resolve_weights("ir-vis") == tmp_path / "repo" / "diffmf_ir_vis.safetensors"
    assert load_weights("ir-vis")[1]["name"] == "repo"


def test_dtype_and_device_arguments(tmp_path, tiny):
    path = _saved(tmp_path, tiny)
    model, _ = load_weights(path, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
