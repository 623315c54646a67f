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
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(gx == 0, 0.5 * math.pi, np.arctan(gy / -gx))
    return strength, angle


def _qabf_edge_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    # Relative strength min/max with the reference's quirk: where g_src == g_F the ratio is g_F, not 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_f, g_f / g_src, np.where(g_src < g_f, g_src / g_f, g_f))
    orient = 1.0 - np.abs(a_src - a_f) / (0.5 * math.pi)
    q_g = Q_TG / (1.0 + np.exp(Q_KG * (ratio - Q_DG)))
    q_a = Q_TA / (1.0 + np.exp(Q_KA * (orient - Q_DA)))
    return q_g * q_a


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
    # angle atan(gv / gh), 0 where both responses are zero.
    gv, gh = _sobel(img, cv2.BORDER_REFLECT_101)
    gv *= 0.125
    gh *= 0.125
    strength = np.sqrt(gv * gv + gh * gh)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
    return strength, angle


def _nabf_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((g_src == 0) | (g_f == 0), 0.0, np.minimum(g_src, g_f) / np.maximum(g_src, g_f))
    orient = np.abs(np.abs(a_src - a_f) - 0.5 * math.pi) * (2.0 / math.pi)
    q_g = N_NRG / (1.0 + np.exp(-N_KG * (ratio - N_SG)))
    q_a = N_NRA / (1.0 + np.exp(-N_KA * (orient - N_SA)))
    return np.sqrt(q_g * q_a)


def nabf(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Nabf: sum over artifact pixels (g_F above both sources) of (1 - Q_AF) w_A + (1 - Q_BF) w_B, over
    sum(w_A + w_B); w = g^1.5 where g >= 2, else 0.001. NaN below 2 px per side."""
    if min(F.shape) < 2:
        return math.nan
    g_a, a_a = _nabf_strength_angle(A)
    g_b, a_b = _nabf_strength_angle(B)
    g_f, a_f = _nabf_strength_angle(F)
    w_a = np.where(g_a >= N_TD, g_a**N_LG, N_WT_MIN)
    w_b = np.where(g_b >= N_TD, g_b**N_LG, N_WT_MIN)
    artifact = (g_f > g_a) & (g_f > g_b)
    q_af = _nabf_preservation(g_a[artifact], a_a[artifact], g_f[artifact], a_f[artifact])
    q_bf = _nabf_preservation(g_b[artifact], a_b[artifact], g_f[artifact], a_f[artifact])
    num = float(((1.0 - q_af) * w_a[artifact] + (1.0 - q_bf) * w_b[artifact]).sum())
    return num / float((w_a + w_b).sum())
