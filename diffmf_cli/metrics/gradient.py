"""Edge-transfer metrics: Qabf (Xydeas-Petrovic) and Nabf (Shreyamsha Kumar's fusion-artifact measure).

Inputs are (H, W) arrays of whole gray levels 0..255. Both metrics work in float32, as the reference evaluator
computes Qabf (it reads images as float32): Sobel responses of whole numbers (and their squares) are exact
in float32, so every comparison of edge strengths is exact; the sigmoids carry float32 rounding (~1e-7
relative) and the sums are accumulated in float64.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from diffmf_cli.metrics.filters import row_strips

_SMOOTH = np.array([1.0, 2.0, 1.0], dtype=np.float32)
_DIFF = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
_HALF_PI = np.float32(0.5 * math.pi)

# Qabf constants (reference evaluator)
Q_TG, Q_KG, Q_DG = 0.9994, -15.0, 0.5
Q_TA, Q_KA, Q_DA = 0.9879, -22.0, 0.8
# Nabf constants (Shreyamsha Kumar's objective_fusion_perform_fn)
N_TD, N_WT_MIN, N_LG = 2.0, 0.001, 1.5
N_NRG, N_KG, N_SG = 0.9999, 19.0, 0.5
N_NRA, N_KA, N_SA = 0.9995, 22.0, 0.5


def _padded(img: np.ndarray, border: int) -> np.ndarray:
    """float32 copy of img with a 1-pixel border (0 for BORDER_CONSTANT, mirrored for BORDER_REFLECT_101)."""
    return cv2.copyMakeBorder(np.asarray(img, dtype=np.float32), 1, 1, 1, 1, border, value=0)


def _sobel(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'valid' correlation of a padded strip with the 3x3 Sobel pair (d/dx = [-1 0 1; -2 0 2; -1 0 1],
    d/dy = its transpose): float32 arrays 2 rows and 2 columns smaller than `padded`."""
    gx = cv2.sepFilter2D(padded, cv2.CV_32F, _DIFF, _SMOOTH)[1:-1, 1:-1]
    gy = cv2.sepFilter2D(padded, cv2.CV_32F, _SMOOTH, _DIFF)[1:-1, 1:-1]
    return gx, gy


def _sigmoid(x: np.ndarray, top: float, k: float, centre: float) -> np.ndarray:
    """top / (1 + exp(k (x - centre))), in place on x."""
    x -= np.float32(centre)
    x *= np.float32(k)
    np.exp(x, out=x)
    x += np.float32(1.0)
    np.divide(np.float32(top), x, out=x)
    return x


