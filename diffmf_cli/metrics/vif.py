"""VIF: Sheikh-Bovik pixel-domain multi-scale visual information fidelity, as the reference evaluator
(``Evaluator.compare_viff``, after the MATLAB vifvec/vifp_mscale) computes it, for VIF(A,F) + VIF(B,F).

Scale s = 1..4 uses a Gaussian window of N = 2^(5-s) + 1 taps, sigma N/5, with 'valid' filtering; between
scales the images are low-passed with that window ('valid') and decimated by 2. sigma_n^2 = 2.
"""

from __future__ import annotations

import math

import numpy as np

from diffmf_cli.metrics.filters import gaussian_1d, row_strips, sep_valid

SIGMA_NSQ = 2.0
EPS = 1e-10
#: smallest side for which all four scales have at least one 'valid' window
MIN_SIDE = 41


def vif_fused(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """VIF(A,F) + VIF(B,F). NaN when a side is under 41 px. A source with zero variance contributes 1.0
    (the reference turns its 0/0 into 1)."""
    if min(F.shape) < MIN_SIDE:
        return math.nan
    # Only local (co)variances enter VIF: centring the images makes E[x^2] - E[x]^2 more precise.
    F = F - F.mean()
    sources = [A - A.mean(), B - B.mean()]
    num = [0.0, 0.0]
    den = [0.0, 0.0]
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        win = gaussian_1d(size, size / 5.0)
        if scale > 1:
            F = np.ascontiguousarray(sep_valid(F, win)[::2, ::2])
            sources = [np.ascontiguousarray(sep_valid(x, win)[::2, ::2]) for x in sources]
        for r0, r1 in row_strips(F.shape[0], size, F.shape[1]):  # strip by strip: intermediates stay in cache
            f = F[r0:r1]
            mu_f = sep_valid(f, win)
            var_f = np.maximum(sep_valid(f * f, win) - mu_f * mu_f, 0.0)
            for i, src in enumerate(sources):
                ref = src[r0:r1]
                mu_r = sep_valid(ref, win)
                var_r = np.maximum(sep_valid(ref * ref, win) - mu_r * mu_r, 0.0)
                cov = sep_valid(ref * f, win) - mu_r * mu_f
                n, d = _vif_terms(var_r, var_f, cov)
                num[i] += n
                den[i] += d
    total = 0.0
    for n, d in zip(num, den):
        total += n / d if d > 0 else 1.0
    return total


def _vif_terms(sigma1_sq: np.ndarray, sigma2_sq: np.ndarray, sigma12: np.ndarray) -> tuple[float, float]:
    """One scale's numerator and denominator sums (natural log), with the reference's clamping rules.

    The reference assigns through masks in this order: g = sigma12 / (sigma1^2 + eps), sv^2 = sigma2^2 - g
    sigma12; where sigma1^2 < eps: g = 0, sv^2 = sigma2^2, sigma1^2 = 0; where sigma2^2 < eps: g = 0,
    sv^2 = 0; where g < 0: sv^2 = sigma2^2, g = 0; finally sv^2 >= eps. Wherever g ends at 0 the numerator
    term is log10(1) = 0 whatever sv^2 is, so only g > 0 needs sv^2 = max(sigma2^2 - g sigma12, eps).
    """
    live1 = sigma1_sq >= EPS
    g = sigma1_sq + EPS
    np.divide(sigma12, g, out=g)
    np.maximum(g, 0.0, out=g)
    g *= live1 & (sigma2_sq >= EPS)
    sv_sq = g * sigma12
    np.subtract(sigma2_sq, sv_sq, out=sv_sq)
    np.maximum(sv_sq, EPS, out=sv_sq)
    sv_sq += SIGMA_NSQ
    s1 = sigma1_sq * live1
    g *= g
    g *= s1
    g /= sv_sq
    # natural logs: the reference's log10 is the same up to a factor 1/ln 10 that cancels in num / den
    num = float(np.log1p(g, out=g).sum())
    s1 *= 1.0 / SIGMA_NSQ
    den = float(np.log1p(s1, out=s1).sum())
    return num, den
