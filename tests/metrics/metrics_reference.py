"""Straightforward implementations of the same metrics, written the way the reference code computes them.

These follow the published code line by line (the Python evaluator of MMIF-CDDFuse for the first twelve,
Shreyamsha Kumar's MATLAB for Nabf, Ma et al.'s MATLAB for MEF-SSIM, Wang's msssim.m): direct 2-D
convolutions (SciPy), masks assigned in the original order, per-window computations. They are slow on
purpose and exist to check the fast functions (tests) and to time them (scripts/bench_metrics.py); being a
test oracle they live with the tests, out of the package, and use SciPy (a test dependency).

All functions take float64 (H, W) arrays on the 0..255 scale (F fused, A, B sources).
"""

from __future__ import annotations

import math

import numpy as np


def _convolve2d(img, kernel, mode):
    from scipy.signal import convolve2d

    return convolve2d(img, kernel, mode=mode)


def en_ref(F):
    a = np.uint8(np.round(F)).flatten()
    h = np.bincount(a) / a.shape[0]
    return float(-sum(h * np.log2(h + (h == 0))))


def sd_ref(F):
    return float(np.std(F))


def sf_ref(F):
    return float(np.sqrt(np.mean((F[:, 1:] - F[:, :-1]) ** 2) + np.mean((F[1:, :] - F[:-1, :]) ** 2)))


def ag_ref(F, matlab=False):
    gx, gy = np.zeros_like(F), np.zeros_like(F)
    gx[:, 0] = F[:, 1] - F[:, 0]
    gx[:, -1] = F[:, -1] - F[:, -2]
    gx[:, 1:-1] = (F[:, 2:] - F[:, :-2]) / 2
    gy[0, :] = F[1, :] - F[0, :]
    gy[-1, :] = F[-1, :] - F[-2, :]
    gy[1:-1, :] = (F[2:, :] - F[:-2, :]) / 2
    s = np.sqrt((gx**2 + gy**2) / 2)
    h, w = F.shape
    return float(s.sum() / ((h - 1) * (w - 1)) if matlab else np.mean(s))


def mi_ref(F, A, B, bits=False):
    """Mutual information from label co-occurrence counts (what sklearn's mutual_info_score computes)."""
    log = math.log2 if bits else math.log

    def mi(x, y):
        n = x.size
        joint: dict[tuple[int, int], int] = {}
        for key in zip(x.ravel().astype(int).tolist(), y.ravel().astype(int).tolist()):
            joint[key] = joint.get(key, 0) + 1
        px: dict[int, int] = {}
        py: dict[int, int] = {}
        for (i, j), c in joint.items():
            px[i] = px.get(i, 0) + c
            py[j] = py.get(j, 0) + c
        return sum(c / n * log(c * n / (px[i] * py[j])) for (i, j), c in joint.items())

    return mi(np.round(F), np.round(A)) + mi(np.round(F), np.round(B))


def _corr(x, y):
    return np.sum((x - np.mean(x)) * (y - np.mean(y))) / np.sqrt(
        np.sum((x - np.mean(x)) ** 2) * np.sum((y - np.mean(y)) ** 2)
    )


def cc_ref(F, A, B):
    with np.errstate(all="ignore"):
        return float((_corr(A, F) + _corr(B, F)) / 2)


def scd_ref(F, A, B):
    with np.errstate(all="ignore"):
        return float(_corr(A, F - B) + _corr(B, F - A))


def mse_ref(F, A, B):
    return float((np.mean((A - F) ** 2) + np.mean((B - F) ** 2)) / 2)


def psnr_ref(F, A, B, peak_255=False):
    peak = 255.0 if peak_255 else np.max(F)
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(peak**2 / mse_ref(F, A, B)))


