"""The fusion loss against hand-worked values and an independent SSIM (scikit-image)."""

from __future__ import annotations

import dataclasses

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


def _assert_gradient_matches_central_difference(f, x, seed, h, rel):
    """autograd's derivative of f(x).sum() along a random direction against a central difference (a full
    gradcheck of thousands of inputs would take minutes)."""
    x = x.detach().requires_grad_()
    f(x).sum().backward()
    d = _rand(*x.shape, seed=seed).double() - 0.5
    numeric = (f(x.detach() + h * d) - f(x.detach() - h * d)).sum() / (2 * h)
    assert float((x.grad * d).sum()) == pytest.approx(float(numeric), rel=rel)


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
    # A weight from a TOML file may be anything: a one-line error names it (not a TypeError from a comparison).
    for name in ("intensity", "gradient", "ssim", "gradient_gain", "vif", "scd", "qabf"):
        for bad in ("lots", True, None):
            with pytest.raises(ValueError, match=f"{name} must be a number, got {bad!r}"):
                LossWeights(**{name: bad})
    for name in ("intensity", "gradient", "ssim"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
            LossWeights(**{name: -1.0})


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


def test_vif_term_is_the_evaluators_vif():
    """The loss's VIF is the metric's (metrics/vif.py), on the 0..255 scale, per sample, and differentiable."""
    from diffmf_cli.metrics.vif import vif_fused
    from diffmf_cli.training.losses import vif

    ir, vis = _rand(2, 1, 64, 72, seed=20).double(), _rand(2, 1, 64, 72, seed=21).double()
    # Smooth, structured images (uniform noise gives a VIF near 0 for everything but itself).
    ir = torch.nn.functional.avg_pool2d(ir, 5, 1, 2, count_include_pad=False)
    vis = torch.nn.functional.avg_pool2d(vis, 5, 1, 2, count_include_pad=False)
    for fused in (torch.maximum(ir, vis), (ir + vis) / 2, (1.3 * ir - 0.1).clamp(0, 1)):
        ours = (vif(fused, ir) + vif(fused, vis)).numpy()
        for b in range(2):
            expect = vif_fused(fused[b, 0].numpy() * 255, ir[b, 0].numpy() * 255, vis[b, 0].numpy() * 255)
            assert ours[b] == pytest.approx(expect, rel=1e-6)
    assert float(vif(ir, ir)[0]) == pytest.approx(1.0, rel=1e-9)
    flat = torch.zeros(1, 1, 48, 48, dtype=torch.float64)
    assert float(vif(ir[:1, :, :48, :48], flat)) == 1.0  # a flat reference counts 1, as in the evaluator
    _assert_gradient_matches_central_difference(lambda x: vif(x, ir[:1]), ((ir + vis) / 2)[:1], 24, 1e-5, 1e-4)
    with pytest.raises(ValueError, match="41"):
        vif(torch.zeros(1, 1, 40, 64), torch.zeros(1, 1, 40, 64))


def test_vif_weight_adds_the_vif_term_and_defaults_to_off():
    from diffmf_cli.training.losses import vif

    ir, vis = _rand(2, 1, 48, 48, seed=22), _rand(2, 1, 48, 48, seed=23)
    fused = (ir + vis) / 2
    base, parts = fusion_loss(fused, ir, vis, LossWeights())
    assert "vif" not in parts and LossWeights().vif == 0
    total, parts = fusion_loss(fused, ir, vis, LossWeights(vif=10.0))
    fidelity = ((vif(fused, ir) + vif(fused, vis)) / 2).mean()
    torch.testing.assert_close(parts["vif"], fidelity)
    assert float(total) == pytest.approx(float(base) + 10 * (1 - float(fidelity)), rel=1e-5)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="vif"):
            LossWeights(vif=bad)


