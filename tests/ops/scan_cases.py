"""Shared by the scan tests: random inputs over the ranges the scan must survive, an error norm, and the comparison of a
fast path with the float64 reference (outputs, last states and every gradient)."""

from __future__ import annotations

import math

import torch

from diffmf_cli.ops import last_scan_path, selective_scan, selective_scan_ref, use_scan_path

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, nstate, length, *, groups=None, softplus=False, with_z=True, with_d=True,
                with_bias=True, dtype=torch.float32, seed=0):
    """Random scan inputs. The effective step Δ (after bias and softplus) is log-uniform in [1e-3, 1] and
    A is uniform in [-16, -0.1], the range the scan must survive without NaN or inf."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, nstate, length) if groups is None else (batch, groups, nstate, length)
    bias = torch.randn(dim, generator=g, dtype=torch.float64) * 0.5 if with_bias else None
    step = torch.exp(torch.empty(batch, dim, length, dtype=torch.float64).uniform_(math.log(1e-3), 0.0, generator=g))
    raw = torch.log(torch.expm1(step)) if softplus else step
    if bias is not None:
        raw = raw - bias[:, None]
    x = dict(
        u=torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        delta=raw,
        A=-(0.1 + 15.9 * torch.rand(dim, nstate, generator=g, dtype=torch.float64)),
        B=torch.randn(*bc_shape, generator=g, dtype=torch.float64),
        C=torch.randn(*bc_shape, generator=g, dtype=torch.float64),
        D=torch.randn(dim, generator=g, dtype=torch.float64) if with_d else None,
        z=torch.randn(batch, dim, length, generator=g, dtype=torch.float64) if with_z else None,
        delta_bias=bias,
    )
    return {k: (v.to(dtype) if v is not None else None) for k, v in x.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over the whole tensor (0 when both are 0)."""
    a, b = a.double(), b.double()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def compare_with_reference(x, softplus, *, fwd_tol=1e-5, grad_tol=1e-4, path="cpu"):
    """Run `path` on x and the reference on x in float64; compare outputs, last states and all gradients."""
    fast = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    ref = {k: (v.detach().double().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    with use_scan_path(path):
        y, last = selective_scan(**fast, delta_softplus=softplus, return_last_state=True)
    assert last_scan_path() == path
    y_ref, last_ref = selective_scan_ref(**ref, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == x["u"].dtype and y.shape == x["u"].shape
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert rel_err(y, y_ref) < fwd_tol, ("y", rel_err(y, y_ref))
    assert rel_err(last, last_ref) < fwd_tol, ("last_state", rel_err(last, last_ref))

    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([y, last], [gy.to(y.dtype), gl.to(last.dtype)])
    torch.autograd.backward([y_ref, last_ref], [gy, gl])
    for name in NAMES:
        if x[name] is None:
            continue
        got, want = fast[name].grad, ref[name].grad
        assert got is not None and got.shape == x[name].shape and got.dtype == x[name].dtype, name
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) < grad_tol, (name, rel_err(got, want))
