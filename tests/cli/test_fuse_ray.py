"""`diffmf fuse --engine ray` on a real local Ray cluster (one per module: ray.init(num_cpus=2)).

Byte equality with the local engine, a worker SIGKILLed mid-run, a driver SIGKILLed mid-run and resumed, and
the one-line error without Ray. Skipped when Ray is not installed (CI installs the `ray` extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.io.images import write_image

_register()
RNG = np.random.default_rng(23)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, Path]:
    """48 pairs of 128x160 (colour visible): long enough for a kill to land in the middle of a run."""
    root = tmp_path_factory.mktemp("many")
    for i in range(48):
        write_image(root / "ir" / f"m{i:02d}.png", RNG.integers(0, 256, (128, 160)).astype(np.uint8))
        write_image(root / "vis" / f"m{i:02d}.png", RNG.integers(0, 256, (128, 160, 3)).astype(np.uint8))
    return root / "ir", root / "vis"


@pytest.fixture(scope="module")
def local_outputs(many, tiny_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    res = fuse(*many, "-o", out, "-q", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    return out


def fuse(*args, weights):
    return CliRunner().invoke(app, ["fuse", *map(str, args), "--weights", str(weights)])


def cli(*args, weights) -> list[str]:
    return [sys.executable, "-m", "diffmf_cli", "fuse", *map(str, args), "--weights", str(weights)]


def env_for(address: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=address, OMP_NUM_THREADS="1")
    env.pop("RAY_BACKEND_LOG_LEVEL", None)
    return env


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_engine_writes_the_local_bytes_and_records(cluster, tmp_path, tiny_weights):
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    spec = {"g": (20, 28, None), "c": (17, 23, 3), "w16": (12, 30, 3)}
    for name, (h, w, c) in spec.items():
        top, dtype = (65536, np.uint16) if "16" in name else (256, np.uint8)
        write_image(ir / f"{name}.png", RNG.integers(0, top, (h, w)).astype(dtype))
        write_image(vis / f"{name}.png", RNG.integers(0, top, (h, w) if c is None else (h, w, c)).astype(dtype))
    write_image(ir / "bad.png", RNG.integers(0, 256, (5, 5)).astype(np.uint8))
    (vis / "bad.png").write_bytes(b"not an image")
    local = fuse(ir, vis, "-o", tmp_path / "local", "--json", weights=tiny_weights)
    remote = fuse(ir, vis, "-o", tmp_path / "ray", "--json", "--engine", "ray", "--workers", "2",
                  weights=tiny_weights)
    assert local.exit_code == remote.exit_code == 1, remote.output  # the bad pair: exit 1 in both
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert b["device"] == "ray (2 workers)"
    assert (b["fused"], b["failed"]) == (a["fused"], a["failed"]) == (3, 1)
    strip = lambda doc: [{k: v for k, v in r.items() if k not in ("ms", "output")} for r in doc["pairs"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert "not a readable image" in remote.stderr
    again = json.loads(fuse(ir, vis, "-o", tmp_path / "ray", "--json", "--engine", "ray",
                            weights=tiny_weights).stdout)
    assert (again["skipped"], again["fused"]) == (3, 0)  # the local skip rule, run by the workers


def _descendants_named(text: str) -> list[int]:
    """Processes started (through Ray) by this test process whose command line contains `text`."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdlines[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue

    def mine(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, cmd in cmdlines.items() if text in cmd and mine(pid)]


