"""Timing the network: one row (a size, batch and precision), tables of rows, scan-path comparison, size sweep."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from diffmf_cli.benchmark.memory import PeakMemory
from diffmf_cli.benchmark.timing import fit_exponent, scan_timer, summarize, time_passes
from diffmf_cli.device import autocast, precision_name, synchronizer
from diffmf_cli.errors import CheckpointError, UsageError, is_out_of_memory

#: The reference path is skipped above this many pixels per image (it would take minutes).
REFERENCE_MAX_PIXELS = 128 * 128
Progress = Callable[[str], None]


def _nothing(_message: str) -> None:
    pass


@dataclass
class BenchModel:
    """The network under test and where it came from."""

    model: torch.nn.Module
    source: str                 # one line for the header
    weights: str | None         # the weights file, or None for random weights
    preset: str | None          # the preset name, when the architecture came from one
    cost: dict                  # model_cost(): params, macs_per_megapixel, scan_updates_per_megapixel

    @property
    def config(self):
        return self.model.config


def load_model(device: torch.device, preset: str | None = None, weights: str | None = None) -> BenchModel:
    """The model to time: `weights` (a file or shipped name), else the `preset`'s architecture with random
    weights, else the shipped "ir-vis" model, else (not shipped yet) the "cpu" preset with random weights.
    Weights stay float32; half precision is applied by autocast, as `diffmf fuse` does."""
    from diffmf_cli.models import PRESETS, create_model, model_cost
    from diffmf_cli.weights import load_weights, resolve_weights

    if preset is not None and weights is not None:
        raise UsageError("give --preset or --weights, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
        torch.manual_seed(0)
        model = create_model(preset, device=device).eval()
        bench = BenchModel(model, f"preset '{preset}', random weights (timing does not depend on weight values)",
                           None, preset, {})
    elif weights is not None:
        path = resolve_weights(weights)
        model, meta = load_weights(path, device=device)
        bench = BenchModel(model, f"weights {path}" + (f" ({meta['name']})" if meta.get("name") else ""),
                           str(path), None, {})
    else:
        try:
            path = resolve_weights("ir-vis")
        except CheckpointError:
            torch.manual_seed(0)
            model = create_model("cpu", device=device).eval()
            bench = BenchModel(model, "shipped 'ir-vis' weights not installed yet: preset 'cpu' (the shipped "
                               "architecture) with random weights; timing does not depend on weight values",
                               None, "cpu", {})
        else:
            model, _meta = load_weights(path, device=device)
            bench = BenchModel(model, f"shipped 'ir-vis' model ({path})", str(path), None, {})
    bench.cost = model_cost(bench.model.config)
    return bench


def synthetic_pair(batch: int, height: int, width: int, device: torch.device, seed: int = 0):
    """An IR and a visible batch, (batch, 1, H, W) float32 in [0, 1]: smooth structure plus noise, so every
    layer sees image-like statistics (timing does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, height).view(-1, 1)
    xx = torch.linspace(0, 1, width).view(1, -1)
    base = 0.5 + 0.25 * torch.sin(6.0 * xx + 3.0 * yy) * torch.cos(4.0 * yy)
    ir = (base + 0.1 * torch.rand(batch, 1, height, width, generator=gen)).clamp(0, 1)
    vis = (1.0 - base + 0.1 * torch.rand(batch, 1, height, width, generator=gen)).clamp(0, 1)
    return ir.to(device), vis.to(device)


def _scan_context(scan: str | None):
    if scan is None:
        return contextlib.nullcontext()
    from diffmf_cli.ops import use_scan_path

    return use_scan_path(scan)  # checked by check_scan first


def check_scan(scan: str | None, device: torch.device) -> None:
    """UsageError unless the forced scan path `scan` (None: automatic) can run on `device`."""
    if scan is None:
        return
    from diffmf_cli.ops import resolve_scan_path, use_scan_path

    try:
        with use_scan_path(scan):
            resolve_scan_path(device)
    except ValueError as exc:
        raise UsageError(f"--scan {scan}: {exc}") from None


