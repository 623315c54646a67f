"""The training loop on the tiny preset: exact resume, export round trip, logs, schedule, EMA."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from diffmf_cli.errors import CheckpointError, UsageError
from diffmf_cli.training.data import SourceSpec
from diffmf_cli.training.losses import LossWeights
from diffmf_cli.training.loop import (
    VAL_METRICS,
    RunFiles,
    TrainSettings,
    ema_update,
    export_run,
    learning_rate,
    load_checkpoint,
    train,
)
from diffmf_cli.weights import load_weights


@pytest.fixture(autouse=True)
def _reference_scan(monkeypatch):
    # These tests check the loop's own exactness (data order, optimizer/EMA/RNG state), so they run the
    # plain-PyTorch scan: the numba kernel's float32 sums were seen to differ by ~1e-7 from call to call
    # when numba's pool has more than one thread (reported to the scan's owner).
    monkeypatch.setenv("DIFFMF_SCAN", "reference")


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    for i in range(3):
        base = cv2.GaussianBlur(rng.integers(0, 256, (48, 40), dtype=np.uint8), (5, 5), 1.5)
        cv2.imwrite(str(root / "ir" / f"{i}.png"), base)
        vis = cv2.merge([np.roll(base, 3, axis=1), 255 - base, base])
        cv2.imwrite(str(root / "vi" / f"{i}.jpg"), vis)
    return SourceSpec(ir=str(root / "ir"), vis=str(root / "vi"))


def _settings(source, **kw):
    base = dict(sources=[source], preset="tiny", steps=6, batch_size=2, crop=32, checkpoint_every=3,
                log_every=1, warmup_steps=2, lr=1e-3, seed=3)
    base.update(kw)
    return TrainSettings(**base)


def _state(run_dir):
    ckpt = load_checkpoint(RunFiles(run_dir).checkpoint)
    return ckpt


def _assert_same_state(a, b):
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for idx in sa:
        for k in sa[idx]:
            assert torch.equal(sa[idx][k], sb[idx][k]), (idx, k)


class _Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, source):
    settings = _settings(source)
    whole = train(settings, tmp_path / "whole", handle_signals=False)
    assert whole.finished and whole.step == 6

    def crash_at_5(kind, info):
        if kind == "step" and info["step"] == 5:
            raise _Crash()

    with pytest.raises(_Crash):
        train(settings, tmp_path / "cut", report=crash_at_5, handle_signals=False)
    assert _state(tmp_path / "cut")["step"] == 3  # the last checkpoint before the crash
    resumed = train(settings, tmp_path / "cut", resume=True, handle_signals=False)
    assert resumed.finished
    _assert_same_state(_state(tmp_path / "whole"), _state(tmp_path / "cut"))

    # The log holds each step once (lines written after the checkpoint were dropped on resume).
    rows = [json.loads(l) for l in RunFiles(tmp_path / "cut").log.read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert RunFiles(tmp_path / "cut").plot.stat().st_size > 1000


def test_time_budget_stops_with_a_checkpoint_and_resume_finishes_identically(tmp_path, source):
    settings = _settings(source, steps=4, checkpoint_every=100)
    first = train(settings, tmp_path / "run", max_minutes=1e-9, handle_signals=False)
    assert not first.finished and first.stopped_by == "time budget" and first.step == 1
    assert _state(tmp_path / "run")["step"] == 1
    train(settings, tmp_path / "run", resume=True, handle_signals=False)
    train(settings, tmp_path / "whole", handle_signals=False)
    _assert_same_state(_state(tmp_path / "whole"), _state(tmp_path / "run"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, source):
    train(_settings(source, steps=2), tmp_path / "a", handle_signals=False)
    train(_settings(source, steps=2), tmp_path / "b", handle_signals=False)
    train(_settings(source, steps=2, seed=4), tmp_path / "c", handle_signals=False)
    a, b, c = (_state(tmp_path / n)["ema"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_source_loss_scale_trains_each_sources_crops_with_its_factors(tmp_path, source):
    """A source whose loss_scale zeroes the SCD term trains exactly as a loss without it (a factor of 1 as one
    without the scale); the factor is kept in the run's settings, and a validation source may not have one."""
    import dataclasses

    runs = {}
    for name, spec, loss in (("off", source, {"scd": 0.0}),
                             ("zeroed", dataclasses.replace(source, loss_scale={"scd": 0.0}), {"scd": 20.0}),
                             ("on", source, {"scd": 20.0}),
                             ("one", dataclasses.replace(source, loss_scale={"scd": 1.0}), {"scd": 20.0})):
        train(_settings(source, sources=[spec], steps=2, loss=loss), tmp_path / name, handle_signals=False)
        runs[name] = _state(tmp_path / name)["ema"]
    assert all(torch.equal(runs["off"][k], runs["zeroed"][k]) for k in runs["off"])
    assert all(torch.equal(runs["on"][k], runs["one"][k]) for k in runs["on"])
    assert not all(torch.equal(runs["on"][k], runs["off"][k]) for k in runs["on"])
    stored = json.loads((tmp_path / "zeroed" / "settings.json").read_text())
    assert stored["sources"][0]["loss_scale"] == {"scd": 0.0}
    with pytest.raises(UsageError, match="training sources only"):
        _settings(source, val_sources=[dataclasses.replace(source, loss_scale={"vif": 2.0})])