def test_a_worker_killed_mid_run_costs_only_time(cluster, many, local_outputs, tmp_path, tiny_weights):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(*many, "-o", out, "--engine", "ray", "--workers", "2", "--json",
                                weights=tiny_weights),
                            env=env_for(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    first_inode: dict[str, int] = {}  # an atomic rewrite would give the name a new inode
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        for p in (out.iterdir() if out.is_dir() else ()):
            if p.suffix == ".png":
                try:
                    first_inode.setdefault(p.name, p.stat().st_ino)
                except FileNotFoundError:
                    pass
        if not killed and len(first_inode) >= 4:
            killed = _descendants_named("FuseWorker")[:1]
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed, "no worker was found to kill"
    assert proc.returncode == 0, stderr
    doc = json.loads(stdout)  # Ray's "a worker died" notice went to stderr, not into the JSON
    assert (doc["fused"], doc["skipped"], doc["failed"]) == (48, 0, 0)
    assert_same_files(out, local_outputs)
    rewritten = [name for name, ino in first_inode.items() if (out / name).stat().st_ino != ino]
    assert rewritten == [], "outputs written twice"


def test_jsonl_streams_and_a_killed_driver_resumes(cluster, many, local_outputs, tmp_path, tiny_weights):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(*many, "-o", out, "--engine", "ray", "--workers", "2", "--jsonl",
                                weights=tiny_weights),
                            env=env_for(cluster), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    records = [json.loads(proc.stdout.readline()) for _ in range(4)]  # streamed while the run goes on
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert {r["status"] for r in records} == {"fused"} and all(Path(r["output"]).is_file() for r in records)
    written = [p for p in out.iterdir() if p.suffix == ".png"]
    assert 4 <= len(written) < 48, "the driver was not killed in the middle"
    time.sleep(1.0)  # the cluster ends the dead driver's actors; a write already under way may still land
    written = [p for p in out.iterdir() if p.suffix == ".png"]
    res = fuse(*many, "-o", out, "--engine", "ray", "--workers", "2", "--json", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["skipped"] >= len(written) and doc["skipped"] + doc["fused"] == 48 and doc["failed"] == 0
    assert_same_files(out, local_outputs)


def test_without_ray_the_engine_fails_in_one_line(monkeypatch, tmp_path, tiny_weights):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    write_image(tmp_path / "ir" / "a.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "vis" / "a.png", np.zeros((8, 8), np.uint8))
    res = fuse(tmp_path / "ir", tmp_path / "vis", "-o", tmp_path / "out", "--engine", "ray", weights=tiny_weights)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Ray Data" in lines[0] and 'pip install "diffmf[ray]"' in lines[0]
    assert not (tmp_path / "out").exists()
    res = fuse(tmp_path / "ir", tmp_path / "vis", "-o", tmp_path / "out", "--workers", "2", weights=tiny_weights)
    assert res.exit_code == 2 and "go with --engine ray" in res.stderr


def _rows(pairs: list[tuple[str, Path, Path, Path]], before) -> dict:
    return {"index": np.arange(len(pairs)), "name": np.array([p[0] for p in pairs]),
            "ir": np.array([str(p[1]) for p in pairs]), "vis": np.array([str(p[2]) for p in pairs]),
            "out": np.array([str(p[3]) for p in pairs]), "before": np.array([json.dumps(b) for b in before])}


def test_a_retried_batch_reports_but_never_rewrites_what_an_earlier_attempt_wrote(tmp_path, tiny_weights):
    from diffmf_cli.ray_engine import FuserSpec, FuseWorker, _identity

    for name in ("a", "b"):
        write_image(tmp_path / "ir" / f"{name}.png", RNG.integers(0, 256, (8, 10)).astype(np.uint8))
        write_image(tmp_path / "vis" / f"{name}.png", RNG.integers(0, 256, (8, 10)).astype(np.uint8))
    pairs = [(n, tmp_path / "ir" / f"{n}.png", tmp_path / "vis" / f"{n}.png", tmp_path / "out" / f"{n}.png")
             for n in ("a", "b")]
    worker = FuseWorker(FuserSpec(weights=str(tiny_weights), device="cpu"))
    first = worker(_rows(pairs[:1], [None]))  # the first attempt writes a.png, then (say) its actor dies
    assert json.loads(first["record"][0])["status"] == "fused"
    inode = _identity(pairs[0][3])
    retry = worker(_rows(pairs, [None, None]))  # the retry of the whole batch, as the driver saw it at the start
    assert [json.loads(r)["status"] for r in retry["record"]] == ["fused", "fused"]
    assert _identity(pairs[0][3]) == inode  # not written again
    again = worker(_rows(pairs, [_identity(p[3]) for p in pairs]))  # a later run: the local skip rule
    assert [json.loads(r)["status"] for r in again["record"]] == ["skipped", "skipped"]


def test_a_worker_that_cannot_load_the_model_tells_the_driver_its_typed_error(tmp_path):
    from diffmf_cli.ray_engine import FuserSpec, FuseWorker

    worker = FuseWorker(FuserSpec(weights=str(tmp_path / "missing.safetensors"), device="cpu"))
    pairs = [("a", tmp_path / "a.png", tmp_path / "a.png", tmp_path / "o.png")]
    record = json.loads(worker(_rows(pairs, [None]))["record"][0])
    assert record["fatal"] == "CheckpointError" and "missing.safetensors" in record["message"]