def test_evaluator_ssim_form_is_the_metrics_ssim():
    from diffmf_cli.metrics.structural import ssim_fused
    from diffmf_cli.training.losses import evaluator_ssim

    ir, vis = _rand(2, 1, 30, 41, seed=25).double(), _rand(2, 1, 30, 41, seed=26).double()
    for fused in (torch.maximum(ir, vis), (ir + vis) / 2):
        ours = (evaluator_ssim(fused, ir) + evaluator_ssim(fused, vis)).numpy()
        for b in range(2):
            expect = ssim_fused(fused[b, 0].numpy() * 255, ir[b, 0].numpy() * 255, vis[b, 0].numpy() * 255)
            assert ours[b] == pytest.approx(expect, rel=1e-9)
    weights = LossWeights(ssim_form="evaluator", ssim_weighting="equal")
    _, parts = fusion_loss(ir, ir, vis, weights)
    expect = 0.5 * (evaluator_ssim(ir, ir) + evaluator_ssim(ir, vis)).mean()
    torch.testing.assert_close(parts["ssim"], expect.float() if parts["ssim"].dtype == torch.float32 else expect)
    with pytest.raises(ValueError, match="ssim_form"):
        LossWeights(ssim_form="box")


def test_scd_term_is_the_evaluators_scd():
    """The loss's SCD is the metric's (metrics/statistics.py) per sample, differentiable, and 0 where flat."""
    from diffmf_cli.metrics.statistics import scd as metric_scd
    from diffmf_cli.training.losses import scd

    ir, vis = _rand(2, 1, 33, 47, seed=27).double(), _rand(2, 1, 33, 47, seed=28).double()
    for fused in (torch.maximum(ir, vis), (ir + vis) / 2, ir + vis - 0.5):
        ours = scd(fused, ir, vis).numpy()
        for b in range(2):
            expect = metric_scd(fused[b, 0].numpy() * 255, ir[b, 0].numpy() * 255, vis[b, 0].numpy() * 255)
            assert ours[b] == pytest.approx(expect, rel=1e-9)
    # The additive fusion is its optimum: F − Y = IR and F − IR = Y, each correlation 1.
    assert scd(ir + vis, ir, vis).numpy() == pytest.approx([2.0, 2.0])
    # A flat source (the evaluator: NaN) counts 0 here, without NaN in the gradient.
    flat = torch.full_like(ir[:1], 0.3)
    x = ir[:1].clone().requires_grad_()
    value = scd(x, flat, vis[:1])
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()
    _assert_gradient_matches_central_difference(lambda x: scd(x, ir[:1], vis[:1]), ((ir + vis) / 2)[:1], 29,
                                                1e-6, 1e-5)


def test_scd_weight_adds_the_scd_term_and_defaults_to_off():
    from diffmf_cli.training.losses import scd

    ir, vis = _rand(2, 1, 24, 24, seed=30), _rand(2, 1, 24, 24, seed=31)
    fused = torch.maximum(ir, vis)
    base, parts = fusion_loss(fused, ir, vis, LossWeights())
    assert "scd" not in parts and LossWeights().scd == 0
    total, parts = fusion_loss(fused, ir, vis, LossWeights(scd=8.0))
    difference = scd(fused, ir, vis).mean()
    torch.testing.assert_close(parts["scd"], difference)
    assert float(total) == pytest.approx(float(base) + 8 * (1 - float(difference) / 2), rel=1e-5)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scd"):
            LossWeights(scd=bad)


