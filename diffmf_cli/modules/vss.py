"""Visual state-space layers: the selective-scan core shared by every block, and the VSS block of VMamba.

Layout conventions: feature maps travel between modules as (B, C, H, W); the scan sees (B, K·D, L) with one
group of B/C projections per scan direction k (mamba-ssm's grouped layout, G = K).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from diffmf_cli.ops import selective_scan


@dataclass
class ScanWatch:
    """What `watch_scans` saw: selective-scan state updates (batch · channels · N · L per call), calls, and
    (when it was given a `sync`) the seconds spent inside the scans."""

    updates: int = 0
    calls: int = 0
    seconds: float = 0.0
    sync: Callable[[], None] | None = None


_watches: list[ScanWatch] = []


@contextlib.contextmanager
def watch_scans(sync: Callable[[], None] | None = None) -> Iterator[ScanWatch]:
    """Within the block, count every selective scan (`ssm_scan`) and its state updates; with `sync` (a
    function that waits for the device) also time each scan, bracketed by `sync` calls. Bracketing removes
    an asynchronous device's overlap of the scan with its neighbours, so there the time is an upper bound."""
    watch = ScanWatch(sync=sync)
    _watches.append(watch)
    try:
        yield watch
    finally:
        _watches.remove(watch)


# --------------------------------------------------------------------------------------------------------------
# Scan orders over a 2-D map. Each direction is a permutation of the H·W positions; the merge is its inverse.
# --------------------------------------------------------------------------------------------------------------


def cross_scan(x: torch.Tensor, directions: int) -> torch.Tensor:
    """(B, D, H, W) -> (B, K, D, H·W): row-major, column-major, and (K = 4) both reversed; K = 2: row-major ± reverse."""
    b, d, h, w = x.shape
    rows = x.flatten(2)
    if directions == 2:
        return torch.stack([rows, rows.flip(-1)], dim=1)
    if directions != 4:
        raise ValueError(f"directions must be 2 or 4, got {directions}")
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, K, D, H·W) -> (B, D, H, W): undo each direction's order and sum."""
    b, k, d, length = y.shape
    if k == 2:
        return (y[:, 0] + y[:, 1].flip(-1)).view(b, d, h, w)
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return rows.view(b, d, h, w) + cols.view(b, d, w, h).transpose(2, 3)


