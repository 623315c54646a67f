"""The selective scan's fast paths against the plain-PyTorch reference (float64), gradients included."""

from __future__ import annotations

import pytest
import torch

from diffmf_cli.ops import last_scan_path, selective_scan, selective_scan_ref, use_scan_path


def _inputs(batch, dim, nstate, length, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, nstate, length) if groups is None else (batch, groups, nstate, length)
    return dict(
        u=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta=torch.rand(batch, dim, length, generator=g, dtype=dtype) * 0.999 + 1e-3,
        A=-torch.rand(dim, nstate, generator=g, dtype=dtype) * 16,
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
        D=torch.randn(dim, generator=g, dtype=dtype),
        z=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta_bias=torch.randn(dim, generator=g, dtype=dtype) * 0.5,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_cpu_matches_reference_forward_and_backward():
    x = _inputs(2, 7, 16, 63, groups=7)
    for t in x.values():
        t.requires_grad_(True)
    x64 = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
    with use_scan_path("cpu"):
        y, last = selective_scan(**x, delta_softplus=True, return_last_state=True)
    assert last_scan_path() == "cpu"
    y_ref, last_ref = selective_scan_ref(**x64, delta_softplus=True, return_last_state=True)
    assert _rel(y, y_ref) < 1e-5 and _rel(last, last_ref) < 1e-5
    gy, gl = torch.randn_like(y), torch.randn_like(last)
    torch.autograd.backward([y, last], [gy, gl])
    torch.autograd.backward([y_ref, last_ref], [gy.double(), gl.double()])
    for name in x:
        assert _rel(x[name].grad, x64[name].grad) < 1e-4, name
