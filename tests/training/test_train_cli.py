"""`diffmf train` through Typer's CliRunner (tiny preset, generated images) and one real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.training.loop import RunFiles, load_checkpoint
from diffmf_cli.weights import load_weights

_register()
runner = CliRunner()


@pytest.fixture(autouse=True)
def _reference_scan(monkeypatch):
    monkeypatch.setenv("DIFFMF_SCAN", "reference")  # see test_loop.py


def _folders(root, n=2, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    for i in range(n):
        base = cv2.GaussianBlur(rng.integers(0, 256, size, dtype=np.uint8), (5, 5), 1.5)
        cv2.imwrite(str(root / "ir" / f"p{i}.png"), base)
        cv2.imwrite(str(root / "vi" / f"p{i}.png"), cv2.merge([base, 255 - base, base // 2]))
    return root / "ir", root / "vi"


def _run(*args):
    return runner.invoke(app, ["train", *map(str, args)])


FAST = ["--preset", "tiny", "--batch-size", "2", "--crop", "32", "--threads", "1", "--warmup-steps", "1"]


def test_train_then_export_then_load(tmp_path):
    ir, vis = _folders(tmp_path / "a")
    ir2, vis2 = _folders(tmp_path / "b", n=1, seed=1)
    run = tmp_path / "run"
    res = _run("--ir", ir, "--vis", vis, "--ir", ir2, "--vis", vis2, "--out", run, "--steps", "3",
               "--checkpoint-every", "2", "--log-every", "1", "--val-ir", ir2, "--val-vis", vis2,
               "--val-every", "3", "--seed", "7", *FAST)
    assert res.exit_code == 0, res.output
    assert "step 3/3" in res.stdout and "EMA weights" in res.stdout
    files = RunFiles(run)
    for f in (files.settings, files.data, files.checkpoint, files.log, files.plot, files.model):
        assert f.is_file(), f
    model, meta = load_weights(files.model)
    assert meta["training"]["steps"] == 3 and meta["training"]["seed"] == 7
    assert [d["pairs"] for d in meta["training"]["data"]] == [2, 1]
    assert any(json.loads(l)["kind"] == "val" for l in files.log.read_text().splitlines())

    res = _run("--export", run, "-o", tmp_path / "w" / "x.safetensors", "--name", "mine")
    assert res.exit_code == 0, res.output
    assert load_weights(tmp_path / "w" / "x.safetensors")[1]["name"] == "mine"


def test_export_writes_only_a_weights_file(tmp_path):
    """-o once replaced a training image and the run's own checkpoint with weights (exit 0)."""
    ir, vis = _folders(tmp_path / "a")
    run = tmp_path / "run"
    assert _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", *FAST).exit_code == 0
    image, ckpt = (ir / "p0.png").read_bytes(), RunFiles(run).checkpoint.read_bytes()
    for target, words in ((ir / "p0.png", "is not a diffmf weights file"),
                          (RunFiles(run).checkpoint, "is a file of the run"), (tmp_path / "a", "is a folder")):
        res = _run("--export", run, "-o", target)
        assert res.exit_code == 2 and words in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    assert (ir / "p0.png").read_bytes() == image and RunFiles(run).checkpoint.read_bytes() == ckpt
    # a weights file is replaced, but not the run's own model.safetensors (what marks it finished)
    for target in (tmp_path / "w.safetensors", tmp_path / "w.safetensors"):
        assert _run("--export", run, "-o", target).exit_code == 0
    assert "is a file of the run" in _run("--export", run, "-o", RunFiles(run).model).stderr
    res = _run("--export", run, "-o", tmp_path / "w.safetensors")
    assert "not finished" not in res.stdout  # 1 of 1 steps
    cut = tmp_path / "cut"
    assert _run("--ir", ir, "--vis", vis, "--out", cut, "--steps", "4", "--max-minutes", "0.00001",
                *FAST).exit_code == 0
    res = _run("--export", cut, "-o", tmp_path / "cut.safetensors")
    assert res.exit_code == 0 and "(step 1 of 4: the run is not finished)" in res.stdout, res.output


def test_run_folder_beside_a_pair_lists_images_is_refused_below_them_allowed(tmp_path):
    """A pair list reads no sub-folders: a run folder below its images' folder is fine, the folder itself not."""
    ir, vis = _folders(tmp_path / "data")
    for name in ("ir", "vi"):
        for p in (tmp_path / "data" / name).iterdir():
            p.rename(tmp_path / "data" / f"{name}_{p.name}")
    (tmp_path / "data" / "pairs.csv").write_text("ir_p0.png,vi_p0.png\nir_p1.png,vi_p1.png\n")
    res = _run("--pairs", tmp_path / "data" / "pairs.csv", "--out", tmp_path / "data", "--steps", "1", *FAST)
    assert res.exit_code == 2 and "is the folder of the training image" in res.stderr, res.output
    res = _run("--pairs", tmp_path / "data" / "pairs.csv", "--out", tmp_path / "data" / "runs" / "r1", "--steps",
               "1", *FAST)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("where", ["ir", "ir/run", "vi"])
