"""Benchmark the fusion metrics: per-metric time on one 480x640 triple, fast vs straightforward reference code
(measured in the same run), and a folder of triples scored end to end (reading included) with --jobs.

    python scripts/bench_metrics.py                  # one triple + 100 triples with 2 jobs
    python scripts/bench_metrics.py --images 0       # one triple only
    python scripts/bench_metrics.py --json out.json

One core: OpenCV and BLAS are held to one thread before anything is imported. Times are the best of
--repeat runs; both wall-clock and process CPU time are given, because on a shared machine the wall clock
also counts other people's work (the load average is printed). File I/O is outside the per-metric timings
and inside the folder timing. The triple is msrs/test's first pair from ../shared/data when present (fused =
rounded average), else a synthetic scene.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from diffmf_cli.metrics import METRIC_NAMES, METRICS, REFERENCE, compute_metrics  # noqa: E402
from diffmf_cli.metrics.evaluation import plan_evaluation, read_for_metrics, score_tasks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "metrics"))
from metrics_reference import REFERENCE_FUNCTIONS  # noqa: E402  (the test oracle: needs the test extra)
SHARED = REPO.parent / "shared" / "data"
#: the twelve metrics of the reference Python evaluator (it has no Nabf and no MS-SSIM)
EVALUATOR_12 = [m for m in METRIC_NAMES if m not in ("Nabf", "MS-SSIM")]


def _timed(fn, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds over `repeat` calls (after one warm-up call)."""
    fn()
    wall = cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def _triple() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    msrs = SHARED / "msrs" / "test"
    if (msrs / "ir").is_dir():
        name = sorted(p.name for p in (msrs / "ir").iterdir())[0]
        A = read_for_metrics(msrs / "ir" / name)[0]
        B = read_for_metrics(msrs / "vi" / name)[0]
        if A.shape == (480, 640):
            return np.round((A + B) / 2), A, B, f"msrs/test/{name} (fused = rounded average)"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    A = np.clip(np.round(100 + 60 * np.sin(x / 17) * np.cos(y / 23) + rng.normal(0, 8, x.shape)), 0, 255)
    B = np.clip(np.round(90 + 70 * (x > 300) + 30 * np.cos(y / 9) + rng.normal(0, 8, x.shape)), 0, 255)
    return np.round((A + B) / 2), A, B, "synthetic 480x640 scene"


def bench_triple(repeat: int, ref_repeat: int) -> dict:
    F, A, B, source = _triple()
    rows = {}
    for name in METRIC_NAMES:
        spec = METRICS[name]
        fast = _timed(lambda spec=spec: spec(F, A, B, REFERENCE), repeat)
        slow = _timed(lambda ref=REFERENCE_FUNCTIONS[name]: ref(F, A, B), ref_repeat)
        rows[name] = {"fast_wall_s": fast[0], "fast_cpu_s": fast[1], "ref_wall_s": slow[0], "ref_cpu_s": slow[1]}
    whole = _timed(lambda: compute_metrics(F, A, B), repeat)
    ref12 = sum(rows[m]["ref_cpu_s"] for m in EVALUATOR_12)
    return {"source": source, "shape": list(F.shape), "metrics": rows,
            "all14_fast_wall_s": whole[0], "all14_fast_cpu_s": whole[1],
            "all14_ref_cpu_s": sum(r["ref_cpu_s"] for r in rows.values()), "evaluator12_ref_cpu_s": ref12}


def _make_folder(root: Path, count: int) -> None:
    msrs = SHARED / "msrs" / "test"
    for d in ("ir", "vi", "fused"):
        (root / d).mkdir(parents=True)
    if (msrs / "ir").is_dir():
        names = sorted(p.name for p in (msrs / "ir").iterdir())
        pairs = [(msrs / "ir" / n, msrs / "vi" / n) for n in names]
    else:
        pairs = []
    rng = np.random.default_rng(1)
    for i in range(count):
        stem = f"{i:04d}"
        if pairs:
            ir_path, vi_path = pairs[i % len(pairs)]
            shutil.copyfile(ir_path, root / "ir" / f"{stem}.png")
            shutil.copyfile(vi_path, root / "vi" / f"{stem}.png")
            A = read_for_metrics(ir_path)[0]
            B = read_for_metrics(vi_path)[0]
        else:
            A = np.clip(np.round(rng.normal(110, 40, (480, 640))), 0, 255)
            B = np.clip(np.round(rng.normal(120, 35, (480, 640))), 0, 255)
            cv2.imwrite(str(root / "ir" / f"{stem}.png"), A.astype(np.uint8))
            cv2.imwrite(str(root / "vi" / f"{stem}.png"), B.astype(np.uint8))
        cv2.imwrite(str(root / "fused" / f"{stem}.png"), np.round((A + B) / 2).astype(np.uint8))


