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

The package: `sizes` (standard sets, parsing), `machine` (facts), `memory` (peak memory), `timing` (passes
and summaries), `runs` (the network timed: rows, tables, scan-path comparison, sweeps), `pipeline` (`diffmf
fuse` on real files), `output` (plot, CSV rows). Tiles, batches and the write step are the fusion engine's
own (`FusionEngine.tiles_per_image`, `fuse_images`, `write_fused`), never re-derived here.
"""

from diffmf_cli.benchmark.machine import ENV_FACTS, cpu_model, machine_facts, set_threads
from diffmf_cli.benchmark.memory import PeakMemory
from diffmf_cli.benchmark.output import csv_rows, plot_sweep
from diffmf_cli.benchmark.pipeline import time_pipeline
from diffmf_cli.benchmark.runs import (
    REFERENCE_MAX_PIXELS,
    BenchModel,
    check_scan,
    compare_scan_paths,
    load_model,
    measure,
    row_fields,
    run_sweep,
    run_table,
    synthetic_pair,
)
from diffmf_cli.benchmark.sizes import COMPARE_SIZES, DEFAULT_SIZES, SWEEP_SIZES, parse_counts, parse_size, parse_sizes
from diffmf_cli.benchmark.timing import MAX_ITERS, MIN_ITERS, fit_exponent, scan_timer, summarize, time_passes
from diffmf_cli.device import synchronizer

__all__ = [
    "COMPARE_SIZES", "DEFAULT_SIZES", "ENV_FACTS", "MAX_ITERS", "MIN_ITERS", "REFERENCE_MAX_PIXELS", "SWEEP_SIZES",
    "BenchModel", "PeakMemory", "check_scan", "compare_scan_paths", "cpu_model", "csv_rows", "fit_exponent",
    "load_model", "machine_facts", "measure", "parse_counts", "parse_size", "parse_sizes", "plot_sweep",
    "row_fields", "run_sweep", "run_table", "scan_timer", "set_threads", "summarize", "synchronizer",
    "synthetic_pair", "time_passes", "time_pipeline",
]
