"""`diffmf fuse` end to end: Typer's CliRunner on generated images with the tiny preset, one real
subprocess run, a kill -9 / resume run, and the shipped weights on the packaged sample pairs."""

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
from diffmf_cli.io.images import read_image, write_image

_register()
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "diffmf_cli" / "samples"
RNG = np.random.default_rng(7)


def img(h, w, c=None, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    return RNG.integers(0, top + 1, size=(h, w) if c is None else (h, w, c)).astype(dtype)


def make_folders(root: Path, spec: dict[str, tuple]) -> tuple[Path, Path]:
    """spec: name -> (ir_ext, vis_ext, h, w, vis_channels)."""
    ir, vis = root / "ir", root / "vis"
    for name, (ir_ext, vis_ext, h, w, c) in spec.items():
        write_image(ir / f"{name}{ir_ext}", img(h, w))
        write_image(vis / f"{name}{vis_ext}", img(h, w, c))
    return ir, vis


def fuse(*args, weights=None):
    argv = ["fuse", *map(str, args)]
    if weights is not None:
        argv += ["--weights", str(weights)]
    return CliRunner().invoke(app, argv)


STANDARD = {
    "a": (".png", ".jpg", 20, 28, 3),
    "b": (".PNG", ".png", 20, 28, None),
    "c": (".bmp", ".tif", 9, 13, 3),
    "d": (".png", ".png", 1, 1, None),  # tiny images fuse like any other
}


def test_folders_are_fused_by_stem(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, STANDARD)
    write_image(vis / "lonely.png", img(5, 5))
    res = fuse(ir, vis, "-o", tmp_path / "out", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("[!.]*")) == ["a.png", "b.png", "c.png", "d.png"]
    assert read_image(tmp_path / "out" / "a.png").shape == (20, 28, 3)  # colour visible -> colour output
    assert read_image(tmp_path / "out" / "b.png").shape == (20, 28)
    assert read_image(tmp_path / "out" / "d.png").shape == (1, 1)
    assert f"no partner: {vis / 'lonely.png'}" in res.stderr
    assert "4 fused, 0 skipped, 0 failed, 1 without a partner" in res.stdout
    # not a terminal: no progress bar, nothing else on stderr
    assert res.stderr.strip().splitlines() == [f"no partner: {vis / 'lonely.png'}"]


def test_json_has_one_record_per_pair(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, STANDARD)
    res = fuse(ir, vis, "-o", tmp_path / "out", "--json", "--ext", "tif", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["fused"], doc["skipped"], doc["failed"]) == (4, 0, 0)
    assert [r["name"] for r in doc["pairs"]] == ["a", "b", "c", "d"]
    rec = doc["pairs"][0]
    assert rec["status"] == "fused" and rec["error"] is None and rec["ms"] > 0
    assert rec["output"] == str(tmp_path / "out" / "a.tif") and Path(rec["output"]).is_file()
    again = json.loads(fuse(ir, vis, "-o", tmp_path / "out", "--json", "--ext", "tif",
                            weights=tiny_weights).stdout)
    assert again["skipped"] == 4 and {r["status"] for r in again["pairs"]} == {"skipped"}


def test_bad_inputs_fail_one_line_each_and_the_rest_is_done(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, {"good1": (".png", ".png", 16, 16, 3), "good2": (".jpg", ".jpg", 16, 16, 3),
                                      "corrupt": (".png", ".png", 16, 16, 3), "truncated": (".jpg", ".jpg", 40, 40, 3),
                                      "mismatch": (".png", ".png", 16, 16, 3)})
    data = bytearray((ir / "corrupt.png").read_bytes())
    data[20:60] = bytes(40)
    (ir / "corrupt.png").write_bytes(bytes(data))
    trunc = (vis / "truncated.jpg").read_bytes()
    (vis / "truncated.jpg").write_bytes(trunc[: len(trunc) // 2])
    write_image(vis / "mismatch.png", img(17, 16, 3))
    (ir / "empty.png").write_bytes(b"")
    write_image(vis / "empty.png", img(16, 16))
    (ir / "text.png").write_text("this is a text file with an image extension\n")
    write_image(vis / "text.png", img(16, 16))
    res = fuse(ir, vis, "-o", tmp_path / "out", weights=tiny_weights)
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("[!.]*")) == ["good1.png", "good2.png"]
    failed = [line for line in res.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 5
    expect = {
        "corrupt": str(ir / "corrupt.png"), "truncated": str(vis / "truncated.jpg"),
        "mismatch": str(vis / "mismatch.png"), "empty": str(ir / "empty.png"), "text": str(ir / "text.png"),
    }
    for name, path in expect.items():
        assert any(path in line for line in failed), (name, failed)
    assert any("16x16" in line and "16x17" in line for line in failed)
    assert "2 fused, 0 skipped, 5 failed" in res.stdout


def test_unwritable_output_fails_that_pair_only(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path / "in", {"x/p": (".png", ".png", 8, 8, None), "y/q": (".png", ".png", 8, 8, None)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("a file where the sub-folder x/ should go")
    res = fuse(ir, vis, "-o", out, "--recursive", weights=tiny_weights)
    assert res.exit_code == 1, res.output
    assert (out / "y" / "q.png").is_file()
    [line] = [line for line in res.stderr.splitlines() if line.startswith("failed: ")]
    assert str(out / "x" / "p.png") in line and "cannot write" in line
    # an output "folder" that is a file is bad usage
    res = fuse(ir, vis, "-o", out / "x", "--recursive", weights=tiny_weights)
    assert res.exit_code == 2 and "not a folder" in res.stderr


def test_single_pair_of_files(tmp_path, tiny_weights):
    write_image(tmp_path / "ir.png", img(12, 10))
    write_image(tmp_path / "vis.jpg", img(12, 10, 3))
    res = fuse(tmp_path / "ir.png", tmp_path / "vis.jpg", "-o", tmp_path / "fused.jpg", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "fused.jpg").shape == (12, 10, 3)
    res = fuse(tmp_path / "ir.png", tmp_path / "vis.jpg", "-o", tmp_path / "dir", "--gray", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "dir" / "ir.png").shape == (12, 10)


def test_pair_list_csv(tmp_path, tiny_weights):
    write_image(tmp_path / "thermal" / "t1.png", img(8, 9))
    write_image(tmp_path / "rgb" / "frame_a.png", img(8, 9, 3))
    write_image(tmp_path / "thermal" / "t2.png", img(6, 6))
    write_image(tmp_path / "rgb" / "frame_b.png", img(6, 6))
    (tmp_path / "list.csv").write_text("ir,vis,out\nthermal/t1.png,rgb/frame_a.png\n"
                                       "thermal/t2.png,rgb/frame_b.png,custom/b.tif\n")
    res = fuse("--pairs", tmp_path / "list.csv", "-o", tmp_path / "out", "--json", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "t1.png").is_file() and (tmp_path / "custom" / "b.tif").is_file()
    res = fuse(tmp_path, tmp_path, "--pairs", tmp_path / "list.csv", "-o", tmp_path / "o2", weights=tiny_weights)
    assert res.exit_code == 2 and "not both" in res.stderr
    res = fuse("--pairs", tmp_path / "list.csv", weights=tiny_weights)  # row 1 has no output of its own
    assert res.exit_code == 2 and "-o OUT_DIR" in res.stderr
    (tmp_path / "all_named.csv").write_text("thermal/t2.png,rgb/frame_b.png,named/b.png\n")
    res = fuse("--pairs", tmp_path / "all_named.csv", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "named" / "b.png").is_file()


def test_single_pair_output_of_an_unknown_format_is_refused(tmp_path, tiny_weights):
    """`-o single.webp` once made a folder of that name and wrote the output inside it."""
    ir, vis = make_folders(tmp_path, {"a": (".png", ".png", 8, 8, None)})
    res = fuse(ir / "a.png", vis / "a.png", "-o", tmp_path / "single.webp", weights=tiny_weights)
    assert res.exit_code == 2 and ".webp is not an output format" in res.stderr
    assert not (tmp_path / "single.webp").exists()
    res = fuse(ir / "a.png", vis / "a.png", "-o", tmp_path / ".hidden.png", weights=tiny_weights)
    assert res.exit_code == 2 and "a hidden name" in res.stderr and not (tmp_path / ".hidden.png").exists()
    for folder in ("run.v2", "res.png"):  # existing folders take the output, whatever their name
        (tmp_path / folder).mkdir()
        assert fuse(ir / "a.png", vis / "a.png", "-o", tmp_path / folder, weights=tiny_weights).exit_code == 0
        assert (tmp_path / folder / "a.png").is_file()


def test_strict_refuses_unpaired_files(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, {"a": (".png", ".png", 8, 8, None)})
    write_image(ir / "orphan.png", img(8, 8))
    res = fuse(ir, vis, "-o", tmp_path / "out", "--strict", weights=tiny_weights)
    assert res.exit_code == 2 and str(ir / "orphan.png") in res.stderr  # nothing was done: 2, as the README says
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shards_are_disjoint_stable_and_cover(tmp_path, tiny_weights):
    names = {f"n{i:02d}": (".png", ".png", 6, 7, None) for i in range(12)}
    ir, vis = make_folders(tmp_path, names)
    seen = []
    for k in range(3):
        out = tmp_path / f"shard{k}"
        res = fuse(ir, vis, "-o", out, "--shard", f"{k}/3", "--json", weights=tiny_weights)
        assert res.exit_code == 0, res.output
        mine = sorted(p.stem for p in out.glob("[!.]*"))
        again = json.loads(fuse(ir, vis, "-o", tmp_path / f"again{k}", "--shard", f"{k}/3", "--json",
                                weights=tiny_weights).stdout)
        assert sorted(r["name"] for r in again["pairs"]) == mine  # stable
        seen += mine
    assert sorted(seen) == sorted(names)  # disjoint and complete
    assert fuse(ir, vis, "-o", tmp_path / "x", "--shard", "3/3", weights=tiny_weights).exit_code == 2


def test_resume_after_partial_run_gives_identical_outputs(tmp_path, tiny_weights):
    spec = {f"r{i}": (".png", ".jpg", 24, 30, 3) for i in range(6)}
    ir, vis = make_folders(tmp_path, spec)
    full = tmp_path / "full"
    assert fuse(ir, vis, "-o", full, weights=tiny_weights).exit_code == 0
    part = tmp_path / "part"
    assert fuse(ir, vis, "-o", part, "--shard", "0/2", weights=tiny_weights).exit_code == 0
    done = len(list(part.glob("[!.]*")))
    res = fuse(ir, vis, "-o", part, "--json", weights=tiny_weights)
    doc = json.loads(res.stdout)
    assert (doc["skipped"], doc["fused"]) == (done, 6 - done)
    for p in full.glob("[!.]*"):
        assert (part / p.name).read_bytes() == p.read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "tpu"], "--device tpu"),
        (["--precision", "bf16", "--device", "cpu"], "CUDA only"),
        (["--batch-size", "0"], "--batch-size"),
        (["--tile", "big"], "--tile big"),
        (["--model", "ir-vis"], "not both"),
        (["--ext", "gif"], "--ext gif"),
    ],
)
def test_usage_errors_exit_2(tmp_path, tiny_weights, extra, message):
    ir, vis = make_folders(tmp_path, {"a": (".png", ".png", 4, 4, None)})
    res = fuse(ir, vis, "-o", tmp_path / "out", *extra, weights=tiny_weights)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_folder_unknown_option_and_bad_weights_exit_2(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, {"a": (".png", ".png", 4, 4, None)})
    res = fuse(tmp_path / "nope", vis, "-o", tmp_path / "out", weights=tiny_weights)
    assert res.exit_code == 2 and "does not exist" in res.stderr
    assert fuse(ir, vis, "-o", tmp_path / "out", "--frobnicate").exit_code == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_weights.read_bytes()[:1000])
    res = fuse(ir, vis, "-o", tmp_path / "out", weights=bad)
    assert res.exit_code == 2 and str(bad) in res.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_without_trained_weights(tmp_path, monkeypatch):
    import diffmf_cli.weights as weights_module

    monkeypatch.setattr(weights_module, "_SEARCH_DIRS", (tmp_path / "nowhere",))
    ir, vis = make_folders(tmp_path, {"a": (".png", ".png", 4, 4, None)})
    res = fuse(ir, vis, "-o", tmp_path / "out")
    assert res.exit_code == 2
    assert "not installed" in res.stderr and "nothing is fused" in res.stderr
    assert not (tmp_path / "out").exists()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_real_subprocess_run(tmp_path, tiny_weights):
    ir, vis = make_folders(tmp_path, STANDARD)
    cmd = [sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "-o", str(tmp_path / "out"),
           "--weights", str(tiny_weights), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fused"] == 4 and proc.stderr == ""
    assert len(list((tmp_path / "out").glob("[!.]*"))) == 4


@pytest.mark.slow
def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path, tiny_weights):
    n = 40
    ir, vis = make_folders(tmp_path, {f"k{i:02d}": (".png", ".jpg", 96, 128, 3) for i in range(n)})
    base = [sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "--weights", str(tiny_weights)]
    out = tmp_path / "killed"
    proc = subprocess.Popen(base + ["-o", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for p in out.glob("[!.]*") if p.suffix == ".png") >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert 3 <= len(written) < n, "the run was not killed in the middle"
    for name in written:  # no truncated image, ever
        assert read_image(out / name).shape == (96, 128, 3)
    rerun = subprocess.run(base + ["-o", str(out), "--json"], env=_env(), capture_output=True, text=True,
                           timeout=300)
    doc = json.loads(rerun.stdout)
    assert rerun.returncode == 0 and doc["skipped"] == len(written) and doc["fused"] == n - len(written)
    clean = tmp_path / "clean"
    assert subprocess.run(base + ["-o", str(clean)], env=_env(), capture_output=True, timeout=300).returncode == 0
    final = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert final == sorted(p.name for p in clean.iterdir() if not p.name.startswith("."))
    for name in final:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_shipped_weights_fuse_the_sample_pairs(tmp_path):
    from diffmf_cli.errors import CheckpointError
    from diffmf_cli.weights import resolve_weights

    try:
        resolve_weights("ir-vis")
    except CheckpointError as exc:
        pytest.skip(f"the shipped IR-visible weights are not trained yet ({exc})")
    res = CliRunner().invoke(app, ["fuse", str(SAMPLES / "ir"), str(SAMPLES / "vis"), "-o", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["fused"] == 6 and doc["failed"] == 0
    for rec in doc["pairs"]:
        fused = read_image(rec["output"])
        vis = read_image(rec["vis"])
        assert fused.shape[:2] == vis.shape[:2]
        assert fused.ndim == (3 if rec["name"].startswith(("roadscene", "harvard")) else 2)
        assert 5 < fused.mean() < 250 and fused.std() > 5  # an image, not a blank or saturated frame