def test_loss_scale_on_a_term_with_no_weight_is_refused(source):
    """A factor on a term the loss does not use would silently do nothing: refused, naming the source and term.
    A factor of 0 on it (off here, as everywhere) is accepted."""
    import dataclasses

    scaled = dataclasses.replace(source, loss_scale={"qabf": 8.0, "scd": 0.0})
    with pytest.raises(UsageError, match=r"a loss_scale factor on a term of weight 0 does nothing \(qabf\)") as err:
        _settings(source, sources=[scaled])
    assert source.label in str(err.value)
    _settings(source, sources=[scaled], loss={"qabf": 30.0})
    _settings(source, sources=[dataclasses.replace(source, loss_scale={"qabf": 0.0})])


def test_export_round_trip_and_metadata(tmp_path, source):
    settings = _settings(source, steps=3)
    train(settings, tmp_path / "run", handle_signals=False)
    path = export_run(tmp_path / "run", tmp_path / "w.safetensors", name="unit")
    model, meta = load_weights(path)
    ema = _state(tmp_path / "run")["ema"]
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    assert meta["name"] == "unit" and meta["task"] == "ir-vis" and meta["weights"] == "EMA"
    assert meta["training"]["steps"] == 3 and meta["training"]["seed"] == 3
    assert meta["training"]["data"][0]["pairs"] == 3
    assert meta["training"]["wall_time_s"] > 0
    assert meta["config"] == settings.model_config().to_dict()
    assert "diffmf_version" in meta


def test_refusals(tmp_path, source):
    settings = _settings(source, steps=1)
    with pytest.raises(UsageError, match="not a training run folder"):
        train(settings, tmp_path / "none", resume=True)
    train(settings, tmp_path / "run", handle_signals=False)
    with pytest.raises(UsageError, match="already holds a training run"):
        train(settings, tmp_path / "run")
    cut = tmp_path / "cut_before_checkpoint"  # settings written, killed before the first checkpoint
    cut.mkdir()
    RunFiles(tmp_path / "run").settings.replace(RunFiles(cut).settings)
    with pytest.raises(UsageError, match="no checkpoint yet .* --resume starts it again"):
        train(settings, cut)
    RunFiles(cut).settings.replace(RunFiles(tmp_path / "run").settings)
    with pytest.raises(UsageError, match="settings differ"):
        train(_settings(source, steps=1, lr=0.5), tmp_path / "run", resume=True)
    RunFiles(tmp_path / "run").checkpoint.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        train(settings, tmp_path / "run", resume=True)
    with pytest.raises(UsageError):
        TrainSettings(sources=[])
    with pytest.raises(UsageError):
        _settings(source, task="nope")
    with pytest.raises(UsageError, match="bad model options"):
        _settings(source, model_overrides={"no_such": 1}).model_config()
    with pytest.raises(UsageError, match="bad loss"):
        _settings(source, loss={"ssim_weighting": "x"})
    for bad in (-0.5, 2.0, "lots", True):
        with pytest.raises(UsageError, match="scale-jitter"):
            _settings(source, scale_jitter=bad)
        with pytest.raises(UsageError, match="gamma-jitter"):
            _settings(source, gamma_jitter=bad)


