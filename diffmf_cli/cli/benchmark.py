"""`diffmf benchmark`: throughput, latency, memory and scaling of the network, measured like an instrument.

Parse the command line, load the model, hand the measuring to `diffmf_cli.benchmark` and render what comes
back: a header of machine facts and method, then a table (or one JSON document, or CSV) on stdout or in
--output FILE; progress lines go to stderr. Exit codes: 0 measured, 1 bad input files, 2 bad usage.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table

from diffmf_cli.cli.app import app
from diffmf_cli.cli.common import consoles, run_command
from diffmf_cli.errors import UsageError

FORMATS = ("table", "json", "csv")


@app.command("benchmark")
def benchmark_command(
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Comma-separated HxW sizes (N for NxN) "
                                        "[default: 256x256,480x640,1024x1280; --sweep: 128..2048 squares; "
                                        "--compare-scan: 64x64,128x128]."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated batch sizes "
                                              "[default: 1 on CPU, 1,4,16 on CUDA]."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16, fp16 (half on CUDA only); "
                                  "comma-separated to compare, e.g. fp32,bf16."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and the numba scan "
                                          "[default: torch's]."),
    scan: Optional[str] = typer.Option(None, "--scan", help="Force a scan path: reference, cpu, triton, mamba."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Time tiled fusion (the fuse engine's path for "
                                       "large images) with tiles of at most N×N pixels."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed passes before timing each row."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed passes per row [default: at least 3 and "
                                        "at least --min-time seconds]."),
    min_time: float = typer.Option(2.0, "--min-time", help="With automatic --iters: seconds of timed passes "
                                   "per row at least."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Time a preset's architecture (tiny, cpu, gpu) "
                                         "with random weights."),
    weights: Optional[str] = typer.Option(None, "--weights", help="A weights file or shipped model name "
                                          "[default: the shipped ir-vis model]."),
    compare_scan: bool = typer.Option(False, "--compare-scan", help="Run every available scan path on the "
                                      "same inputs: speed ratios and largest output difference."),
    input_dirs: Optional[Tuple[Path, Path]] = typer.Option(None, "--input", metavar="IR_DIR VIS_DIR",
                                                           help="Time the whole fuse pipeline on real files "
                                                           "(read, model, write)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="With --input: use the first N pairs only."),
    sweep: bool = typer.Option(False, "--sweep", help="Time 5 sizes from 128×128 to 2048×2048, fit time ∝ "
                               "pixels^k and plot time per megapixel."),
    plot: Path = typer.Option(Path("diffmf-benchmark-sweep.png"), "--plot", help="With --sweep: where the "
                              "PNG plot goes."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="The device's peak dense rate "
                                                "(TFLOP/s, datasheet, for the precision timed): adds the "
                                                "achieved fraction of it for the dense layers."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to FILE instead "
                                          "of stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
) -> None:
    """Measure pairs/s, megapixels/s, latency and peak memory of the network on synthetic pairs."""
    err, _out = consoles()

    def body() -> int:
        text = _run(err, BenchmarkRequest(sizes, batch_sizes, device, precision, threads, scan, tile, warmup,
                                          iters, min_time, preset, weights, compare_scan, input_dirs, limit,
                                          sweep, plot, peak_tflops, fmt, output, quiet))
        if output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            _write_text(output, text)
            if not quiet:
                err.print(f"wrote {output}", markup=False)
        return 0

    run_command("benchmark", err, body)


@dataclass(frozen=True)
class BenchmarkRequest:
    """What `diffmf benchmark` was asked, as given on the command line (checked by `_run`)."""

    sizes: str | None
    batch_sizes: str | None
    device: str
    precision: str
    threads: int | None
    scan: str | None
    tile: int | None
    warmup: int
    iters: int | None
    min_time: float
    preset: str | None
    weights: str | None
    compare_scan: bool
    input_dirs: tuple | None
    limit: int | None
    sweep: bool
    plot: Path
    peak_tflops: float | None
    fmt: str
    output: Path | None
    quiet: bool


def _run(err, req: BenchmarkRequest) -> str:
    iters = req.iters
    input_dirs = req.input_dirs
    limit = req.limit
    fmt = req.fmt
    import torch

    from diffmf_cli import benchmark as bm
    from diffmf_cli.fusion import resolve_device, resolve_precision

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if input_dirs is not None and all(p is None for p in input_dirs):
        input_dirs = None
    modes = [name for name, on in (("--compare-scan", req.compare_scan), ("--input", input_dirs is not None),
                                   ("--sweep", req.sweep)) if on]
    if len(modes) > 1:
        raise UsageError(f"give one of {', '.join(modes)} at a time")
    if input_dirs is not None:  # what benchmark writes stays out of the folders it reads
        from diffmf_cli.io.outputs import check_outside

        if req.output is not None:
            check_outside(req.output, input_dirs, "-o")
    if req.warmup < 0:
        raise UsageError(f"--warmup {req.warmup}: must be 0 or more")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters {iters}: must be at least 1")
    if req.tile is not None and req.tile < 16:
        raise UsageError(f"--tile {req.tile}: tiles must be at least 16 pixels")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1")
    if req.peak_tflops is not None and req.peak_tflops <= 0:
        raise UsageError(f"--peak-tflops {req.peak_tflops}: must be positive")
    if req.compare_scan and req.scan is not None:
        raise UsageError("--compare-scan runs every scan path; do not also give --scan")

    torch_device = resolve_device(req.device)
    dtypes = [resolve_precision(p, torch_device) for p in req.precision.split(",") if p.strip()]
    if not dtypes:
        raise UsageError(f"--precision {req.precision!r}: no precision given")
    default_batches = [1] if torch_device.type == "cpu" else [1, 4, 16]
    batches = bm.parse_counts(req.batch_sizes, "--batch-sizes") if req.batch_sizes else default_batches
    if modes and len(dtypes) > 1:
        raise UsageError(f"{modes[0]} takes one --precision, got {req.precision}")
    if modes and req.batch_sizes and len(batches) > 1:
        raise UsageError(f"{modes[0]} takes one --batch-sizes value, got {req.batch_sizes}")
    if req.sweep:
        chosen = bm.parse_sizes(req.sizes) if req.sizes else list(bm.SWEEP_SIZES)
        if len(set(h * w for h, w in chosen)) < 2:
            raise UsageError("--sweep needs at least two different sizes")
    elif req.compare_scan:
        chosen = bm.parse_sizes(req.sizes) if req.sizes else list(bm.COMPARE_SIZES)
    else:
        chosen = bm.parse_sizes(req.sizes) if req.sizes else list(bm.DEFAULT_SIZES)
    bm.check_scan(req.scan, torch_device)
    bm.set_threads(req.threads)
    progress = (lambda msg: None) if req.quiet else (lambda msg: err.print(msg, markup=False))

    progress("loading the model and counting its compute")
    bench = bm.load_model(torch_device, preset=req.preset, weights=req.weights)
    result: dict = {
        "machine": bm.machine_facts(torch_device),
        "model": {"source": bench.source, "weights": bench.weights, "preset": bench.preset,
                  "config": bench.config.to_dict(), **bench.cost},
        "settings": {"warmup": req.warmup, "iters": iters, "min_time_s": req.min_time, "scan": req.scan,
                     "tile": req.tile, "threads": torch.get_num_threads(),
                     "scan_env": os.environ.get("DIFFMF_SCAN") or None},
        "rows": [], "compare": None, "sweep": None, "pipeline": None,
    }

    with torch.inference_mode():
        if req.compare_scan:
            result["compare"] = bm.compare_scan_paths(bench, chosen, torch_device, dtypes[0], warmup=req.warmup,
                                                      iters=iters, min_seconds=req.min_time, progress=progress)
        elif input_dirs is not None:
            result["pipeline"] = bm.time_pipeline(bench, input_dirs[0], input_dirs[1], torch_device, dtypes[0],
                                                  batch_size=batches[0] if req.batch_sizes else None, tile=req.tile,
                                                  limit=limit, progress=progress)
        elif req.sweep:
            swept = bm.run_sweep(bench, chosen, torch_device, dtypes[0], batch=batches[0], warmup=req.warmup,
                                 iters=iters, min_seconds=req.min_time, scan=req.scan, progress=progress)
            result["rows"] = swept["rows"]
            title = f"{bench.preset or 'model'} on {result['machine']['gpu_name'] or result['machine']['cpu_model']}"
            swept["plot"] = str(bm.plot_sweep(swept, req.plot, title))
            result["sweep"] = {k: v for k, v in swept.items() if k != "rows"}
        else:
            result["rows"] = bm.run_table(bench, chosen, batches, torch_device, dtypes, warmup=req.warmup,
                                          iters=iters, min_seconds=req.min_time, tile=req.tile, scan=req.scan,
                                          progress=progress)
    result["settings"]["peak_tflops"] = req.peak_tflops
    for row in result["rows"]:
        # dense-layer FLOPs (2 per multiply-add) achieved, against the peak the user gave
        achieved = row["achieved_gmacs_per_s"]
        row["achieved_tflops"] = None if achieved is None else 2 * achieved / 1e3
        row["fraction_of_peak"] = (row["achieved_tflops"] / req.peak_tflops
                                   if req.peak_tflops and row["achieved_tflops"] is not None else None)
    try:
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        result["machine"]["load_average_at_end"] = None

    if fmt == "json":
        return json.dumps(result, indent=2, default=str) + "\n"
    if fmt == "csv":
        fields, rows = bm.csv_rows(result)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return _render_table(result, to_terminal=req.output is None and sys.stdout.isatty())


# ------------------------------------------------------------------------------------------ rendering


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _header(result: dict) -> list[str]:
    m, model, s = result["machine"], result["model"], result["settings"]
    load = m["load_average_1_5_15"]
    end = m.get("load_average_at_end")
    gpu = (f"GPU {m['gpu_name']} ({_size(m['gpu_memory_bytes'])}, sm {m['gpu_capability']}, CUDA "
           f"{m['cuda_version']})" if m["gpu_name"] else "no GPU used")
    lines = [
        f"diffmf benchmark  {m['timestamp']}  (diffmf {m['diffmf_version']}"
        + (f", commit {m['git_commit']}" if m["git_commit"] else "") + ")",
        f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {s['threads']} torch threads, "
        f"{_size(m['memory_bytes'])} RAM; {gpu}; torch {m['torch_version']}, numba {m['numba_version']} "
        f"({m['numba_threading_layer'] or 'threads not started'})",
    ]
    if m["env"]:
        lines.append("env:     " + " ".join(f"{k}={v}" for k, v in m["env"].items()))
    if load:
        lines.append(f"load:    {load[0]}/{load[1]}/{load[2]} (1/5/15 min) at start"
                     + (f", {end[0]} at end" if end else "") + "; CPU-s = process CPU time (all threads), "
                     "CPU use = CPU-s / (wall time × threads), low when other work holds the cores")
    lines.append(f"model:   {model['source']}")
    lines.append(f"         {model['params']:,} parameters; {model['macs_per_megapixel'] / 1e9:.2f} GMAC per "
                 f"megapixel (dense layers) + {model['scan_updates_per_megapixel'] / 1e9:.2f} G scan state "
                 "updates per megapixel")
    iters = f"{s['iters']} timed passes" if s["iters"] else f"at least 3 timed passes and {s['min_time_s']:g} s"
    if result["pipeline"] is not None:
        lines.append("method:  one untimed warm-up pair, then the pairs end to end and stage by stage; outputs go "
                     "to a temporary folder, deleted afterwards")
        return lines
    if result["compare"] is not None:
        lines.append(f"method:  {s['warmup']} warm-up passes, then {iters} per path and size, under "
                     "torch.inference_mode, device synchronised before each clock read; scan time from one "
                     "further pass with every scan call timed")
        return lines
    lines.append(f"method:  {s['warmup']} warm-up passes, then {iters} per row, under torch.inference_mode, "
                 "device synchronised before each clock read; synthetic pairs made before timing; "
                 "latency = pass time / batch (median p50, p95, IQR)")
    rows = result["rows"]
    kinds = {r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")}
    if "cuda max allocated" in kinds:
        lines.append("memory:  CUDA max allocated during each row (peak stats reset before it)")
    elif kinds:
        before = [r["memory_before_bytes"] for r in rows if r.get("memory_before_bytes")]
        how = ("VmHWM, reset before each row" if "process peak RSS" in kinds
               else "lifetime peak: the reset is not available here")
        lines.append(f"memory:  process peak RSS during each row ({how}); whole process, which held "
                     f"{_size(min(before)) if before else '-'} before the first row")
    if s["scan_env"]:
        lines.append(f"note:    $DIFFMF_SCAN={s['scan_env']} forces the scan path")
    return lines


def _render_table(result: dict, to_terminal: bool) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=None if to_terminal else 200, highlight=False, soft_wrap=False,
                      force_terminal=to_terminal, color_system="auto" if to_terminal else None)
    for line in _header(result):
        console.print(line, markup=False, soft_wrap=True)
    if result["compare"] is not None:
        _render_compare(console, result["compare"])
    elif result["pipeline"] is not None:
        _render_pipeline(console, result["pipeline"])
    else:
        _render_rows(console, result["rows"])
        if result["sweep"] is not None:
            sw = result["sweep"]
            k_all, k_large = sw["exponent"], sw["exponent_without_smallest"]
            if k_all is not None:
                console.print(f"scaling: time ∝ pixels^{k_all:.3f} over all sizes"
                              + (f", ^{k_large:.3f} without the smallest" if k_large is not None else "")
                              + " (1.0 = linear)", markup=False, soft_wrap=True)
            console.print(f"plot:    {sw['plot']}", markup=False, soft_wrap=True)
    return buffer.getvalue()


def _render_rows(console: Console, rows: list[dict]) -> None:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    tiled = any(r["tile"] for r in rows)
    columns = ["size", "batch", "device", "precision", "scan", "pairs/s", "MP/s", "ms/pair p50", "p95",
               "IQR", "peak memory", "params", "GMAC/MP"]
    if tiled:
        columns.insert(5, "tiles")
    with_peak = any(r.get("fraction_of_peak") is not None for r in rows)
    if with_peak:
        columns += ["TFLOP/s", "of peak"]
    on_cpu = any(r["cpu_utilization"] is not None for r in rows)
    if on_cpu:
        columns += ["CPU-s/pair", "CPU use"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("size", "device", "precision", "scan") else "right")
    notes = []
    for r in rows:
        if r["error"]:
            notes.append(f"{r['size']} batch {r['batch']} {r['precision']}: {r['error']}")
        cells = [r["size"], str(r["batch"]), r["device"], r["precision"], r["scan_path"] or "-",
                 _num(r["pairs_per_s"]), _num(r["megapixels_per_s"]), _num(r["ms_per_pair_p50"], 1),
                 _num(r["ms_per_pair_p95"], 1), _num(r["ms_per_pair_iqr"], 1), _size(r["peak_memory_bytes"]),
                 f"{r['params']:,}", _num(r["macs_per_megapixel"] / 1e9)]
        if tiled:
            cells.insert(5, str(r["tiles_per_pair"]))
        if with_peak:
            frac = r.get("fraction_of_peak")
            cells += [_num(r.get("achieved_tflops"), 3), "-" if frac is None else f"{100 * frac:.2f} %"]
        if on_cpu:
            util = r["cpu_utilization"]
            cells += [_num(r["cpu_s_per_pair_p50"], 3), "-" if util is None else f"{100 * util:.0f} %"]
        table.add_row(*cells)
    console.print(table)
    for note in notes:
        console.print(f"failed:  {note}", markup=False, soft_wrap=True)


def _render_compare(console: Console, compare: dict) -> None:
    console.print(f"scan paths on {compare['device']} ({compare['precision']}): {', '.join(compare['paths'])}; "
                  f"automatic: {compare['automatic_path']}", markup=False, soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in ("size", "path", "ms/pair p50", "IQR", "speed vs auto", "scan ms/pair", "scan speed vs auto",
                 "max |Δ| output", "Δ against"):
        table.add_column(name, justify="left" if name in ("size", "path", "Δ against") else "right")
    for r in compare["rows"]:
        table.add_row(r["size"], r["path"] + (" (auto)" if r["automatic"] else ""), _num(r["ms_per_pair_p50"], 1),
                      _num(r["ms_per_pair_iqr"], 1), _ratio(r["speed_vs_automatic"]), _num(r["scan_ms_per_pair"], 1),
                      _ratio(r["scan_speed_vs_automatic"]), f"{r['max_abs_diff']:.2e}", r["diff_against"])
    console.print(table)
    for note in compare["notes"]:
        console.print(f"note:    {note}", markup=False, soft_wrap=True)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _render_pipeline(console: Console, p: dict) -> None:
    lines = [
        f"pipeline: {p['ir_dir']} + {p['vis_dir']}: {p['pairs']} pairs, {p['fused']} fused, {p['failed']} failed "
        f"on {p['device']} ({p['precision']}, batch {p['batch_size']}, tile {p['tile'] or 'auto'})",
        f"end to end (diffmf fuse's engine, threads overlapping read/model/write): {p['end_to_end_s']:.2f} s, "
        f"{_num(p['end_to_end_pairs_per_s'])} pairs/s, {_num(p['end_to_end_megapixels_per_s'])} MP/s",
        f"stage by stage ({p['split_pairs']} pairs, {p['split_megapixels']:.2f} MP, one after another):",
    ]
    for stage in ("read", "model", "write"):
        share = p[f"{stage}_share"]
        per = p[f"{stage}_s"] / p["split_pairs"] * 1e3 if p["split_pairs"] else None
        lines.append(f"  {stage:<6} {p[f'{stage}_s']:8.2f} s  {_num(per, 1):>9} ms/pair  "
                     f"{'-' if share is None else f'{100 * share:.1f} %'}")
    if p["overlap_gain"] is not None:
        lines.append(f"overlap: the stages' sum is {p['overlap_gain']:.2f}× the end-to-end wall time")
    for error in p["errors"]:
        lines.append(f"failed:  {error}")
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


def _write_text(path: Path, text: str) -> None:
    from diffmf_cli.io.files import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None