def measure(bench: BenchModel, size: tuple[int, int], batch: int, device: torch.device,
            dtype: torch.dtype = torch.float32, *, warmup: int = 2, iters: int | None = None,
            min_seconds: float = 2.0, tile: int | None = None, scan: str | None = None,
            split_scan: bool = False) -> dict:
    """Time the network on synthetic pairs of one size and batch; returns one result row (a flat dict).

    Without `tile` the timed region is the forward pass on device tensors. With `tile` it is the fuse
    engine's `fuse_arrays` (host arrays in and out, overlapping tiles blended), the path `diffmf fuse`
    takes for large images. `split_scan` adds, from one extra untimed-for-throughput pass, the share of a
    forward pass spent in the selective scans. An out-of-memory failure gives a row with `error` set."""
    from diffmf_cli.ops import last_scan_path

    height, width = size
    sync = synchronizer(device)
    row = _row_header(bench, size, batch, device, dtype, tile)
    check_scan(scan, device)
    ir, vis = synthetic_pair(batch, height, width, device)
    if tile:
        from diffmf_cli.fusion import FuseOptions, FusionEngine

        engine = FusionEngine(bench.model, device, dtype, FuseOptions(batch_size=batch, tile=tile))
        ir_np, vis_np = ir[:, 0].cpu().numpy(), vis[:, 0].cpu().numpy()
        row["tiles_per_pair"] = engine.tiles_per_image(height, width, tile)

        def step():
            return engine.fuse_arrays(ir_np, vis_np, tile)
    else:
        def step():
            with autocast(device, dtype):
                return bench.model(ir, vis)

    cpu_times: list[float] = []
    try:
        with _scan_context(scan), torch.inference_mode(), PeakMemory(device) as memory:
            times = time_passes(step, sync, warmup, iters, min_seconds, cpu_times)
            scan_share = None
            if split_scan:
                with scan_timer(device) as scans:
                    sync()
                    start = time.perf_counter()
                    step()
                    sync()
                    total = time.perf_counter() - start
                scan_share = (scans.seconds, total, scans.calls)
    except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["error"] = "out of memory"
        return row
    stats = summarize(times)
    pixels = height * width
    pairs_per_s = batch / (stats["p50"] / 1e3)
    row.update({
        "scan_path": last_scan_path(),
        "warmup": warmup,
        "iters": stats["n"],
        "pairs_per_s": pairs_per_s,
        "megapixels_per_s": pairs_per_s * pixels / 1e6,
        "batch_ms_p50": stats["p50"],
        "batch_ms_p95": stats["p95"],
        "ms_per_pair_p50": stats["p50"] / batch,
        "ms_per_pair_p95": stats["p95"] / batch,
        "ms_per_pair_min": stats["min"] / batch,
        "ms_per_pair_max": stats["max"] / batch,
        "ms_per_pair_iqr": stats["iqr"] / batch,
        "ms_per_megapixel": stats["p50"] / batch / (pixels / 1e6),
        "achieved_gmacs_per_s": bench.cost["macs_per_megapixel"] * pairs_per_s * pixels / 1e6 / 1e9,
        "peak_memory_bytes": memory.peak_bytes,
        "memory_before_bytes": memory.before_bytes,
        "peak_memory_kind": memory.kind,
        "cpu_s_per_pair_p50": float(np.median(cpu_times)) / batch if device.type == "cpu" else None,
        "cpu_utilization": (sum(cpu_times) / (sum(times) * torch.get_num_threads())
                            if device.type == "cpu" and sum(times) > 0 else None),
    })
    if scan_share is not None:
        row["scan_ms_per_pair"] = scan_share[0] * 1e3 / batch
        row["scan_share"] = scan_share[0] / scan_share[1] if scan_share[1] > 0 else None
        row["scan_calls"] = scan_share[2]
    return row


def _row_header(bench: BenchModel, size, batch, device, dtype, tile) -> dict:
    """Every field a row has, filled with what is known before timing (results None until measured)."""
    height, width = size
    return {
        "size": f"{height}x{width}",
        "height": height,
        "width": width,
        "batch": batch,
        "device": str(device),
        "precision": precision_name(dtype),
        "threads": torch.get_num_threads(),
        "scan_path": None,
        "tile": tile or None,
        "tiles_per_pair": 0,
        "timed": "engine.fuse_arrays (host arrays, tiled)" if tile else "forward (device tensors)",
        "warmup": None,
        "iters": None,
        "pairs_per_s": None,
        "megapixels_per_s": None,
        "batch_ms_p50": None,
        "batch_ms_p95": None,
        "ms_per_pair_p50": None,
        "ms_per_pair_p95": None,
        "ms_per_pair_min": None,
        "ms_per_pair_max": None,
        "ms_per_pair_iqr": None,
        "ms_per_megapixel": None,
        "achieved_gmacs_per_s": None,
        "peak_memory_bytes": None,
        "memory_before_bytes": None,
        "peak_memory_kind": None,
        "cpu_s_per_pair_p50": None,
        "cpu_utilization": None,
        "params": bench.cost["params"],
        "macs_per_megapixel": bench.cost["macs_per_megapixel"],
        "scan_updates_per_megapixel": bench.cost["scan_updates_per_megapixel"],
        "error": None,
    }


#: The fields of every row, in order (what `--format csv` writes and the JSON rows hold).
def row_fields() -> list[str]:
    dummy = BenchModel(torch.nn.Identity(), "", None, None,
                       {"params": 0, "macs_per_megapixel": 0.0, "scan_updates_per_megapixel": 0.0})
    return list(_row_header(dummy, (1, 1), 1, torch.device("cpu"), torch.float32, None))


