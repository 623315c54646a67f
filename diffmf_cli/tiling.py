"""One forward pass over host arrays, planned and tiled: how many pairs or how large tiles fit in memory
(`MemoryPlanner`), and the network run on (B, H, W) arrays, whole or in overlapping tiles blended without
seams, retried smaller on out-of-memory (`TiledForward`). The file pipeline (`diffmf_cli.fusion`) and the
benchmark both use these, so what the benchmark reports is what `diffmf fuse` runs.

Large images are fused in overlapping square tiles, blended with weights that ramp linearly across the
overlaps. The network mixes global information (its scans run over the whole grid and its channel exchange
pools globally), so a tiled result is close to, not equal to, the untiled one.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from diffmf_cli.device import autocast, free_memory_bytes, release_cache
from diffmf_cli.errors import DiffMFError, is_out_of_memory, one_line

#: Automatic tiling on CPU keeps the network's working memory under this many bytes (bigger tiles run no
#: faster on a CPU, and the whole process should fit in a few GiB for any image size).
CPU_WORKING_MEMORY_CAP = 1 << 30
#: Share of the device's free memory that automatic tiling may plan for.
FREE_MEMORY_SHARE = 0.5
#: Smallest tile the out-of-memory fallback tries.
MIN_FALLBACK_TILE = 32


def working_bytes_per_pixel(config, dtype: torch.dtype = torch.float32) -> float:
    """Planned peak working memory of one forward pass, in bytes per input pixel.

    The full-resolution tensors dominate: both stems' features (kept as decoder skips), the decoder's input
    concatenation and its output, and the padded inputs; the scan grid adds features and the VSS inner
    tensors divided by the grid's area. A factor of 2 covers temporaries (convolution workspaces, copies).
    """
    size = torch.finfo(dtype).bits // 8
    full = 2 * config.stem_channels + (config.dim + 2 * config.stem_channels) + 3 * config.decoder_channels + 4
    grid_area = 4 ** config.stem_downsample
    inner = max(1, round(config.expand * config.dim))
    grid = (12 * config.dim + 8 * inner + 4 * inner * config.d_state / 4) / grid_area
    half = 2 * config.dim * 3 / 4 if config.stem_downsample > 1 else 0.0  # the 1/2-resolution skips
    return 2.0 * size * (full + grid + half)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared pixels."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(start: int, size: int, total: int, overlap: int) -> np.ndarray:
    """1-D blending weight of a tile [start, start + size) of an axis of `total` pixels: 1 inside, ramping
    linearly (from 0.5/overlap) over `overlap` pixels on each side that touches a neighbouring tile."""
    w = np.ones(size, np.float32)
    n = min(overlap, size)
    if n <= 0:
        return w
    ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
    if start > 0:
        w[:n] = ramp
    if start + size < total:
        w[-n:] = np.minimum(w[-n:], ramp[::-1])
    return w


def tile_overlap(tile: int, overlap: int) -> int:
    """The overlap actually used for tiles of side `tile` when `overlap` is asked: at most a quarter tile."""
    return min(overlap, tile // 4)


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners of the tiles (side min(tile, H) × min(tile, W)) that cover an H×W image, row by row;
    `overlap` as `tile_overlap` gives it."""
    overlap = tile_overlap(tile, overlap)
    return [(r, c) for r in tile_starts(height, min(tile, height), overlap)
            for c in tile_starts(width, min(tile, width), overlap)]


