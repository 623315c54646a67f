"""Where and how the network computes: device and precision names, autocast, synchronisation, free memory.

Precision names are what the commands accept: ``fp32`` everywhere, ``bf16`` and ``fp16`` on CUDA only. Weights
stay float32; half precision is applied by autocast around the forward pass (`autocast`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

from diffmf_cli.errors import UsageError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(text: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; UsageError otherwise."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use cpu or auto)")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise UsageError(f"--device {text}: expected cuda or cuda:N") from None
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s) (0..{count - 1})")
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    raise UsageError(f"--device {text}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(text: str, device: torch.device) -> torch.dtype:
    """``fp32`` anywhere; ``bf16`` / ``fp16`` on CUDA only (UsageError elsewhere)."""
    key = (text or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise UsageError(f"--precision {text}: expected one of {', '.join(PRECISIONS)}")
    if key != "fp32" and device.type != "cuda":
        raise UsageError(f"--precision {key}: half precision runs on CUDA only (this run is on {device})")
    if key == "bf16" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return PRECISIONS[key]


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new allocations on `device` (CUDA: driver's free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def precision_name(dtype: torch.dtype) -> str:
    """The name `resolve_precision` accepts for `dtype` ("fp32", "bf16", "fp16"), else str(dtype)."""
    return {v: k for k, v in PRECISIONS.items()}.get(dtype, str(dtype))


def autocast(device: torch.device, dtype: torch.dtype):
    """A context that runs the forward pass in `dtype` (autocast), or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def release_cache(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back (after an out-of-memory failure); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