def test_run_folder_is_never_a_source_folder(tmp_path, where):
    """--out on the IR folder once wrote curves.png over a source of that name."""
    ir, vis = _folders(tmp_path / "a")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "a" / where, "--steps", "1", *FAST)
    assert res.exit_code == 2 and "--out" in res.stderr and "input folder" in res.stderr, res.output
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before


def test_console_figures_say_which_log_row_they_are(tmp_path):
    """Checkpoints between log rows (every 3 steps, rows every 2) and the summary quote rows of log.jsonl,
    labelled with their own step: the console once printed step 2's loss as "step 3"."""
    ir, vis = _folders(tmp_path / "a")
    run = tmp_path / "run"
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "6", "--checkpoint-every", "3",
               "--log-every", "2", *FAST)
    assert res.exit_code == 0, res.output
    rows = {r["step"]: r for r in map(json.loads, RunFiles(run).log.read_text().splitlines()) if r["kind"] == "train"}
    assert sorted(rows) == [2, 4, 6]
    assert f"step 3: checkpoint saved (log row of step 2: loss {rows[2]['loss']:.4f}," in res.stderr
    assert f"step 6: loss {rows[6]['loss']:.4f}," in res.stderr
    assert f"loss {rows[6]['loss']:.4f} (the log's row at step 6)" in res.stdout


def test_config_file_and_command_line_precedence(tmp_path):
    ir, vis = _folders(tmp_path / "d")
    cfg = tmp_path / "cfg" / "run.toml"
    cfg.parent.mkdir()
    cfg.write_text(
        'task = "medical"\npreset = "tiny"\nsteps = 5\nbatch_size = 2\ncrop = 32\nseed = 11\nlr = 1e-3\n'
        'warmup_steps = 1\nthreads = 1\nout = "../run"\n'
        '[[source]]\nir = "../d/ir"\nvis = "../d/vi"\nweight = 2.0\n'
        '[model]\nuse_guidance = false\n[loss]\ngradient = 50.0\n')
    res = _run("--config", cfg, "--steps", "2")  # the command line wins over the file
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["steps"] == 2 and settings["seed"] == 11 and settings["task"] == "medical"
    assert settings["sources"] == [{"ir": str(ir), "vis": str(vis), "weight": 2.0}]
    assert settings["model_overrides"] == {"use_guidance": False} and settings["loss"] == {"gradient": 50.0}
    model, meta = load_weights(tmp_path / "run" / "model.safetensors")
    assert model.config.use_guidance is False and meta["task"] == "medical"


def test_time_budget_then_resume(tmp_path):
    ir, vis = _folders(tmp_path / "d")
    run = tmp_path / "run"
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "3", "--max-minutes", "0.000001", *FAST)
    assert res.exit_code == 0, res.output
    assert "stopped early (time budget)" in res.stdout and "--resume" in res.stdout
    assert load_checkpoint(RunFiles(run).checkpoint)["step"] == 1
    assert not RunFiles(run).model.exists()  # model.safetensors means finished
    assert load_weights(RunFiles(run).partial)[1]["training"]["steps"] == 1  # exported at the stop
    res = _run("--out", run, "--resume", "--steps", "4", *FAST)
    assert res.exit_code == 2 and "differ: steps 3 -> 4" in res.output
    # Repeating the run's own settings (as scripts do) is fine.
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "3", "--resume", "--name", "later", *FAST)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(RunFiles(run).checkpoint)["step"] == 3
    assert not RunFiles(run).partial.exists()
    meta = load_weights(RunFiles(run).model)[1]
    assert meta["training"]["steps"] == 3 and meta["name"] == "later"
    assert meta["training"]["machine"]["threads"] == 1


