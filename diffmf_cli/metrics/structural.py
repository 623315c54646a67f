"""Structural similarity: SSIM (scikit-image's), MEF-SSIM (the fusion papers' "MS-SSIM") and Wang's MS-SSIM.

Inputs are float64 (H, W) arrays on the 0..255 scale. Local statistics come from separable OpenCV filters;
the per-window loops of the MATLAB originals are replaced by closed forms over local (co)variances.
"""

from __future__ import annotations

import math

import numpy as np

from diffmf_cli.metrics.filters import box_valid, gaussian_1d, halve_2x2, sep_valid

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


def ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """scikit-image's ``structural_similarity(x, y, data_range=...)`` with its defaults: 7x7 uniform window,
    sample covariance (N/(N-1)), K1 = 0.01, K2 = 0.03, mean over the map with a 3-pixel border cropped."""
    return _ssim_maps(x, *_box_stats(x, SSIM_WIN), [y], data_range)[0]


def ssim_fused(F: np.ndarray, A: np.ndarray, B: np.ndarray, data_range: float = 2.0, total: bool = True) -> float:
    """SSIM(F,A) + SSIM(F,B) (`total`) or their mean; NaN when a side is under 7 px."""
    if min(F.shape) < SSIM_WIN:
        return math.nan
    mu_f, var_f = _box_stats(F, SSIM_WIN)
    sa, sb = _ssim_maps(F, mu_f, var_f, [A, B], data_range)
    return sa + sb if total else 0.5 * (sa + sb)


def _ssim_maps(x, mu_x, var_x, others, data_range) -> list[float]:
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
        out.append(float(np.mean(num / den)))
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
        scores.append(_mef_ssim_level(A, B, F))
    q = np.asarray(scores)
    if np.any(q < 0):
        return math.nan  # a negative score to a fractional power has no real value (MATLAB goes complex)
    return float(np.prod(q**MEF_WEIGHTS))


def _mef_ssim_level(A: np.ndarray, B: np.ndarray, F: np.ndarray) -> float:
    """Mean quality map of one scale (sources A, B; fused F; all centred), valid 11x11 windows.

    Per window the MATLAB code builds a pseudo-reference patch r = s * sum_k c_k (I_k - mu_k) with
    c_k = w_k / ed_k (structure-weighted, rescaled by s to the largest source strength) and scores
    q = (2 cov(r, F) + C) / (var(r) + var(F) + C) with Gaussian weights. Since r is linear in the sources,
    ||r||^2, var(r) and cov(r, F) are quadratic/linear forms in the sources' local (co)variances.
    """
    k = MEF_WIN
    n = float(k * k)
    # Box (uniform) statistics of each source over every 11x11 window; windows flat to rounding are flat.
    mu_a, var_a = _box_stats(A, k)
    mu_b, var_b = _box_stats(B, k)
    live_a = var_a >= _FLAT
    live_b = var_b >= _FLAT
    var_a *= live_a
    var_b *= live_b
    cov_ab = box_valid(A * B, k)
    cov_ab -= mu_a * mu_b
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
    w_a = np.exp(p * np.log(ed_a / k)) + _EPS
    w_b = np.exp(p * np.log(ed_b / k)) + _EPS
    total = w_a + w_b
    c_a = w_a / (total * ed_a)
    c_b = w_b / (total * ed_b)
    qa = c_a * c_a
    qb = c_b * c_b
    qab = 2.0 * c_a * c_b
    # s^2 = max(ed)^2 / ||sum_k c_k (I_k - mu_k)||^2 (1 when that norm is 0: then every term below is 0)
    norm_r_sq = n * (qa * var_a + qb * var_b + qab * cov_ab)
    max_ed = np.maximum(ed_a, ed_b)
    s2 = max_ed * max_ed / np.maximum(norm_r_sq, 1e-300)
    # Gaussian-weighted (co)variances of the sources and F over the same windows.
    g = gaussian_1d(k, MEF_SIGMA)
    ga, gb, gf = sep_valid(A, g), sep_valid(B, g), sep_valid(F, g)
    gvar_a = (sep_valid(A * A, g) - ga * ga) * live_a
    gvar_b = (sep_valid(B * B, g) - gb * gb) * live_b
    gcov_ab = (sep_valid(A * B, g) - ga * gb) * (live_a & live_b)
    gcov_af = (sep_valid(A * F, g) - ga * gf) * live_a
    gcov_bf = (sep_valid(B * F, g) - gb * gf) * live_b
    gvar_f = np.maximum(sep_valid(F * F, g) - gf * gf, 0.0)
    sigma1_sq = np.maximum(s2 * (qa * gvar_a + qb * gvar_b + qab * gcov_ab), 0.0)
    sigma12 = np.sqrt(s2) * (c_a * gcov_af + c_b * gcov_bf)
    C = (MEF_K * 255.0) ** 2
    qmap = (2.0 * sigma12 + C) / (sigma1_sq + gvar_f + C)
    return float(qmap.mean())


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