def _vif_one(ref, dist):
    sigma_nsq, eps = 2, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        N = 2 ** (4 - scale + 1) + 1
        sd = N / 5.0
        m = (N - 1.0) / 2.0
        y, x = np.ogrid[-m : m + 1, -m : m + 1]
        h = np.exp(-(x * x + y * y) / (2.0 * sd * sd))
        h[h < np.finfo(h.dtype).eps * h.max()] = 0
        win = np.rot90(h / h.sum(), 2)
        if scale > 1:
            ref = _convolve2d(ref, win, "valid")[::2, ::2]
            dist = _convolve2d(dist, win, "valid")[::2, ::2]
        mu1 = _convolve2d(ref, win, "valid")
        mu2 = _convolve2d(dist, win, "valid")
        sigma1_sq = _convolve2d(ref * ref, win, "valid") - mu1 * mu1
        sigma2_sq = _convolve2d(dist * dist, win, "valid") - mu2 * mu2
        sigma12 = _convolve2d(ref * dist, win, "valid") - mu1 * mu2
        sigma1_sq[sigma1_sq < 0] = 0
        sigma2_sq[sigma2_sq < 0] = 0
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        g[sigma1_sq < eps] = 0
        sv_sq[sigma1_sq < eps] = sigma2_sq[sigma1_sq < eps]
        sigma1_sq[sigma1_sq < eps] = 0
        g[sigma2_sq < eps] = 0
        sv_sq[sigma2_sq < eps] = 0
        sv_sq[g < 0] = sigma2_sq[g < 0]
        g[g < 0] = 0
        sv_sq[sv_sq <= eps] = eps
        num += np.sum(np.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)))
        den += np.sum(np.log10(1 + sigma1_sq / sigma_nsq))
    with np.errstate(invalid="ignore", divide="ignore"):
        vifp = num / den
    return 1.0 if np.isnan(vifp) else float(vifp)


def vif_ref(F, A, B):
    return _vif_one(A, F) + _vif_one(B, F)


def _qabf_arrays(img):
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    sx = _convolve2d(img, h3, "same")
    sy = _convolve2d(img, h1, "same")
    g = np.sqrt(sx * sx + sy * sy)
    a = np.zeros_like(img)
    a[sx == 0] = math.pi / 2
    a[sx != 0] = np.arctan(sy[sx != 0] / sx[sx != 0])
    return g, a


def _qabf_q(aA, gA, aF, gF):
    Tg, kg, Dg, Ta, ka, Da = 0.9994, -15, 0.5, 0.9879, -22, 0.8
    GAF = np.zeros_like(aA)
    GAF[gA > gF] = gF[gA > gF] / gA[gA > gF]
    GAF[gA == gF] = gF[gA == gF]
    GAF[gA < gF] = gA[gA < gF] / gF[gA < gF]
    AAF = 1 - np.abs(aA - aF) / (math.pi / 2)
    return Tg / (1 + np.exp(kg * (GAF - Dg))) * Ta / (1 + np.exp(ka * (AAF - Da)))


def qabf_ref(F, A, B):
    gA, aA = _qabf_arrays(A)
    gB, aB = _qabf_arrays(B)
    gF, aF = _qabf_arrays(F)
    QAF = _qabf_q(aA, gA, aF, gF)
    QBF = _qabf_q(aB, gB, aF, gF)
    with np.errstate(invalid="ignore"):
        return float(np.sum(QAF * gA + QBF * gB) / np.sum(gA + gB))


def ssim_ref(F, A, B, data_range=2.0, total=True):
    """Plain SSIM with a 7x7 uniform window, sample covariance, 3-px border cropped (skimage's defaults)."""
    win = np.ones((7, 7)) / 49.0
    cov_norm = 49.0 / 48.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def one(x, y):
        ux, uy = _convolve2d(x, win, "valid"), _convolve2d(y, win, "valid")
        uxx, uyy = _convolve2d(x * x, win, "valid"), _convolve2d(y * y, win, "valid")
        uxy = _convolve2d(x * y, win, "valid")
        vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
        s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        return float(s.mean())

    sa, sb = one(F, A), one(F, B)
    return sa + sb if total else (sa + sb) / 2