def _qabf_strength_angle(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The reference convolves (kernels flipped) with zero padding: its x response is -gx, its y response gy.
    # The angle is atan(y / x), pi/2 where x == 0.
    gx, gy = _sobel(padded)
    strength = np.sqrt(gx * gx + gy * gy)
    vertical = gx == 0
    angle = np.arctan(gy / (vertical - gx))  # x == 0 divides by 1 here, and is replaced just below
    np.copyto(angle, _HALF_PI, where=vertical)
    return strength, angle


def _qabf_edge_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    # Relative strength min/max with the reference's quirk: where g_src == g_F the ratio is g_F, not 1.
    equal = g_src == g_f
    ratio = np.minimum(g_src, g_f)
    ratio /= np.maximum(g_src, g_f) + equal  # equal strengths (0 included) divide by g + 1, replaced below
    np.copyto(ratio, g_f, where=equal)
    orient = np.abs(a_src - a_f)
    orient *= np.float32(-1.0 / (0.5 * math.pi))
    orient += np.float32(1.0)
    q = _sigmoid(ratio, Q_TG, Q_KG, Q_DG)
    q *= _sigmoid(orient, Q_TA, Q_KA, Q_DA)
    return q


def qabf(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Qabf = sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) (weights L = 1). NaN when both sources are flat."""
    pa, pb, pf = (_padded(x, cv2.BORDER_CONSTANT) for x in (A, B, F))
    num = den = 0.0
    for r0, r1 in row_strips(pa.shape[0], 3, pa.shape[1]):  # strip by strip: intermediates stay in cache
        g_a, a_a = _qabf_strength_angle(pa[r0:r1])
        g_b, a_b = _qabf_strength_angle(pb[r0:r1])
        g_f, a_f = _qabf_strength_angle(pf[r0:r1])
        den += float(g_a.sum(dtype=np.float64) + g_b.sum(dtype=np.float64))
        q = _qabf_edge_preservation(g_a, a_a, g_f, a_f)
        q *= g_a
        num += float(q.sum(dtype=np.float64))
        q = _qabf_edge_preservation(g_b, a_b, g_f, a_f)
        q *= g_b
        num += float(q.sum(dtype=np.float64))
    return num / den if den > 0 else math.nan


def _nabf_edges(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Sobel / 8 on the mirrored image (MATLAB per_extn_im_fn == OpenCV's BORDER_REFLECT_101). Returns the
    # squared strength (exact), the strength, and the angle atan(gv / gh): 0 where both responses are zero,
    # +-pi/2 where only gh is (the orientation term below is symmetric in that sign).
    gv, gh = _sobel(padded)
    gv *= np.float32(0.125)
    gh *= np.float32(0.125)
    sq = gv * gv
    sq += gh * gh
    flat = sq == 0
    with np.errstate(divide="ignore"):
        gh += flat
        angle = np.arctan(gv / gh)
    return sq, np.sqrt(sq), angle


def _nabf_loss(g_src, a_src, g_f, a_f, weight) -> np.ndarray:
    """(1 - Q_src,F) * w_src per pixel, Q = sqrt(Q_g Q_a), Q_x = N_x / (1 + e_x).

    Q may be close to 1 (edge preserved) or to 0, so both Q_g Q_a and its complement are formed without
    cancellation: with a = 1 - Q_g = (1 - N_g + e_g) / (1 + e_g) (b likewise), 1 - Q_g Q_a = a + b - a b,
    and 1 - sqrt(Q_g Q_a) = (1 - Q_g Q_a) / (1 + sqrt(Q_g Q_a)).
    """
    ratio = np.minimum(g_src, g_f)
    ratio /= np.maximum(np.maximum(g_src, g_f), np.float32(1e-30))  # 0 where either strength is 0
    orient = np.abs(a_src - a_f)
    orient -= _HALF_PI
    np.abs(orient, out=orient)
    orient *= np.float32(2.0 / math.pi)
    q_g, a = _sigmoid_pair(ratio, N_NRG, -N_KG, N_SG)
    q_a, b = _sigmoid_pair(orient, N_NRA, -N_KA, N_SA)
    q_g *= q_a
    np.sqrt(q_g, out=q_g)
    q_g += np.float32(1.0)  # 1 + sqrt(Q_g Q_a)
    x = a + b
    a *= b
    x -= a  # 1 - Q_g Q_a
    x /= q_g
    x *= weight
    return x


def _sigmoid_pair(x: np.ndarray, top: float, k: float, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """(top / (1 + e), 1 - top / (1 + e)) with e = exp(k (x - centre)); overwrites x."""
    x -= np.float32(centre)
    x *= np.float32(k)
    np.exp(x, out=x)
    denom = x + np.float32(1.0)
    q = np.float32(top) / denom
    x += np.float32(1.0 - top)
    x /= denom
    return q, x


def _nabf_weight(sq: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g^1.5 where g >= 2 (g^2 >= 4, exact), else 0.001."""
    strong = sq >= np.float32(N_TD * N_TD)
    w = g * np.sqrt(g)
    w -= np.float32(N_WT_MIN)
    w *= strong
    w += np.float32(N_WT_MIN)
    return w


def nabf(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Nabf: sum over artifact pixels (g_F above both sources) of (1 - Q_AF) w_A + (1 - Q_BF) w_B, over
    sum(w_A + w_B); w = g^1.5 where g >= 2, else 0.001. NaN below 2 px per side."""
    if min(F.shape) < 2:
        return math.nan
    pa, pb, pf = (_padded(x, cv2.BORDER_REFLECT_101) for x in (A, B, F))
    num = den = 0.0
    for r0, r1 in row_strips(pa.shape[0], 3, pa.shape[1]):  # strip by strip: intermediates stay in cache
        sq_a, g_a, a_a = _nabf_edges(pa[r0:r1])
        sq_b, g_b, a_b = _nabf_edges(pb[r0:r1])
        sq_f, g_f, a_f = _nabf_edges(pf[r0:r1])
        w_a = _nabf_weight(sq_a, g_a)
        w_b = _nabf_weight(sq_b, g_b)
        artifact = (sq_f > sq_a) & (sq_f > sq_b)
        loss = _nabf_loss(g_a, a_a, g_f, a_f, w_a)
        loss += _nabf_loss(g_b, a_b, g_f, a_f, w_b)
        loss *= artifact
        num += float(loss.sum(dtype=np.float64))
        den += float(w_a.sum(dtype=np.float64) + w_b.sum(dtype=np.float64))
    return num / den
