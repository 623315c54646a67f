"""Structural similarity: SSIM (scikit-image's), MEF-SSIM (the fusion papers' "MS-SSIM") and Wang's MS-SSIM.

Inputs are float64 (H, W) arrays on the 0..255 scale. Local statistics come from separable OpenCV filters;
the per-window loops of the MATLAB originals are replaced by closed forms over local (co)variances.
"""

from __future__ import annotations

import math

import numpy as np

from diffmf_cli.metrics.filters import box_valid, gaussian_1d, halve_2x2, row_strips, sep_valid

SSIM_WIN = 7
MEF_WIN = 11
MEF_SIGMA = 1.5
MEF_K = 0.03
MEF_WEIGHTS = np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001)
MSSSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
_EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps
# Local variances below this are rounding noise of E[x^2] - E[x]^2: an image of whole gray levels has a
# smallest non-zero 11x11 variance of about 2e-6 even at the third scale (1/16 steps).
_FLAT = 1e-9


def _box_stats(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    mu = box_valid(x, size)
    return mu, box_valid(x * x, size) - mu * mu


def ssim_fused(F: np.ndarray, A: np.ndarray, B: np.ndarray, data_range: float = 2.0, total: bool = True) -> float:
    """SSIM(F,A) + SSIM(F,B) (`total`) or their mean; NaN when a side is under 7 px."""
    if min(F.shape) < SSIM_WIN:
        return math.nan
    sa = sb = 0.0
    for r0, r1 in row_strips(F.shape[0], SSIM_WIN, F.shape[1]):  # strip by strip: intermediates stay in cache
        f = F[r0:r1]
        mu_f, var_f = _box_stats(f, SSIM_WIN)
        a, b = _ssim_map_sums(f, mu_f, var_f, [A[r0:r1], B[r0:r1]], data_range)
        sa += a
        sb += b
    count = (F.shape[0] - SSIM_WIN + 1) * (F.shape[1] - SSIM_WIN + 1)
    sa /= count
    sb /= count
    return sa + sb if total else 0.5 * (sa + sb)


def _ssim_map_sums(x, mu_x, var_x, others, data_range) -> list[float]:
    """Sum of the SSIM map of x against each of `others` over the valid 7x7 windows."""
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    out = []
    for y in others:
        mu_y, var_y = _box_stats(y, SSIM_WIN)
        cov = box_valid(x * y, SSIM_WIN) - mu_x * mu_y
        num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_norm * cov + c2)
        den = (mu_x * mu_x + mu_y * mu_y + c1) * (cov_norm * (var_x + var_y) + c2)
        out.append(float((num / den).sum()))
    return out


# ---------------------------------------------------------------------------------------------------------
# MEF-SSIM (Ma, Zeng, Wang 2015), as the fusion toolboxes' analysis_ms_ssim.m computes it
# ---------------------------------------------------------------------------------------------------------