def test_gradient_target_maximum_is_the_gradient_of_the_pixel_maximum():
    """gradient_target="maximum" aims |∇F| at |∇ max(IR, Y)| (the maximum's own edges: where one source is
    brighter, the other's texture is not asked for) instead of max(|∇IR|, |∇Y|); the maximum scores 0 on it."""
    ir, vis = _rand(2, 1, 24, 24, seed=50), _rand(2, 1, 24, 24, seed=51)
    top = torch.maximum(ir, vis)
    only = LossWeights(intensity=0.0, gradient=1.0, ssim=0.0)
    _, parts = fusion_loss(top, ir, vis, dataclasses.replace(only, gradient_target="maximum"))
    assert float(parts["gradient"]) == pytest.approx(0.0, abs=1e-7)
    _, parts = fusion_loss(top, ir, vis, only)
    expect = (sobel_magnitude(top) - torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))).abs().mean()
    assert float(parts["gradient"]) == pytest.approx(float(expect), rel=1e-6) and float(expect) > 0.01
    _, parts = fusion_loss(ir, ir, vis, dataclasses.replace(only, gradient_target="maximum", gradient_gain=2.0))
    expect = (sobel_magnitude(ir) - 2 * sobel_magnitude(top)).abs().mean()
    assert float(parts["gradient"]) == pytest.approx(float(expect), rel=1e-6)
    assert LossWeights().gradient_target == "sources"
    with pytest.raises(ValueError, match="gradient_target"):
        LossWeights(gradient_target="fused")


def test_qabf_term_is_the_evaluators_qabf():
    """The loss's Qabf is the metric's (metrics/gradient.py) with its zero border, per sample, on [0, 1] data;
    differentiable, finite on flat ground, and 'valid' by default (a crop's border is not an edge)."""
    from diffmf_cli.metrics.gradient import qabf as metric_qabf
    from diffmf_cli.training.losses import qabf

    ir, vis = _rand(2, 1, 40, 50, seed=40).double(), _rand(2, 1, 40, 50, seed=41).double()
    ir = torch.nn.functional.avg_pool2d(ir, 3, 1, 1, count_include_pad=False)
    vis = torch.nn.functional.avg_pool2d(vis, 3, 1, 1, count_include_pad=False)
    for fused, rel in (((ir + vis) / 2, 1e-6), (0.7 * ir + 0.4 * vis, 1e-6),
                       # The maximum equals a source on whole regions, where the evaluator's quirk (the
                       # ratio of equal strengths is g, not 1) scores 0.9994 for our 0.9988.
                       (torch.maximum(ir, vis), 1e-3)):
        ours = qabf(fused, ir, vis, pad_zeros=True).numpy()
        for b in range(2):
            expect = metric_qabf(fused[b, 0].numpy() * 255, ir[b, 0].numpy() * 255, vis[b, 0].numpy() * 255)
            assert ours[b] == pytest.approx(expect, rel=rel)
    # Whole grey levels (0..255, where Sobel sums are exact) with horizontal stripes: gx is exactly 0 over most
    # of the IR image, where the angle convention (gx negated, π/2 at gx = 0) decides the score; F equals
    # neither source.
    rows = torch.arange(40, dtype=torch.float64)[:, None].expand(40, 50)
    stripes = torch.round(127 + 100 * torch.sin(rows / 3)).expand(2, 1, 40, 50)
    grey = torch.round(vis * 255)
    for fused in (torch.round((0.6 * stripes + 0.5 * grey).clamp(0, 255)), torch.round((stripes + grey.flip(-1)) / 2)):
        ours = qabf(fused, stripes, grey, pad_zeros=True).numpy()
        for b in range(2):
            expect = metric_qabf(fused[b, 0].numpy(), stripes[b, 0].numpy(), grey[b, 0].numpy())
            assert ours[b] == pytest.approx(expect, rel=5e-4)
    # 'valid' (the default) sees no border: adding a constant to F changes nothing there, while the zero
    # border turns the constant into edges along the frame.
    shifted = (ir + vis) / 2 + 0.1
    assert qabf(shifted, ir, vis).numpy() == pytest.approx(qabf((ir + vis) / 2, ir, vis).numpy(), rel=1e-12)
    assert qabf(shifted, ir, vis, pad_zeros=True)[0] != pytest.approx(float(qabf((ir + vis) / 2, ir, vis,
                                                                              pad_zeros=True)[0]), rel=1e-3)
    # A source against itself: ratio 1 and orientation 1 everywhere, the product of the sigmoids' tops.
    top = 0.9994 / (1 + np.exp(-15 * 0.5)) * 0.9879 / (1 + np.exp(-22 * 0.2))
    assert qabf(ir, ir, ir).numpy() == pytest.approx([top] * 2, rel=1e-9)
    # Flat ground: an exactly flat F gets no gradient (|∇F| has a kink at 0), a nearly flat one a bounded
    # gradient that asks for the sources' edges (the angle's 1 / strength derivative is cut off there), and
    # flat sources score 0 (the evaluator: NaN), all finite.
    crop = (slice(None), slice(None), slice(0, 16), slice(0, 16))
    flat = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64, requires_grad=True)
    value = qabf(flat, ir[:1][crop], vis[:1][crop])
    value.sum().backward()
    assert torch.isfinite(value).all() and float(flat.grad.abs().max()) == 0.0
    for dtype in (torch.float64, torch.float32):
        near = (0.3 + 1e-5 * _rand(1, 1, 16, 16, seed=45)).to(dtype).requires_grad_()
        qabf(near, ir[:1][crop].to(dtype), vis[:1][crop].to(dtype)).sum().backward()
        assert torch.isfinite(near.grad).all() and 0 < float(near.grad.abs().max()) < 1
    x = ir[:1][crop].clone().requires_grad_()
    value = qabf(x, flat.detach(), flat.detach())
    value.sum().backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="3x3"):
        qabf(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8))
    _assert_gradient_matches_central_difference(lambda x: qabf(x, ir[:1], vis[:1]), ((ir + vis) / 2)[:1], 42,
                                                1e-6, 1e-4)


