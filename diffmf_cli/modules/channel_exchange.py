"""The Channel-Exchange Module (CEM) of DIFF-MF's figure, and its ablation stand-ins.

Every tensor is a feature map (B, C, H, W) unless stated. What the paper leaves open and we decided is marked
"ours" (the full list is in diffmf_cli/models/diffmf.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffmf_cli.modules.vss import ScanParams, cross_merge, cross_scan, ssm_scan, vss_in, vss_out


class ChannelExchange(nn.Module):
    """Channel-Exchange Module: a cross-modal selective scan, then channel reweighting.

    Each modality goes through a VSS block's input side (`vss_in`) and is projected to Mamba's (x, z, Δ, B, C).
    The IR scan runs on x_ir, Δ_ir with B_vi, C_vi and the VI scan on x_vi, Δ_vi with B_ir, C_ir (C as query,
    B as key, x as value: cross-attention in linear time). Ours: the scan runs over the flattened map forward
    and reversed; ω comes from global pooling of [F_ir^e, F_vi^e] -> MLP -> a softmax across the two
    modalities per channel, and F_m^c = F_m^e + ω_m ⊙ out_proj(LN(y_m) ⊙ SiLU(z_m)) (`vss_out`).
    Per-modality layers are pairs (index 0: IR, 1: VI).
    """

    def __init__(self, dim: int, d_state: int, expand: float, reduction: int = 4, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        d_inner = int(round(expand * dim))
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

    @staticmethod
    def route(ir: tuple, vi: tuple) -> tuple[tuple, tuple]:
        """The (B, C) each modality's scan uses, from each modality's own (B, C): exchanged."""
        return vi, ir

    def forward(self, f_ir, f_vi):
        b, c, h, w = f_ir.shape
        xs, zs, projections = [], [], []
        for m, f in enumerate((f_ir, f_vi)):
            u, z = vss_in(f, self.norm[m], self.in_proj[m], self.dwconv[m])
            x = cross_scan(u, 2)
            xs.append(x)
            zs.append(z)
            projections.append(self.scan[m].project(x))
        (dt_ir, *bc_ir), (dt_vi, *bc_vi) = projections
        for_ir, for_vi = self.route(tuple(bc_ir), tuple(bc_vi))
        y_ir = ssm_scan(self.scan[0], xs[0], dt_ir, *for_ir)
        y_vi = ssm_scan(self.scan[1], xs[1], dt_vi, *for_vi)
        pooled = torch.cat([f_ir, f_vi], 1).mean(dim=(2, 3))
        omega = torch.softmax(self.weights_mlp(pooled).view(b, 2, c), dim=1)  # (B, 2, C), sums to 1 per channel
        out = []
        for m, (f, y) in enumerate(((f_ir, y_ir), (f_vi, y_vi))):
            y = vss_out(cross_merge(y, h, w).to(f.dtype), zs[m], self.out_norm[m], self.out_proj[m])
            out.append(f + omega[:, m, :, None, None] * y)
        return out[0], out[1]


class ChannelSelfScan(ChannelExchange):
    """Ablation (`exchange_bc=False`): the CEM with each modality scanning with its own B and C (same
    parameters, so the same weight names)."""

    @staticmethod
    def route(ir: tuple, vi: tuple) -> tuple[tuple, tuple]:
        return ir, vi


class NoChannelExchange(nn.Module):
    """Ablation (`use_channel_exchange=False`): both maps pass unchanged (no parameters)."""

    def forward(self, f_ir, f_vi):
        return f_ir, f_vi
