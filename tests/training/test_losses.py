"""The fusion loss against hand-worked values and an independent SSIM (scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmf_cli.training.losses import (
    LOSS_PRESETS,
    FusionLoss,
    LossWeights,
    fusion_loss,
    sobel_magnitude,
    ssim,
    ssim_weights,
)


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def test_identical_sources_and_output_give_zero_loss():
    x = _rand(2, 1, 32, 32)
    total, parts = fusion_loss(x.clone(), x, x)
    assert float(parts["intensity"]) == 0.0
    assert float(parts["gradient"]) == 0.0
    assert float(parts["ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert float(total) == pytest.approx(0.0, abs=1e-4)


def test_intensity_term_is_zero_at_the_max_and_l1_elsewhere():
    ir, vis = _rand(1, 1, 24, 24, seed=1), _rand(1, 1, 24, 24, seed=2)
    _, parts = fusion_loss(torch.maximum(ir, vis), ir, vis)
    assert float(parts["intensity"]) == 0.0
    _, parts = fusion_loss(torch.maximum(ir, vis) - 0.1, ir, vis)
    assert float(parts["intensity"]) == pytest.approx(0.1, abs=1e-6)


def test_sobel_of_a_step_edge():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0
    g = sobel_magnitude(x)[0, 0]
    # Columns 3 and 4 straddle the step: |Gx| = 1 + 2 + 1 = 4, Gy = 0. Elsewhere (reflect padding) 0.
    assert torch.equal(g[:, 3], torch.full((8,), 4.0))
    assert torch.equal(g[:, 4], torch.full((8,), 4.0))
    assert float(g[:, [0, 1, 2, 5, 6, 7]].abs().sum()) == 0.0
    # A linear ramp of slope s has |Gx| = 8 s inside, and reflect padding makes no edge at the border rows.
    ramp = torch.arange(8.0).repeat(8, 1)[None, None] / 10
    assert torch.allclose(sobel_magnitude(ramp)[0, 0, :, 1:-1], torch.full((8, 6), 0.8))


def test_gradient_term_by_hand():
    ir = torch.zeros(1, 1, 16, 16)
    ir[..., 8:] = 1.0  # one vertical edge: two columns of |∇| = 4
    vis = torch.zeros(1, 1, 16, 16)
    fused = torch.zeros(1, 1, 16, 16)  # no edge at all
    _, parts = fusion_loss(fused, ir, vis)
    assert float(parts["gradient"]) == pytest.approx(4.0 * 2 / 16)


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a = _rand(1, 1, 48, 40, seed=3)
    b = (a * 0.7 + 0.3 * _rand(1, 1, 48, 40, seed=4)).clamp(0, 1)
    ours = float(ssim(a, b)[0])
    ref = skimage_metrics.structural_similarity(
        a[0, 0].double().numpy(), b[0, 0].double().numpy(), data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=1e-5)


def test_ssim_weights_follow_gradients_per_sample():
    flat = torch.full((1, 1, 16, 16), 0.5)
    textured = _rand(1, 1, 16, 16, seed=5)
    ir = torch.cat([flat, textured, flat])
    vis = torch.cat([textured, flat, flat])
    w_ir, w_vi = ssim_weights(ir, vis)
    assert torch.allclose(w_ir + w_vi, torch.ones(3))
    assert float(w_ir[0]) < 1e-6 and float(w_vi[0]) > 1 - 1e-6
    assert float(w_ir[1]) > 1 - 1e-6
    assert torch.allclose(w_ir[2], torch.tensor(0.5))
    # Twice the contrast -> twice the mean gradient -> w = 2/3, 1/3.
    w_ir, w_vi = ssim_weights(textured * 0.5, textured * 0.25)
    assert float(w_ir[0]) == pytest.approx(2 / 3, abs=1e-6)
    assert torch.equal(ssim_weights(ir, vis, "equal")[0], torch.full((3,), 0.5))


def test_total_is_the_weighted_sum_of_the_parts_for_both_presets():
    ir, vis, fused = (_rand(2, 1, 32, 32, seed=s) for s in (6, 7, 8))
    for name, (wi, wg, ws) in {"ir-vis": (20, 20, 10), "medical": (20, 100, 50)}.items():
        total, p = fusion_loss(fused, ir, vis, LOSS_PRESETS[name])
        expect = wi * p["intensity"] + wg * p["gradient"] + ws * (1 - p["ssim"])
        assert float(total) == pytest.approx(float(expect), rel=1e-5)
    # Medical SSIM term uses ½, ½ regardless of gradients.
    _, p = fusion_loss(fused, ir, vis, LOSS_PRESETS["medical"])
    half = 0.5 * (ssim(fused, ir) + ssim(fused, vis)).mean()
    assert float(p["ssim"]) == pytest.approx(float(half), rel=1e-6)


def test_loss_is_differentiable_and_lower_for_a_better_fusion():
    ir, vis = _rand(2, 1, 32, 32, seed=9), _rand(2, 1, 32, 32, seed=10)
    fused = torch.full_like(ir, 0.5, requires_grad=True)
    total, _ = FusionLoss("ir-vis")(fused, ir, vis)
    total.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    better, _ = fusion_loss(torch.maximum(ir, vis), ir, vis)
    assert float(better) < float(total.detach())
    x = _rand(1, 1, 13, 13, seed=11).double().requires_grad_()
    y = _rand(1, 1, 13, 13, seed=12).double()
    assert torch.autograd.gradcheck(lambda t: ssim(t, y), (x,))


def test_bad_arguments():
    with pytest.raises(ValueError):
        LossWeights(ssim_weighting="max")
    with pytest.raises(ValueError):
        fusion_loss(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 15), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    assert np.isclose(LossWeights().to_dict()["intensity"], 20.0)


def test_gradient_gain_scales_the_gradient_target():
    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))
    for gain in (1.0, 1.5):
        weights = LossWeights(gradient_gain=gain)
        _, parts = fusion_loss(ir, ir, vis, weights)
        expected = (sobel_magnitude(ir) - gain * target).abs().mean()
        torch.testing.assert_close(parts["gradient"], expected)
    with pytest.raises(ValueError, match="gradient_gain"):
        LossWeights(gradient_gain=0)