def test_qabf_weight_adds_the_qabf_term_and_defaults_to_off():
    from diffmf_cli.training.losses import qabf

    ir, vis = _rand(2, 1, 24, 24, seed=43), _rand(2, 1, 24, 24, seed=44)
    fused = (ir + vis) / 2
    base, parts = fusion_loss(fused, ir, vis, LossWeights())
    assert "qabf" not in parts and LossWeights().qabf == 0
    total, parts = fusion_loss(fused, ir, vis, LossWeights(qabf=12.0))
    edges = qabf(fused, ir, vis).mean()
    torch.testing.assert_close(parts["qabf"], edges)
    assert float(total) == pytest.approx(float(base) + 12 * (1 - float(edges)), rel=1e-5)
    # Amplified edges score lower than faithful ones: the term does not reward a gradient gain.
    assert float(qabf(1.5 * ir, ir, ir)[0]) < float(qabf(ir, ir, ir)[0]) - 0.05
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="qabf"):
            LossWeights(qabf=bad)


def test_excess_term_pulls_back_pixels_the_clamp_has_cut_off():
    ir, vis = _rand(1, 1, 16, 16, seed=45), _rand(1, 1, 16, 16, seed=46)
    unclamped = ((ir + vis) / 2).clone()
    unclamped[0, 0, 3, 4], unclamped[0, 0, 5, 6] = 1.3, -0.2
    unclamped.requires_grad_(True)
    fused = unclamped.clamp(0, 1)
    base, parts = fusion_loss(fused, ir, vis, LossWeights())
    assert "excess" not in parts and LossWeights().excess == 0
    total, parts = fusion_loss(fused, ir, vis, LossWeights(excess=10.0), unclamped)
    assert float(parts["excess"]) == pytest.approx((0.3 + 0.2) / 256, rel=1e-5)
    assert total.item() == pytest.approx(base.item() + 10 * (0.5 / 256), rel=1e-5)
    # Through the clamp alone the two clipped pixels get no gradient; the excess term pulls them back in.
    (grad_without,) = torch.autograd.grad(base, unclamped, retain_graph=True)
    (grad_with,) = torch.autograd.grad(total, unclamped)
    assert grad_without[0, 0, 3, 4] == 0 and grad_without[0, 0, 5, 6] == 0
    assert grad_with[0, 0, 3, 4] > 0 > grad_with[0, 0, 5, 6]
    with pytest.raises(ValueError, match="unclamped output"):
        fusion_loss(fused, ir, vis, LossWeights(excess=1.0))
    for bad in (-1, float("nan"), "lots"):
        with pytest.raises(ValueError, match="excess"):
            LossWeights(excess=bad)


