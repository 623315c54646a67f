"""Timing passes: warm-up, device synchronisation around every clock read, robust summaries, scan time."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import torch

from diffmf_cli.device import synchronizer

#: Automatic iteration count: at least this many timed passes, and at least `min_seconds` of them.
MIN_ITERS = 3
MAX_ITERS = 50


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