def mef_ssim(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """MEF-SSIM of F against the source sequence (A, B): 11x11 Gaussian (sigma 1.5), K = 0.03, 3 scales
    (2x2 mean, then every other pixel), overall score prod(Q_l ^ w_l). NaN when min side / 4 < 11."""
    if min(F.shape) / 4 < MEF_WIN:
        return math.nan
    # Every quantity below depends on local (co)variances only: centring improves their precision.
    A = A - A.mean()
    B = B - B.mean()
    F = F - F.mean()
    scores = []
    for level in range(3):
        if level:
            A, B, F = halve_2x2(A), halve_2x2(B), halve_2x2(F)
        strips = row_strips(A.shape[0], MEF_WIN, A.shape[1])  # strip by strip: intermediates stay in cache
        total = sum(_mef_ssim_map_sum(A[r0:r1], B[r0:r1], F[r0:r1]) for r0, r1 in strips)
        scores.append(total / ((A.shape[0] - MEF_WIN + 1) * (A.shape[1] - MEF_WIN + 1)))
    q = np.asarray(scores)
    if np.any(q < 0):
        return math.nan  # a negative score to a fractional power has no real value (MATLAB goes complex)
    return float(np.prod(q**MEF_WEIGHTS))


def _mef_ssim_map_sum(A: np.ndarray, B: np.ndarray, F: np.ndarray) -> float:
    """Sum of the quality map over the valid 11x11 windows of A, B, F (sources and fused, centred).

    Per window the MATLAB code builds a pseudo-reference patch r = s * sum_k c_k (I_k - mu_k) with
    c_k = w_k / ed_k (structure weights w_k, strengths ed_k), rescaled by s to norm max(ed), and scores
    q = (2 cov(r, F) + C) / (var(r) + var(F) + C) with Gaussian weights. r is linear in the sources, so with
    (α, β) = (c_A, c_B) / max(c_A, c_B) (the rescaling makes the common factor irrelevant; dividing by the
    larger keeps both in [0, 1], where c_B / c_A alone reaches 1e20 beside a flat source and the sum below
    loses every digit):
        ||r/s||^2 ~ n (α² var_A + β² var_B + 2αβ cov_AB) over the box window,
        var(r) = max(ed)^2 * (α² gvar_A + β² gvar_B + 2αβ gcov_AB) / (n Q_box),
        cov(r, F) = max(ed) * (α gcov_AF + β gcov_BF) / sqrt(n Q_box)   (g: Gaussian-weighted).
    Where the two weighted sources cancel (Q_box at rounding level against its terms: a window where one
    source is the other's negative, as in LLVIP's two-level sky), r is 0, as in the reference when its norm
    is 0: q = C / (var(F) + C). The reference rescales the rounding residue there instead, whose value
    depends on the order of its additions and cannot be reproduced.
    """
    k = MEF_WIN
    n = float(k * k)
    AA, BB, AB = A * A, B * B, A * B
    # Box (uniform) statistics of each source over every 11x11 window; windows flat to rounding are flat.
    mu_a = box_valid(A, k)
    mu_b = box_valid(B, k)
    var_a = box_valid(AA, k) - mu_a * mu_a
    var_b = box_valid(BB, k) - mu_b * mu_b
    cov_ab = box_valid(AB, k) - mu_a * mu_b
    live_a = var_a >= _FLAT
    live_b = var_b >= _FLAT
    var_a *= live_a
    var_b *= live_b
    cov_ab *= live_a & live_b
    # Signal strengths ||x - mu|| (+ 0.001) and the structure consistency R -> exponent p of the weights.
    norm_a = np.sqrt(n * var_a)
    norm_b = np.sqrt(n * var_b)
    norm_sum = np.sqrt(np.maximum(n * (var_a + var_b + 2.0 * cov_ab), 0.0))
    R = (norm_sum + _EPS) / (norm_a + norm_b + _EPS)
    # MATLAB: R > 1 -> 1 - eps, then p = tan(pi/2 R) capped at 10 (R = 1 also gives the cap)
    p = np.minimum(np.tan((0.5 * math.pi) * np.minimum(R, 1.0)), 10.0)
    ed_a = norm_a + 0.001
    ed_b = norm_b + 0.001
    alpha = (np.exp(p * np.log(ed_a * (1.0 / k))) + _EPS) / ed_a  # w_k = (ed_k / 11)^p + eps; c_k = w_k / ed_k
    beta = (np.exp(p * np.log(ed_b * (1.0 / k))) + _EPS) / ed_b
    top = np.maximum(alpha, beta)
    alpha /= top
    beta /= top
    q_box = n * (alpha * alpha * var_a + beta * beta * var_b + 2.0 * alpha * beta * cov_ab)
    # 1 / (n Q_box); r = 0 (var(r) = cov(r, F) = 0) where both sources are flat or the two cancel: Q_box at
    # the rounding level of the second moments it was computed from (E[x²] = var + mu²)
    moments = alpha * alpha * (var_a + mu_a * mu_a) + beta * beta * (var_b + mu_b * mu_b)
    live = (live_a | live_b) & (q_box > 1e-12 * n * moments)
    inv = live / np.where(live, q_box, 1.0)
    max_ed_sq = np.maximum(ed_a, ed_b)
    max_ed_sq *= max_ed_sq
    # Gaussian-weighted (co)variances of the sources and F over the same windows. Where one source is flat
    # its (co)variances are rounding noise (~1e-11), weighted far below the other source's or swamped by C.
    g = gaussian_1d(k, MEF_SIGMA)
    ga, gb, gf = sep_valid(A, g), sep_valid(B, g), sep_valid(F, g)
    gvar_a = sep_valid(AA, g) - ga * ga
    gvar_b = sep_valid(BB, g) - gb * gb
    gcov_ab = sep_valid(AB, g) - ga * gb
    gcov_af = sep_valid(A * F, g) - ga * gf
    gcov_bf = sep_valid(B * F, g) - gb * gf
    gvar_f = np.maximum(sep_valid(F * F, g) - gf * gf, 0.0)
    # var(r): clipped to [0, max(ed)^2], the bound the rescaled patch obeys (guards rounding in flat areas)
    sigma1_sq = np.clip(max_ed_sq * (alpha * alpha * gvar_a + beta * beta * gvar_b + 2.0 * alpha * beta * gcov_ab)
                        * inv, 0.0, max_ed_sq)
    sigma12 = np.sqrt(max_ed_sq * inv) * (alpha * gcov_af + beta * gcov_bf)
    C = (MEF_K * 255.0) ** 2
    qmap = (2.0 * sigma12 + C) / (sigma1_sq + gvar_f + C)
    return float(qmap.sum())


# ---------------------------------------------------------------------------------------------------------
# Standard MS-SSIM (Wang, Simoncelli, Bovik 2003; msssim.m), per source
# ---------------------------------------------------------------------------------------------------------


def ms_ssim_pair(x: np.ndarray, y: np.ndarray) -> float:
    """Wang's MS-SSIM: 5 scales, 11x11 Gaussian (sigma 1.5) 'valid' windows, K = (0.01, 0.03), L = 255,
    weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 'product' method. NaN when a side is <= 160."""
    if min(x.shape) <= 160:
        return math.nan
    g = gaussian_1d(MEF_WIN, MEF_SIGMA)
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    mcs = []
    for level in range(5):
        if level:
            x, y = halve_2x2(x), halve_2x2(y)
        mx, my = sep_valid(x, g), sep_valid(y, g)
        vx = sep_valid(x * x, g) - mx * mx
        vy = sep_valid(y * y, g) - my * my
        cxy = sep_valid(x * y, g) - mx * my
        cs = (2.0 * cxy + c2) / (vx + vy + c2)
        if level < 4:
            mcs.append(float(cs.mean()))
        else:
            ssim_last = float(((2.0 * mx * my + c1) / (mx * mx + my * my + c1) * cs).mean())
    values = np.array([*mcs, ssim_last])
    if np.any(values < 0):
        return math.nan
    return float(np.prod(values**MSSSIM_WEIGHTS))


def ms_ssim_standard(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Mean of MS-SSIM(F,A) and MS-SSIM(F,B) (the `msssim-standard` convention)."""
    return 0.5 * (ms_ssim_pair(F, A) + ms_ssim_pair(F, B))