@pytest.mark.parametrize("args, message", [
    (["--ir", "x"], "must come in pairs"),
    (["--out", "RUN"], "no training data"),
    (["--ir", "MISSING", "--vis", "MISSING", "--out", "RUN"], "does not exist"),
    (["--resume", "--out", "RUN"], "not a training run folder"),
    (["--export", "RUN"], "needs -o"),
    (["--export", "RUN", "-o", "x.safetensors"], "not a training run folder"),
    (["--config", "nope.toml", "--out", "RUN"], "config file does not exist"),
    (["--task", "x", "--ir", "I", "--vis", "V", "--out", "RUN"], "unknown task"),
    (["--medical", "--task", "ir-vis"], "contradicts"),
    (["--model-option", "oops"], "KEY=VALUE"),
    (["--scale-jitter", "3", "--ir", "I", "--vis", "V", "--out", "RUN"], "scale-jitter must be a number in [0, 1]"),
])
def test_usage_errors_are_one_line_with_exit_2(tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("RUN", "MISSING", "nope.toml", "I", "V") else a for a in args]
    res = _run(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_jitters_are_run_settings(tmp_path):
    ir, vis = _folders(tmp_path / "d", size=(64, 64))
    run = tmp_path / "run"
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", "--scale-jitter", "0.3", "--gamma-jitter", "0.2",
               *FAST)
    assert res.exit_code == 0, res.output
    stored = json.loads(RunFiles(run).settings.read_text())
    assert stored["scale_jitter"] == 0.3 and stored["gamma_jitter"] == 0.2
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", "--resume", "--scale-jitter", "0.5", *FAST)
    assert res.exit_code == 2 and "scale_jitter 0.3 -> 0.5" in res.output, res.output
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", "--resume", "--gamma-jitter", "0.5", *FAST)
    assert res.exit_code == 2 and "gamma_jitter 0.2 -> 0.5" in res.output, res.output


def test_existing_run_needs_resume(tmp_path):
    ir, vis = _folders(tmp_path / "d")
    run = tmp_path / "run"
    assert _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", *FAST).exit_code == 0
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "1", *FAST)
    assert res.exit_code == 2 and "use --resume" in res.output


def test_sigterm_in_a_real_process_checkpoints_and_exits_130(tmp_path):
    ir, vis = _folders(tmp_path / "d")
    run = tmp_path / "run"
    env = {**os.environ, "DIFFMF_SCAN": "reference"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffmf_cli", "train", "--ir", str(ir), "--vis", str(vis), "--out", str(run),
         "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "1", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (RunFiles(run).log.is_file()
                                                   and RunFiles(run).log.stat().st_size > 0):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "stopped early (signal SIGTERM)" in out
    assert load_weights(RunFiles(run).partial)[1]["training"]["steps"] >= 1
    step = load_checkpoint(RunFiles(run).checkpoint)["step"]
    assert 1 <= step < 100000


def test_threads_also_sizes_numbas_pool_before_numba_loads(monkeypatch):
    from diffmf_cli.cli import train as train_cli

    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    train_cli._limit_numba_pool(1)
    assert os.environ["NUMBA_NUM_THREADS"] == "1"
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")  # the user's own setting wins
    train_cli._limit_numba_pool(1)
    assert os.environ["NUMBA_NUM_THREADS"] == "2"


def test_val_holdout(tmp_path):
    ir, vis = _folders(tmp_path / "d", n=4)
    run = tmp_path / "run"
    res = _run("--ir", ir, "--vis", vis, "--out", run, "--steps", "2", "--val-holdout", "1", "--val-every", "2",
               *FAST)
    assert res.exit_code == 0, res.output
    data = json.loads(RunFiles(run).data.read_text())
    assert len(data["sources"][0]["pairs"]) == 3 and len(data["validation_pairs"]) == 1
    assert data["validation_pairs"][0] not in data["sources"][0]["pairs"]
    rows = [json.loads(l) for l in RunFiles(run).log.read_text().splitlines()]
    assert any(r["kind"] == "val" for r in rows)


