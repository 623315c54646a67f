"""Benchmark the selective scan: reference vs fast path, forward and forward + backward, peak extra memory,
and state updates per second against what this machine's cores can do.

    python scripts/bench_scan.py                      # batch 1, D 192, N 16, L 16384, float32, 2 threads
    python scripts/bench_scan.py --json               # the same figures as one JSON object on stdout
    python scripts/bench_scan.py --device cuda        # CUDA paths (mamba / triton) vs the CPU reference

Timings are the best of --repeat runs after a warm-up (the reference: one run, it takes seconds), with the
device synchronised before each clock read. Peak extra memory is the resident-set high-water mark above the
resident size before the call (CPU; /proc/self/clear_refs resets the mark), or torch.cuda's peak allocated.
The machine bound comes from a kernel that does the same arithmetic per state update (one exp, two
multiply-adds) on independent data: no recurrence, no reduction, no memory traffic beyond L1.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffmf_cli.ops import last_scan_path, selective_scan, selective_scan_ref, use_scan_path  # noqa: E402
from diffmf_cli.ops.scan_cpu import _exp  # noqa: E402


def make_inputs(batch, dim, nstate, length, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5 - 2.0,  # softplus -> Δ around 0.1
        A=-torch.exp(torch.log(torch.arange(1, nstate + 1, dtype=torch.float32))).repeat(dim, 1),
        B=torch.randn(batch, nstate, length, generator=g),
        C=torch.randn(batch, nstate, length, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=torch.rand(dim, generator=g) * 0.5,
    )
    seq = ("u", "delta", "B", "C", "z")
    return {k: v.to(device=device, dtype=dtype if k in seq else torch.float32) for k, v in x.items()}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ----------------------------------------------------------------------------------------------------------
# memory


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_extra_memory(fn, device) -> int:
    """Bytes above the starting point that `fn` needs at its peak (results it returns included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        del out
        return peak
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return -1
    start = _rss_bytes("VmRSS")
    out = fn()
    peak = _rss_bytes("VmHWM") - start
    del out
    return peak


# ----------------------------------------------------------------------------------------------------------
# timing


def timed(fn, device, repeat: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"best_s": min(times), "median_s": float(np.median(times)), "cpu_s": cpu[int(np.argmin(times))],
            "runs": repeat}


@numba.njit(parallel=True, fastmath=True, cache=True)
def _arith_kernel(dt, a, b, c, h, rounds):
    # Per element and round, the forward's work per state update: h = exp(Δ·a)·h + b; y += h·c. The elements
    # are independent and the loop is long, so the compiler vectorises it fully (no recurrence over time, no
    # short loop over N states, all data in L1).
    rows, n = h.shape
    total = 0.0
    for r in numba.prange(rows):
        acc = np.float32(0)
        for _ in range(rounds):
            for j in range(n):
                h[r, j] = _exp(dt[r, j] * a[r, j]) * h[r, j] + b[r, j]
                acc += h[r, j] * c[r, j]
        total += acc
    return total


def machine_bound(threads: int) -> float:
    """State updates per second that `threads` cores reach on the scan's arithmetic, perfectly vectorised."""
    rows, n, rounds = threads, 1024, 2000
    rng = np.random.default_rng(0)
    dt = rng.uniform(0.01, 0.5, (rows, n)).astype(np.float32)
    a = -rng.uniform(1, 16, (rows, n)).astype(np.float32)
    b = rng.standard_normal((rows, n)).astype(np.float32)
    c = rng.standard_normal((rows, n)).astype(np.float32)
    h = np.zeros((rows, n), np.float32)
    _arith_kernel(dt, a, b, c, h, 1)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        _arith_kernel(dt, a, b, c, h, rounds)
        best = min(best, time.perf_counter() - t0)
    return rows * n * rounds / best


def machine_bound_per_cpu_second() -> float:
    """The same, per second of CPU time on one thread: unaffected by other processes sharing the cores."""
    rows, n, rounds = 1, 1024, 4000
    rng = np.random.default_rng(0)
    args = [rng.uniform(0.01, 0.5, (rows, n)).astype(np.float32), -rng.uniform(1, 16, (rows, n)).astype(np.float32),
            rng.standard_normal((rows, n)).astype(np.float32), rng.standard_normal((rows, n)).astype(np.float32),
            np.zeros((rows, n), np.float32)]
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    _arith_kernel(*args, 1)
    best = math.inf
    for _ in range(5):
        t0 = time.process_time()
        _arith_kernel(*args, rounds)
        best = min(best, time.process_time() - t0)
    numba.set_num_threads(previous)
    return rows * n * rounds / best


# ----------------------------------------------------------------------------------------------------------


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[args.dtype]
    x = make_inputs(args.batch, args.dim, args.nstate, args.length, device, dtype)
    updates = args.batch * args.dim * args.length * args.nstate
    kw = dict(delta_softplus=True)
    io_fwd = nbytes(x.values()) + nbytes([x["u"]])  # inputs + y
    io_bwd = io_fwd + nbytes(x.values())  # + one gradient per input

    result = {
        "sizes": dict(batch=args.batch, D=args.dim, N=args.nstate, L=args.length),
        "dtype": args.dtype, "device": str(device), "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "numba_threading_layer": None, "rows": [],
        "load_average_before": os.getloadavg()[0],
    }

    def fwd():
        with torch.no_grad():
            return selective_scan(**x, **kw)

    grads_in = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    gy = torch.randn_like(x["u"])

    def fwd_bwd():
        y = selective_scan(**grads_in, **kw)
        y.backward(gy)
        out = [t.grad for t in grads_in.values()]
        for t in grads_in.values():
            t.grad = None
        return out

    rows = result["rows"]
    paths = [args.path] if args.path else (["cpu"] if device.type == "cpu" else ["mamba", "triton"])
    for path in paths:
        try:
            with use_scan_path(path):
                f = timed(fwd, device, args.repeat)
                ran = last_scan_path()
                fb = timed(fwd_bwd, device, args.repeat)
                mem_f = peak_extra_memory(fwd, device)
                mem_fb = peak_extra_memory(fwd_bwd, device)
        except ValueError as exc:
            rows.append({"path": path, "error": str(exc)})
            continue
        rows.append({
            "path": ran, "forward_s": f["best_s"], "forward_median_s": f["median_s"], "forward_cpu_s": f["cpu_s"],
            "fwd_bwd_s": fb["best_s"], "fwd_bwd_median_s": fb["median_s"], "fwd_bwd_cpu_s": fb["cpu_s"],
            "fwd_bwd_over_fwd": fb["best_s"] / f["best_s"],
            "updates_per_s_fwd": updates / f["best_s"],
            "peak_extra_fwd_bytes": mem_f, "peak_extra_fwd_over_io": mem_f / io_fwd,
            "peak_extra_fwd_bwd_bytes": mem_fb, "peak_extra_fwd_bwd_over_io": mem_fb / io_bwd,
        })
    if device.type == "cpu":
        result["numba_threading_layer"] = numba.threading_layer()

    if not args.no_reference:
        xr = {k: v.cpu() for k, v in x.items()}

        def ref():
            with torch.no_grad():
                return selective_scan_ref(**xr, **kw)

        r = timed(ref, torch.device("cpu"), repeat=1, warmup=0)
        y_ref = ref().double()
        row = {"path": "reference", "forward_s": r["best_s"], "updates_per_s_fwd": updates / r["best_s"],
               "fwd_bwd_s": None, "peak_extra_fwd_bytes": peak_extra_memory(ref, torch.device("cpu"))}
        row["peak_extra_fwd_over_io"] = row["peak_extra_fwd_bytes"] / io_fwd
        rows.append(row)
        for other in rows:
            if other.get("forward_s") and other["path"] != "reference":
                other["speedup_vs_reference"] = r["best_s"] / other["forward_s"]
                with use_scan_path(other["path"]):
                    y = fwd().double().cpu()
                other["rel_err_vs_reference"] = ((y - y_ref).norm() / y_ref.norm()).item()

    if device.type == "cpu":
        bound = machine_bound(args.threads)
        result["machine_bound_updates_per_s"] = bound
        result["machine_bound_updates_per_cpu_s"] = machine_bound_per_cpu_second()
        for row in rows:
            if row.get("forward_cpu_s"):
                row["updates_per_cpu_s_fwd"] = updates / row["forward_cpu_s"]
                row["fwd_bwd_over_fwd_cpu"] = row["fwd_bwd_cpu_s"] / row["forward_cpu_s"]
        for row in rows:
            if row.get("updates_per_s_fwd"):
                row["fraction_of_bound"] = row["updates_per_s_fwd"] / bound
    result["io_bytes_fwd"] = io_fwd
    result["io_bytes_fwd_bwd"] = io_bwd
    return result


def render(result: dict) -> str:
    s = result["sizes"]
    lines = [
        f"selective scan  batch={s['batch']} D={s['D']} N={s['N']} L={s['L']}  {result['dtype']}  "
        f"device={result['device']}  threads={result['threads']}  numba layer={result['numba_threading_layer']}  "
        f"load avg before={result['load_average_before']:.2f}",
        f"{'path':<10} {'fwd s':>8} {'fwd+bwd s':>10} {'ratio':>6} {'x ref':>7} {'Gupd/s':>7} {'of bound':>8} "
        f"{'mem fwd':>9} {'mem f+b':>9} {'rel err':>9}",
    ]

    def fmt(v, spec, na="-"):
        return na if v is None else format(v, spec)

    for row in result["rows"]:
        if "error" in row:
            lines.append(f"{row['path']:<10} not run: {row['error']}")
            continue
        mem_f = row.get("peak_extra_fwd_over_io")
        mem_fb = row.get("peak_extra_fwd_bwd_over_io")
        lines.append(
            f"{row['path']:<10} {fmt(row['forward_s'], '8.4f')} {fmt(row.get('fwd_bwd_s'), '10.4f')} "
            f"{fmt(row.get('fwd_bwd_over_fwd'), '6.2f')} {fmt(row.get('speedup_vs_reference'), '7.1f')} "
            f"{row['updates_per_s_fwd'] / 1e9:7.3f} {fmt(row.get('fraction_of_bound'), '8.1%')} "
            f"{fmt(mem_f, '8.2f') + 'x':>9} {fmt(mem_fb, '8.2f') + 'x' if mem_fb is not None else '-':>9} "
            f"{fmt(row.get('rel_err_vs_reference'), '9.1e')}"
        )
    if "machine_bound_updates_per_s" in result:
        lines.append(f"machine bound (exp + 2 FMA per update, {result['threads']} threads, independent data): "
                     f"{result['machine_bound_updates_per_s'] / 1e9:.3f} G updates/s")
    for row in result["rows"]:
        if row.get("forward_cpu_s"):
            lines.append(f"{row['path']}: CPU time fwd {row['forward_cpu_s']:.4f} s, fwd+bwd {row['fwd_bwd_cpu_s']:.4f} s "
                         f"(ratio {row['fwd_bwd_over_fwd_cpu']:.2f}); {row['updates_per_cpu_s_fwd'] / 1e9:.3f} G updates "
                         f"per CPU second vs bound {result['machine_bound_updates_per_cpu_s'] / 1e9:.3f} per core "
                         f"({row['updates_per_cpu_s_fwd'] / result['machine_bound_updates_per_cpu_s']:.0%})")
    lines.append("mem = peak extra memory / bytes of inputs and outputs (gradients count as outputs for fwd+bwd)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--nstate", type=int, default=16)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--path", choices=("cpu", "triton", "mamba", "reference"), default=None)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) reference forward")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    os.environ.pop("DIFFMF_SCAN", None)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