class ScanParams(nn.Module):
    """The parameters of K directions' selective scans: the projections of a sequence to the scan inputs
    (Δ, B, C; `project`) and the SSM constants. The scan itself is `ssm_scan`.

    For K directions and d_inner channels: x_proj (K, R + 2N, D), dt_proj (K, D, R), A_log (K·D, N), D (K·D),
    dt_bias (K·D). Initialised as in Mamba (Δ log-uniform in [dt_min, dt_max], A = -[1..N], D = 1).
    """

    def __init__(self, d_inner: int, d_state: int, directions: int, dt_rank: int,
                 dt_min: float = 1e-3, dt_max: float = 0.1, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_inner, self.d_state, self.directions, self.dt_rank = d_inner, d_state, directions, dt_rank
        k = directions
        self.x_proj = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner, **fk))
        self.dt_proj = nn.Parameter(torch.empty(k, d_inner, dt_rank, **fk))
        self.dt_bias = nn.Parameter(torch.empty(k * d_inner, **fk))
        self.A_log = nn.Parameter(torch.empty(k * d_inner, d_state, **fk))
        self.D = nn.Parameter(torch.empty(k * d_inner, **fk))
        for constant in (self.A_log, self.D, self.dt_bias):
            constant._no_weight_decay = True  # mamba-ssm's tag: the optimiser leaves these out of weight decay
        self._dt_range = (dt_min, dt_max)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dt_min, dt_max = self._dt_range
        nn.init.uniform_(self.x_proj, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_proj, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        with torch.no_grad():
            dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
            self.A_log.copy_(torch.log(a).expand_as(self.A_log))
            self.D.fill_(1.0)

    def project(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xs (B, K, D, L) -> Δ (B, K·D, L), B (B, K, N, L), C (B, K, N, L)."""
        b, k, d, length = xs.shape
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_proj)
        return dts.reshape(b, k * d, length), bs.contiguous(), cs.contiguous()

def ssm_scan(params: ScanParams, xs: torch.Tensor, dts: torch.Tensor, bs: torch.Tensor,
             cs: torch.Tensor) -> torch.Tensor:
    """The selective scan of xs (B, K, D, L) with Δ (B, K·D, L), B and C (B, K, N, L) and the SSM constants
    of `params` (A = -exp(A_log), D, Δ bias, softplus on Δ), computed in float32; returns (B, K, D, L)."""
    b, k, d, length = xs.shape
    timed = [w for w in _watches if w.sync is not None]
    for watch in _watches:
        watch.updates += b * k * d * params.d_state * length
        watch.calls += 1
    for watch in timed:
        watch.sync()
    start = time.perf_counter()
    a = -torch.exp(params.A_log.float())
    y = selective_scan(xs.reshape(b, k * d, length), dts, a, bs, cs, params.D.float(),
                       delta_bias=params.dt_bias.float(), delta_softplus=True)
    if timed:
        for watch in timed:
            watch.sync()
        elapsed = time.perf_counter() - start
        for watch in timed:
            watch.seconds += elapsed
    return y.view(b, k, d, length)


class SS2D(nn.Module):
    """VMamba's 2-D selective scan: x (B, D, H, W) -> y (B, D, H, W), scanned in K directions and merged."""

    def __init__(self, d_inner: int, d_state: int, directions: int = 4, dt_rank: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.directions = directions
        self.params = ScanParams(d_inner, d_state, directions, dt_rank or max(1, math.ceil(d_inner / 16)),
                                 device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        xs = cross_scan(x, self.directions)
        dts, bs, cs = self.params.project(xs)
        return cross_merge(ssm_scan(self.params, xs, dts, bs, cs), h, w).to(x.dtype)


def vss_in(x: torch.Tensor, norm: nn.LayerNorm, in_proj: nn.Linear, dwconv: nn.Conv2d
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The VSS block's input side: x (B, C, H, W) -> LN -> Linear to (u, z) -> u through the depth-wise 3×3
    conv and SiLU. Returns u (B, D, H, W), ready to scan, and the gate z (B, H, W, D)."""
    u, z = in_proj(norm(x.permute(0, 2, 3, 1))).chunk(2, dim=-1)
    return F.silu(dwconv(u.permute(0, 3, 1, 2))), z


def vss_out(y: torch.Tensor, z: torch.Tensor, out_norm: nn.LayerNorm, out_proj: nn.Linear) -> torch.Tensor:
    """The VSS block's output side: the scan output y (B, D, H, W) -> LN -> ·SiLU(z) -> Linear -> (B, C, H, W)
    (the residual is the caller's)."""
    y = out_norm(y.permute(0, 2, 3, 1))
    return out_proj(y * F.silu(z)).permute(0, 3, 1, 2)


class VSSBlock(nn.Module):
    """The VSS block (VMamba): LN -> Linear to (x, z) -> depth-wise 3×3 conv -> SiLU -> SS2D -> LN -> ·SiLU(z) ->
    Linear -> residual.  (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, d_state: int, expand: float = 2.0, directions: int = 4, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        d_inner = int(round(expand * dim))
        self.norm = nn.LayerNorm(dim, **fk)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **fk)
        self.dwconv = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, **fk)
        self.ss2d = SS2D(d_inner, d_state, directions, **fk)
        self.out_norm = nn.LayerNorm(d_inner, **fk)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = vss_in(x, self.norm, self.in_proj, self.dwconv)
        return x + vss_out(self.ss2d(u), z, self.out_norm, self.out_proj)


class VSSStack(nn.Sequential):
    """`depth` VSS blocks in sequence (an empty stack is the identity)."""

    def __init__(self, dim: int, depth: int, d_state: int, expand: float, directions: int = 4,
                 device=None, dtype=None):
        super().__init__(*[VSSBlock(dim, d_state, expand, directions, device=device, dtype=dtype)
                           for _ in range(depth)])
