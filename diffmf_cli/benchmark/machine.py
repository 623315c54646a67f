"""Facts about the machine that decide the numbers (CPU, GPU, threads, library versions, load)."""

from __future__ import annotations

import datetime
import os
import platform

import torch

from diffmf_cli.errors import UsageError
from diffmf_cli.provenance import git_commit


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
        "git_commit": git_commit(short=True),
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
