"""Training data: deterministic crops, aligned augmentation, source weights, and the medical split filter."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch

from diffmf_cli.errors import InputError, UsageError
from diffmf_cli.training.data import (
    CropSampler,
    SourceSpec,
    load_sources,
    luminance,
)


OLD_CROPS_SHA256 = "4d2b7ba81f49df02a94b84172f54e6e24697a168726a6cdd098cb1c48aa146c7"


def _write_pairs(root, n=3, size=(40, 56), seed=0, colour=True):
    """n registered pairs in root/ir, root/vi; the visible image's Y is 255 - IR (so alignment is checkable)."""
    rng = np.random.default_rng(seed)
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    for i in range(n):
        ir = rng.integers(0, 256, size, dtype=np.uint8)
        cv2.imwrite(str(root / "ir" / f"{i:03d}.png"), ir)
        vis = 255 - ir
        if colour:
            vis = cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR)  # R=G=B: Y equals the gray value
        cv2.imwrite(str(root / "vi" / f"{i:03d}.png"), vis)
    return SourceSpec(ir=str(root / "ir"), vis=str(root / "vi"))


def test_batches_depend_only_on_seed_and_step(tmp_path):
    spec = _write_pairs(tmp_path / "a")
    images, listed = load_sources([spec], 16)
    assert [p.name for p in listed[0]] == ["000", "001", "002"]
    s1, s2 = CropSampler(images, 16, seed=5), CropSampler(load_sources([spec], 16)[0], 16, seed=5)
    b7 = s1.batch(7, 4)
    s1.batch(3, 4)  # drawing other steps first changes nothing
    again = s2.batch(7, 4)
    assert torch.equal(b7[0], again[0]) and torch.equal(b7[1], again[1])
    assert not torch.equal(s1.batch(8, 4)[0], b7[0])
    assert not torch.equal(CropSampler(images, 16, seed=6).batch(7, 4)[0], b7[0])
    assert b7[0].shape == (4, 1, 16, 16) and b7[0].dtype == torch.float32
    assert 0 <= float(b7[0].min()) and float(b7[0].max()) <= 1


def test_crops_and_augmentations_keep_the_pair_aligned(tmp_path):
    spec = _write_pairs(tmp_path / "a", n=2)
    images, _ = load_sources([spec], 16)
    sampler = CropSampler(images, 16, seed=0)
    for step in range(20):
        ir, vis = sampler.batch(step, 3)
        assert torch.allclose(vis, 1 - ir, atol=1e-5)


def test_all_eight_dihedral_transforms_occur_and_are_exact(tmp_path):
    root = tmp_path / "g"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    ramp = (np.arange(16)[:, None] * 16 + np.arange(16)[None, :]).astype(np.uint8)  # all 256 values, unique
    cv2.imwrite(str(root / "ir" / "x.png"), ramp)
    cv2.imwrite(str(root / "vi" / "x.png"), ramp)
    images, _ = load_sources([SourceSpec(ir=str(root / "ir"), vis=str(root / "vi"))], 16)
    seen = set()
    expected = {np.rot90(ramp, k)[:, ::-1].tobytes() if f else np.rot90(ramp, k).tobytes()
                for k in range(4) for f in (False, True)}
    for step in range(60):
        ir, _ = CropSampler(images, 16, seed=1).batch(step, 1)
        seen.add(np.round(ir[0, 0].numpy() * 255).astype(np.uint8).tobytes())
    assert seen == expected


