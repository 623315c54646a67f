"""The Ray engine: `diffmf fuse --engine ray` runs the pairs on a Ray cluster's actor pool with Ray Data.

    driver: pair list ─> ray.data.from_items ─> map_batches(FuseWorker, actor pool) ─> iter_rows ─> results
    worker: FuseWorker holds one `Fuser` (model loaded once per actor) and runs the local engine
            (`Fuser.run`) on each batch: same reading, skip rule, atomic writer and bytes as a local run

Only paths and one-line records travel through Ray's object store; the workers read the images and write
the outputs themselves (every node must see the same files, as on a shared file system).

Exactly once. Ray retries the batch of an actor that died (`SIGKILL`, a lost node). Outputs it had
written are found again by the retry, which must neither rewrite them nor call them skipped: the driver
notes each output's identity (inode, size, mtime) before the run, and a worker leaves alone any output whose
identity changed since, reporting it "fused" (this run made it). Outputs that existed before the run follow
the local rule (skipped, or with `overwrite` replaced once).

Ray is an optional extra (``pip install "diffmf[ray]"``), imported here only, and only when asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diffmf_cli import errors
from diffmf_cli.errors import DiffMFError, UsageError
from diffmf_cli.fusion import PairResult, output_path
from diffmf_cli.io.pairs import Pair

INSTALL_HINT = 'pip install "diffmf[ray]" (in a clone: pip install -e ".[ray]")'
#: Object store of a local cluster: only paths and records travel through it.
LOCAL_OBJECT_STORE_BYTES = 128 << 20


def import_ray():
    """The `ray` module with Ray Data, or UsageError with the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except Exception as exc:  # a broken install fails in several ways, not only ImportError
        raise UsageError(f"--engine ray needs Ray Data, which is not installed ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no module'}); "
                         f"install it with {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class FuserSpec:
    """How each worker builds its `Fuser` (the arguments of `Fuser(...)`) and writes (`Fuser.run`)."""

    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    tile: int | None = None
    batch_size: int | None = None
    ext: str = "png"
    gray: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class RaySettings:
    """The actor pool: `workers` actors, each with `cpus_per_worker` CPUs (and torch threads) and
    `gpus_per_worker` GPUs; `address` a cluster to join (default: $RAY_ADDRESS, else a new local cluster)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if self.cpus_per_worker <= 0:
            raise UsageError(f"--cpus-per-worker {self.cpus_per_worker}: must be more than 0")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker {self.gpus_per_worker}: must be 0 or more")


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file, or None when it does not exist. An atomic rename always
    gives the path a new inode, so any write since changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FuseWorker:
    """Ray Data's callable class: one `Fuser` per actor, a batch of pairs per call, one record per pair."""

    def __init__(self, spec: FuserSpec, threads: int = 1):
        import torch

        from diffmf_cli.api import Fuser

        torch.set_num_threads(max(1, threads))
        self.spec = spec
        self.fuser, self.fatal = None, None
        try:
            self.fuser = Fuser(spec.model, weights=spec.weights, device=spec.device, precision=spec.precision,
                               tile=spec.tile, batch_size=spec.batch_size)
        except DiffMFError as exc:  # told to the driver with the first batch, typed (Ray would lose the type)
            self.fatal = exc

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        order = [int(row["index"]) for row in rows]
        try:
            records = self._fuse(rows)
        except DiffMFError as exc:  # a whole-run error (UsageError, CheckpointError): the driver raises it
            records = {i: {"fatal": type(exc).__name__, "message": str(exc)} for i in order}
        return {"index": np.asarray(order, dtype=np.int64),
                "record": np.asarray([json.dumps(records[i]) for i in order], dtype=object)}

    def _fuse(self, rows: list[dict]) -> dict[int, dict]:
        if self.fatal is not None:
            raise self.fatal
        records: dict[int, dict] = {}
        todo: list[tuple[int, Pair]] = []
        for row in rows:
            index, out = int(row["index"]), Path(str(row["out"]))
            pair = Pair(str(row["name"]), Path(str(row["ir"])), Path(str(row["vis"])), out)
            before = json.loads(str(row["before"]))
            now = _identity(out)
            if now is not None and (before is None or tuple(before) != now):
                # written by an earlier attempt of this run (a worker that died after writing it)
                records[index] = PairResult(index, pair.name, pair.ir, pair.vis, out, "fused").to_record()
            else:
                todo.append((index, pair))
        if todo:
            spec = self.spec
            results = self.fuser.run([pair for _, pair in todo], None, ext=spec.ext, gray=spec.gray,
                                     overwrite=spec.overwrite)
            for result in results:
                index = todo[result.index][0]
                records[index] = result.to_record()
        return records


def _result(index: int, record: dict) -> PairResult:
    """A worker's `PairResult.to_record()` back as a PairResult."""
    path = lambda key: None if record.get(key) is None else Path(record[key])  # noqa: E731
    size = None if record.get("height") is None else (record["height"], record["width"])
    return PairResult(index, record["name"], path("ir"), path("vis"), path("output"), record["status"],
                      record.get("error"), float(record.get("ms") or 0.0), size, int(record.get("tiles") or 0),
                      record.get("reason"), [("warning", m) for m in record.get("warnings") or []])


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 points at /dev/null inside the block (native code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def connect(settings: RaySettings):
    """Join the cluster at `settings.address` / $RAY_ADDRESS, or start a local one sized for the pool.
    Returns (ray, connected_here); a run that connected disconnects at the end (which also stops a local
    cluster it started). A process already connected (``ray.init`` by the caller) stays so."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the core worker's C++ log goes to stderr
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        with _native_stderr_silenced():  # Ray's C++ start-up lines; its errors come back as exceptions
            if address:
                ray.init(address=address, **quiet)
            else:
                # Ray runs workers at nice 15 by default: on cores shared with other jobs the pool would then
                # get a fraction of what a local run gets. Our workers are the job, so they run at nice 0.
                os.environ.setdefault("RAY_worker_niceness", "0")
                cpus = max(os.cpu_count() or 1, int(round(settings.workers * settings.cpus_per_worker)))
                ray.init(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        why = _one_line(exc) + (f"; {_one_line(exc.__cause__)}" if exc.__cause__ is not None else "")
        raise UsageError(f"--engine ray: cannot start or join {where} ({why})") from None
    return ray, True


def run_ray(pairs: Iterable[Pair], out_dir: Path | None, spec: FuserSpec,
            settings: RaySettings) -> Iterator[PairResult]:
    """Fuse every pair on a Ray actor pool; yields one PairResult per pair as each batch finishes (not in
    input order), as `Fuser.run` does for a local run."""
    rows = []
    for index, pair in enumerate(pairs):
        try:
            out = output_path(pair, out_dir, spec.ext)
        except DiffMFError as exc:
            yield PairResult(index, pair.name, pair.ir, pair.vis, None, "failed", str(exc))
            continue
        rows.append({"index": index, "name": pair.name, "ir": str(pair.ir), "vis": str(pair.vis), "out": str(out),
                     "before": json.dumps(_identity(out))})
    if not rows:
        return
    # Ray prints what its cluster reports (a worker died, and so on) on the driver's stdout, which belongs to
    # the records (--json, --jsonl): while the run lasts, sys.stdout is stderr (the CLI keeps its own handle).
    with contextlib.redirect_stdout(sys.stderr):
        ray, connected = connect(settings)
        try:
            yield from _run_dataset(ray, rows, spec, settings)
        except DiffMFError:
            raise
        except Exception as exc:
            raise DiffMFError(f"the Ray run failed ({_one_line(exc)})") from None
        finally:
            if connected:
                with _native_stderr_silenced():
                    ray.shutdown()


def _run_dataset(ray, rows: list[dict], spec: FuserSpec, settings: RaySettings) -> Iterator[PairResult]:
    import ray.data

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    batch = spec.batch_size or (8 if spec.device.startswith("cuda") or settings.gpus_per_worker else 1)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * settings.workers)))
    fused = dataset.map_batches(
        FuseWorker,
        fn_constructor_kwargs={"spec": spec, "threads": max(1, int(settings.cpus_per_worker))},
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.workers),
        num_cpus=settings.cpus_per_worker,
        num_gpus=settings.gpus_per_worker or None,
    )
    for row in fused.iter_rows():
        record = json.loads(row["record"])
        if "fatal" in record:
            kind = getattr(errors, record["fatal"], DiffMFError)
            raise (kind if isinstance(kind, type) and issubclass(kind, DiffMFError) else DiffMFError)(record["message"])
        yield _result(int(row["index"]), record)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


__all__ = ["INSTALL_HINT", "FuseWorker", "FuserSpec", "RaySettings", "connect", "import_ray", "run_ray"]
