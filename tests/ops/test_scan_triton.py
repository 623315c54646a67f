"""Our Triton scan against the reference, run by Triton's interpreter on the CPU (small sizes: it is slow).

Runs only with TRITON_INTERPRET=1 set before triton is imported; test_selective_scan.py starts it so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start (run by test_selective_scan.py)", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_cases import compare_with_reference, make_inputs, rel_err  # noqa: E402

from diffmf_cli.ops import available_scan_paths, selective_scan, selective_scan_ref, use_scan_path  # noqa: E402


@pytest.mark.parametrize(
    "batch,dim,nstate,length,groups,options",
    [
        (1, 3, 4, 5, None, (False, False, False, False)),
        (1, 4, 16, 37, 2, (True, True, True, True)),  # two time chunks, partial last chunk, groups
        (2, 3, 2, 9, 3, (True, False, True, False)),  # padded state and channel lanes
    ],
    ids=["plain", "all-options-grouped", "batch2-tiny"],
)
def test_triton_interpreted_matches_reference(batch, dim, nstate, length, groups, options):
    with_z, with_d, with_bias, softplus = options
    assert "triton" in available_scan_paths()
    x = make_inputs(batch, dim, nstate, length, groups=groups, softplus=softplus, with_z=with_z, with_d=with_d,
                    with_bias=with_bias, seed=length)
    compare_with_reference(x, softplus, path="triton")


def test_triton_interpreted_bf16_inputs_float32_state():
    x = make_inputs(1, 2, 4, 9, softplus=True)
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    with use_scan_path("triton"):
        y, last = selective_scan(**half, delta_softplus=True, return_last_state=True)
    ref = {k: (v.double() if v is not None else None) for k, v in half.items()}
    y_ref, last_ref = selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-2 and rel_err(last, last_ref) < 1e-5


def test_triton_interpreted_float64_inputs_give_a_float64_last_state():
    # as every other path does (the kernel computes in float32; the result is handed back in float64)
    x = {k: (v.double() if v is not None else None) for k, v in make_inputs(1, 2, 4, 9, softplus=True).items()}
    with use_scan_path("triton"):
        y, last = selective_scan(**x, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    assert y.dtype == last.dtype == last_ref.dtype == torch.float64
    assert rel_err(last, last_ref) < 1e-5