def test_model_and_loss_overrides_are_used(tmp_path, source):
    settings = _settings(source, steps=1, model_overrides={"use_guidance": False},
                         loss={"intensity": 5.0}, task="medical")
    assert settings.model_config().use_guidance is False
    assert settings.loss_weights().intensity == 5.0 and settings.loss_weights().gradient == 100.0
    assert settings.crop_size == 32
    assert _settings(source, crop=None, task="medical").crop_size == 64
    train(settings, tmp_path / "run", handle_signals=False)
    model, meta = load_weights(export_run(tmp_path / "run", tmp_path / "w.safetensors"))
    assert model.config.use_guidance is False and meta["task"] == "medical"


def test_excess_term_trains_on_the_heads_unclamped_output(tmp_path, source, monkeypatch):
    """From weights whose head adds +0.5 everywhere, the unclamped output leaves [0, 1]: the loss must see it
    (in training steps and in validation), and the term must be positive in the log."""
    from diffmf_cli.models import create_model
    from diffmf_cli.training import loop
    from diffmf_cli.weights import save_weights

    model = create_model(_settings(source).model_config())
    with torch.no_grad():
        model.decoder.head.bias.copy_(torch.tensor([0.0, 20.0]))  # w = ½, r = 0.5·tanh(20): mean + 0.5
    init = save_weights(tmp_path / "bright.safetensors", model)
    seen = []
    real = loop.fusion_loss

    def spy(fused, ir, vis, weights, unclamped=None, sample_scale=None, anchor=None):
        seen.append(None if unclamped is None else
                    (torch.equal(fused, unclamped.clamp(0, 1)), bool((unclamped > 1).any())))
        return real(fused, ir, vis, weights, unclamped, sample_scale, anchor)

    monkeypatch.setattr(loop, "fusion_loss", spy)
    train(_settings(source, steps=2, loss={"excess": 5.0}, init_weights=str(init), val_sources=[source],
                    val_every=2, val_crop=32), tmp_path / "run", handle_signals=False)
    assert len(seen) > 2 and all(x == (True, True) for x in seen)  # two steps, then every validation pair
    seen.clear()
    train(_settings(source, steps=1, init_weights=str(init)), tmp_path / "plain", handle_signals=False)
    assert seen == [None]
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["excess"] > 1e-3 for r in rows if r["kind"] == "train")  # 0 if it saw the clamped output
    assert any(r["kind"] == "val" and math.isfinite(r["val_loss"]) for r in rows)