def run_table(bench: BenchModel, sizes, batch_sizes, device, dtypes, *, warmup=2, iters=None,
              min_seconds=2.0, tile=None, scan=None, progress: Progress = _nothing) -> list[dict]:
    """Rows for every precision × size × batch, smallest work first (see the module doc on memory)."""
    jobs = sorted(((dtype, size, batch) for dtype in dtypes for size in sizes for batch in batch_sizes),
                  key=lambda j: (j[1][0] * j[1][1] * j[2], str(j[0])))
    rows = []
    for dtype, size, batch in jobs:
        progress(f"timing {size[0]}x{size[1]}, batch {batch}, {precision_name(dtype)}")
        rows.append(measure(bench, size, batch, device, dtype, warmup=warmup, iters=iters,
                            min_seconds=min_seconds, tile=tile, scan=scan))
    return rows


def compare_scan_paths(bench: BenchModel, sizes, device, dtype=torch.float32, *, warmup=1, iters=None,
                       min_seconds=1.0, progress: Progress = _nothing) -> dict:
    """Every scan path that can run on `device`, on the same inputs: time per pair, speed relative to the
    automatic path, and the largest output difference from the reference path (or, where the reference
    is skipped because the size is over REFERENCE_MAX_PIXELS, from the automatic path)."""
    from diffmf_cli.ops import available_scan_paths, resolve_scan_path, use_scan_path
    from diffmf_cli.ops.selective_scan import ENV_VAR

    if os.environ.get(ENV_VAR, "").strip():
        raise UsageError(f"--compare-scan: ${ENV_VAR} is set and would force one path for every run; unset it")
    default = resolve_scan_path(device)
    paths = []
    for name in available_scan_paths():
        try:
            with use_scan_path(name):
                resolve_scan_path(device)
        except ValueError:
            continue
        paths.append(name)
    sync = synchronizer(device)
    rows, notes = [], []
    for height, width in sizes:
        ir, vis = synthetic_pair(1, height, width, device)
        outputs: dict[str, torch.Tensor] = {}
        timings: dict[str, dict] = {}
        for name in paths:
            if name == "reference" and height * width > REFERENCE_MAX_PIXELS:
                notes.append(f"{height}x{width}: reference path skipped (a Python loop; run at most "
                             f"{REFERENCE_MAX_PIXELS} pixels)")
                continue
            progress(f"comparing scan paths at {height}x{width}: {name}")
            with use_scan_path(name), torch.inference_mode():
                def step():
                    with autocast(device, dtype):
                        return bench.model(ir, vis)

                outputs[name] = step().float().cpu()
                times = time_passes(step, sync, warmup, iters, min_seconds)
                with scan_timer(device) as scans:
                    step()
            timings[name] = {**summarize(times), "scan_ms": scans.seconds * 1e3}
        against = "reference" if "reference" in outputs else default
        for name, stats in timings.items():
            rows.append({
                "size": f"{height}x{width}",
                "path": name,
                "automatic": name == default,
                "ms_per_pair_p50": stats["p50"],
                "ms_per_pair_iqr": stats["iqr"],
                "iters": stats["n"],
                "scan_ms_per_pair": stats["scan_ms"],
                "speed_vs_automatic": (timings[default]["p50"] / stats["p50"]) if default in timings else None,
                "scan_speed_vs_automatic": ((timings[default]["scan_ms"] / stats["scan_ms"])
                                            if default in timings and stats["scan_ms"] > 0 else None),
                "max_abs_diff": float((outputs[name] - outputs[against]).abs().max()),
                "diff_against": against,
            })
    return {"automatic_path": default, "paths": paths, "rows": rows, "notes": notes,
            "device": str(device), "precision": precision_name(dtype)}


def run_sweep(bench: BenchModel, sizes, device, dtype=torch.float32, *, batch=1, warmup=1, iters=None,
              min_seconds=2.0, scan=None, progress: Progress = _nothing) -> dict:
    """Time several sizes and fit time ∝ pixels^k. Returns the rows, k over all sizes, and k without the
    smallest size (fixed per-call costs flatten the small end)."""
    rows = run_table(bench, sizes, [batch], device, [dtype], warmup=warmup, iters=iters,
                     min_seconds=min_seconds, scan=scan, progress=progress)
    ok = [r for r in rows if r["error"] is None]
    pixels = [r["height"] * r["width"] for r in ok]
    seconds = [r["ms_per_pair_p50"] / 1e3 for r in ok]
    result = {"rows": rows, "exponent": None, "exponent_without_smallest": None}
    if len(set(pixels)) >= 2:
        result["exponent"] = fit_exponent(pixels, seconds)
    if len(set(pixels)) >= 3:
        order = np.argsort(pixels)[1:]
        result["exponent_without_smallest"] = fit_exponent([pixels[i] for i in order], [seconds[i] for i in order])
    return result
