"""What `diffmf fuse --engine ray` costs against a local run of the same pairs, on this machine.

Each configuration is a real `diffmf fuse` process on the same pairs (default: the 50 RoadScene test pairs),
with the same number of worker threads in total:

  local        --engine local, torch with T threads (OMP_NUM_THREADS=T)
  ray-fresh    --engine ray --workers T --cpus-per-worker 1: starts (and stops) its own local Ray cluster
  ray-joined   the same, joining a cluster this script started beforehand (RAY_ADDRESS): no cluster start-up

The configurations run in turns (local, ray-fresh, ray-joined, local, ...), so that a load that changes
over time (the machine is shared) weighs on all of them alike; the load average is reported at each run.
Wall time is the process's; CPU time is user+system of every process the run used (the CLI, and for Ray
the raylet, GCS and worker processes, joined cluster included), sampled from /proc every 0.1 s (a process
that lives less than that is missed). Outputs are checked to be byte-identical across configurations.

Also measured: the start-up (ray.init until ready) and shutdown of a local cluster, and the driver's
ceiling: rows per second through a no-op `map_batches` actor pool, batch size 1 (what limits throughput
once workers are many and fast).

    python scripts/bench_ray.py [--pairs-dir ../shared/data/roadscene/test] [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user+system CPU seconds) for every process we may read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return table


def descendants(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class CpuMeter:
    """CPU seconds spent, while it runs, by the processes under `roots` (and the roots themselves)."""

    def __init__(self, roots_fn):
        self.roots_fn = roots_fn
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stop = threading.Event()
        table = proc_table()
        for pid in self._pids(table):
            self.first[pid] = table[pid][1]
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _pids(self, table):
        pids = set()
        for root in self.roots_fn():
            if root in table:
                pids |= {root} | descendants(table, root)
        return pids

    def _loop(self):
        while not self.stop.is_set():
            table = proc_table()
            for pid in self._pids(table):
                self.first.setdefault(pid, 0.0)
                self.last[pid] = table[pid][1]
            self.stop.wait(0.1)

    def seconds(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.last[pid] - self.first.get(pid, 0.0) for pid in self.last)


def run_cli(args: list[str], env: dict, extra_roots=()) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffmf_cli", "fuse", *args, "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meter = CpuMeter(lambda: [proc.pid, *extra_roots])
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    cpu = meter.seconds()
    if proc.returncode != 0:
        raise SystemExit(f"diffmf fuse {' '.join(args)} failed ({proc.returncode}): {stderr.strip()[-500:]}")
    doc = json.loads(stdout)
    busy = [r["ms"] for r in doc["pairs"] if r["status"] == "fused"]
    return {"wall_s": wall, "cpu_s": cpu, "load1": load, "fused": doc["fused"],
            "pair_ms_median": statistics.median(busy) if busy else 0.0}


def cluster_startup(repeats: int, cpus: int) -> list[tuple[float, float]]:
    """(start-up s, shutdown s) of a local cluster, `repeats` times, each in a fresh process."""
    code = (
        "import logging, time, ray\n"
        "t = time.perf_counter()\n"
        f"ray.init(address='local', num_cpus={cpus}, include_dashboard=False, log_to_driver=False, "
        "logging_level=logging.ERROR, object_store_memory=128 << 20)\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "up = time.perf_counter() - t\n"
        "t = time.perf_counter()\n"
        "ray.shutdown()\n"
        "print(up, time.perf_counter() - t)\n"
    )
    out = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        up, down = map(float, res.stdout.split()[-2:])
        out.append((up, down))
    return out


def driver_ceiling(ray, rows: int) -> float:
    """Rows per second through a no-op actor-pool map_batches (batch 1, 2 actors) on the joined cluster,
    from the first row out to the last (the actors' start-up is before the first row)."""
    import logging

    import numpy as np
    import ray.data

    class Noop:
        def __call__(self, batch):
            return {"i": np.asarray(batch["i"])}

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    ds = ray.data.from_items([{"i": i} for i in range(rows)], override_num_blocks=8)
    ds = ds.map_batches(Noop, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=2),
                        num_cpus=0.5)
    first = None
    count = 0
    for _ in ds.iter_rows():
        count += 1
        if first is None:
            first = time.perf_counter()
    return (count - 1) / max(1e-9, time.perf_counter() - first)


