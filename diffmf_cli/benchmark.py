"""Measuring DIFF-MF like an instrument: throughput, latency, memory and scaling. Never prints.

Method (timm's `benchmark.py` is the model): synthetic pairs are made on the device before any clock is read;
each measurement runs `warmup` untimed passes, then timed passes under `torch.inference_mode`, synchronising
the device before every clock read; the median and spread of the timed passes are reported, never one run.
Each result records what actually ran: device, precision, the scan path (`diffmf_cli.ops.last_scan_path()`
after the pass), sizes, batch, and peak memory:

* CUDA: `torch.cuda.max_memory_allocated` over the measurement (peak stats reset before it);
* CPU: the process's peak resident set size (Linux VmHWM) over the measurement, reset before it by writing
  5 to /proc/self/clear_refs; it is the whole process (Python, torch and numba included), so the process's
  resident size just before the measurement is recorded beside it. Memory the allocator kept from an earlier,
  larger measurement can count again, so the rows of one run go from small to large. Where clear_refs is
  not writable the figure is the process's lifetime peak (getrusage) and says so.

Every function returns plain values (dicts of numbers and strings) for the CLI to render.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from diffmf_cli.errors import CheckpointError, InputError, UsageError

#: The standard sizes (height, width): a small square, VGA, and a 1.3-megapixel frame.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (480, 640), (1024, 1280))
#: `--sweep`: squares from 128² to 2048² (pixel counts spread over a factor of 256).
SWEEP_SIZES: tuple[tuple[int, int], ...] = ((128, 128), (256, 256), (512, 512), (1024, 1024), (2048, 2048))
#: `--compare-scan` sizes when none are given; the reference scan is a Python loop over the sequence.
COMPARE_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (128, 128))
#: The reference path is skipped above this many pixels per image (it would take minutes).
REFERENCE_MAX_PIXELS = 128 * 128
#: Automatic iteration count: at least this many timed passes, and at least `min_seconds` of them.
MIN_ITERS = 3
MAX_ITERS = 50

Progress = Callable[[str], None]


def _nothing(_message: str) -> None:
    pass


# ------------------------------------------------------------------------------------------ parsing


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` (height x width) or ``"256"`` (a square) -> (height, width)."""
    key = text.strip().lower().replace("×", "x").replace("*", "x")
    parts = key.split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"size {text!r}: expected HxW (e.g. 480x640) or N for NxN") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UsageError(f"size {text!r}: expected HxW with positive integers (e.g. 480x640)")
    return values[0], values[1]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Comma-separated sizes, e.g. ``"256,480x640"``."""
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise UsageError(f"--sizes {text!r}: no size given")
    return sizes


def parse_counts(text: str, option: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``--batch-sizes 1,4,16``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} {text!r}: expected positive integers")
    return values


# ------------------------------------------------------------------------------------ machine facts


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    info = _read_text("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _total_memory_bytes() -> int | None:
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine_facts(device: torch.device) -> dict:
    """Facts that decide the numbers: CPU model and threads, GPU, library versions, load at the start."""
    import diffmf_cli

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    facts = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory_bytes(),
        "load_average_1_5_15": load,
        "torch_version": torch.__version__,
        "numba_version": _version("numba"),
        "diffmf_version": diffmf_cli.__version__,
        "git_commit": _git_commit(),
        "device": str(device),
        "gpu_name": None,
        "gpu_memory_bytes": None,
        "gpu_capability": None,
        "cuda_version": torch.version.cuda,
        "numba_threading_layer": _numba_layer(),
        "env": {k: os.environ[k] for k in ENV_FACTS if os.environ.get(k)},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts["gpu_name"] = props.name
        facts["gpu_memory_bytes"] = int(props.total_memory)
        facts["gpu_capability"] = f"{props.major}.{props.minor}"
    return facts


#: Environment variables that change CPU timings (OpenMP spinning and thread counts) or the scan path.
ENV_FACTS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
             "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "DIFFMF_SCAN", "CUDA_VISIBLE_DEVICES")


def _numba_layer() -> str | None:
    """numba's threading layer ("omp", "tbb", "workqueue"), once started; None before."""
    try:
        import numba

        return numba.threading_layer()
    except Exception:  # noqa: BLE001 - not started yet, or no numba
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing or broken optional package is just "unknown"
        return None


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (the numba scan follows torch's setting); returns the count in force.

    numba's OpenMP threading layer resets the OpenMP thread count it shares with torch when it starts, which
    happens at the first parallel scan: started here first, so a count set now stays in force."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    wanted = threads or torch.get_num_threads()
    try:
        import numba

        numba.get_num_threads()  # starts numba's threading layer
    except Exception:  # noqa: BLE001 - without numba there is nothing to start
        pass
    torch.set_num_threads(wanted)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    for line in (_read_text("/proc/self/status") or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a block: CUDA max allocated, or the process's peak RSS on CPU (see the module doc).

    After the block: `peak_bytes`, `kind` (what the number is) and `before_bytes` (CPU: resident size when
    the block began; CUDA: allocated bytes when it began)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.before_bytes: int | None = None
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_bytes = int(torch.cuda.memory_allocated(self.device))
            self.kind = "cuda max allocated"
        else:
            rss = _status_kib("VmRSS")
            self.before_bytes = None if rss is None else rss * 1024
            self.kind = "process peak RSS" if _reset_peak_rss() else "process lifetime peak RSS"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        hwm = _status_kib("VmHWM") if self.kind == "process peak RSS" else None
        if hwm is None:  # ru_maxrss is KiB on Linux
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "process lifetime peak RSS"
        self.peak_bytes = int(hwm) * 1024


# ------------------------------------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_passes(step: Callable[[], object], sync: Callable[[], None], warmup: int, iters: int | None,
                min_seconds: float = 2.0, cpu_times: list[float] | None = None) -> list[float]:
    """Run `step` `warmup` times untimed, then timed: `iters` times, or (iters None) until at least
    MIN_ITERS passes and `min_seconds` have gone by (at most MAX_ITERS). Returns each pass's wall seconds;
    each pass's process CPU seconds (all threads) go to `cpu_times` when given."""
    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    while True:
        sync()
        cpu = time.process_time()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
        if iters is not None:
            if len(times) >= iters:
                break
        elif (len(times) >= MIN_ITERS and sum(times) >= min_seconds) or len(times) >= MAX_ITERS:
            break
    return times


def summarize(seconds: Iterable[float]) -> dict:
    """Median, p95, min, max and interquartile range of pass times, in milliseconds."""
    ms = np.asarray(list(seconds), dtype=np.float64) * 1e3
    q1, q3 = np.percentile(ms, [25, 75])
    return {
        "p50": float(np.median(ms)),
        "p95": float(np.percentile(ms, 95)),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "iqr": float(q3 - q1),
        "n": int(ms.size),
    }


def scan_timer(device: torch.device):
    """Within the block, count and time every selective scan of the network (`modules.vss.watch_scans`,
    synchronising `device` around each): `.seconds`, `.calls`. On CUDA the total is an upper bound (the
    synchronisation removes the scan's overlap with its neighbours); on CPU it is exact."""
    from diffmf_cli.modules.vss import watch_scans

    return watch_scans(synchronizer(device))


def fit_exponent(pixels: Iterable[float], seconds: Iterable[float]) -> float:
    """Least-squares slope of log(time) against log(pixel count): 1.0 means time grows linearly."""
    x = np.log(np.asarray(list(pixels), dtype=np.float64))
    y = np.log(np.asarray(list(seconds), dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_exponent needs at least two different sizes")
    slope, _intercept = np.polyfit(x, y, 1)
    return float(slope)


# -------------------------------------------------------------------------------------------- model


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


# ----------------------------------------------------------------------------------------- one row


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


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


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
        from diffmf_cli.fusion import FuseOptions, FusionEngine, tile_starts

        options = FuseOptions(batch_size=batch, tile=tile)
        engine = FusionEngine(bench.model, device, dtype, options)
        ir_np, vis_np = ir[:, 0].cpu().numpy(), vis[:, 0].cpu().numpy()
        if height > tile or width > tile:
            overlap = min(options.tile_overlap, tile // 2)
            row["tiles_per_pair"] = (len(tile_starts(height, min(tile, height), overlap))
                                     * len(tile_starts(width, min(tile, width), overlap)))

        def step():
            return engine.fuse_arrays(ir_np, vis_np, tile)
    else:
        def step():
            with _autocast(device, dtype):
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
        if not isinstance(exc, MemoryError) and not _is_oom(exc):
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
        "precision": _precision_name(dtype),
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
        progress(f"timing {size[0]}x{size[1]}, batch {batch}, {_precision_name(dtype)}")
        rows.append(measure(bench, size, batch, device, dtype, warmup=warmup, iters=iters,
                            min_seconds=min_seconds, tile=tile, scan=scan))
    return rows


# ------------------------------------------------------------------------------------ compare paths


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
                    with _autocast(device, dtype):
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
            "device": str(device), "precision": _precision_name(dtype)}


# --------------------------------------------------------------------------------------------- sweep


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


def plot_sweep(sweep: dict, path: Path, title: str) -> Path:
    """A PNG of time per megapixel against image size (megapixels, log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in sweep["rows"] if r["error"] is None), key=lambda r: r["height"] * r["width"])
    if not ok:
        raise UsageError("--sweep: no size could be measured, nothing to plot")
    mp = [r["height"] * r["width"] / 1e6 for r in ok]
    per_mp = [r["ms_per_megapixel"] / 1e3 for r in ok]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(mp, per_mp, marker="o")
    for x, y, r in zip(mp, per_mp, ok):
        ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("seconds per megapixel")
    exponent = sweep.get("exponent")
    ax.set_title(title + (f"  (time ∝ pixels^{exponent:.2f})" if exponent is not None else ""), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ real pipeline


def time_pipeline(bench: BenchModel, ir_dir: Path, vis_dir: Path, device, dtype=torch.float32, *,
                  batch_size: int | None = None, tile: int | None = None, limit: int | None = None,
                  progress: Progress = _nothing) -> dict:
    """Time `diffmf fuse` on real files (outputs go to a temporary folder, deleted afterwards).

    Two measurements of the same pairs, after one untimed warm-up pair:
    * end to end: `FusionEngine.run`, exactly what `diffmf fuse` runs (reading and writing in threads,
      overlapping the model), wall time;
    * split: the same stages one after another per pair — read (`load_pair`), model (`fuse_arrays`, host
      arrays in and out, with the engine's tiling plan), write (colour back, encode, atomic write) — so each
      stage's time is its own.
    """
    from diffmf_cli.fusion import FuseOptions, FusionEngine, load_pair
    from diffmf_cli.io.images import SIXTEEN_BIT_EXTENSIONS, from_float, write_image, ycrcb_to_rgb
    from diffmf_cli.io.pairs import pair_folders

    for folder in (ir_dir, vis_dir):
        if not Path(folder).is_dir():
            raise UsageError(f"--input: {folder} is not a folder")
    pairing = pair_folders(ir_dir, vis_dir)
    pairs = pairing.pairs[:limit] if limit else pairing.pairs
    if not pairs:
        raise InputError(f"--input: no pairs in {ir_dir} and {vis_dir} (files are paired by name)")
    options = FuseOptions(batch_size=batch_size, tile=tile, overwrite=True)
    engine = FusionEngine(bench.model, device, dtype, options)
    sync = synchronizer(device)
    with tempfile.TemporaryDirectory(prefix="diffmf-benchmark-") as tmp:
        out_dir = Path(tmp)
        progress("warm-up pair")
        ir, y, _crcb, _depth = load_pair(pairs[0])
        _batch, plan_tile = engine.plan(*ir.shape)
        engine.fuse_arrays(ir[None], y[None], plan_tile)
        sync()

        progress(f"end to end: {len(pairs)} pairs")
        start = time.perf_counter()
        results = list(engine.run(pairs, out_dir / "run"))
        sync()
        wall = time.perf_counter() - start
        fused = [r for r in results if r.status == "fused"]
        failed = [r for r in results if r.status == "failed"]

        progress(f"stage by stage: {len(pairs)} pairs")
        read_s = model_s = write_s = 0.0
        pixels = 0
        split_out = out_dir / "split"
        split_out.mkdir()
        measured = 0
        for pair in pairs:
            t0 = time.perf_counter()
            try:
                ir, y, crcb, depth = load_pair(pair)
            except InputError:
                continue
            t1 = time.perf_counter()
            _batch, plan_tile = engine.plan(*ir.shape)
            fused_y = engine.fuse_arrays(ir[None], y[None], plan_tile)[0]
            sync()
            t2 = time.perf_counter()
            target = split_out / f"{pair.name.replace('/', '_')}.png"
            out_depth = depth if target.suffix in SIXTEEN_BIT_EXTENSIONS else 8
            image = from_float(ycrcb_to_rgb(fused_y, crcb) if crcb is not None else fused_y, out_depth)
            write_image(target, image, durable=options.durable)
            t3 = time.perf_counter()
            read_s, model_s, write_s = read_s + t1 - t0, model_s + t2 - t1, write_s + t3 - t2
            pixels += ir.size
            measured += 1
    stage_total = read_s + model_s + write_s
    megapixels = sum((r.size[0] * r.size[1]) for r in fused if r.size) / 1e6
    return {
        "ir_dir": str(ir_dir),
        "vis_dir": str(vis_dir),
        "pairs": len(pairs),
        "fused": len(fused),
        "failed": len(failed),
        "errors": [r.error for r in failed][:5],
        "device": str(device),
        "precision": _precision_name(dtype),
        "batch_size": engine.options.batch_size,
        "tile": tile,
        "end_to_end_s": wall,
        "end_to_end_pairs_per_s": len(fused) / wall if wall > 0 else None,
        "end_to_end_megapixels_per_s": megapixels / wall if wall > 0 else None,
        "split_pairs": measured,
        "split_megapixels": pixels / 1e6,
        "read_s": read_s,
        "model_s": model_s,
        "write_s": write_s,
        "read_share": read_s / stage_total if stage_total else None,
        "model_share": model_s / stage_total if stage_total else None,
        "write_share": write_s / stage_total if stage_total else None,
        "overlap_gain": stage_total / wall if wall > 0 and measured == len(fused) else None,
    }


# ---------------------------------------------------------------------------------------- rendering


def csv_rows(result: dict) -> tuple[list[str], list[dict]]:
    """The rows `--format csv` writes for a result of any mode, with machine columns so each line stands
    alone in a file that collects results over time."""
    machine = result["machine"]
    extra = {k: machine.get(k) for k in ("timestamp", "cpu_model", "gpu_name", "torch_version", "git_commit")}
    extra["model"] = result["model"]["source"]
    if result.get("compare") is not None:
        rows = result["compare"]["rows"]
    elif result.get("pipeline") is not None:
        rows = [{k: v for k, v in result["pipeline"].items() if k != "errors"}]
    else:
        rows = result["rows"]
    fields = list(rows[0]) if rows else row_fields()
    return fields + list(extra), [{**row, **extra} for row in rows]

