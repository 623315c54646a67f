"""DIFF-MF's modality-interaction layers: difference-driven extraction, channel exchange, spatial exchange.

Every tensor here is a feature map (B, C, H, W) unless stated. What the paper leaves open and we decided is
marked "ours" (see diffmf_cli/models/diffmf.py for the full list).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffmf_cli.modules.vss import ScanParams, VSSBlock, VSSStack, cross_merge, cross_scan


def conv3x3(cin: int, cout: int, stride: int = 1, device=None, dtype=None) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, device=device, dtype=dtype)


class DifferenceGuidance(nn.Module):
    """Steers both branches with the discrepancy map (ours; the paper gives no equation):
    F_ir^e = F_ir + σ(φ_ir([F_ir, Diff])) ⊙ F_vi,  F_vi^e = F_vi + σ(φ_vi([F_vi, Diff])) ⊙ F_ir, φ a 3×3 conv."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.gate_ir = conv3x3(2 * dim, dim, device=device, dtype=dtype)
        self.gate_vi = conv3x3(2 * dim, dim, device=device, dtype=dtype)

    def forward(self, f_ir, f_vi, diff):
        g_ir = torch.sigmoid(self.gate_ir(torch.cat([f_ir, diff], 1)))
        g_vi = torch.sigmoid(self.gate_vi(torch.cat([f_vi, diff], 1)))
        return f_ir + g_ir * f_vi, f_vi + g_vi * f_ir


class DifferenceStage(nn.Module):
    """One repetition of the difference-driven feature extraction.

    Self path: a VSS stack per modality. Shared (Siamese) path: one conv and one VSS stack with a skip,
    applied to both modalities with the same weights; Diff = S_ir − S_vi. Difference guidance mixes the two
    self outputs under Diff. Returns (F_ir^e, F_vi^e, Diff).
    """

    def __init__(self, dim: int, self_depth: int, shared_depth: int, d_state: int, expand: float,
                 use_guidance: bool = True, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_ir = VSSStack(dim, self_depth, d_state, expand, **fk)
        self.self_vi = VSSStack(dim, self_depth, d_state, expand, **fk)
        self.shared_conv = conv3x3(dim, dim, **fk)
        self.shared_vss = VSSStack(dim, shared_depth, d_state, expand, **fk)
        self.guidance = DifferenceGuidance(dim, **fk) if use_guidance else None

    def forward(self, f_ir, f_vi):
        b = f_ir.shape[0]
        s = self.shared_conv(torch.cat([f_ir, f_vi], 0))  # both modalities through the same weights at once
        s = s + self.shared_vss(s)
        diff = s[:b] - s[b:]
        e_ir, e_vi = self.self_ir(f_ir), self.self_vi(f_vi)
        if self.guidance is None:
            return e_ir, e_vi, diff
        e_ir, e_vi = self.guidance(e_ir, e_vi, diff)
        return e_ir, e_vi, diff


class ChannelExchange(nn.Module):
    """Channel-Exchange Module: a cross-modal selective scan, then channel reweighting.

    Each modality is projected to Mamba's (x, z, Δ, B, C). The IR scan runs on x_ir, Δ_ir with B_vi, C_vi and
    the VI scan on x_vi, Δ_vi with B_ir, C_ir (C as query, B as key, x as value: cross-attention in linear time).
    Ours: the scan runs over the flattened map forward and reversed; ω comes from global pooling of
    [F_ir^e, F_vi^e] -> MLP -> a softmax across the two modalities per channel, and
    F_m^c = F_m^e + ω_m ⊙ out_proj(LN(y_m) ⊙ SiLU(z_m)).
    With `exchange=False` (ablation) each modality scans with its own B and C.
    """

    def __init__(self, dim: int, d_state: int, expand: float, exchange: bool = True, reduction: int = 4,
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        d_inner = int(round(expand * dim))
        self.exchange = exchange
        self.norm = nn.ModuleList([nn.LayerNorm(dim, **fk) for _ in range(2)])
        self.in_proj = nn.ModuleList([nn.Linear(dim, 2 * d_inner, bias=False, **fk) for _ in range(2)])
        self.dwconv = nn.ModuleList([nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, **fk)
                                     for _ in range(2)])
        dt_rank = max(1, math.ceil(d_inner / 16))
        self.scan = nn.ModuleList([ScanParams(d_inner, d_state, 2, dt_rank, **fk) for _ in range(2)])
        self.out_norm = nn.ModuleList([nn.LayerNorm(d_inner, **fk) for _ in range(2)])
        self.out_proj = nn.ModuleList([nn.Linear(d_inner, dim, bias=False, **fk) for _ in range(2)])
        hidden = max(4, 2 * dim // reduction)
        self.weights_mlp = nn.Sequential(nn.Linear(2 * dim, hidden, **fk), nn.SiLU(), nn.Linear(hidden, 2 * dim, **fk))

    def forward(self, f_ir, f_vi):
        b, c, h, w = f_ir.shape
        xs, zs, projections = [], [], []
        for m, f in enumerate((f_ir, f_vi)):
            u, z = self.in_proj[m](self.norm[m](f.permute(0, 2, 3, 1))).chunk(2, dim=-1)
            x = cross_scan(F.silu(self.dwconv[m](u.permute(0, 3, 1, 2))), 2)
            xs.append(x)
            zs.append(z)
            projections.append(self.scan[m].project(x))
        (dt_ir, b_ir, c_ir), (dt_vi, b_vi, c_vi) = projections
        if self.exchange:
            y_ir = self.scan[0].scan(xs[0], dt_ir, b_vi, c_vi)
            y_vi = self.scan[1].scan(xs[1], dt_vi, b_ir, c_ir)
        else:
            y_ir = self.scan[0].scan(xs[0], dt_ir, b_ir, c_ir)
            y_vi = self.scan[1].scan(xs[1], dt_vi, b_vi, c_vi)
        pooled = torch.cat([f_ir, f_vi], 1).mean(dim=(2, 3))
        omega = torch.softmax(self.weights_mlp(pooled).view(b, 2, c), dim=1)  # (B, 2, C), sums to 1 per channel
        out = []
        for m, (f, y) in enumerate(((f_ir, y_ir), (f_vi, y_vi))):
            y = self.out_norm[m](cross_merge(y, h, w).to(f.dtype).permute(0, 2, 3, 1))
            y = self.out_proj[m](y * F.silu(zs[m])).permute(0, 3, 1, 2)
            out.append(f + omega[:, m, :, None, None] * y)
        return out[0], out[1]


# --------------------------------------------------------------------------------------------------------------
# Spatial exchange: three token arrangements of the two maps.
# --------------------------------------------------------------------------------------------------------------


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


class SpatialExchange(nn.Module):
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