@pytest.mark.slow
def test_real_processes_on_the_default_scan_path_resume_bitwise(tmp_path):
    """Uninterrupted vs stopped-and-resumed, each in fresh processes, on the scan path a user gets."""
    from safetensors.torch import load_file

    ir, vis = _folders(tmp_path / "d")
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFMF_SCAN", "NUMBA_NUM_THREADS")}
    base = [sys.executable, "-m", "diffmf_cli", "train", "--ir", str(ir), "--vis", str(vis), "--steps", "3",
            "--checkpoint-every", "1", *FAST]

    def run(*extra):
        done = subprocess.run([*base, *extra] if extra[0] != "--resume" else
                              [sys.executable, "-m", "diffmf_cli", "train", *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr

    run("--out", str(tmp_path / "whole"))
    run("--out", str(tmp_path / "cut"), "--max-minutes", "0.000001")
    run("--resume", "--out", str(tmp_path / "cut"), "--threads", "1")
    a = load_file(str(RunFiles(tmp_path / "whole").model))
    b = load_file(str(RunFiles(tmp_path / "cut").model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_fine_tunes_from_weights_with_their_config(tmp_path):
    from diffmf_cli.models import create_model
    from diffmf_cli.training.loop import _init_from

    ir, vis = _folders(tmp_path / "d")
    first = tmp_path / "first"
    assert _run("--ir", ir, "--vis", vis, "--out", first, "--steps", "1", "--model-option", "use_guidance=false",
                *FAST).exit_code == 0
    weights = RunFiles(first).model
    fast = [a for a in FAST if a not in ("--preset", "tiny")]
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "second", "--steps", "1", "--task", "medical",
               "--init", weights, *fast)
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "second" / "settings.json").read_text())
    assert settings["init_weights"] == str(weights.resolve()) and settings["preset"] == "tiny"
    model, meta = load_weights(RunFiles(tmp_path / "second").model)
    assert model.config.use_guidance is False and meta["task"] == "medical"

    fresh = create_model(model.config)
    _init_from(fresh, str(weights))
    source, _ = load_weights(weights)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(Exception, match="may change only.*use_guidance"):
        _init_from(create_model("tiny"), str(weights))

    # A config change that keeps the parameters (the head's prior) is a fine-tuning choice.
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "prior", "--steps", "1", "--init", weights,
               "--model-option", "select_gain=5", "--model-option", "residual_bound=range", *fast)
    assert res.exit_code == 0, res.output
    model, _ = load_weights(RunFiles(tmp_path / "prior").model)
    assert model.config.select_gain == 5 and model.config.residual_bound == "range"
    assert model.config.use_guidance is False
    # A resumed fine-tune keeps that change without repeating it (and without re-reading the --init file).
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "prior2", "--steps", "2", "--init", weights,
               "--model-option", "select_gain=5", "--model-option", "residual_bound=range",
               "--max-minutes", "0.0001", *fast)
    assert res.exit_code == 0, res.output
    res = _run("--out", tmp_path / "prior2", "--resume")
    assert res.exit_code == 0, res.output
    resumed = load_weights(RunFiles(tmp_path / "prior2").model)[0].config
    assert resumed.select_gain == 5 and resumed.residual_bound == "range"
    # Anything that rewires the network is refused, even where the parameter shapes would stay the same.
    for option in ("use_guidance=true", "exchange_bc=false"):
        res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "rewired", "--steps", "1", "--init", weights,
                   "--model-option", option, *fast)
        assert res.exit_code == 2 and "may change only" in res.output and option.split("=")[0] in res.output
        assert not (tmp_path / "rewired").exists()

    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "third", "--init", weights, "--preset", "cpu")
    assert res.exit_code == 2 and "drop --preset" in res.output


def test_vif_term_needs_crops_it_can_score(tmp_path):
    ir, vis = _folders(tmp_path / "d")
    cfg = tmp_path / "vif.toml"
    cfg.write_text("[loss]\nvif = 5.0\n")
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "run", "--config", cfg, "--crop", "32", "--steps", "1")
    assert res.exit_code == 2 and "at least 41 pixels" in res.output
    assert not (tmp_path / "run").exists()
    # With crops it can score, the term trains and is logged (validation pairs under 41 px skip the loss only).
    ir, vis = _folders(tmp_path / "big", size=(56, 64))
    res = _run("--ir", ir, "--vis", vis, "--out", tmp_path / "ok", "--config", cfg, "--preset", "tiny",
               "--crop", "48", "--batch-size", "2", "--steps", "2", "--log-every", "1", "--threads", "1",
               "--val-ir", ir, "--val-vis", vis, "--val-every", "2")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "ok" / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["vif"] for r in rows if r["kind"] == "train")
    assert any(r["kind"] == "val" and "val_loss" in r for r in rows)


@pytest.mark.parametrize("name", ["ir_vis.toml", "ir_vis_stage2.toml", "medical.toml", "medical_stage2.toml",
                                  "medical_stage3.toml"])
def test_committed_training_configs_are_valid(name):
    """The configs in weights/training/ that the README's training commands use parse into settings (the
    loop's own checks: loss weights, the VIF term's crop size, the model config)."""
    from pathlib import Path

    from diffmf_cli.training.data import SourceSpec
    from diffmf_cli.training.loop import TrainSettings
    from diffmf_cli.training.settings import read_config

    data = read_config(Path(__file__).resolve().parents[2] / "weights" / "training" / name)
    # Sources are paths the README's commands give; any stand-in does here (they are not read).
    settings = TrainSettings(task=data.get("task", "ir-vis"), sources=[SourceSpec(ir="ir", vis="vis")],
                             loss=data.get("loss"), model_overrides=data.get("model", {}),
                             crop=96 if data.get("task", "ir-vis") == "ir-vis" else 64)
    settings.loss_weights()
    settings.model_config()
