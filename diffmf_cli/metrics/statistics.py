"""Pixel statistics and information metrics: EN, SD, SF, AG, MI, CC, SCD, MSE, PSNR.

Every function takes float64 (H, W) arrays on the 0..255 scale (F fused, A and B the sources, same shape)
and returns a Python float. A ratio whose denominator is zero (constant images) is NaN, never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _levels(img: np.ndarray) -> np.ndarray:
    """Whole gray levels 0..255 as int64 (round half to even, like np.round in the reference)."""
    out = np.rint(img)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.int64)


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
    # what np.gradient computes, without its temporaries: central differences / 2 inside, one-sided at borders
    gx = np.empty_like(F, dtype=np.float64)
    np.subtract(F[:, 2:], F[:, :-2], out=gx[:, 1:-1])
    gx[:, 1:-1] *= 0.5
    np.subtract(F[:, 1], F[:, 0], out=gx[:, 0])
    np.subtract(F[:, -1], F[:, -2], out=gx[:, -1])
    gy = np.empty_like(gx)
    np.subtract(F[2:], F[:-2], out=gy[1:-1])
    gy[1:-1] *= 0.5
    np.subtract(F[1], F[0], out=gy[0])
    np.subtract(F[-1], F[-2], out=gy[-1])
    gx *= gx
    gy *= gy
    gx += gy
    gx *= 0.5
    total = float(np.sqrt(gx, out=gx).sum())
    return total / ((h - 1) * (w - 1)) if matlab else total / (h * w)


def _mutual_information(x256: np.ndarray, y: np.ndarray, log) -> float:
    """MI of gray levels x (given as 256 * x) and y from their joint histogram."""
    joint = np.bincount((x256 + y).ravel(), minlength=65536).astype(np.float64).reshape(256, 256)
    n = float(y.size)
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
    f256 = _levels(F)
    f256 *= 256
    return _mutual_information(f256, _levels(A), log) + _mutual_information(f256, _levels(B), log)


@dataclass(frozen=True)
class Moments:
    """Pixel sums of F, A, B and of their pairwise products, in float64.

    For whole gray levels every sum is an exact integer (below 2^53 up to ~10^11 pixels), so Pearson
    correlations and MSE formed from them carry no more rounding than the two-pass formulas. Each sum is
    one pass over the image (np.einsum makes no temporary), instead of a dozen passes per metric.
    """

    n: int
    f: float
    a: float
    b: float
    ff: float
    aa: float
    bb: float
    af: float
    bf: float
    ab: float

    @classmethod
    def of(cls, F: np.ndarray, A: np.ndarray, B: np.ndarray) -> "Moments":
        f, a, b = (np.ascontiguousarray(x, dtype=np.float64).ravel() for x in (F, A, B))

        def dot(x, y):
            return float(np.einsum("i,i->", x, y))

        return cls(f.size, float(f.sum()), float(a.sum()), float(b.sum()), dot(f, f), dot(a, a), dot(b, b),
                   dot(a, f), dot(b, f), dot(a, b))

    def centred(self, x: str, y: str) -> float:
        """sum((x - mean x)(y - mean y)) for x, y in 'f', 'a', 'b'."""
        key = x + y if hasattr(self, x + y) else y + x
        return getattr(self, key) - getattr(self, x) * getattr(self, y) / self.n


def _correlation(cov: float, var_x: float, var_y: float, scale: float) -> float:
    """cov / sqrt(var_x var_y); NaN when a variance is zero (up to rounding of sums of size `scale`)."""
    tiny = 1e-12 * max(scale, 1.0)
    if not (var_x > tiny and var_y > tiny):
        return math.nan
    return cov / math.sqrt(var_x * var_y)


def correlation_coefficient(F: np.ndarray, A: np.ndarray, B: np.ndarray, moments: Moments | None = None) -> float:
    """CC: mean of r(F,A) and r(F,B)."""
    m = moments or Moments.of(F, A, B)
    var_f = m.centred("f", "f")
    r_af = _correlation(m.centred("a", "f"), m.centred("a", "a"), var_f, m.aa + m.ff)
    r_bf = _correlation(m.centred("b", "f"), m.centred("b", "b"), var_f, m.bb + m.ff)
    return 0.5 * (r_af + r_bf)


def scd(F: np.ndarray, A: np.ndarray, B: np.ndarray, moments: Moments | None = None) -> float:
    """SCD: corr(F - B, A) + corr(F - A, B) (sum of the correlations of differences)."""
    m = moments or Moments.of(F, A, B)
    c = m.centred
    scale = m.ff + m.aa + m.bb
    # cov(A, F - B) = cov(A, F) - cov(A, B); var(F - B) = var F - 2 cov(F, B) + var B
    r1 = _correlation(c("a", "f") - c("a", "b"), c("a", "a"), c("f", "f") - 2.0 * c("b", "f") + c("b", "b"), scale)
    r2 = _correlation(c("b", "f") - c("a", "b"), c("b", "b"), c("f", "f") - 2.0 * c("a", "f") + c("a", "a"), scale)
    return r1 + r2


def mse(F: np.ndarray, A: np.ndarray, B: np.ndarray, moments: Moments | None = None) -> float:
    """MSE: mean of MSE(F,A) and MSE(F,B) on the 0..255 scale."""
    m = moments or Moments.of(F, A, B)
    sq_a = max(m.ff - 2.0 * m.af + m.aa, 0.0)  # sum((F - A)^2)
    sq_b = max(m.ff - 2.0 * m.bf + m.bb, 0.0)
    return 0.5 * (sq_a + sq_b) / m.n


def psnr(F: np.ndarray, A: np.ndarray, B: np.ndarray, peak_255: bool = False,
         moments: Moments | None = None) -> float:
    """PSNR = 10 log10(peak^2 / MSE), peak = max(F) (reference) or 255. +inf when F equals both sources."""
    err = mse(F, A, B, moments)
    peak = 255.0 if peak_255 else float(F.max())
    if err == 0.0:
        return math.inf if peak > 0 else math.nan
    if peak <= 0.0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / err)