def bench_folder(count: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="diffmf_bench_") as tmp:
        root = Path(tmp)
        _make_folder(root, count)
        t0 = time.perf_counter()
        plan = plan_evaluation([("fused", root / "fused")], root / "ir", root / "vi")
        results = score_tasks(plan.tasks, METRIC_NAMES, REFERENCE, jobs=jobs)
        in_process = time.perf_counter() - t0
        assert len(results) == count and not any(r.errors for r in results)
        # CPU seconds per triple, reading included, in this process (what each worker spends per triple)
        sample = plan.tasks[: min(10, count)]
        c0 = time.process_time()
        score_tasks(sample, METRIC_NAMES, REFERENCE, jobs=1)
        cpu_per_triple = (time.process_time() - c0) / len(sample)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "diffmf_cli", "evaluate", str(root / "fused"), str(root / "ir"),
             str(root / "vi"), "--jobs", str(jobs), "--format", "json", "--quiet"],
            capture_output=True, text=True,
        )
        cli = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"diffmf evaluate failed: {proc.stderr.strip()}")
    return {"images": count, "jobs": jobs, "score_wall_s": in_process, "cli_wall_s": cli,
            "cpu_per_triple_s": cpu_per_triple, "idle_projection_s": count * cpu_per_triple / jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="runs per fast timing (best is kept)")
    parser.add_argument("--ref-repeat", type=int, default=2, help="runs per reference timing")
    parser.add_argument("--images", type=int, default=100, help="triples in the folder benchmark (0: skip)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the folder benchmark")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    info = {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg_before": os.getloadavg()}
    tri = bench_triple(args.repeat, args.ref_repeat)
    print(f"one triple: {tri['source']}, {tri['shape'][1]}x{tri['shape'][0]}, float64, 1 thread "
          f"(load average {info['load_avg_before'][0]:.1f} on {info['cores']} cores)")
    print(f"{'metric':8s} {'fast cpu ms':>12s} {'fast wall ms':>13s} {'ref cpu ms':>11s} {'speed-up':>9s}")
    for name, r in tri["metrics"].items():
        print(f"{name:8s} {r['fast_cpu_s'] * 1e3:12.1f} {r['fast_wall_s'] * 1e3:13.1f} "
              f"{r['ref_cpu_s'] * 1e3:11.1f} {r['ref_cpu_s'] / max(r['fast_cpu_s'], 1e-9):8.1f}x")
    print(f"all 14 (compute_metrics): cpu {tri['all14_fast_cpu_s'] * 1e3:.1f} ms, wall "
          f"{tri['all14_fast_wall_s'] * 1e3:.1f} ms; reference code: all 14 {tri['all14_ref_cpu_s']:.2f} s cpu, "
          f"the evaluator's 12 {tri['evaluator12_ref_cpu_s']:.2f} s cpu")
    out = {"info": info, "triple": tri}
    if args.images > 0:
        fold = bench_folder(args.images, args.jobs)
        out["folder"] = fold
        print(f"folder: {fold['images']} triples 480x640, --jobs {fold['jobs']}, reading included: "
              f"{fold['score_wall_s']:.2f} s (plan + score), {fold['cli_wall_s']:.2f} s (diffmf evaluate "
              f"subprocess, JSON out); {fold['cpu_per_triple_s'] * 1e3:.0f} ms CPU per triple with reading, so "
              f"{fold['idle_projection_s']:.1f} s on {fold['jobs']} otherwise idle cores")
    info["load_avg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
