"""`selective_scan`: one function, mamba-ssm's `selective_scan_fn` layout, several implementations behind it.

Paths:
    "reference"  plain PyTorch (`reference.py`), any device; the specification.
    "cpu"        numba kernels with a hand-written backward (`scan_cpu.py`); CPU tensors.
    "mamba"      mamba-ssm's CUDA kernel; CUDA tensors, when `mamba_ssm` imports.
    "triton"     our Triton kernel (`scan_triton.py`); CUDA tensors (CPU tensors under TRITON_INTERPRET=1).

Choice: $DIFFMF_SCAN, else the innermost `use_scan_path(...)`, else automatic by device: CPU -> "cpu",
CUDA -> "mamba" if it imports, else "triton" if it imports, else "reference". `last_scan_path()` says which
path the calling thread's most recent call ran (per thread, like the `use_scan_path` override).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

from diffmf_cli.ops.reference import selective_scan_ref

PATHS = ("reference", "cpu", "triton", "mamba")
ENV_VAR = "DIFFMF_SCAN"

_state = threading.local()  # per thread: .stack (use_scan_path overrides), .last (the last path run)


# ----------------------------------------------------------------------------------------------------------
# optional kernels: imported here only, lazily, and a broken install counts as "not available"


@functools.lru_cache(maxsize=None)
def _mamba_fn():
    """mamba-ssm's `selective_scan_fn`, or None. Importing it pulls in triton and CUDA extensions."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - broken installs fail with OSError, RuntimeError, AttributeError...
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=None)
def _triton_fn():
    """Our Triton scan, or None when triton does not import."""
    try:
        from diffmf_cli.ops.scan_triton import selective_scan_triton
    except Exception:  # noqa: BLE001 - same reasoning as above
        return None
    return selective_scan_triton


def _cpu_fn():
    from diffmf_cli.ops.scan_cpu import selective_scan_cpu

    return selective_scan_cpu


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_scan_paths() -> list[str]:
    """Paths that can run on this machine (for some device)."""
    paths = ["reference", "cpu"]
    if _triton_fn() is not None and (torch.cuda.is_available() or _triton_interpreted()):
        paths.append("triton")
    if _mamba_fn() is not None and torch.cuda.is_available():
        paths.append("mamba")
    return paths


def _check_name(name: str, source: str) -> str:
    if name not in PATHS:
        raise ValueError(f"{source}: unknown scan path {name!r}; choose one of {', '.join(PATHS)}")
    return name


@contextlib.contextmanager
def use_scan_path(name: str):
    """Force `selective_scan` to one path inside the block (the environment variable still wins)."""
    _check_name(name, "use_scan_path")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def resolve_scan_path(device: torch.device | str) -> str:
    """The path `selective_scan` would use for tensors on `device` (checks that a forced path can run there)."""
    device = torch.device(device)
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        name = _check_name(forced, f"${ENV_VAR}")
    else:
        stack = getattr(_state, "stack", None)
        name = stack[-1] if stack else None
    if name is None:
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda":
            if _mamba_fn() is not None:
                return "mamba"
            if _triton_fn() is not None:
                return "triton"
        return "reference"
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"scan path 'cpu' needs CPU tensors, got device {device}")
    if name == "mamba" and (device.type != "cuda" or _mamba_fn() is None):
        raise ValueError(f"scan path 'mamba' needs CUDA tensors and an importable mamba_ssm (device {device})")
    if name == "triton":
        if _triton_fn() is None:
            raise ValueError("scan path 'triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not (device.type == "cpu" and _triton_interpreted()):
            raise ValueError(f"scan path 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {device}")
    return name


def last_scan_path() -> str | None:
    """The path the calling thread's most recent `selective_scan` call ran, or None before its first call."""
    return getattr(_state, "last", None)


# ----------------------------------------------------------------------------------------------------------
# argument checking


def _shape(t) -> str:
    return "None" if t is None else f"{tuple(t.shape)}"


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    shapes = ", ".join(f"{k}={_shape(v)}" for k, v in named.items())

    def fail(msg: str):
        raise ValueError(f"selective_scan: {msg} (received {shapes})")

    if u.dim() != 3:
        fail("u must be (batch, D, L)")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        fail(f"delta must have u's shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        fail(f"A must be (D, N) with D={dim} and N >= 1")
    nstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = tuple(t.shape) == (batch, nstate, length)
        elif t.dim() == 4:
            groups = t.shape[1]
            ok = tuple(t.shape) == (batch, groups, nstate, length) and groups >= 1 and dim % groups == 0
        else:
            ok = False
        if not ok:
            fail(f"{name} must be (batch, N, L) = {(batch, nstate, length)} or (batch, G, N, L) with G dividing D={dim}")
    if (B.shape[1] if B.dim() == 4 else 1) != (C.shape[1] if C.dim() == 4 else 1):
        fail("B and C must have the same number of groups G")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            fail(f"{name} must be (D,) = ({dim},)")
    if z is not None and z.shape != u.shape:
        fail(f"z must have u's shape {tuple(u.shape)}")

    present = {k: v for k, v in named.items() if v is not None}
    devices = {str(v.device) for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k}:{v.device}" for k, v in present.items())
        raise ValueError(f"selective_scan: all tensors must be on one device, got {listing}")
    for name, t in present.items():
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be floating point, got {t.dtype} with shape {_shape(t)}")
    seq = {k: present[k] for k in ("u", "delta", "B", "C", "z") if k in present}
    if len({v.dtype for v in seq.values()}) > 1:
        listing = ", ".join(f"{k}:{v.dtype}{_shape(v)}" for k, v in seq.items())
        raise ValueError(f"selective_scan: u, delta, B, C and z must share one dtype, got {listing}")


# ----------------------------------------------------------------------------------------------------------
# the public function


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Mamba's selective scan (see `reference.py` for the recurrence), differentiable on every path (the one
    exception: mamba-ssm's kernel gives the last state no gradient, so the "mamba" path returns it detached).

    Args:
        u, delta: (batch, D, L); A: (D, N); B, C: (batch, N, L) or (batch, G, N, L) with G dividing D;
        D, delta_bias: (D,) or None; z: (batch, D, L) or None (output gated by silu(z)).
        u/delta/B/C/z share a floating dtype (float32, float64, or bf16/fp16 computed in float32);
        A, D, delta_bias are floating (usually float32 parameters).
    Returns:
        y (batch, D, L) in u's dtype; with `return_last_state`, also the final state (batch, D, N)
        (float32, or float64 for float64 inputs; the "mamba" path returns what mamba-ssm returns, detached).
    Raises:
        ValueError naming the argument and the shapes received, for wrong shapes, devices or dtypes.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    path = resolve_scan_path(u.device)
    if path == "cpu":
        fn = _cpu_fn()
    elif path == "triton":
        fn = _triton_fn()
    elif path == "mamba":
        fn = _mamba_fn()
    else:
        fn = selective_scan_ref
    out = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if path == "mamba" and return_last_state:
        out = (out[0], out[1].detach())  # no gradient flows back through it: say so instead of dropping it
    _state.last = path
    return out