def _sobel_nabf(x):
    vtemp = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    htemp = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8
    p, q = x.shape
    ext = np.zeros((p + 2, q + 2))
    ext[1 : p + 1, 1 : q + 1] = x
    ext[0, :] = ext[2, :]
    ext[p + 1, :] = ext[p - 1, :]
    ext[:, 0] = ext[:, 2]
    ext[:, q + 1] = ext[:, q - 1]
    gv = np.zeros((p, q))
    gh = np.zeros((p, q))
    for di in range(3):  # correlation, one kernel tap at a time
        for dj in range(3):
            patch = ext[di : di + p, dj : dj + q]
            gv += vtemp[di, dj] * patch
            gh += htemp[di, dj] * patch
    return gv, gh


def nabf_ref(F, A, B):
    """Shreyamsha Kumar's objective_fusion_perform_fn (NABF output), element rules as in the MATLAB loops."""
    Td, wt_min, Lg = 2, 0.001, 1.5
    Nrg, kg, sigmag, Nra, ka, sigmaa = 0.9999, 19, 0.5, 0.9995, 22, 0.5
    gvA, ghA = _sobel_nabf(A)
    gvB, ghB = _sobel_nabf(B)
    gvF, ghF = _sobel_nabf(F)
    gA, gB, gF = np.hypot(gvA, ghA), np.hypot(gvB, ghB), np.hypot(gvF, ghF)

    def rel(g1, g2):
        out = np.zeros_like(g1)
        ok = (g1 != 0) & (g2 != 0)
        big = ok & (g1 > g2)
        small = ok & ~(g1 > g2)
        out[big] = g2[big] / g1[big]
        out[small] = g1[small] / g2[small]
        return out

    def ang(gv, gh):
        out = np.zeros_like(gv)
        nz = ~((gv == 0) & (gh == 0))
        with np.errstate(divide="ignore"):
            out[nz] = np.arctan(gv[nz] / gh[nz])
        return out

    aA, aB, aF = ang(gvA, ghA), ang(gvB, ghB), ang(gvF, ghF)
    aAF = np.abs(np.abs(aA - aF) - np.pi / 2) * 2 / np.pi
    aBF = np.abs(np.abs(aB - aF) - np.pi / 2) * 2 / np.pi
    QAF = np.sqrt(Nrg / (1 + np.exp(-kg * (rel(gA, gF) - sigmag))) * Nra / (1 + np.exp(-ka * (aAF - sigmaa))))
    QBF = np.sqrt(Nrg / (1 + np.exp(-kg * (rel(gB, gF) - sigmag))) * Nra / (1 + np.exp(-ka * (aBF - sigmaa))))
    wtA = np.full(gA.shape, wt_min)
    wtB = np.full(gB.shape, wt_min)
    wtA[gA >= Td] = gA[gA >= Td] ** Lg
    wtB[gB >= Td] = gB[gB >= Td] ** Lg
    na = ((gF > gA) & (gF > gB)).astype(np.float64)
    return float(np.sum(na * ((1 - QAF) * wtA + (1 - QBF) * wtB)) / np.sum(wtA + wtB))


