"""The fusion loss: intensity, gradient and structural (SSIM) terms, and optionally visual information fidelity.

The lineage DIFF-MF's README points to (SwinFusion, MambaDFuse) trains with, for IR–visible pairs,

    L = 20·L1(F, max(IR, Y)) + 20·L1(|∇F|, max(|∇IR|, |∇Y|)) + 10·(1 − (w_ir·SSIM(F, IR) + w_vi·SSIM(F, Y)))

and for medical pairs the weights 20 / 100 / 50 with w_ir = w_vi = ½. The paper gives no values; these are
**ours** (see ``docs/diffmf-architecture.md``). Details that are also ours:

- ``|∇x| = |Sobel_x * x| + |Sobel_y * x|`` (SwinFusion's form), with reflect padding so a crop's border
  does not read as an edge;
- the gradient target is max(|∇IR|, |∇Y|) (``gradient_target="sources"``), or with ``"maximum"`` the
  gradient of the pixel maximum, |∇ max(IR, Y)|, which does not ask for the darker source's texture where
  the other is brighter (MRI texture inside PET uptake costs VIF(PET, F); measured in weights/training/README.md);
- w_ir, w_vi are each source's mean gradient magnitude, normalised to sum to 1, **per sample**
  (equal when both sources are flat);
- SSIM with an 11×11 Gaussian window (σ = 1.5), C1 = 0.01², C2 = 0.03² for data in [0, 1], "valid"
  convolution (no padding), averaged over each sample.
- optional, off in the presets: a fourth term ``v·(1 − (VIF(IR,F) + VIF(Y,F))/2)`` with the evaluator's
  multi-scale pixel-domain VIF computed differentiably (``vif``), and the structural term scored with the
  evaluator's own SSIM (``ssim_form="evaluator"``: 7×7 box, near-zero constants). VIF rewards keeping each
  source's local contrast, which the L1 terms do not see; it also rewards amplifying it, so a heavy VIF
  weight costs SSIM and SCD (measured in weights/training/README.md).
- optional, off in the presets: ``s·(1 − SCD/2)`` with SCD = corr(F − Y, IR) + corr(F − IR, Y) per sample
  (``scd``), which rewards carrying each source's content *in addition to* the other's; the intensity
  term's max(IR, Y) target alone scores low on it.
- optional, off in the presets: ``q·(1 − Qabf)`` with the evaluator's Xydeas–Petrović edge preservation
  (``qabf``): Sobel strength and angle of each source and of F, the two sigmoids of relative strength and
  orientation, weighted by each source's strength. Unlike the gradient term it asks for each source's edges
  at their own strength and orientation, so it penalises amplified edges as well as lost ones.
- optional, off in the presets, for fine-tunes only: ``n·mean|F − F₀|`` with F₀ the fused batch of the
  model the fine-tune started from (``anchor``), frozen. With a per-source ``loss_scale`` it holds the model's
  output on some data (say low-light scenes) while the other terms move it on the rest: without it, a
  fine-tune that gained on RoadScene lost 5–8 % of SSIM on LLVIP (weights/training/README.md).

All tensors are (B, 1, H, W), float, in [0, 1]. Everything is differentiable with respect to ``fused``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The evaluator's Qabf sigmoids, and its VIF constants (noise variance on the 0..255 scale, epsilon, smallest
# side it can score).
from diffmf_cli.metrics.gradient import Q_DA, Q_DG, Q_KA, Q_KG, Q_TA, Q_TG
from diffmf_cli.metrics.vif import EPS, SIGMA_NSQ
from diffmf_cli.metrics.vif import MIN_SIDE as VIF_MIN_SIDE

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
# Below this Sobel strength (on [0, 1] data; one grey level's step gives about 0.004) an edge's angle is noise,
# and its derivative grows as 1 / strength: Qabf's angle passes no gradient there.
_ANGLE_FLOOR = 1e-3


#: The fields of LossWeights that weight a term of the loss (each a finite number >= 0).
TERM_WEIGHTS = ("intensity", "gradient", "ssim", "vif", "scd", "qabf", "excess", "anchor")


def is_number(value) -> bool:
    """An int or a float, and not a bool (which Python counts as an int): a training setting's type check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms and how the two SSIM terms are weighted.

    ``ssim_weighting``: ``"gradient"`` (w from each source's mean gradient magnitude) or ``"equal"`` (½, ½).
    """

    intensity: float = 20.0
    gradient: float = 20.0
    ssim: float = 10.0
    ssim_weighting: str = "gradient"
    gradient_gain: float = 1.0  # |∇F| is aimed at gradient_gain · the gradient target
    gradient_target: str = "sources"  # "sources": max(|∇IR|, |∇Y|); "maximum": |∇ max(IR, Y)|
    vif: float = 0.0            # weight of 1 − (VIF(IR,F) + VIF(Y,F)) / 2, the evaluator's VIF made differentiable
    ssim_form: str = "gaussian"  # "gaussian": 11×11 Gaussian, C = (0.01, 0.03)²; "evaluator": the metric's SSIM
    scd: float = 0.0            # weight of 1 − SCD(F; IR, Y) / 2, the sum of the correlations of differences
    qabf: float = 0.0           # weight of 1 − Qabf(F; IR, Y), the evaluator's edge preservation made differentiable
    excess: float = 0.0         # weight of the mean distance of the head's unclamped output outside [0, 1]
    #                             (the blend head's; the direct head's sigmoid never leaves [0, 1]: 0 there)
    anchor: float = 0.0         # weight of mean |F − F₀|, F₀ the output of the model a fine-tune started from

    def __post_init__(self):
        for name in (*TERM_WEIGHTS, "gradient_gain"):
            value = getattr(self, name)
            if not is_number(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.ssim_weighting not in ("gradient", "equal"):
            raise ValueError(f"ssim_weighting must be 'gradient' or 'equal', got {self.ssim_weighting!r}")
        if not self.gradient_gain > 0:
            raise ValueError(f"gradient_gain must be > 0, got {self.gradient_gain}")
        if self.gradient_target not in ("sources", "maximum"):
            raise ValueError(f"gradient_target must be 'sources' or 'maximum', got {self.gradient_target!r}")
        if self.ssim_form not in ("gaussian", "evaluator"):
            raise ValueError(f"ssim_form must be 'gaussian' or 'evaluator', got {self.ssim_form!r}")
        for name in TERM_WEIGHTS:
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


#: The two variants of the architecture doc.
LOSS_PRESETS: dict[str, LossWeights] = {
    "ir-vis": LossWeights(20.0, 20.0, 10.0, "gradient"),
    "medical": LossWeights(20.0, 100.0, 50.0, "equal"),
}


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2, H − 2, W − 2): the 'valid' correlations with Sobel_x and Sobel_y."""
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    return F.conv2d(x, torch.stack([kx, kx.t()]).unsqueeze(1))  # kernel (2, 1, 3, 3)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H, W): |Sobel_x * x| + |Sobel_y * x| with reflect padding (H, W >= 2)."""
    return _sobel(F.pad(x, (1, 1, 1, 1), mode="reflect")).abs().sum(dim=1, keepdim=True)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(1, 1, size, size)


def _windowed_ssim(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, c1: float, c2: float,
                   cov_norm: float = 1.0) -> torch.Tensor:
    """Per-sample mean of the SSIM map of x, y over the 'valid' positions of window `w` (weights summing to 1);
    ``cov_norm`` scales the (co)variances (n / (n − 1) for sample statistics)."""
    # One conv over the five maps at once.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    mu_x, mu_y, e_xx, e_yy, e_xy = F.conv2d(stack, w).split(x.shape[0], dim=0)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov_norm * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (cov_norm * (var_x + var_y) + c2)
    return (num / den).flatten(1).mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Per-sample mean SSIM of two (B, 1, H, W) images -> (B,). Needs H, W >= ``window``."""
    if x.shape[-1] < window or x.shape[-2] < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {tuple(x.shape[-2:])}")
    w = _gaussian_window(window, sigma, x.device, x.dtype)
    return _windowed_ssim(x, y, w, (0.01 * data_range) ** 2, (0.03 * data_range) ** 2)


def evaluator_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean SSIM of two (B, 1, H, W) images in [0, 1] -> (B,), as the evaluator scores it
    (``metrics/structural.py``): 7×7 uniform windows, sample covariance, 'valid', on the 0..255 scale with
    ``data_range = 2`` (C1 = 0.02², C2 = 0.06²: next to nothing, so faint structure counts in full)."""
    if x.shape[-1] < 7 or x.shape[-2] < 7:
        raise ValueError(f"SSIM needs images of at least 7x7, got {tuple(x.shape[-2:])}")
    w = torch.full((1, 1, 7, 7), 1 / 49, device=x.device, dtype=x.dtype)
    return _windowed_ssim(x * 255.0, y * 255.0, w, 0.02**2, 0.06**2, cov_norm=49 / 48)


def vif(fused: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample VIF(ref, F) of two (B, 1, H, W) images in [0, 1] -> (B,), differentiable in ``fused``.

    The evaluator's Sheikh–Bovik pixel-domain VIF (``metrics/vif.py``): four scales, Gaussian windows of
    2^(5−s)+1 taps (σ = taps/5), 'valid' filtering, low-pass and decimate by 2 between scales, σ_n² = 2 on the
    0..255 scale, g clamped at 0. Needs H, W >= 41. A flat reference (zero denominator) gives 1, as there.
    """
    if min(fused.shape[-2:]) < VIF_MIN_SIDE:
        raise ValueError(f"VIF needs images of at least {VIF_MIN_SIDE}x{VIF_MIN_SIDE}, got {tuple(fused.shape[-2:])}")
    f, r = fused * 255.0, ref * 255.0
    num = fused.new_zeros(fused.shape[0])
    den = fused.new_zeros(fused.shape[0])
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        win = _gaussian_window(size, size / 5.0, fused.device, fused.dtype)
        if scale > 1:
            f = F.conv2d(f, win)[..., ::2, ::2]
            r = F.conv2d(r, win)[..., ::2, ::2]
        # Centre each image (only local (co)variances enter) so E[x²] − E[x]² keeps its precision.
        fc = f - f.mean(dim=(-2, -1), keepdim=True)
        rc = r - r.mean(dim=(-2, -1), keepdim=True)
        b = f.shape[0]
        mu_f, mu_r, e_ff, e_rr, e_fr = F.conv2d(torch.cat([fc, rc, fc * fc, rc * rc, fc * rc]), win).split(b)
        var_f = (e_ff - mu_f**2).clamp_min(0)
        var_r = (e_rr - mu_r**2).clamp_min(0)
        cov = e_fr - mu_r * mu_f
        live = ((var_r >= EPS) & (var_f >= EPS)).to(f.dtype)
        g = (cov / (var_r + EPS)).clamp_min(0) * live
        sv_sq = (var_f - g * cov).clamp_min(EPS) + SIGMA_NSQ
        s1 = var_r * (var_r >= EPS).to(f.dtype)
        num = num + torch.log1p(g * g * s1 / sv_sq).flatten(1).sum(dim=1)
        den = den + torch.log1p(s1 / SIGMA_NSQ).flatten(1).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(EPS), torch.ones_like(num))


def _correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation of two (B, 1, H, W) images -> (B,); 0 where either is flat."""
    xc = (x - x.mean(dim=(-2, -1), keepdim=True)).flatten(1)
    yc = (y - y.mean(dim=(-2, -1), keepdim=True)).flatten(1)
    var_x, var_y = (xc * xc).sum(dim=1), (yc * yc).sum(dim=1)
    live = (var_x > 1e-12) & (var_y > 1e-12)
    r = (xc * yc).sum(dim=1) / torch.sqrt(torch.where(live, var_x * var_y, torch.ones_like(var_x)))
    return torch.where(live, r, torch.zeros_like(r))


def scd(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Per-sample SCD of (B, 1, H, W) images -> (B,): corr(F − Y, IR) + corr(F − IR, Y), as the evaluator
    scores it (``metrics/statistics.py``) over the whole image; a flat difference or source counts 0 here
    (the evaluator gives NaN)."""
    return _correlation(fused - vis, ir) + _correlation(fused - ir, vis)


def _strength_angle(x: torch.Tensor, pad_zeros: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Qabf's Sobel strength and angle of a (B, 1, H, W) image, with gradients that stay finite on flat
    ground: strength sqrt(gx² + gy²), angle atan(gy / gx') with gx' = −gx (the reference convolves), π/2
    where gx' = 0, and no gradient through the angle where the strength is below ``_ANGLE_FLOOR``.
    ``pad_zeros``: the evaluator's zero border; otherwise 'valid' (a crop's edge is no edge)."""
    g = _sobel(F.pad(x, (1, 1, 1, 1)) if pad_zeros else x)
    gx, gy = -g[:, :1], g[:, 1:]
    sq = gx * gx + gy * gy
    # A flat image's Sobel sums are 0 up to rounding (0.3 is not a binary fraction): count them as 0.
    live = sq > (4 * torch.finfo(sq.dtype).eps) ** 2
    strength = torch.where(live, sq.clamp_min(1e-20).sqrt(), torch.zeros_like(sq))
    # atan(gy / gx) as atan2 on the right half-plane: the same value, and a derivative without 1 / gx².
    vertical = gx == 0
    sign = torch.where(gx < 0, -torch.ones_like(gx), torch.ones_like(gx))
    angle = torch.atan2(torch.where(vertical, torch.ones_like(gy), gy * sign),
                        torch.where(vertical, torch.ones_like(gx), gx.abs()))
    angle = torch.where(vertical, torch.full_like(angle, 0.5 * math.pi), angle)
    return strength, torch.where(strength < _ANGLE_FLOOR, angle.detach(), angle)


def _edge_preservation(g_src, a_src, g_f, a_f) -> torch.Tensor:
    ratio = torch.minimum(g_src, g_f) / torch.maximum(g_src, g_f).clamp_min(1e-20)
    orient = 1 - (a_src - a_f).abs() / (0.5 * math.pi)
    return (Q_TG * torch.sigmoid(-Q_KG * (ratio - Q_DG))) * (Q_TA * torch.sigmoid(-Q_KA * (orient - Q_DA)))


def qabf(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, pad_zeros: bool = False) -> torch.Tensor:
    """Per-sample Qabf of (B, 1, H, W) images -> (B,), as the evaluator scores it (``metrics/gradient.py``),
    differentiable in ``fused``: sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B). Strength ratios and angles do
    not depend on the intensity scale, so [0, 1] data gives the 0..255 value. Three differences: where g_src
    equals g_F exactly the evaluator's ratio is g_F (a quirk; here 1); both sources flat gives 0 (there NaN);
    and by default (``pad_zeros=False``, for training crops, whose edges are no edges) only the 'valid'
    interior is scored, where the evaluator pads with zeros (``pad_zeros=True``). Needs H, W >= 3."""
    if min(fused.shape[-2:]) < 3:
        raise ValueError(f"Qabf needs images of at least 3x3, got {tuple(fused.shape[-2:])}")
    g_a, a_a = _strength_angle(ir, pad_zeros)
    g_b, a_b = _strength_angle(vis, pad_zeros)
    g_f, a_f = _strength_angle(fused, pad_zeros)
    num = (_edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b)
    den = (g_a + g_b).flatten(1).sum(dim=1)
    return num.flatten(1).sum(dim=1) / den.clamp_min(1e-20)


def ssim_weights(ir: torch.Tensor, vis: torch.Tensor, mode: str = "gradient",
                 grad_ir: torch.Tensor | None = None, grad_vis: torch.Tensor | None = None):
    """Per-sample (w_ir, w_vi), each (B,), summing to 1."""
    b = ir.shape[0]
    if mode == "equal":
        half = torch.full((b,), 0.5, device=ir.device, dtype=ir.dtype)
        return half, half
    g_ir = (grad_ir if grad_ir is not None else sobel_magnitude(ir)).flatten(1).mean(dim=1)
    g_vi = (grad_vis if grad_vis is not None else sobel_magnitude(vis)).flatten(1).mean(dim=1)
    eps = 1e-8
    total = g_ir + g_vi + 2 * eps
    return (g_ir + eps) / total, (g_vi + eps) / total


def _mean(x: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the term, the batch mean) of a per-pixel (B, 1, H, W) or per-sample (B,) loss: the term is the mean,
    or with `scale` (B,) the mean of each sample's mean times its factor."""
    mean = x.mean()
    if scale is None:
        return mean, mean
    return (x.flatten(1).mean(dim=1) * scale.to(x) if x.dim() > 1 else x * scale.to(x)).mean(), mean


def _shortfall(x: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the term, the batch mean) of a per-sample score (B,): the term is ``1 − mean``, or with `scale` (B,)
    the mean of each sample's shortfall times its factor."""
    mean = x.mean()
    return (1 - mean if scale is None else ((1 - x) * scale.to(x)).mean()), mean


def fusion_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor,
                weights: LossWeights = LOSS_PRESETS["ir-vis"], unclamped: torch.Tensor | None = None,
                sample_scale: dict[str, torch.Tensor] | None = None, anchor: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of a fused batch against its sources.

    Returns ``(total, parts)``: ``total`` a scalar (mean over the batch), ``parts`` the *unweighted* terms
    ``intensity`` (L1 to max), ``gradient`` (L1 of gradient magnitudes), ``ssim`` (the weighted SSIM, so the
    structural term is ``1 − ssim``), each a detached scalar, and one per optional term in use.
    ``unclamped``: the head's output before its clamp (``model(ir, vis, clamp=False)``), which the ``excess``
    term needs: a pixel clipped to 0 or 1 passes no gradient to the other terms, so without it nothing pulls a
    pixel back that the network has pushed past the range.
    ``anchor``: the fused batch of the frozen model a fine-tune started from, which the ``anchor`` term needs.
    ``sample_scale``: per-sample factors (B,) on named terms (a training source's ``loss_scale``); the parts
    stay the unscaled batch means.
    """
    if not (fused.shape == ir.shape == vis.shape) or fused.dim() != 4 or fused.shape[1] != 1:
        raise ValueError(f"fusion_loss needs three (B, 1, H, W) tensors of one shape, got "
                         f"{tuple(fused.shape)}, {tuple(ir.shape)}, {tuple(vis.shape)}")
    scale = (sample_scale or {}).get
    # The order of these operations is the order autograd sums their gradients in: keep it (bitwise reruns).
    top = torch.maximum(ir, vis)
    intensity, mean_intensity = _mean((fused - top).abs(), scale("intensity"))
    g_ir, g_vis, g_f = sobel_magnitude(ir), sobel_magnitude(vis), sobel_magnitude(fused)
    g_target = torch.maximum(g_ir, g_vis) if weights.gradient_target == "sources" else sobel_magnitude(top)
    gradient, mean_gradient = _mean((g_f - weights.gradient_gain * g_target).abs(), scale("gradient"))
    w_ir, w_vi = ssim_weights(ir, vis, weights.ssim_weighting, g_ir, g_vis)
    sim = evaluator_ssim if weights.ssim_form == "evaluator" else ssim
    structural, mean_structural = _shortfall(w_ir * sim(fused, ir) + w_vi * sim(fused, vis), scale("ssim"))
    total = weights.intensity * intensity + weights.gradient * gradient + weights.ssim * structural
    parts = {"intensity": mean_intensity.detach(), "gradient": mean_gradient.detach(),
             "ssim": mean_structural.detach()}
    if weights.vif:
        term, mean = _shortfall((vif(fused, ir) + vif(fused, vis)) / 2, scale("vif"))
        total = total + weights.vif * term
        parts["vif"] = mean.detach()
    if weights.scd:
        # The term is 1 − SCD/2; the part is SCD's mean, twice the mean of SCD/2 (halving is exact in floats).
        term, half = _shortfall(scd(fused, ir, vis) / 2, scale("scd"))
        total = total + weights.scd * term
        parts["scd"] = (2 * half).detach()
    if weights.qabf:
        term, mean = _shortfall(qabf(fused, ir, vis), scale("qabf"))
        total = total + weights.qabf * term
        parts["qabf"] = mean.detach()
    if weights.excess:
        if unclamped is None or unclamped.shape != fused.shape:
            raise ValueError("the excess term needs the head's unclamped output, of the fused batch's shape")
        term, mean = _mean(F.relu(unclamped - 1) + F.relu(-unclamped), scale("excess"))
        total = total + weights.excess * term
        parts["excess"] = mean.detach()
    if weights.anchor:
        if anchor is None or anchor.shape != fused.shape:
            raise ValueError("the anchor term needs the starting model's fused batch, of the fused batch's shape")
        term, mean = _mean((fused - anchor).abs(), scale("anchor"))
        total = total + weights.anchor * term
        parts["anchor"] = mean.detach()
    return total, parts


class FusionLoss(nn.Module):
    """Module form of :func:`fusion_loss`: ``FusionLoss("ir-vis")(fused, ir, vis) -> (total, parts)``."""

    def __init__(self, weights: LossWeights | str = "ir-vis"):
        super().__init__()
        self.weights = LOSS_PRESETS[weights] if isinstance(weights, str) else weights

    def forward(self, fused, ir, vis, unclamped=None, sample_scale=None, anchor=None):
        return fusion_loss(fused, ir, vis, self.weights, unclamped, sample_scale, anchor)
