"""The Spatial-Exchange Module (SEM) of DIFF-MF's figure, all its levels, and its ablation stand-in.

One level (`SpatialExchangeLevel`) puts the two maps in three token arrangements (columns interleaved, rows
interleaved, concatenated), scans each with its own VSS block and fuses them; the module
(`SpatialExchange`) runs a level at 1, 1/2 and 1/4 of the scan grid and merges them coarse-to-fine.
Every tensor is a feature map (B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffmf_cli.modules.vss import VSSBlock

def interleave_columns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) ×2 -> (B,C,H,2W): column 2j is a's column j, column 2j+1 is b's."""
    n, c, h, w = a.shape
    return torch.stack([a, b], dim=-1).reshape(n, c, h, 2 * w)


def interleave_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) ×2 -> (B,C,2H,W): row 2i is a's row i, row 2i+1 is b's."""
    n, c, h, w = a.shape
    return torch.stack([a, b], dim=3).reshape(n, c, 2 * h, w)


def concat_maps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) ×2 -> (B,C,2H,W): all of a, then all of b (row-major: every a token precedes every b token)."""
    return torch.cat([a, b], dim=2)


def split_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w2 = x.shape
    x = x.view(n, c, h, w2 // 2, 2)
    return x[..., 0], x[..., 1]


def split_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h2, w = x.shape
    x = x.view(n, c, h2 // 2, 2, w)
    return x[:, :, :, 0], x[:, :, :, 1]


def split_concat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.shape[2] // 2
    return x[:, :, :h], x[:, :, h:]


ARRANGEMENTS = {
    "column": (interleave_columns, split_columns),
    "row": (interleave_rows, split_rows),
    "concat": (concat_maps, split_concat),
}


class SpatialExchangeLevel(nn.Module):
    """One level of the Spatial-Exchange Module: each arrangement of (F_ir, F_vi) through its own VSS block,
    split back to per-position features, concatenated (3 × 2C) and fused by a Linear layer (a 1×1 conv) to C."""

    def __init__(self, dim: int, d_state: int, expand: float, arrangements=("column", "row", "concat"),
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.arrangements = tuple(arrangements)
        self.blocks = nn.ModuleDict({a: VSSBlock(dim, d_state, expand, **fk) for a in self.arrangements})
        self.fuse = nn.Conv2d(2 * dim * len(self.arrangements), dim, 1, **fk)

    def forward(self, f_ir, f_vi):
        parts = []
        for name in self.arrangements:
            arrange, split = ARRANGEMENTS[name]
            parts.extend(split(self.blocks[name](arrange(f_ir, f_vi))))
        return self.fuse(torch.cat(parts, 1))


class SpatialExchange(nn.Module):
    """The Spatial-Exchange Module: (F_ir^c, F_vi^c) -> fused map (B, C, H, W).

    `levels` levels; level i sees both maps average-pooled i times (ours), and on the way up each level's
    output is bilinearly up-sampled, concatenated with the next finer level's and merged by a 1×1 conv (ours).
    """

    def __init__(self, dim: int, d_state: int, expand: float, levels: int = 3,
                 arrangements=("column", "row", "concat"), device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.levels = nn.ModuleList(SpatialExchangeLevel(dim, d_state, expand, arrangements, **fk)
                                    for _ in range(levels))
        self.merge = nn.ModuleList(nn.Conv2d(2 * dim, dim, 1, **fk) for _ in range(levels - 1))

    def forward(self, f_ir, f_vi):
        outs = []
        for i, level in enumerate(self.levels):
            if i:
                f_ir, f_vi = F.avg_pool2d(f_ir, 2), F.avg_pool2d(f_vi, 2)
            outs.append(level(f_ir, f_vi))
        fused = outs[-1]
        for i in range(len(outs) - 2, -1, -1):
            up = F.interpolate(fused, size=outs[i].shape[-2:], mode="bilinear", align_corners=False)
            fused = self.merge[i](torch.cat([outs[i], up], 1))
        return fused


class NoSpatialExchange(nn.Conv2d):
    """Ablation (`use_spatial_exchange=False`): a 1×1 conv of [F_ir^c, F_vi^c] (2C -> C) in the SEM's place."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__(2 * dim, dim, 1, device=device, dtype=dtype)

    def forward(self, f_ir, f_vi):
        return super().forward(torch.cat([f_ir, f_vi], 1))
