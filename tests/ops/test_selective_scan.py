"""The selective scan's CPU path against the plain-PyTorch reference run in float64, gradients included,
plus argument checking and path selection."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from diffmf_cli.ops import (
    available_scan_paths,
    last_scan_path,
    resolve_scan_path,
    selective_scan,
    selective_scan_ref,
    use_scan_path,
)

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


def _grid():
    """Every (D, N, L) of the issue's grid once; batch, grouping and the four options are drawn with a fixed
    seed chosen so that each of them takes both values at every D, every N and every L, and every pair of
    them meets in all four combinations (a covering design instead of the 768-case full product)."""
    rng = random.Random(160)
    cases = []
    for dim, nstate, length in itertools.product((1, 7, 64), (1, 16), (1, 2, 63, 1000)):
        two_batches, grouped, with_z, with_d, with_bias, softplus = (bool(rng.getrandbits(1)) for _ in range(6))
        batch = 2 if two_batches else 1
        groups = {1: 1, 7: 7, 64: 4}[dim] if grouped else None
        cases.append(pytest.param(
            batch, dim, nstate, length, groups, with_z, with_d, with_bias, softplus,
            id=f"b{batch}-D{dim}-N{nstate}-L{length}-G{groups}-z{with_z:d}D{with_d:d}bias{with_bias:d}sp{softplus:d}",
        ))
    return cases


@pytest.mark.parametrize("batch,dim,nstate,length,groups,with_z,with_d,with_bias,softplus", _grid())
def test_cpu_matches_reference_on_grid(batch, dim, nstate, length, groups, with_z, with_d, with_bias, softplus):
    x = make_inputs(batch, dim, nstate, length, groups=groups, softplus=softplus, with_z=with_z, with_d=with_d,
                    with_bias=with_bias, seed=batch * 1000 + dim * 10 + length)
    compare_with_reference(x, softplus)


@pytest.mark.parametrize("options", [(True, True, True, True), (False, False, False, False)], ids=["all", "none"])
def test_cpu_all_and_no_options(options):
    with_z, with_d, with_bias, softplus = options
    x = make_inputs(2, 8, 16, 300, groups=2, softplus=softplus, with_z=with_z, with_d=with_d, with_bias=with_bias)
    compare_with_reference(x, softplus)


def test_cpu_extreme_steps_stay_finite():
    # Δ·|A| up to 16 * 30 (decay underflows to 0) and tiny Δ (1e-6): outputs and gradients stay finite.
    x = make_inputs(1, 4, 16, 200, softplus=True)
    x["delta"] = torch.tensor([-14.0, 0.0, 10.0, 30.0])[None, :, None].expand(1, 4, 200).contiguous()
    compare_with_reference(x, softplus=True)


def test_cpu_float64_gradcheck():
    x = make_inputs(2, 3, 2, 7, groups=3, softplus=True, dtype=torch.float64)
    args = [x[k].requires_grad_(True) for k in NAMES]

    def fn(*a):
        with use_scan_path("cpu"):
            return selective_scan(*a, delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_non_contiguous_and_half_precision_inputs():
    x = make_inputs(2, 6, 4, 40, softplus=True)
    # Same values, strided storage: (L, D) storage read through a transpose.
    strided = dict(x)
    for k in ("u", "delta", "z"):
        strided[k] = x[k].transpose(1, 2).contiguous().transpose(1, 2)
    strided["B"] = x["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    with use_scan_path("cpu"):
        y = selective_scan(**x, delta_softplus=True)
        y_strided = selective_scan(**strided, delta_softplus=True)
    assert torch.equal(y, y_strided)

    # bf16 sequence inputs with float32 parameters: computed in float32, returned in bf16.
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    with use_scan_path("cpu"):
        y_half = selective_scan(**half, delta_softplus=True)
    y_ref = selective_scan_ref(**{k: (v.double() if v is not None else None) for k, v in half.items()},
                               delta_softplus=True)
    assert y_half.dtype == torch.bfloat16
    assert rel_err(y_half, y_ref) < 1e-2


def test_cpu_does_not_track_when_no_grad_needed():
    x = make_inputs(1, 4, 4, 10)
    with use_scan_path("cpu"):
        y = selective_scan(**x)
    assert not y.requires_grad


# ----------------------------------------------------------------------------------------------------------
# argument checking


def _good():
    return make_inputs(2, 4, 3, 5, groups=2)


@pytest.mark.parametrize(
    "name,bad,pattern",
    [
        ("u", torch.zeros(2, 4), "u must be"),
        ("delta", torch.zeros(2, 4, 6), "delta must"),
        ("A", torch.zeros(5, 3), "A must"),
        ("A", torch.zeros(4, 3, 1), "A must"),
        ("B", torch.zeros(2, 3, 4), "B must"),
        ("B", torch.zeros(2, 3, 3, 5), "B must"),  # 3 groups do not divide D = 4
        ("C", torch.zeros(1, 2, 3, 5), "C must"),
        ("D", torch.zeros(3), "D must"),
        ("delta_bias", torch.zeros(4, 1), "delta_bias must"),
        ("z", torch.zeros(2, 4, 4), "z must"),
    ],
)
def test_bad_shapes_raise_value_error_naming_argument_and_shapes(name, bad, pattern):
    x = _good()
    x[name] = bad
    with pytest.raises(ValueError, match=pattern) as info:
        selective_scan(**x)
    assert "received" in str(info.value) and str(tuple(bad.shape)) in str(info.value)


def test_dtype_and_device_mismatches_raise_value_error():
    x = _good()
    x["B"] = x["B"].double()
    with pytest.raises(ValueError, match=r"B:torch.float64\(2, 2, 3, 5\)"):
        selective_scan(**x)
    x = _good()
    x["A"] = x["A"].long()
    with pytest.raises(ValueError, match="A must be floating point.*int64"):
        selective_scan(**x)
    x = _good()
    x["z"] = torch.zeros(2, 4, 5, device="meta")
    with pytest.raises(ValueError, match="one device.*z:meta"):
        selective_scan(**x)
    x = _good()
    x["u"] = x["u"].numpy()
    with pytest.raises(ValueError, match="u must be a torch.Tensor"):
        selective_scan(**x)


# ----------------------------------------------------------------------------------------------------------
# path selection


def test_automatic_choice_and_overrides(monkeypatch):
    monkeypatch.delenv("DIFFMF_SCAN", raising=False)
    assert resolve_scan_path("cpu") == "cpu"
    assert {"reference", "cpu"} <= set(available_scan_paths())
    x = _good()
    selective_scan(**x)
    assert last_scan_path() == "cpu"
    with use_scan_path("reference"):
        assert resolve_scan_path("cpu") == "reference"
        y_ref = selective_scan(**x)
        assert last_scan_path() == "reference"
        with use_scan_path("cpu"):
            assert resolve_scan_path("cpu") == "cpu"
        assert resolve_scan_path("cpu") == "reference"
    assert rel_err(selective_scan(**x), y_ref) < 1e-5

    monkeypatch.setenv("DIFFMF_SCAN", "reference")
    with use_scan_path("cpu"):  # the environment variable wins
        assert resolve_scan_path("cpu") == "reference"
    monkeypatch.setenv("DIFFMF_SCAN", "warp")
    with pytest.raises(ValueError, match="DIFFMF_SCAN.*'warp'"):
        selective_scan(**x)
    monkeypatch.setenv("DIFFMF_SCAN", "mamba")
    with pytest.raises(ValueError, match="'mamba' needs CUDA"):
        selective_scan(**x)


def test_unknown_or_unusable_paths(monkeypatch):
    monkeypatch.delenv("DIFFMF_SCAN", raising=False)
    with pytest.raises(ValueError, match="unknown scan path"):
        with use_scan_path("fast"):
            pass
    with use_scan_path("cpu"):
        with pytest.raises(ValueError, match="'cpu' needs CPU tensors"):
            resolve_scan_path("cuda")
    assert resolve_scan_path("cuda") in ("mamba", "triton", "reference")
