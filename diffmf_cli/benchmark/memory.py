"""Peak memory over a measurement: CUDA max allocated, or the process's peak RSS on CPU (see the package doc)."""

from __future__ import annotations

import resource

import torch

from diffmf_cli.benchmark.machine import _read_text


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
