"""Edge-transfer metrics: Qabf (Xydeas-Petrovic) and Nabf (Shreyamsha Kumar's fusion-artifact measure).

Inputs are float64 (H, W) arrays on the 0..255 scale; Sobel responses come from separable OpenCV filters.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_SMOOTH = np.array([1.0, 2.0, 1.0])
_DIFF = np.array([-1.0, 0.0, 1.0])

# Qabf constants (reference evaluator)
Q_TG, Q_KG, Q_DG = 0.9994, -15.0, 0.5
Q_TA, Q_KA, Q_DA = 0.9879, -22.0, 0.8
# Nabf constants (Shreyamsha Kumar's objective_fusion_perform_fn)
N_TD, N_WT_MIN, N_LG = 2.0, 0.001, 1.5
N_NRG, N_KG, N_SG = 0.9999, 19.0, 0.5
N_NRA, N_KA, N_SA = 0.9995, 22.0, 0.5


def _sobel(img: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation with the 3x3 Sobel pair: (d/dx = [-1 0 1; -2 0 2; -1 0 1], d/dy = its transpose)."""
    gx = cv2.sepFilter2D(img, cv2.CV_64F, _DIFF, _SMOOTH, borderType=border)
    gy = cv2.sepFilter2D(img, cv2.CV_64F, _SMOOTH, _DIFF, borderType=border)
    return gx, gy


def _qabf_strength_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The reference convolves (kernels flipped) with zero padding: its x response is -gx, its y response gy.
    # The angle is atan(y / x), pi/2 where x == 0.
    gx, gy = _sobel(img, cv2.BORDER_CONSTANT)
    strength = np.sqrt(gx * gx + gy * gy)
    vertical = gx == 0
    angle = np.arctan(gy / (vertical - gx))  # x == 0 divides by 1 here, and is replaced just below
    np.copyto(angle, 0.5 * math.pi, where=vertical)
    return strength, angle


def _qabf_edge_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    # Relative strength min/max with the reference's quirk: where g_src == g_F the ratio is g_F, not 1.
    equal = g_src == g_f
    ratio = np.minimum(g_src, g_f)
    ratio /= np.maximum(g_src, g_f) + equal  # equal strengths (0 included) divide by g + 1, replaced below
    np.copyto(ratio, g_f, where=equal)
    orient = np.abs(a_src - a_f)
    orient *= -1.0 / (0.5 * math.pi)
    orient += 1.0
    q_g = Q_TG / (1.0 + np.exp(Q_KG * (ratio - Q_DG)))
    q_a = Q_TA / (1.0 + np.exp(Q_KA * (orient - Q_DA)))
    q_g *= q_a
    return q_g


def qabf(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Qabf = sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) (weights L = 1). NaN when both sources are flat."""
    g_a, a_a = _qabf_strength_angle(A)
    g_b, a_b = _qabf_strength_angle(B)
    g_f, a_f = _qabf_strength_angle(F)
    den = float((g_a + g_b).sum())
    if not den > 0:
        return math.nan
    num = (_qabf_edge_preservation(g_a, a_a, g_f, a_f) * g_a).sum()
    num += (_qabf_edge_preservation(g_b, a_b, g_f, a_f) * g_b).sum()
    return float(num) / den


def _nabf_strength_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Sobel / 8 on the mirrored image (MATLAB per_extn_im_fn == OpenCV's BORDER_REFLECT_101);
    # angle atan(gv / gh), 0 where both responses are zero (+-pi/2 where only gh is: the same direction
    # for the orientation term below, which is symmetric in that sign).
    gv, gh = _sobel(img, cv2.BORDER_REFLECT_101)
    gv *= 0.125
    gh *= 0.125
    strength = np.sqrt(gv * gv + gh * gh)
    with np.errstate(divide="ignore"):
        angle = np.arctan(gv / (gh + (strength == 0)))
    return strength, angle


def _nabf_loss(g_src, a_src, g_f, a_f, weight) -> np.ndarray:
    """(1 - Q_src,F) * w_src per pixel."""
    ratio = np.minimum(g_src, g_f)
    ratio /= np.maximum(np.maximum(g_src, g_f), 1e-300)  # 0 where either strength is 0
    orient = np.abs(a_src - a_f)
    orient -= 0.5 * math.pi
    np.abs(orient, out=orient)
    orient *= 2.0 / math.pi
    q_g = N_NRG / (1.0 + np.exp(-N_KG * (ratio - N_SG)))
    q_a = N_NRA / (1.0 + np.exp(-N_KA * (orient - N_SA)))
    q_g *= q_a
    np.sqrt(q_g, out=q_g)
    q_g -= 1.0
    q_g *= -weight
    return q_g


def _nabf_weight(g: np.ndarray) -> np.ndarray:
    strong = g >= N_TD
    w = g * np.sqrt(g)  # g ** 1.5
    w -= N_WT_MIN
    w *= strong
    w += N_WT_MIN
    return w


def nabf(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Nabf: sum over artifact pixels (g_F above both sources) of (1 - Q_AF) w_A + (1 - Q_BF) w_B, over
    sum(w_A + w_B); w = g^1.5 where g >= 2, else 0.001. NaN below 2 px per side."""
    if min(F.shape) < 2:
        return math.nan
    g_a, a_a = _nabf_strength_angle(A)
    g_b, a_b = _nabf_strength_angle(B)
    g_f, a_f = _nabf_strength_angle(F)
    w_a = _nabf_weight(g_a)
    w_b = _nabf_weight(g_b)
    artifact = (g_f > g_a) & (g_f > g_b)
    loss = _nabf_loss(g_a, a_a, g_f, a_f, w_a)
    loss += _nabf_loss(g_b, a_b, g_f, a_f, w_b)
    loss *= artifact
    return float(loss.sum()) / float(w_a.sum() + w_b.sum())
