"""The fusion engine (diffmf_cli.fusion): colour handling, bit depth, batching, tiling, failures, resume.

Most tests use small pointwise stand-ins for the network, whose exact answer is known, so that what is
checked is the engine's plumbing (colour, tiling, batching); the tiny DIFF-MF preset checks that tiling
stays close to untiled fusion with a real network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffmf_cli.errors import UsageError
from diffmf_cli.fusion import (
    FuseOptions,
    FusionEngine,
    load_pair,
    resolve_device,
    resolve_precision,
    tile_starts,
    working_bytes_per_pixel,
)
from diffmf_cli.io.images import read_image, rgb_to_ycrcb, to_float, write_image
from diffmf_cli.io.pairs import Pair

RNG = np.random.default_rng(1)


class TakeVisible(nn.Module):
    """Returns the visible luminance: the engine must then give back the visible image."""

    def forward(self, ir, vis_y):
        return vis_y.clone()


class Mean(nn.Module):
    """Pointwise mean of the two inputs; records the batch sizes it saw."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, ir, vis_y):
        self.batches.append(tuple(ir.shape))
        return (ir + vis_y) / 2


class FailsAbove(nn.Module):
    """Raises an out-of-memory error when one pass holds more than `limit` pixels (like a small GPU)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.passes = []

    def forward(self, ir, vis_y):
        if ir.numel() > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.passes.append(tuple(ir.shape))
        return (ir + vis_y) / 2


def smooth(h, w, channels=None, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels is None else (h, w, channels)
    base = RNG.random(shape)
    return (base * top).round().astype(dtype)


def make_pair(tmp_path, name, ir, vis, ir_ext=".png", vis_ext=".png"):
    (tmp_path / "ir").mkdir(exist_ok=True)
    (tmp_path / "vis").mkdir(exist_ok=True)
    write_image(tmp_path / "ir" / f"{name}{ir_ext}", ir)
    write_image(tmp_path / "vis" / f"{name}{vis_ext}", vis)
    return Pair(name, tmp_path / "ir" / f"{name}{ir_ext}", tmp_path / "vis" / f"{name}{vis_ext}")


def run(engine, pairs, out_dir):
    return sorted(engine.run(pairs, out_dir), key=lambda r: r.index)


def test_colour_visible_comes_back_through_ycrcb(tmp_path):
    vis = smooth(13, 17, 3)
    pair = make_pair(tmp_path, "c", smooth(13, 17), vis)
    [res] = run(FusionEngine(TakeVisible()), [pair], tmp_path / "out")
    assert res.status == "fused", res.error
    out = read_image(tmp_path / "out" / "c.png")
    assert out.shape == vis.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - vis.astype(int)).max() <= 1  # OpenCV's YCrCb round trip


def test_gray_option_writes_luminance_only(tmp_path):
    vis = smooth(8, 9, 3)
    pair = make_pair(tmp_path, "g", smooth(8, 9), vis)
    run(FusionEngine(TakeVisible(), options=FuseOptions(gray=True)), [pair], tmp_path / "out")
    out = read_image(tmp_path / "out" / "g.png")
    y, _ = rgb_to_ycrcb(to_float(vis))
    assert out.ndim == 2
    assert np.abs(out.astype(int) - np.round(y * 255).astype(int)).max() <= 1


def test_fake_gray_rgba_and_gray_inputs(tmp_path):
    g = smooth(6, 7)
    fake = np.stack([g, g, g], axis=2)
    pair = make_pair(tmp_path, "f", fake, fake)
    ir, y, crcb, depth = load_pair(pair)
    assert crcb is None and depth == 8 and ir.shape == (6, 7)
    np.testing.assert_allclose(y, g / 255.0, atol=1e-6)
    from PIL import Image

    rgba = smooth(6, 7, 4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "vis" / "a.png")
    Image.fromarray(g).save(tmp_path / "ir" / "a.png")
    ir, y, crcb, _ = load_pair(Pair("a", tmp_path / "ir" / "a.png", tmp_path / "vis" / "a.png"))
    y_ref, crcb_ref = rgb_to_ycrcb(to_float(rgba[:, :, :3]))
    np.testing.assert_allclose(y, y_ref)
    np.testing.assert_allclose(crcb, crcb_ref)
    # fused output of the fake-gray pair is 1 channel
    run(FusionEngine(Mean()), [pair], tmp_path / "out")
    assert read_image(tmp_path / "out" / "f.png").ndim == 2


def test_sixteen_bit_kept_in_png_and_tif_not_in_jpg(tmp_path):
    ir, vis = smooth(5, 6, dtype=np.uint16), smooth(5, 6, dtype=np.uint16)
    pair = make_pair(tmp_path, "d", ir, vis)
    for ext, dtype in [("png", np.uint16), ("tif", np.uint16), ("jpg", np.uint8)]:
        [res] = run(FusionEngine(Mean(), options=FuseOptions(ext=ext)), [pair], tmp_path / ext)
        assert res.status == "fused", res.error
        out = read_image(tmp_path / ext / f"d.{ext}")
        assert out.dtype == dtype
        if ext == "png":
            expected = np.round((ir.astype(np.float64) + vis) / 2).astype(np.int64)
            assert np.abs(out.astype(np.int64) - expected).max() <= 1


def test_same_size_pairs_are_batched(tmp_path):
    pairs = [make_pair(tmp_path, f"s{i}", smooth(8, 8), smooth(8, 8)) for i in range(5)]
    pairs.append(make_pair(tmp_path, "odd", smooth(3, 11), smooth(3, 11)))
    model = Mean()
    results = run(FusionEngine(model, options=FuseOptions(batch_size=4)), pairs, tmp_path / "out")
    assert [r.status for r in results] == ["fused"] * 6
    assert sorted(b[0] for b in model.batches) == [1, 1, 4]
    for p in pairs:
        ir, vis = read_image(p.ir).astype(int), read_image(p.vis).astype(int)
        out = read_image(tmp_path / "out" / f"{p.name}.png").astype(int)
        assert np.abs(out - (ir + vis) / 2).max() <= 1


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(100, 32, 8), (33, 32, 8), (32, 32, 8), (1000, 256, 64), (5, 32, 8)]:
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + size] = True
        assert covered.all() and starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))


def test_tiling_is_seamless_for_a_pointwise_model():
    ir = RNG.random((1, 70, 95), dtype=np.float32)
    y = RNG.random((1, 70, 95), dtype=np.float32)
    engine = FusionEngine(Mean(), options=FuseOptions(tile_overlap=8, batch_size=3))
    np.testing.assert_allclose(engine.fuse_arrays(ir, y, tile=32), (ir + y) / 2, atol=1e-6)


def test_tiled_close_to_untiled_with_tiny_network():
    import cv2

    from diffmf_cli.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny")

    def img():
        low = RNG.random((12, 16)).astype(np.float32)
        return cv2.resize(low, (128, 96), interpolation=cv2.INTER_CUBIC).clip(0, 1)

    ir, y = np.stack([img()]), np.stack([img()])
    engine = FusionEngine(model, options=FuseOptions(tile_overlap=16))
    full = engine.fuse_arrays(ir, y)
    tiled = engine.fuse_arrays(ir, y, tile=64)
    # The random network's output varies little but follows the IR image, so compare against that variation.
    assert np.corrcoef(full.ravel(), ir.ravel())[0, 1] > 0.5
    diff = np.abs(full - tiled)
    assert diff.mean() < 0.05 * full.std() and diff.max() < 0.3 * full.std()
    # no seam: across every column (tile borders included) the tiled result changes as the untiled one does
    cols_tiled = np.abs(np.diff(tiled[0], axis=1)).mean(axis=0)
    cols_full = np.abs(np.diff(full[0], axis=1)).mean(axis=0)
    assert np.abs(cols_tiled - cols_full).max() < 0.5 * np.median(cols_full)


def test_auto_tiling_from_memory_budget():
    from diffmf_cli.models import PRESETS

    cfg = PRESETS["tiny"]
    model = Mean()
    model.config = cfg
    bpp = working_bytes_per_pixel(cfg)
    engine = FusionEngine(model, options=FuseOptions(memory_budget=int(bpp * 64 * 64), batch_size=4))
    assert engine.plan(32, 32) == (4, None)  # four 32x32 images fit
    assert engine.plan(64, 64) == (1, None)
    batch, tile = engine.plan(300, 400)
    assert batch == 1 and tile is not None and tile <= 64 and tile % cfg.stride_multiple == 0
    out = engine.fuse_arrays(np.ones((1, 300, 400), np.float32), np.zeros((1, 300, 400), np.float32), tile)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)
    assert max(b[2] * b[3] for b in model.batches) <= 64 * 64
    fixed = FusionEngine(Mean(), options=FuseOptions(tile=50, batch_size=2))
    assert fixed.plan(40, 50) == (2, None) and fixed.plan(40, 51) == (2, 50)
    off = FusionEngine(Mean(), options=FuseOptions(tile=0, memory_budget=1))
    assert off.plan(4000, 6000) == (1, None)


def test_out_of_memory_falls_back_to_single_images_then_smaller_tiles():
    model = FailsAbove(limit=40 * 40)
    engine = FusionEngine(model, options=FuseOptions(batch_size=4, tile=0, tile_overlap=4))
    ir = RNG.random((3, 70, 70), dtype=np.float32)
    y = RNG.random((3, 70, 70), dtype=np.float32)
    out = engine._fuse_with_fallback(ir, y, None)
    np.testing.assert_allclose(out, (ir + y) / 2, atol=1e-6)
    assert all(s[0] * s[2] * s[3] <= 40 * 40 for s in model.passes)


def test_failures_are_per_pair_and_named(tmp_path):
    good = make_pair(tmp_path, "good", smooth(8, 8), smooth(8, 8, 3))
    mismatch = make_pair(tmp_path, "mis", smooth(8, 8), smooth(9, 8, 3))
    (tmp_path / "ir" / "empty.png").write_bytes(b"")
    empty = Pair("empty", tmp_path / "ir" / "empty.png", good.vis)
    results = run(FusionEngine(Mean()), [good, mismatch, empty], tmp_path / "out")
    assert [r.status for r in results] == ["fused", "failed", "failed"]
    assert "8x8" in results[1].error and "8x9" in results[1].error and str(mismatch.vis) in results[1].error
    assert str(empty.ir) in results[2].error and "empty" in results[2].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_existing_outputs_skipped_unless_overwrite(tmp_path):
    pairs = [make_pair(tmp_path, f"r{i}", smooth(6, 6), smooth(6, 6)) for i in range(3)]
    out = tmp_path / "out"
    run(FusionEngine(Mean()), pairs[:1], out)
    results = run(FusionEngine(Mean()), pairs, out)
    assert [r.status for r in results] == ["skipped", "fused", "fused"]
    model = Mean()
    results = run(FusionEngine(model, options=FuseOptions(overwrite=True)), pairs, out)
    assert [r.status for r in results] == ["fused"] * 3 and len(model.batches) == 3


def test_device_and_precision_validation():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError, match="expected auto, cpu"):
        resolve_device("tpu")
    with pytest.raises(UsageError, match="expected one of"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(UsageError, match="CUDA only"):
        resolve_precision("bf16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(UsageError, match="--ext"):
        FuseOptions(ext="gif")
    with pytest.raises(UsageError, match="--batch-size"):
        FuseOptions(batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_close_to_fp32():
    from diffmf_cli.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    ir = RNG.random((2, 64, 80), dtype=np.float32)
    y = RNG.random((2, 64, 80), dtype=np.float32)
    ref = FusionEngine(model, "cuda").fuse_arrays(ir, y)
    for dtype in (torch.float16, torch.bfloat16):
        got = FusionEngine(model, "cuda", dtype).fuse_arrays(ir, y)
        assert np.abs(got - ref).max() < 0.05


def test_disk_full_on_one_output_loses_nothing_else(tmp_path, monkeypatch):
    import errno
    import os

    pairs = [make_pair(tmp_path, f"w{i}", smooth(6, 6), smooth(6, 6)) for i in range(3)]
    real_fsync = os.fsync
    calls = []

    def fsync(fd):  # the disk fills up on the second output
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    results = run(FusionEngine(Mean()), pairs, tmp_path / "out")
    assert [r.status for r in results].count("failed") == 1
    [bad] = [r for r in results if r.status == "failed"]
    assert "No space left on device" in bad.error and str(bad.output) in bad.error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{r.name}.png" for r in results if r.status == "fused")


class Broken(nn.Module):
    """A network that fails (not for lack of memory) on one image size."""

    def forward(self, ir, y):
        if ir.shape[-1] == 9:
            raise RuntimeError("shape mismatch in a layer\ndetails")
        return (ir + y) / 2


def test_a_failing_network_fails_its_pairs_only(tmp_path):
    good = make_pair(tmp_path, "good", smooth(8, 8), smooth(8, 8, 3))
    bad = make_pair(tmp_path, "bad", smooth(8, 9), smooth(8, 9, 3))
    results = {r.name: r for r in run(FusionEngine(Broken()), [good, bad], tmp_path / "out")}
    assert results["good"].status == "fused"
    assert results["bad"].status == "failed" and "the network failed (shape mismatch in a layer)" in results["bad"].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["good.png"]