def test_anchor_term_is_the_mean_distance_from_the_starting_models_output():
    ir, vis = _rand(2, 1, 16, 16, seed=47), _rand(2, 1, 16, 16, seed=48)
    start = (ir + vis) / 2
    fused = (start + 0.1 * _rand(2, 1, 16, 16, seed=49)).clamp(0, 1).requires_grad_(True)
    base, parts = fusion_loss(fused, ir, vis, LossWeights())
    assert "anchor" not in parts and LossWeights().anchor == 0
    total, parts = fusion_loss(fused, ir, vis, LossWeights(anchor=30.0), anchor=start)
    distance = (fused - start).abs().mean()
    torch.testing.assert_close(parts["anchor"], distance.detach())
    assert total.item() == pytest.approx(base.item() + 30 * distance.item(), rel=1e-5)
    same, _ = fusion_loss(start, ir, vis, LossWeights(anchor=30.0), anchor=start)
    assert float(same) == pytest.approx(float(fusion_loss(start, ir, vis, LossWeights())[0]), rel=1e-6)
    # Per source: the term on the first crop only adds half that crop's distance.
    first, _ = fusion_loss(fused, ir, vis, LossWeights(anchor=30.0), sample_scale={"anchor": torch.tensor([1.0, 0.0])},
                           anchor=start)
    one = (fused[0] - start[0]).abs().mean()
    assert first.item() == pytest.approx(base.item() + 30 * one.item() / 2, rel=1e-5)
    (grad,) = torch.autograd.grad(total - base, fused)
    assert torch.equal(grad.sign(), (fused - start).sign())  # pulls every pixel back towards the start
    with pytest.raises(ValueError, match="starting model"):
        fusion_loss(fused, ir, vis, LossWeights(anchor=1.0))
    with pytest.raises(ValueError, match="anchor"):
        LossWeights(anchor=-1)


def test_sample_scale_multiplies_each_samples_term_and_leaves_the_parts_unscaled():
    from diffmf_cli.training.losses import scd

    ir, vis = _rand(2, 1, 24, 24, seed=40), _rand(2, 1, 24, 24, seed=41)
    fused = 0.6 * torch.maximum(ir, vis) + 0.4 * _rand(2, 1, 24, 24, seed=42)
    weights = LossWeights(intensity=20, gradient=20, ssim=10, scd=8.0, excess=3.0)
    unclamped = fused * 1.3 - 0.1
    plain, parts = fusion_loss(fused, ir, vis, weights, unclamped)
    ones = {t: torch.ones(2) for t in ("intensity", "gradient", "ssim", "scd", "excess")}
    same, same_parts = fusion_loss(fused, ir, vis, weights, unclamped, ones)
    torch.testing.assert_close(same, plain)
    assert same_parts.keys() == parts.keys()
    # SCD on the first crop only: the term is 8 · mean(1 − d₀/2, 0).
    scaled, scaled_parts = fusion_loss(fused, ir, vis, weights, unclamped, {"scd": torch.tensor([1.0, 0.0])})
    d = scd(fused, ir, vis)
    without, _ = fusion_loss(fused, ir, vis, dataclasses.replace(weights, scd=0.0), unclamped)
    assert float(scaled) == pytest.approx(float(without) + 8 * (1 - float(d[0]) / 2) / 2, rel=1e-5)
    torch.testing.assert_close(scaled_parts["scd"], parts["scd"])  # parts stay the unscaled means
    # A per-pixel term: intensity doubled on the second crop adds that crop's mean L1 once more, halved.
    doubled, _ = fusion_loss(fused, ir, vis, weights, unclamped, {"intensity": torch.tensor([1.0, 2.0])})
    extra = (fused[1] - torch.maximum(ir[1], vis[1])).abs().mean()
    assert float(doubled) == pytest.approx(float(plain) + 20 * float(extra) / 2, rel=1e-5)
