"""`diffmf fuse` in pipelines: --pairs - (the list on stdin), --shard auto (SLURM arrays), --jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.io.images import write_image

_register()
RNG = np.random.default_rng(11)


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    for i in range(8):
        write_image(tmp_path / "ir" / f"p{i}.png", RNG.integers(0, 256, (10, 12)).astype(np.uint8))
        write_image(tmp_path / "vis" / f"p{i}.png", RNG.integers(0, 256, (10, 12, 3)).astype(np.uint8))
    return tmp_path / "ir", tmp_path / "vis"


def fuse(*args, weights, input=None, env=None):
    return CliRunner().invoke(app, ["fuse", *map(str, args), "--weights", str(weights)], input=input, env=env)


def test_pair_list_on_stdin(folders, tmp_path, tiny_weights, monkeypatch):
    ir, vis = folders
    monkeypatch.chdir(tmp_path)
    listing = "ir,vis,out\n" + "".join(f"ir/p{i}.png,vis/p{i}.png\n" for i in range(3)) + "ir/p5.png,vis/p5.png,x/five.tif\n"
    res = fuse("--pairs", "-", "-o", "out", "--json", weights=tiny_weights, input=listing)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fused"] == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("[!.]*")) == ["p0.png", "p1.png", "p2.png"]
    assert (tmp_path / "x" / "five.tif").is_file()
    res = fuse("--pairs", "-", "-o", "out", weights=tiny_weights, input="ir/p0.png\n")
    assert res.exit_code == 2 and res.stderr.strip() == (
        "diffmf fuse: error: <stdin>:1: expected 'ir,vis' or 'ir,vis,out', got 1 cells")


def slurm(task: int, low: int = 3, count: int = 3) -> dict[str, str]:
    return {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_COUNT": str(count)}


def test_shard_auto_under_a_slurm_array_matches_explicit_shards(folders, tmp_path, tiny_weights):
    ir, vis = folders
    for k in range(3):
        auto = fuse(ir, vis, "-o", tmp_path / "auto", "--shard", "auto", "--json", weights=tiny_weights,
                    env=slurm(3 + k))
        explicit = fuse(ir, vis, "-o", tmp_path / f"explicit{k}", "--shard", f"{k}/3", "--json",
                        weights=tiny_weights)
        assert auto.exit_code == 0 and explicit.exit_code == 0, auto.output + explicit.output
        names = lambda res: sorted(r["name"] for r in json.loads(res.stdout)["pairs"])  # noqa: E731
        assert names(auto) == names(explicit)
    assert len(list((tmp_path / "auto").glob("[!.]*"))) == 8  # the three array tasks together: every pair


def test_shard_auto_outside_an_array_job_is_one_line(folders, tmp_path, tiny_weights):
    ir, vis = folders
    env = {k: None for k in slurm(0)}  # unset, whatever the machine running the tests has
    res = fuse(ir, vis, "-o", tmp_path / "out", "--shard", "auto", weights=tiny_weights, env=env)
    assert res.exit_code == 2
    assert res.stderr.startswith("diffmf fuse: error: --shard auto: not in a SLURM array job")
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_jsonl_is_one_record_per_pair_and_nothing_else_on_stdout(folders, tmp_path, tiny_weights):
    ir, vis = folders
    (vis / "p7.png").write_bytes(b"broken")
    res = fuse(ir, vis, "-o", tmp_path / "out", "--jsonl", weights=tiny_weights)
    assert res.exit_code == 1
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(r["name"] for r in records) == [f"p{i}" for i in range(8)]
    assert [r["status"] for r in records].count("failed") == 1
    assert "7 fused, 0 skipped, 1 failed" in res.stderr  # the summary goes to stderr
    assert fuse(ir, vis, "-o", tmp_path / "o", "--jsonl", "--json", weights=tiny_weights).exit_code == 2


def test_jsonl_records_arrive_while_the_run_goes_on(tmp_path, tiny_weights):
    import os
    import subprocess
    import sys

    for i in range(40):
        write_image(tmp_path / "ir" / f"s{i:02d}.png", RNG.integers(0, 256, (128, 160)).astype(np.uint8))
        write_image(tmp_path / "vis" / f"s{i:02d}.png", RNG.integers(0, 256, (128, 160)).astype(np.uint8))
    cmd = [sys.executable, "-m", "diffmf_cli", "fuse", str(tmp_path / "ir"), str(tmp_path / "vis"), "-o",
           str(tmp_path / "out"), "--jsonl", "--weights", str(tiny_weights)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = json.loads(proc.stdout.readline())
    running = proc.poll() is None
    rest, _ = proc.communicate(timeout=300)
    assert first["status"] == "fused" and Path(first["output"]).is_file()
    assert running, "the first record came only when the run had ended"
    assert proc.returncode == 0 and len(rest.splitlines()) == 39
