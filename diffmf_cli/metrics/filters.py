"""Separable local filters on float64 (H, W) arrays, computed with OpenCV.

All kernels here are symmetric, so correlation (what OpenCV computes) equals convolution (what the MATLAB
and SciPy references call). 'valid' means MATLAB's ``filter2(..., 'valid')``: only positions where the whole
window lies inside the image, output ``(H - k + 1, W - k + 1)``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=None)
def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps; outer(g, g) is MATLAB's fspecial('gaussian', size, sigma)."""
    half = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - half
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    g /= g.sum()
    g.setflags(write=False)  # cached: shared by every caller
    return g


def sep_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'valid' filtering with the separable kernel outer(kernel, kernel): (H-k+1, W-k+1) float64."""
    k = kernel.shape[0]
    r = k // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return out[r : img.shape[0] - r, r : img.shape[1] - r]


def box_valid(img: np.ndarray, size: int) -> np.ndarray:
    """'valid' local mean over size x size windows: (H-size+1, W-size+1) float64."""
    r = size // 2
    out = cv2.boxFilter(img, cv2.CV_64F, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)
    return out[r : img.shape[0] - r, r : img.shape[1] - r]


def halve_2x2(img: np.ndarray) -> np.ndarray:
    """MATLAB's ``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``:
    the mean of each 2x2 block, the last row/column repeated when the size is odd. (ceil(H/2), ceil(W/2))."""
    h, w = img.shape
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2)), mode="edge")
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


#: Elements per strip for metrics computed strip by strip: every intermediate of a strip of ~16k pixels
#: (24 rows of a 640-px-wide image) stays in cache, which makes the dozens of element-wise passes ~2x
#: cheaper than on whole images (the filters recompute window-1 halo rows per strip; that costs less).
STRIP_PIXELS = 16384


def row_strips(height: int, window: int, width: int):
    """Input row ranges (r0, r1) whose 'valid' filtering by a window-tall kernel gives output rows
    r0 .. r1 - window, in strips of about STRIP_PIXELS outputs (16 to 64 rows) that together cover all
    height - window + 1 output rows."""
    rows = max(16, min(64, STRIP_PIXELS // max(width, 1)))
    out_h = height - window + 1
    for r0 in range(0, out_h, rows):
        yield r0, min(r0 + rows, out_h) + window - 1
