"""The selective scan's CPU path against the plain-PyTorch reference run in float64, gradients included,
plus argument checking and path selection."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_cases import NAMES, compare_with_reference, make_inputs, rel_err  # noqa: E402

from diffmf_cli.ops import (
    available_scan_paths,
    last_scan_path,
    resolve_scan_path,
    selective_scan,
    selective_scan_ref,
    use_scan_path,
)


def _grid():
    """Every (D, N, L) of the grid the scan must handle once; batch, grouping and the four options are drawn with a fixed
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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"])
def test_cpu_non_finite_inputs_come_out_non_finite_as_in_the_reference(name, bad):
    # The training loop's divergence guard relies on NaN/inf reaching the loss. The kernels' fastmath may
    # assume finite values (a clamp would turn NaN finite), so such inputs must give what IEEE arithmetic
    # gives: the reference's NaN and inf at the same places, forward and backward.
    x = make_inputs(1, 4, 3, 70, softplus=True, seed=3)
    t = x[name].clone()
    t.view(-1)[1] = bad
    x[name] = t
    fast = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    ref = {k: (v.double().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    with use_scan_path("cpu"):
        y, last = selective_scan(**fast, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    if bad != bad:  # a NaN input always reaches the output (an infinite one may not: softplus(-inf) = 0)
        assert torch.isnan(y).any()
    for got, want in ((y, y_ref), (last, last_ref)):
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(torch.isinf(got), torch.isinf(want))
    y.sum().backward()
    y_ref.sum().backward()
    for k in ("u", "delta", "B", "C"):
        assert torch.equal(torch.isfinite(fast[k].grad), torch.isfinite(ref[k].grad)), k


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
        ("C", torch.zeros(2, 3, 5), "same number of groups"),  # B has 2 groups
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


def test_last_scan_path_is_per_thread_like_the_override():
    import threading

    x = make_inputs(1, 2, 2, 5)
    with use_scan_path("cpu"):
        selective_scan(**x)
    seen = {}

    def other():
        seen["before"] = last_scan_path()
        with use_scan_path("reference"):
            selective_scan(**x)
        seen["after"] = last_scan_path()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen == {"before": None, "after": "reference"}
    assert last_scan_path() == "cpu"  # another thread's call does not change what this thread ran


def test_unknown_or_unusable_paths(monkeypatch):
    monkeypatch.delenv("DIFFMF_SCAN", raising=False)
    with pytest.raises(ValueError, match="unknown scan path"):
        with use_scan_path("fast"):
            pass
    with use_scan_path("cpu"):
        with pytest.raises(ValueError, match="'cpu' needs CPU tensors"):
            resolve_scan_path("cuda")
    assert resolve_scan_path("cuda") in ("mamba", "triton", "reference")


# ----------------------------------------------------------------------------------------------------------
# the Triton kernel: Triton's interpreter must be switched on before triton is first imported, so its tests
# (test_scan_triton.py) run in a fresh interpreter with TRITON_INTERPRET=1.


def test_triton_kernel_in_interpreter_subprocess():
    pytest.importorskip("triton", reason="triton is not installed")
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("DIFFMF_SCAN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_scan_triton.py")],
        cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