def test_anchor_term_holds_the_fine_tune_near_its_starting_model_and_resumes_exactly(tmp_path, source,
                                                                                      monkeypatch):
    """Every step's anchor is the frozen --init model's output on that batch, before and after a resume (the
    checkpoint carries the model: the resume needs no --init file) and with a head option the run changes; a
    killed run resumes bitwise; the term holds the weights nearer the start; validation leaves it out."""
    from diffmf_cli.models import create_model
    from diffmf_cli.training import loop
    from diffmf_cli.weights import save_weights

    with pytest.raises(UsageError, match="needs --init"):
        _settings(source, loss={"anchor": 10.0})
    torch.manual_seed(5)
    start = create_model(_settings(source).model_config())
    with torch.no_grad():  # a fresh head outputs the sources' mean whatever the other weights: give it a say
        torch.nn.init.normal_(start.decoder.head.weight, std=0.1)
    init = save_weights(tmp_path / "start.safetensors", start)
    seen = []
    real = loop.fusion_loss

    def spy(fused, ir, vis, weights, unclamped=None, sample_scale=None, anchor=None):
        if weights.anchor:
            with torch.no_grad():
                seen.append(anchor is not None and torch.equal(anchor, start(ir, vis)))
        return real(fused, ir, vis, weights, unclamped, sample_scale, anchor)

    monkeypatch.setattr(loop, "fusion_loss", spy)
    settings = _settings(source, init_weights=str(init), loss={"anchor": 200.0}, steps=6, checkpoint_every=3)
    train(settings, tmp_path / "whole", handle_signals=False)
    assert seen == [True] * 6
    whole = _state(tmp_path / "whole")
    assert all(torch.equal(whole["anchor"][k], v) for k, v in start.state_dict().items())
    rows = [json.loads(l) for l in RunFiles(tmp_path / "whole").log.read_text().splitlines()]
    anchor = [r["anchor"] for r in rows if r["kind"] == "train"]
    assert anchor[0] == 0 and all(a > 0 for a in anchor[1:])  # step 1 runs the starting weights themselves

    def crash_at_5(kind, info):
        if kind == "step" and info["step"] == 5:
            raise _Crash()

    with pytest.raises(_Crash):
        train(settings, tmp_path / "cut", report=crash_at_5, handle_signals=False)
    init.unlink()  # the resume takes the starting model from the checkpoint
    # ... also one of the term's first checkpoints, which kept no config (the run's config is the file's here).
    first = _state(tmp_path / "cut")
    del first["anchor_config"]
    torch.save(first, RunFiles(tmp_path / "cut").checkpoint)
    seen.clear()
    train(settings, tmp_path / "cut", resume=True, handle_signals=False)
    assert seen == [True] * 3  # steps 4-6
    cut = _state(tmp_path / "cut")
    _assert_same_state(whole, cut)
    assert all(torch.equal(whole["anchor"][k], cut["anchor"][k]) for k in whole["anchor"])

    save_weights(init, start)
    train(_settings(source, init_weights=str(init), steps=6), tmp_path / "free", handle_signals=False)
    ir, vis = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)).split(1)
    with torch.no_grad():
        reference = start(ir, vis)
        moved = {}
        for name in ("whole", "free"):
            model = create_model(settings.model_config())
            model.load_state_dict(_state(tmp_path / name)["model"])
            moved[name] = float((model(ir, vis) - reference).abs().mean())
    assert moved["whole"] < moved["free"]
    pairs = [("p", ir, vis)]
    assert loop.validate(start, pairs, LossWeights(anchor=50.0)) == loop.validate(start, pairs, LossWeights())

    # A fine-tune that changes the head (INIT_MAY_CHANGE) is anchored to what the file itself fused.
    rebound = _settings(source, init_weights=str(init), loss={"anchor": 200.0}, steps=1,
                        model_overrides={"residual_bound": "range"})
    seen.clear()
    train(rebound, tmp_path / "rebound", handle_signals=False)
    assert seen == [True]
    rows = [json.loads(l) for l in RunFiles(tmp_path / "rebound").log.read_text().splitlines()]
    assert rows[0]["anchor"] > 0  # the same weights under the bounded head fuse differently
    ckpt = _state(tmp_path / "rebound")
    assert json.loads(ckpt["anchor_config"]) == start.config.to_dict()
    assert start.config.residual_bound == "clamp" != rebound.model_config().residual_bound
    # A checkpoint without the starting model cannot continue an anchored run.
    del ckpt["anchor"]
    torch.save(ckpt, RunFiles(tmp_path / "rebound").checkpoint)
    with pytest.raises(CheckpointError, match="no starting model"):
        train(rebound, tmp_path / "rebound", resume=True, handle_signals=False)