def test_scale_jitter_resamples_windows_deterministically(tmp_path):
    spec = _write_pairs(tmp_path / "a", n=2, size=(64, 80))
    images, _ = load_sources([spec], 16)
    plain, jit = CropSampler(images, 16, seed=3), CropSampler(images, 16, seed=3, scale_jitter=0.5)
    assert torch.equal(plain.batch(4, 3)[0], CropSampler(images, 16, seed=3, scale_jitter=0.0).batch(4, 3)[0])
    again = CropSampler(load_sources([spec], 16)[0], 16, seed=3, scale_jitter=0.5)
    resampled = 0
    for step in range(30):
        ir, vis = jit.batch(step, 2)
        assert ir.shape == (2, 1, 16, 16) and 0 <= float(ir.min()) and float(ir.max()) <= 1
        assert torch.equal(ir, again.batch(step, 2)[0])
        assert torch.allclose(vis, 1 - ir, atol=1e-5)  # both sources get the same window and resize
        # The sources hold whole grey levels; a resampled window shows values between them.
        resampled += bool((ir * 255 - torch.round(ir * 255)).abs().max() > 1e-3)
    assert resampled >= 25  # a batch keeps both crops at the crop's own scale about 0.6 % of the time


def test_scale_jitter_window_is_a_resize_of_the_image(tmp_path):
    """On a linear ramp every window, resized, is again a ramp: its slope tells the window's side."""
    root = tmp_path / "r"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    ramp = np.tile((np.arange(200) * 255 // 199).astype(np.uint8), (200, 1))
    cv2.imwrite(str(root / "ir" / "x.png"), ramp)
    cv2.imwrite(str(root / "vi" / "x.png"), ramp)
    images, _ = load_sources([SourceSpec(ir=str(root / "ir"), vis=str(root / "vi"))], 32)
    slopes = []
    for step in range(40):
        ir, _ = CropSampler(images, 32, seed=0, scale_jitter=1.0).batch(step, 1)
        img = ir[0, 0].numpy()
        line = img[16] if np.ptp(img[16]) > np.ptp(img[:, 16]) else img[:, 16]
        slopes.append(np.abs(np.diff(line[4:-4])).mean() * 255)  # grey levels per output pixel
    # The ramp climbs 1.28 levels per source pixel; a window of side 32·s shows 1.28·s per output pixel.
    assert 1.28 / 2 * 0.9 < min(slopes) and max(slopes) < 1.28 * 2 * 1.1
    assert min(slopes) < 1.0 and max(slopes) > 1.6


def test_jitter_out_of_range(tmp_path):
    images, _ = load_sources([_write_pairs(tmp_path / "a", n=1)], 16)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(UsageError, match="scale-jitter must be a number"):
            CropSampler(images, 16, 0, scale_jitter=bad)
        with pytest.raises(UsageError, match="gamma-jitter must be a number"):
            CropSampler(images, 16, 0, gamma_jitter=bad)


def test_gamma_jitter_is_a_power_per_modality_on_the_same_crop(tmp_path):
    """Same seed with and without gamma: the same window for a batch's first crop (gamma is drawn after it),
    each modality raised to its own power within [1/(1+G), 1+G]; deterministic per (seed, step)."""
    spec = _write_pairs(tmp_path / "a", n=2, size=(48, 64))
    images, _ = load_sources([spec], 16)
    plain, gam = CropSampler(images, 16, seed=4), CropSampler(images, 16, seed=4, gamma_jitter=0.5)
    powers = []
    for step in range(24):
        (ir0, vis0), (ir1, vis1) = plain.batch(step, 1), gam.batch(step, 1)
        assert torch.equal(ir1, gam.batch(step, 1)[0])
        pair = []
        for before, after in ((ir0, ir1), (vis0, vis1)):
            inside = (before > 0.05) & (before < 0.95)
            g = torch.log(after[inside]) / torch.log(before[inside])
            assert float(g.max() - g.min()) < 1e-3  # one power over the whole crop
            pair.append(float(g.mean()))
        powers.append(pair)
    flat = [g for pair in powers for g in pair]
    assert all(1 / 1.5 - 1e-3 < g < 1.5 + 1e-3 for g in flat)
    assert min(flat) < 0.8 and max(flat) > 1.25
    assert all(abs(a - b) > 1e-3 for a, b in powers)  # one power per modality


def test_crops_without_scale_jitter_are_those_drawn_before_it_existed(tmp_path):
    """Committed training configs must keep reproducing the shipped weights: with the jitter off, the sampler
    draws the same crops as the code before the option (checksums taken from that code, commit 36ed816).
    Gray pairs, so every value is an exact uint8 / 255."""
    root = tmp_path / "g"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    rng = np.random.default_rng(11)
    for i, size in enumerate([(40, 56), (64, 48), (33, 80)]):
        cv2.imwrite(str(root / "ir" / f"{i}.png"), rng.integers(0, 256, size, dtype=np.uint8))
        cv2.imwrite(str(root / "vi" / f"{i}.png"), rng.integers(0, 256, size, dtype=np.uint8))
    images, _ = load_sources([SourceSpec(ir=str(root / "ir"), vis=str(root / "vi"))], 24)
    digest = hashlib.sha256()
    for step in range(20):
        ir, vis = CropSampler(images, 24, seed=7).batch(step, 3)
        digest.update(ir.numpy().tobytes())
        digest.update(vis.numpy().tobytes())
    assert digest.hexdigest() == OLD_CROPS_SHA256


def test_luminance_is_opencv_ycrcb_y():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    y = luminance(rgb)
    ref = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)[:, :, 0]
    assert np.allclose(y, ref, atol=1e-6)
    expect = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    assert np.allclose(y, expect, atol=1e-4)


def test_source_weights(tmp_path):
    small = _write_pairs(tmp_path / "small", n=1, size=(20, 20))
    big = _write_pairs(tmp_path / "big", n=4, size=(40, 40), seed=1)
    images, _ = load_sources([small, big], 16)
    sampler = CropSampler(images, 16, seed=0)
    # sqrt(400) : sqrt(4 * 1600) = 20 : 80
    assert np.allclose(sampler.weights, [0.2, 0.8])
    assert np.allclose(CropSampler(images, 16, 0, [1.0, 1.0]).weights, [0.5, 0.5])
    with pytest.raises(UsageError):
        CropSampler(images, 16, 0, [1.0, None])
    # Observed frequencies follow the weights: make the two sources tell apart by brightness.
    images[0][0].ir[:] = 10
    for p in images[1]:
        p.ir[:] = 200
    sampler = CropSampler(images, 16, 0, [3.0, 1.0])
    n_small = sum(float(sampler.batch(step, 1)[0].mean()) < 0.5 for step in range(400))
    assert 0.68 < n_small / 400 < 0.82


def test_batch_with_sources_names_each_crops_source(tmp_path):
    images, _ = load_sources([_write_pairs(tmp_path / "a", n=2), _write_pairs(tmp_path / "b", n=2, seed=1)], 16)
    for p in images[0]:
        p.ir[:] = 10
    for p in images[1]:
        p.ir[:] = 200
    sampler = CropSampler(images, 16, 3, [1.0, 1.0])
    ir, vis, origin = sampler.batch_with_sources(5, 32)
    assert origin.tolist() == [0 if float(x.mean()) < 0.5 else 1 for x in ir] and set(origin.tolist()) == {0, 1}
    plain_ir, plain_vis = sampler.batch(5, 32)  # the same crops as without the sources
    assert torch.equal(plain_ir, ir) and torch.equal(plain_vis, vis)


def test_source_loss_scale(tmp_path):
    spec = SourceSpec.from_dict({"pairs": "x.csv", "loss_scale": {"scd": 0.5, "vif": 0}})
    assert spec.loss_scale == {"scd": 0.5, "vif": 0}
    assert SourceSpec.from_dict(spec.to_dict()) == spec and "loss_scale" not in SourceSpec(pairs="x.csv").to_dict()
    for bad, match in (({"scd_": 1.0}, "unknown loss term 'scd_'"), ({"scd": -1}, "scd must be a number >= 0"),
                       ({"scd": True}, "number"), ({"scd": "0.5"}, "number"), ({"scd": float("nan")}, "number"),
                       (0.5, "must be a table")):
        with pytest.raises(UsageError, match=match):
            SourceSpec.from_dict({"pairs": "x.csv", "loss_scale": bad})


def test_small_images_are_padded_to_the_crop(tmp_path):
    spec = _write_pairs(tmp_path / "s", n=1, size=(10, 12))
    images, _ = load_sources([spec], 16)
    assert images[0][0].ir.shape == (16, 16)
    ir, vis = CropSampler(images, 16, 0).batch(0, 2)
    assert torch.allclose(vis, 1 - ir, atol=1e-5)


def test_a_crop_far_beyond_every_image_is_refused(tmp_path):
    spec = _write_pairs(tmp_path / "s", n=2, size=(10, 12))
    assert load_sources([spec], 20)[0][0][0].ir.shape == (20, 20)  # twice the smaller side: still padded
    with pytest.raises(UsageError, match=r"--crop 21: no image of .* smaller side above 10 pixels; crops would be "
                                         r"mostly padding \(give --crop 20 or less\)"):
        load_sources([spec], 21)


def test_bad_sources(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_sources([SourceSpec(ir=str(tmp_path / "no"), vis=str(tmp_path / "no2"))], 16)
    (tmp_path / "e" / "ir").mkdir(parents=True)
    (tmp_path / "e" / "vi").mkdir()
    with pytest.raises(UsageError, match="no image pairs"):
        load_sources([SourceSpec(ir=str(tmp_path / "e" / "ir"), vis=str(tmp_path / "e" / "vi"))], 16)
    with pytest.raises(UsageError):
        SourceSpec(ir="a")
    with pytest.raises(UsageError):
        SourceSpec(ir="a", vis="b", pairs="c.csv")
    with pytest.raises(UsageError):
        SourceSpec(ir="a", vis="b", weight=-1)
    spec = _write_pairs(tmp_path / "m", n=1, size=(20, 20))
    cv2.imwrite(str(tmp_path / "m" / "vi" / "000.png"), np.zeros((20, 22), np.uint8))
    with pytest.raises(InputError, match="differs"):
        load_sources([spec], 16)


def test_pair_list_source(tmp_path):
    _write_pairs(tmp_path / "p", n=2)
    (tmp_path / "list.csv").write_text("ir,vis\np/ir/000.png,p/vi/000.png\np/ir/001.png,p/vi/001.png\n")
    images, listed = load_sources([SourceSpec(pairs=str(tmp_path / "list.csv"))], 16)
    assert len(images[0]) == 2 and listed[0][0].ir == tmp_path / "p" / "ir" / "000.png"


def test_hold_out_takes_from_big_sources_by_name_and_keeps_one_pair_each(tmp_path):
    from diffmf_cli.training.data import hold_out

    big = _write_pairs(tmp_path / "big", n=5)
    small = _write_pairs(tmp_path / "small", n=2, seed=1)
    images, listed = load_sources([big, small], 16)
    imgs, lst, held = hold_out(images, listed, 3)
    # 5 vs 2 pairs: big gives 3 (5 -> 4 -> 3 left, then 3 > 2 once more), small keeps both.
    assert [len(s) for s in imgs] == [2, 2] and [len(s) for s in lst] == [2, 2] and len(held) == 3
    assert {p.name for p in held}.isdisjoint({p.name for p in imgs[0]})
    assert [p.name for p in imgs[0]] == [p.name for p in lst[0]]
    again = hold_out(load_sources([big, small], 16)[0], listed, 3)[2]
    assert [p.name for p in again] == [p.name for p in held]
    imgs4, _, four = hold_out(images, listed, 4)
    # Big goes 5 -> 2 left, then the tie (2 vs 2) goes to the first source: big ends with 1, small with 2.
    assert sum(any(p is q for q in images[0]) for p in four) == 4
    assert [len(s) for s in imgs4] == [1, 2]
    with pytest.raises(UsageError, match="keep one"):
        hold_out(images, listed, 6)
