"""Pixel statistics and information metrics: EN, SD, SF, AG, MI, CC, SCD, MSE, PSNR.

Every function takes float64 (H, W) arrays on the 0..255 scale (F fused, A and B the sources, same shape)
and returns a Python float. A ratio whose denominator is zero (constant images) is NaN, never an error.
"""

from __future__ import annotations

import math

import numpy as np


def _levels(img: np.ndarray) -> np.ndarray:
    """Whole gray levels 0..255 as int64 (round half to even, like np.round in the reference)."""
    return np.clip(np.rint(img), 0, 255).astype(np.int64)


def entropy(F: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of round(F)."""
    hist = np.bincount(_levels(F).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / F.size
    return float(-(p * np.log2(p)).sum())


def std_dev(F: np.ndarray) -> float:
    """SD: population standard deviation of F."""
    return float(F.std())


def spatial_frequency(F: np.ndarray) -> float:
    """SF = sqrt(RF^2 + CF^2): mean squared horizontal and vertical first differences. NaN below 2x2."""
    if min(F.shape) < 2:
        return math.nan
    dx = F[:, 1:] - F[:, :-1]
    dy = F[1:, :] - F[:-1, :]
    return float(math.sqrt(np.mean(dx * dx) + np.mean(dy * dy)))


def average_gradient(F: np.ndarray, matlab: bool = False) -> float:
    """AG: mean of sqrt((gx^2 + gy^2) / 2) with MATLAB `gradient` differences (central inside, one-sided at
    the borders). `matlab`: divide the sum by (H-1)(W-1) instead of H*W, as the MATLAB toolbox does."""
    h, w = F.shape
    if min(h, w) < 2:
        return math.nan
    gy, gx = np.gradient(F)
    total = float(np.sqrt((gx * gx + gy * gy) * 0.5).sum())
    return total / ((h - 1) * (w - 1)) if matlab else total / (h * w)


def _mutual_information(x: np.ndarray, y: np.ndarray, log) -> float:
    joint = np.bincount((x * 256 + y).ravel(), minlength=65536).astype(np.float64).reshape(256, 256)
    n = float(x.size)
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    i, j = np.nonzero(joint)
    pxy = joint[i, j]
    # sum p(x,y) log(p(x,y) / (p(x) p(y))) with counts: log(c * n / (cx * cy))
    value = float((pxy / n * (log(pxy) + log(n) - log(px[i]) - log(py[j]))).sum())
    return max(value, 0.0)  # MI >= 0; a rounding error below zero is clipped, as scikit-learn does


def mutual_information(F: np.ndarray, A: np.ndarray, B: np.ndarray, bits: bool = False) -> float:
    """MI(F,A) + MI(F,B) from the 256x256 joint histograms of whole gray levels; nats (default) or bits."""
    log = np.log2 if bits else np.log
    f = _levels(F)
    return _mutual_information(f, _levels(A), log) + _mutual_information(f, _levels(B), log)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays; NaN when either is constant (0/0)."""
    xc = x - x.mean()
    yc = y - y.mean()
    # Elementwise sums, not np.dot: BLAS would spread one image over every core.
    den = float((xc * xc).sum()) * float((yc * yc).sum())
    if not den > 0.0:
        return math.nan
    return float((xc * yc).sum()) / math.sqrt(den)


def correlation_coefficient(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """CC: mean of r(F,A) and r(F,B)."""
    return 0.5 * (pearson(A, F) + pearson(B, F))


def scd(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """SCD: corr(F - B, A) + corr(F - A, B) (sum of the correlations of differences)."""
    return pearson(A, F - B) + pearson(B, F - A)


def mse(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """MSE: mean of MSE(F,A) and MSE(F,B) on the 0..255 scale."""
    da = F - A
    db = F - B
    return 0.5 * (float(np.mean(da * da)) + float(np.mean(db * db)))


def psnr(F: np.ndarray, A: np.ndarray, B: np.ndarray, peak_255: bool = False) -> float:
    """PSNR = 10 log10(peak^2 / MSE), peak = max(F) (reference) or 255. +inf when F equals both sources."""
    err = mse(F, A, B)
    peak = 255.0 if peak_255 else float(F.max())
    if err == 0.0:
        return math.inf if peak > 0 else math.nan
    if peak <= 0.0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / err)