def test_validation_rows_are_logged(tmp_path, source):
    settings = _settings(source, steps=2, val_sources=[source], val_every=2, val_crop=32)
    train(settings, tmp_path / "run", handle_signals=False)
    rows = [json.loads(l) for l in RunFiles(tmp_path / "run").log.read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["step"] == 2 and math.isfinite(val[0]["val_loss"])
    # the metrics were scored (a failing evaluator would leave them out and be counted); VIF is NaN by design
    # on 32-pixel crops (its coarsest scale is empty), so it is the one left out
    assert "val_metric_failures" not in val[0], val[0].get("val_metric_error")
    for name in VAL_METRICS:
        if name != "VIF":
            assert math.isfinite(val[0][f"val_{name}"]), name


def test_validation_counts_pairs_whose_scoring_fails(source, monkeypatch):
    from diffmf_cli import metrics
    from diffmf_cli.models import create_model
    from diffmf_cli.training.loop import load_validation, validate

    def broken(*args, **kwargs):
        raise RuntimeError("evaluator broke\nsecond line")

    monkeypatch.setattr(metrics, "compute_metrics", broken)
    settings = _settings(source, steps=1, val_sources=[source], val_crop=32)
    pairs = load_validation(settings)
    out = validate(create_model("tiny"), pairs, settings.loss_weights())
    assert out["val_metric_failures"] == len(pairs) > 0
    assert out["val_metric_error"].endswith(": evaluator broke") and math.isfinite(out["val_loss"])
    assert not any(k[4:] in VAL_METRICS for k in out)


def test_learning_rate_schedule():
    s = TrainSettings(sources=[SourceSpec(ir="a", vis="b")], steps=110, lr=1.0, warmup_steps=10,
                      min_lr_ratio=0.1)
    assert learning_rate(s, 0) == pytest.approx(0.1)
    assert learning_rate(s, 9) == pytest.approx(1.0)
    assert learning_rate(s, 10) == pytest.approx(1.0)
    assert learning_rate(s, 60) == pytest.approx(0.55)
    assert learning_rate(s, 110) == pytest.approx(0.1)
    c = TrainSettings(sources=[SourceSpec(ir="a", vis="b")], steps=110, lr=1.0, warmup_steps=0,
                      schedule="constant")
    assert learning_rate(c, 0) == learning_rate(c, 100) == 1.0


def test_ema_update():
    model = torch.nn.Linear(2, 1)
    ema = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    ema_update(ema, model, decay=0.999, step=0)  # warm-up: d = 1/10
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.9))
    ema_update(ema, model, decay=0.5, step=1000)
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.95))


def test_resume_refuses_changed_data(tmp_path, source):
    settings = _settings(source, steps=2, checkpoint_every=1)
    train(settings, tmp_path / "run", max_minutes=1e-9, handle_signals=False)
    import shutil
    from pathlib import Path

    for sub in ("ir", "vis"):
        folder = Path(getattr(source, sub))
        first = sorted(folder.iterdir())[0]
        shutil.copy(first, folder / ("new" + first.suffix))
    with pytest.raises(UsageError, match="changed since the run started"):
        train(settings, tmp_path / "run", resume=True, handle_signals=False)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, source):
    settings = _settings(source, steps=2, checkpoint_every=100)

    def crash(kind, info):
        if kind == "step":
            raise _Crash()

    with pytest.raises(_Crash):
        train(settings, tmp_path / "run", report=crash, handle_signals=False)
    assert not RunFiles(tmp_path / "run").checkpoint.exists()
    assert train(settings, tmp_path / "run", resume=True, handle_signals=False).finished
    train(settings, tmp_path / "whole", handle_signals=False)
    _assert_same_state(_state(tmp_path / "whole"), _state(tmp_path / "run"))
    rows = [json.loads(l) for l in RunFiles(tmp_path / "run").log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_ssm_constants_are_kept_out_of_weight_decay():
    from diffmf_cli.models import create_model
    from diffmf_cli.training.loop import parameter_groups

    model = create_model("tiny")
    tagged = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert tagged == {"A_log", "D", "dt_bias"}
    assert list(parameter_groups(model, 0.0)) == list(model.parameters())  # one group: old checkpoints resume
    decayed, kept = parameter_groups(model, 1e-4)
    assert kept["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    assert all(getattr(p, "_no_weight_decay", False) for p in kept["params"])
