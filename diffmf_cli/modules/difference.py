"""The difference-driven feature extraction of DIFF-MF's figure (one repetition: `DifferenceStage`).

Every tensor is a feature map (B, C, H, W). What the paper leaves open and we decided is marked "ours" (the
full list is in diffmf_cli/models/diffmf.py).
"""

from __future__ import annotations

import torch
from torch import nn

from diffmf_cli.modules.layers import conv3x3
from diffmf_cli.modules.vss import VSSStack


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


class NoGuidance(nn.Module):
    """Ablation stand-in for `DifferenceGuidance`: both branches pass unchanged (no parameters)."""

    def forward(self, f_ir, f_vi, diff):
        return f_ir, f_vi


class DifferenceStage(nn.Module):
    """One repetition of the difference-driven feature extraction.

    Self path: a VSS stack per modality. Shared (Siamese) path: one conv and one VSS stack with a skip,
    applied to both modalities with the same weights; Diff = S_ir − S_vi. Difference guidance mixes the two
    self outputs under Diff (`use_guidance=False`, the ablation, puts `NoGuidance` in its place).
    Returns (F_ir^e, F_vi^e, Diff).
    """

    def __init__(self, dim: int, self_depth: int, shared_depth: int, d_state: int, expand: float,
                 use_guidance: bool = True, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_ir = VSSStack(dim, self_depth, d_state, expand, **fk)
        self.self_vi = VSSStack(dim, self_depth, d_state, expand, **fk)
        self.shared_conv = conv3x3(dim, dim, **fk)
        self.shared_vss = VSSStack(dim, shared_depth, d_state, expand, **fk)
        self.guidance = DifferenceGuidance(dim, **fk) if use_guidance else NoGuidance()

    def forward(self, f_ir, f_vi):
        b = f_ir.shape[0]
        s = self.shared_conv(torch.cat([f_ir, f_vi], 0))  # both modalities through the same weights at once
        s = s + self.shared_vss(s)
        diff = s[:b] - s[b:]
        e_ir, e_vi = self.guidance(self.self_ir(f_ir), self.self_vi(f_vi), diff)
        return e_ir, e_vi, diff
