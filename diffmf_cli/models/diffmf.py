"""DIFF-MF: a difference-driven channel-spatial state-space network for multi-modal image fusion.

Paper: Y. Sun, Z. Ye, Q. Hu, P. Zhu, "DIFF-MF: A Difference-Driven Channel-Spatial State Space Model for
Multi-Modal Image Fusion", arXiv 2601.05538 (2026). The authors published the framework figure only (no code,
no weights, no hyper-parameters); this is our implementation of that figure.

Data flow (paper): per-modality stems -> N × difference-driven extraction (self VSS stacks, a shared conv + VSS
stack whose two outputs are subtracted into Diff, difference guidance) -> Channel-Exchange Module (cross-modal
scan with swapped B/C, channel reweighting by ω) -> Spatial-Exchange Module at three levels (column-interleaved,
row-interleaved and concatenated token arrangements, one VSS block each, merged by a Linear layer; lower levels
up-sampled and concatenated on the way up) -> decoder -> fused luminance.

Our decisions (the paper is silent on each; all are fields of `DiffMFConfig`):
- Inputs are the IR (or MRI) image and the visible luminance Y, each (B, 1, H, W) in [0, 1]; colour is handled
  outside the network (fuse on Y, restore Cr/Cb).
- Resolution: the stems down-sample by `2 ** stem_downsample` (4× in the CPU preset) with strided 3×3 convs
  (widths doubling from `stem_channels` up to `dim`), so
  every state-space scan runs on the reduced grid; the spatial-exchange levels are at 1, 1/2 and 1/4 of that
  grid. The decoder up-samples by bilinear interpolation and 3×3 convs and concatenates the stems' full- and
  half-resolution features of both modalities (U-Net skips), which carry the fine detail the scans skip.
- Difference guidance: F_ir^e = F_ir + σ(φ_ir([F_ir, Diff])) ⊙ F_vi and symmetrically (φ a 3×3 conv).
  The shared path's skip: S = Conv(F) + VSS(Conv(F)).
- Channel exchange: bidirectional 1-D scan over the flattened map; ω from global pooling -> MLP -> softmax across
  modalities per channel; F^c = F^e + ω ⊙ (scan output).
- Spatial exchange: the concat arrangement stacks the two maps vertically (all IR tokens, then all VI tokens in
  row-major order); lower levels are average-pooled F^c; on the way up each level's output is up-sampled,
  concatenated with the next level's and merged by a 1×1 conv.
- VSS block: VMamba's (four scan directions), no MLP after it; d_state and expansion per preset.
- Output head (`head`): ``"blend"`` (the presets' default): the decoder's last conv gives two maps o₁, o₂; the
  fused Y is ``clamp(w·IR + (1 − w)·Y + r, 0, 1)`` with a per-pixel weight ``w = σ(o₁)`` and a bounded detail
  residual ``r = residual_scale·tanh(o₂)``; that conv starts at zero, so training starts from the mean of the
  sources. The network chooses between source pixels and adds detail instead of redrawing the image.
  ``select_gain`` k > 0 adds a fixed prior to the weight's logit, ``w = σ(o₁ + k·(IR − Y))``: training then
  starts near the pixel-wise maximum (a strong baseline on every fusion metric that rewards kept source
  intensity, and the intensity loss's target) rather than the mean; k = 0 is the plain blend head.
  ``residual_bound = "range"`` bounds the residual by the room the blend B = w·IR + (1 − w)·Y leaves instead:
  ``r = t·(1 − B)`` for ``t = tanh(o₂) ≥ 0`` and ``t·B`` below, so F stays inside [0, 1] without the clamp, which
  passes no gradient back from a pixel it has cut off (``residual_scale`` is then unused); ``"clamp"`` (files
  written before the field existed) is the fixed bound and the clamp above.
  ``"direct"``: the fused Y is the sigmoid of a one-channel last conv (drawn from scratch; the first release's
  head, kept for the ablation; weights files without a ``head`` field are this head).
- Padding: inputs are reflect-padded (replicate where the image is too small to reflect) to a multiple of
  `stride_multiple` and the output cropped back, so any H, W >= 1 works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffmf_cli.modules.channel_exchange import ChannelExchange, ChannelSelfScan, NoChannelExchange
from diffmf_cli.modules.difference import DifferenceStage
from diffmf_cli.modules.layers import conv3x3
from diffmf_cli.modules.spatial_exchange import NoSpatialExchange, SpatialExchange


HEADS = ("blend", "direct")
RESIDUAL_BOUNDS = ("clamp", "range")


@dataclass(frozen=True)
class DiffMFConfig:
    """Everything that shapes the network. Frozen: a config names one architecture."""

    dim: int = 24                      # feature channels C on the scan grid
    stem_channels: int = 8             # full-resolution stem channels (per modality)
    stem_downsample: int = 2           # scan grid = image / 2**stem_downsample
    n_stages: int = 1                  # N repetitions of the difference-driven extraction
    self_depth: int = 1                # VSS blocks per modality-specific stack
    shared_depth: int = 1              # VSS blocks in the shared (Siamese) stack
    d_state: int = 16                  # SSM state size N
    expand: float = 1.0                # VSS inner width = expand · dim
    sem_levels: int = 3                # spatial-exchange levels (full, 1/2, 1/4 of the scan grid)
    sem_arrangements: tuple[str, ...] = ("column", "row", "concat")
    decoder_channels: int = 16
    use_guidance: bool = True          # ablation switches
    use_channel_exchange: bool = True  # False: no CEM at all
    exchange_bc: bool = True           # False: CEM scans with each modality's own B/C
    use_spatial_exchange: bool = True  # False: the SEM is replaced by a 1×1 conv of [F_ir^c, F_vi^c]
    head: str = "blend"                # "blend": w·IR + (1-w)·Y + r;  "direct": sigmoid(conv)
    residual_scale: float = 0.5        # blend head: |r| <= residual_scale
    select_gain: float = 0.0           # blend head: w = sigmoid(o1 + select_gain·(IR − Y)); 0 = no prior
    residual_bound: str = "clamp"      # blend head: "clamp": |r| <= residual_scale, then clamp; "range": r
                                       # scaled by the blend's room to 0 or 1 (no clamp needed)

    def __post_init__(self):
        if self.dim < 1 or self.stem_channels < 1 or self.d_state < 1 or self.decoder_channels < 1:
            raise ValueError(f"channel counts must be positive: {self}")
        if self.stem_downsample < 1 or self.n_stages < 1 or self.sem_levels < 1:
            raise ValueError(f"stem_downsample, n_stages and sem_levels must be >= 1: {self}")
        unknown = set(self.sem_arrangements) - {"column", "row", "concat"}
        if unknown or not self.sem_arrangements:
            raise ValueError(f"sem_arrangements must be a non-empty subset of column/row/concat, got "
                             f"{self.sem_arrangements}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.residual_bound not in RESIDUAL_BOUNDS:
            raise ValueError(f"residual_bound must be one of {', '.join(RESIDUAL_BOUNDS)}, "
                             f"got {self.residual_bound!r}")
        if not self.residual_scale >= 0:
            raise ValueError(f"residual_scale must be >= 0, got {self.residual_scale}")
        if not self.select_gain >= 0:
            raise ValueError(f"select_gain must be >= 0, got {self.select_gain}")

    @property
    def stride_multiple(self) -> int:
        """H and W are padded to a multiple of this."""
        return 2 ** (self.stem_downsample + self.sem_levels - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sem_arrangements"] = list(self.sem_arrangements)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiffMFConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DiffMFConfig fields: {sorted(unknown)}")
        d = dict(d)
        d.setdefault("head", "direct")  # files written before the field existed used the direct head
        if "sem_arrangements" in d:
            d["sem_arrangements"] = tuple(d["sem_arrangements"])
        return cls(**d)

    def replace(self, **changes) -> "DiffMFConfig":
        return dataclasses.replace(self, **changes)


class Stem(nn.Module):
    """One modality's stem: (B,1,H,W) -> scan-grid features (B,C,H/2^k,W/2^k) and the skips above that grid.

    Widths: `stem_channels` at full resolution, doubling per stride-2 conv up to `dim`; the skips are the
    features at full resolution and at each intermediate scale (full resolution first).
    """

    def __init__(self, cfg: DiffMFConfig, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.widths = stem_widths(cfg)
        self.full = nn.Sequential(conv3x3(1, self.widths[0], **fk), nn.SiLU())
        self.down = nn.ModuleList(nn.Sequential(conv3x3(self.widths[i], self.widths[i + 1], stride=2, **fk),
                                                nn.SiLU())
                                  for i in range(cfg.stem_downsample))
        self.project = nn.Conv2d(self.widths[-1], cfg.dim, 1, **fk)

    def forward(self, x):
        feats = [self.full(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        return self.project(feats[-1]), feats[:-1]


def stem_widths(cfg: DiffMFConfig) -> list[int]:
    """Channels at full resolution, then after each stride-2 conv (the last one is the scan grid)."""
    return [min(cfg.dim, cfg.stem_channels * 2 ** i) for i in range(cfg.stem_downsample)] + [cfg.dim]


class Decoder(nn.Module):
    """Scan-grid features -> fused Y: per ×2 step, bilinear up-sampling, concatenation with both stems' skip at
    that scale and a 3×3 conv; then the output head (see ``DiffMFConfig.head``).

    forward(x, skips_ir, skips_vi, ir, vis_y, clamp=True): ``ir``, ``vis_y`` (B, 1, H, W) in [0, 1] at the skips'
    full resolution (the blend head mixes them) -> fused Y (B, 1, H, W) in [0, 1]; ``clamp=False``: the blend
    head's value before its clamp (training penalises what lies outside [0, 1], where the clamp passes no
    gradient).
    """

    def __init__(self, cfg: DiffMFConfig, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        widths = stem_widths(cfg)
        self.ups = nn.ModuleList()
        width = cfg.dim
        for level in range(cfg.stem_downsample - 1, -1, -1):
            out = cfg.decoder_channels if level == 0 else max(cfg.decoder_channels, widths[level])
            self.ups.append(nn.Sequential(conv3x3(width + 2 * widths[level], out, **fk), nn.SiLU()))
            width = out
        self.mode = cfg.head
        self.residual_scale = cfg.residual_scale
        self.select_gain = cfg.select_gain
        self.residual_bound = cfg.residual_bound
        self.head = conv3x3(width, 2 if cfg.head == "blend" else 1, **fk)
        if cfg.head == "blend":  # start from the mean of the two sources
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x, skips_ir, skips_vi, ir, vis_y, clamp: bool = True):
        for up, s_ir, s_vi in zip(self.ups, reversed(skips_ir), reversed(skips_vi)):
            x = F.interpolate(x, size=s_ir.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, s_ir, s_vi], 1))
        out = self.head(x)
        if self.mode == "direct":
            return torch.sigmoid(out)
        logit = out[:, :1]
        if self.select_gain:
            logit = logit + self.select_gain * (ir - vis_y)
        weight = torch.sigmoid(logit)
        blend = weight * ir + (1 - weight) * vis_y
        t = torch.tanh(out[:, 1:])
        if self.residual_bound == "range":  # inside [0, 1] by construction; the clamp only guards rounding
            fused = blend + t * torch.where(t >= 0, 1 - blend, blend)
        else:
            fused = blend + self.residual_scale * t
        return fused.clamp(0, 1) if clamp else fused


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B,C,H,W) at the bottom/right to multiples of `multiple` (replicate where reflect can't)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class DiffMF(nn.Module):
    """DIFF-MF. forward(ir, vis_y): both (B, 1, H, W) in [0, 1], any H, W >= 1 -> fused Y (B, 1, H, W) in [0, 1].
    ``clamp=False`` returns the output head's value before its clamp to [0, 1] (for training)."""

    def __init__(self, config: DiffMFConfig, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.config = cfg = config
        self.stem_ir = Stem(cfg, **fk)
        self.stem_vi = Stem(cfg, **fk)
        self.stages = nn.ModuleList(DifferenceStage(cfg.dim, cfg.self_depth, cfg.shared_depth, cfg.d_state,
                                                    cfg.expand, cfg.use_guidance, **fk)
                                    for _ in range(cfg.n_stages))
        # Each ablation switch puts a stand-in module in its slot (the stand-ins have the same weight names).
        if not cfg.use_channel_exchange:
            self.channel_exchange = NoChannelExchange()
        else:
            cem = ChannelExchange if cfg.exchange_bc else ChannelSelfScan
            self.channel_exchange = cem(cfg.dim, cfg.d_state, cfg.expand, **fk)
        self.spatial = (SpatialExchange(cfg.dim, cfg.d_state, cfg.expand, cfg.sem_levels, cfg.sem_arrangements,
                                        **fk)
                        if cfg.use_spatial_exchange else NoSpatialExchange(cfg.dim, **fk))
        self.decoder = Decoder(cfg, **fk)

    def forward(self, ir: torch.Tensor, vis_y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        if ir.dim() != 4 or ir.shape[1] != 1 or ir.shape != vis_y.shape:
            raise ValueError(f"ir and vis_y must both be (B, 1, H, W) of one shape; got {tuple(ir.shape)} and "
                             f"{tuple(vis_y.shape)}")
        h, w = ir.shape[-2:]
        m = self.config.stride_multiple
        ir, vis_y = pad_to_multiple(ir, m), pad_to_multiple(vis_y, m)
        f_ir, skips_ir = self.stem_ir(ir)
        f_vi, skips_vi = self.stem_vi(vis_y)
        for stage in self.stages:
            f_ir, f_vi, _ = stage(f_ir, f_vi)
        f_ir, f_vi = self.channel_exchange(f_ir, f_vi)
        fused = self.spatial(f_ir, f_vi)
        return self.decoder(fused, skips_ir, skips_vi, ir, vis_y, clamp)[..., :h, :w]