class ClusterProcess:
    """A local Ray cluster kept up by a helper process until the block ends (stdin closed: it shuts down)."""

    CODE = (
        "import logging, sys, ray\n"
        "ray.init(address='local', num_cpus={cpus}, include_dashboard=False, log_to_driver=False, "
        "logging_level=logging.ERROR, object_store_memory=128 << 20)\n"
        "print(ray.get_runtime_context().gcs_address, flush=True)\n"
        "sys.stdin.read()\n"
        "ray.shutdown()\n"
    )

    def __init__(self, cpus: int):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE.format(cpus=cpus)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.address = self.proc.stdout.readline().strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def same_bytes(a: Path, b: Path) -> bool:
    """The same images (hidden entries, such as the output records' folder, left out) with the same bytes."""
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    return names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-dir", type=Path, default=REPO.parent / "shared" / "data" / "roadscene" / "test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (local) = Ray workers x 1 CPU")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--ceiling-rows", type=int, default=2000)
    parser.add_argument("--weights", default=None, help="a weights file (default: the shipped ir-vis model)")
    args = parser.parse_args()
    ir, vis = args.pairs_dir / "ir", args.pairs_dir / "vi"
    if not ir.is_dir():
        raise SystemExit(f"{ir}: not found (the RoadScene test split lives in ../shared/data)")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `--engine ray` sets it for the clusters it starts
    import ray

    T = args.threads
    model = ["--weights", args.weights] if args.weights else ["--model", "ir-vis"]
    base_env = dict(os.environ, OMP_NUM_THREADS=str(T))
    base_env.pop("RAY_ADDRESS", None)
    print(f"# bench_ray: {len(list(ir.iterdir()))} pairs from {args.pairs_dir}, {T} threads, {args.rounds} rounds, "
          f"{os.cpu_count()} cores, load average at start {os.getloadavg()}", flush=True)

    startup = cluster_startup(args.startup_repeats, T)
    print(f"local cluster start-up (init + first task): {', '.join(f'{u:.2f}' for u, _ in startup)} s; "
          f"shutdown: {', '.join(f'{d:.2f}' for _, d in startup)} s", flush=True)

    import logging

    ray.init(address="local", num_cpus=T, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, object_store_memory=128 << 20)
    ceiling = driver_ceiling(ray, args.ceiling_rows)
    ray.shutdown()
    print(f"driver ceiling: {ceiling:.0f} rows/s through a no-op 2-actor map_batches, batch size 1 "
          "(first row to last, actor start-up excluded)", flush=True)

    ray_flags = ["--engine", "ray", "--workers", str(T), "--cpus-per-worker", "1"]
    configs = {"local": ["--engine", "local"], "ray-fresh": ray_flags, "ray-joined": ray_flags}
    results: dict[str, list[dict]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name, flags in configs.items():
                out = Path(tmp) / f"{name}{rnd}"
                cli_args = [str(ir), str(vis), "-o", str(out), *model, *flags]
                if name == "ray-joined":
                    # a cluster started just before, in a helper process, joined through RAY_ADDRESS; its
                    # processes (raylet, GCS, workers) are the helper's descendants and count as the run's
                    with ClusterProcess(T) as cluster:
                        # Ray >= 2.5x starts local clusters with token authentication (token in ~/.ray)
                        env = dict(base_env, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="token")
                        res = run_cli(cli_args, env, [cluster.pid])
                else:
                    res = run_cli(cli_args, base_env)
                results[name].append(res)
                print(f"round {rnd} {name:10s}: wall {res['wall_s']:6.1f} s, cpu {res['cpu_s']:6.1f} s, "
                      f"median pair {res['pair_ms_median']:.0f} ms, load1 {res['load1']:.2f}", flush=True)
        ref = Path(tmp) / "local0"
        images = [p for p in ref.iterdir() if p.is_file()]
        written = sum(p.stat().st_size for p in images) / max(1, len(images))
        read = sum(p.stat().st_size for d in (ir, vis) for p in d.iterdir()) / max(1, len(list(ir.iterdir())))
        # CPU kernels split float sums over torch's threads, so bytes match between runs with the same threads
        # per process: the local runs (T threads) among themselves, the Ray runs (1 thread per worker) likewise
        local_same = all(same_bytes(ref, Path(tmp) / f"local{r}") for r in range(args.rounds))
        ray_ref = Path(tmp) / "ray-fresh0"
        ray_same = all(same_bytes(ray_ref, Path(tmp) / f"{n}{r}") for n in ("ray-fresh", "ray-joined")
                       for r in range(args.rounds))
        cross = same_bytes(ref, ray_ref)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print("\n| configuration | wall s (median) | CPU s (median) | wall / local | CPU / local |")
    print("|---|---|---|---|---|")
    for name in configs:
        print(f"| {name} | {med(name, 'wall_s'):.1f} | {med(name, 'cpu_s'):.1f} | "
              f"{med(name, 'wall_s') / med('local', 'wall_s'):.2f} | {med(name, 'cpu_s') / med('local', 'cpu_s'):.2f} |")
    print(f"\noutputs byte-identical: local runs {local_same}, Ray runs {ray_same}, local ({T} threads) vs Ray "
          f"(1 thread per worker) {cross}")
    print(f"file I/O per pair: {read / 1024:.0f} KiB read, {written / 1024:.0f} KiB written; through Ray's object "
          f"store per pair: ~{len(json.dumps({'index': 0, 'name': 'x' * 12, 'ir': str(ir) + '/x' * 8, 'vis': str(vis) + '/x' * 8, 'out': '/tmp/out/' + 'x' * 16, 'before': 'null'}))} B "
          "in (paths), ~400 B out (the record)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