def _fspecial_gaussian(size=11, sigma=1.5):
    m = (size - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return h / h.sum()


def _halve_symmetric(x):
    # imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end)
    p = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    f = (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4
    return f[::2, ::2]


def _mef_ssim_level_ref(seq, fI, K=0.03):
    """One scale of mef_ssim: the MATLAB window loops, one image row of windows at a time."""
    from numpy.lib.stride_tricks import sliding_window_view

    window = _fspecial_gaussian().ravel()
    wsize = 11
    eps = np.finfo(np.float64).eps
    C = (K * 255) ** 2
    s1, s2, s3 = seq.shape
    q = np.zeros((s1 - wsize + 1, s2 - wsize + 1))
    for i in range(s1 - wsize + 1):
        # blocks[j, k, :] : the 121 pixels of source k in the window at (i, j), MATLAB column order irrelevant
        blocks = sliding_window_view(seq[i : i + wsize], (wsize, wsize), axis=(0, 1))[0]  # (W', s3, 11, 11)
        blocks = blocks.reshape(blocks.shape[0], s3, wsize * wsize)
        fblk = sliding_window_view(fI[i : i + wsize], (wsize, wsize))[0].reshape(-1, wsize * wsize)
        mu = blocks.mean(axis=2)
        ed = np.sqrt(np.maximum(((blocks - mu[..., None]) ** 2).sum(axis=2), 0)) + 0.001
        denominator = np.sqrt(((blocks - mu[..., None]) ** 2).sum(axis=2)).sum(axis=1)
        ssum = blocks.sum(axis=1)
        numerator = np.sqrt(((ssum - ssum.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
        R = (numerator + eps) / (denominator + eps)
        R[R > 1] = 1 - eps
        R[R < 0] = eps
        p = np.tan(np.pi / 2 * R)
        p[p > 10] = 10
        wmap = (ed / wsize) ** p[:, None] + eps
        wmap = wmap / wmap.sum(axis=1, keepdims=True)
        r = (wmap[..., None] * (blocks - mu[..., None]) / ed[..., None]).sum(axis=1)
        nr = np.sqrt((r * r).sum(axis=1))
        pos = nr > 0
        r[pos] = r[pos] / nr[pos, None] * ed.max(axis=1)[pos, None]
        mu1 = (window * r).sum(axis=1, keepdims=True)
        mu2 = (window * fblk).sum(axis=1, keepdims=True)
        s1sq = (window * (r - mu1) ** 2).sum(axis=1)
        s2sq = (window * (fblk - mu2) ** 2).sum(axis=1)
        s12 = (window * (r - mu1) * (fblk - mu2)).sum(axis=1)
        q[i] = (2 * s12 + C) / (s1sq + s2sq + C)
    return float(q.mean())


def mef_ssim_ref(F, A, B):
    seq = np.stack([A, B], axis=2).astype(np.float64)  # (H, W, 2) like MATLAB's imgSeq
    weight = np.array([0.0448, 0.2856, 0.3001])
    weight = weight / weight.sum()
    if min(F.shape) / 4 < 11:
        return math.nan
    fI = F.astype(np.float64)
    Q = []
    for level in range(3):
        if level:
            seq = np.stack([_halve_symmetric(seq[:, :, k]) for k in range(seq.shape[2])], axis=2)
            fI = _halve_symmetric(fI)
        Q.append(_mef_ssim_level_ref(seq, fI))
    with np.errstate(invalid="ignore"):
        return float(np.prod(np.array(Q) ** weight))


def ms_ssim_pair_ref(x, y):
    """msssim.m (Wang): ssim_index_new with filter2 'valid' per scale, 'product' combination."""
    win = _fspecial_gaussian()
    weight = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mcs, mssim = [], []
    for level in range(5):
        if level:
            x, y = _halve_symmetric(x), _halve_symmetric(y)
        mu1, mu2 = _convolve2d(x, win, "valid"), _convolve2d(y, win, "valid")
        s1 = _convolve2d(x * x, win, "valid") - mu1 * mu1
        s2 = _convolve2d(y * y, win, "valid") - mu2 * mu2
        s12 = _convolve2d(x * y, win, "valid") - mu1 * mu2
        cs = (2 * s12 + c2) / (s1 + s2 + c2)
        mcs.append(cs.mean())
        mssim.append(((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs).mean())
    with np.errstate(invalid="ignore"):
        return float(np.prod(np.array(mcs[:4]) ** weight[:4]) * mssim[4] ** weight[4])


#: name -> straightforward function (F, A, B) under the reference convention
REFERENCE_FUNCTIONS = {
    "EN": lambda F, A, B: en_ref(F),
    "SD": lambda F, A, B: sd_ref(F),
    "SF": lambda F, A, B: sf_ref(F),
    "AG": lambda F, A, B: ag_ref(F),
    "MI": mi_ref,
    "SCD": scd_ref,
    "VIF": vif_ref,
    "Qabf": qabf_ref,
    "SSIM": ssim_ref,
    "CC": cc_ref,
    "MSE": mse_ref,
    "PSNR": psnr_ref,
    "Nabf": nabf_ref,
    "MS-SSIM": mef_ssim_ref,
}