class MemoryPlanner:
    """How to cut the work for images of one size: (pairs per forward pass, tile side or None).

    config: the model's config (memory per pixel and the size multiple tiles keep; None: generic figures);
    batch_size: most pairs per pass; tile: None = from the memory budget, 0 = never tile, N = tiles of N;
    memory_budget: bytes per pass, None = a share of the device's free memory (capped on CPU), measured once
    until `refresh`.
    """

    def __init__(self, config, device: torch.device, dtype: torch.dtype, batch_size: int, tile: int | None,
                 memory_budget: int | None):
        self.device, self.batch_size, self.tile, self.memory_budget = device, batch_size, tile, memory_budget
        self.bytes_per_pixel = working_bytes_per_pixel(config, dtype) if config is not None else 256.0
        self.multiple = getattr(config, "stride_multiple", 16) if config is not None else 16
        self._max_pixels: int | None = None

    def refresh(self) -> None:
        """Measure free memory again at the next plan (once per run)."""
        self._max_pixels = None

    def max_pixels(self) -> int:
        """Most input pixels one forward pass may hold (batch × H × W), from the memory budget."""
        if self._max_pixels is None:
            budget = self.memory_budget
            if budget is None:
                budget = int(free_memory_bytes(self.device) * FREE_MEMORY_SHARE)
                if self.device.type == "cpu":
                    budget = min(budget, CPU_WORKING_MEMORY_CAP)
            self._max_pixels = max(64 * 64, int(budget / self.bytes_per_pixel))
        return self._max_pixels

    def plan(self, height: int, width: int) -> tuple[int, int | None]:
        """(pairs per forward pass, tile size or None) for images of this size."""
        tile = self.tile
        if tile == 0:
            return self.batch_size, None
        if tile is not None:
            if height <= tile and width <= tile:
                return self.batch_size, None
            return self.batch_size, tile
        max_pixels = self.max_pixels()
        if height * width <= max_pixels:
            return max(1, min(self.batch_size, max_pixels // (height * width))), None
        side = int(math.sqrt(max_pixels))
        return 1, max(self.multiple, side - side % self.multiple)


class TiledForward:
    """The network on host arrays: ir, y (B, H, W) float32 in [0, 1] -> fused (B, H, W) float32 in [0, 1].

    model: ``forward(ir, vis_y)`` on (B, 1, H, W) tensors; device/dtype: where and in what precision
    (autocast) it runs; batch_size: tiles per pass by default; overlap: pixels neighbouring tiles share
    (at most a quarter tile); multiple: the size the fallback's smaller tiles stay a multiple of.
    on_tiles: called as ``on_tiles(done, total)`` after each pass over the tiles of a tiled image (progress
    within one large image); None for no calls.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int,
                 overlap: int, multiple: int = 16, on_tiles: Callable[[int, int], None] | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.batch_size, self.overlap, self.multiple = batch_size, overlap, multiple
        self.on_tiles = on_tiles

    def tiles(self, height: int, width: int, tile: int | None) -> int:
        """Tiles one H×W image is cut into with `tile` (0 when it is fused whole)."""
        if tile is None or (height <= tile and width <= tile):
            return 0
        return len(tile_boxes(height, width, tile, self.overlap))

    @torch.inference_mode()
    def __call__(self, ir: np.ndarray, y: np.ndarray, tile: int | None = None,
                 tile_batch: int | None = None) -> np.ndarray:
        """Fuse a batch of same-size images; with `tile`, each in overlapping tile×tile pieces (`tile_batch`,
        default batch_size, tiles per pass) blended."""
        if tile is None or (ir.shape[1] <= tile and ir.shape[2] <= tile):
            return self.forward(ir, y)
        step = tile_batch or self.batch_size
        return np.stack([self._tiled(ir[i], y[i], tile, step) for i in range(ir.shape[0])])

    def forward(self, ir: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One pass of the network on whole arrays (no tiling)."""
        t_ir = torch.from_numpy(np.ascontiguousarray(ir)).unsqueeze(1).to(self.device, non_blocking=True)
        t_y = torch.from_numpy(np.ascontiguousarray(y)).unsqueeze(1).to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            out = self.model(t_ir, t_y)
        return out[:, 0].float().clamp_(0.0, 1.0).cpu().numpy()

    def _tiled(self, ir: np.ndarray, y: np.ndarray, tile: int, step: int) -> np.ndarray:
        h, w = ir.shape
        overlap = tile_overlap(tile, self.overlap)
        th, tw = min(tile, h), min(tile, w)
        boxes = tile_boxes(h, w, tile, self.overlap)
        acc = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        for i in range(0, len(boxes), step):
            chunk = boxes[i:i + step]
            out = self.forward(np.stack([ir[r:r + th, c:c + tw] for r, c in chunk]),
                               np.stack([y[r:r + th, c:c + tw] for r, c in chunk]))
            for (r, c), piece in zip(chunk, out):
                wgt = np.outer(_ramp(r, th, h, overlap), _ramp(c, tw, w, overlap))
                acc[r:r + th, c:c + tw] += piece * wgt
                weight[r:r + th, c:c + tw] += wgt
            if self.on_tiles is not None:
                self.on_tiles(min(i + step, len(boxes)), len(boxes))
        return acc / weight

    def with_fallback(self, ir: np.ndarray, y: np.ndarray, tile: int | None,
                      tile_batch: int | None = None) -> np.ndarray:
        """As calling this object, retried on out-of-memory with one image at a time, one tile at a time,
        then tiles half as large (down to MIN_FALLBACK_TILE pixels). DiffMFError when the network fails
        otherwise, or runs out of memory even then."""
        try:
            return self(ir, y, tile, tile_batch)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise DiffMFError(f"the network failed ({one_line(exc)})") from None
        release_cache(self.device)
        if ir.shape[0] > 1:
            return np.concatenate([self.with_fallback(ir[i:i + 1], y[i:i + 1], tile, tile_batch)
                                   for i in range(ir.shape[0])])
        h, w = ir.shape[1:]
        tiled = tile is not None and (h > tile or w > tile)
        if tiled and (tile_batch or self.batch_size) > 1:
            return self.with_fallback(ir, y, tile, 1)
        current = tile if tiled else max(h, w)
        smaller = current // 2
        if smaller >= self.multiple:
            smaller = max(MIN_FALLBACK_TILE, smaller - smaller % self.multiple)
        if smaller < MIN_FALLBACK_TILE or smaller >= current:
            raise DiffMFError(f"out of memory on {self.device} even with {current}-pixel tiles")
        return self.with_fallback(ir, y, smaller, tile_batch)
