"""The training loop: Adam, an EMA of the weights, fixed seeds, atomic checkpoints and exact resume.

A run lives in one folder (``RUN_DIR``):

- ``settings.json``  the :class:`TrainSettings` (written once; a resume reads it back);
- ``data.json``      the pairs of every source and the sampling weights actually used;
- ``checkpoint.pt``  model, EMA, optimizer, torch RNG state, step, wall time, and with the ``anchor`` loss
  term the frozen starting model (``torch.save`` of tensors and
  plain Python values only, so ``torch.load(weights_only=True)`` reads it; written atomically);
- ``log.jsonl``      one JSON object per logged step (``"kind": "train"``) and per validation (``"val"``);
- ``curves.png``     loss and validation curves (redrawn at each checkpoint);
- ``model.safetensors``  the EMA weights with config and training facts (see :func:`export_run`), written
  by the CLI when the run finishes (``model.partial.safetensors`` when a session stops early).

Exactness: batch ``t`` depends only on ``(seed, t)`` (see ``data.CropSampler``), the learning rate only on
``t``, and a checkpoint holds every other piece of state, so stopping after any checkpoint and resuming gives
bitwise the weights of an uninterrupted run (same machine, same thread count).

Nothing here prints: progress goes to the ``report(kind, info)`` callback the caller passes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffmf_cli.errors import CheckpointError, DiffMFError, UsageError, one_line
from diffmf_cli.io.files import atomic_write
from diffmf_cli.provenance import code_version
from diffmf_cli.training import INIT_MAY_CHANGE
from diffmf_cli.training.data import (
    CropSampler,
    SourceSpec,
    check_jitter,
    hold_out,
    list_source_pairs,
    load_sources,
    luminance,
)
from diffmf_cli.training.losses import LOSS_PRESETS, VIF_MIN_SIDE, LossWeights, fusion_loss

CHECKPOINT_FORMAT = "diffmf-train-checkpoint/1"
TASKS = ("ir-vis", "medical")
DEFAULT_CROP = {"ir-vis": 128, "medical": 64}

Report = Callable[[str, dict], None]


@dataclass
class TrainSettings:
    """Everything that decides a run's result (so two runs with equal settings give equal weights)."""

    sources: list[SourceSpec]
    task: str = "ir-vis"
    preset: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 10000
    batch_size: int = 8
    crop: int | None = None              # None: 128 for ir-vis, 64 for medical
    scale_jitter: float = 0.0            # crops rescaled by up to 1 + this (see CropSampler); 0 = off
    gamma_jitter: float = 0.0            # each modality's crop raised to a power up to 1 + this either way; 0 = off
    lr: float = 2e-4
    schedule: str = "cosine"             # "cosine" (to min_lr_ratio·lr) or "constant", after a linear warmup
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0               # max gradient norm; 0 disables clipping
    ema_decay: float = 0.999
    seed: int = 0
    loss: dict[str, Any] | None = None   # LossWeights fields; None: the task's preset
    checkpoint_every: int = 200
    log_every: int = 10
    val_sources: list[SourceSpec] = field(default_factory=list)
    val_holdout: int = 0                 # training pairs held out (by name hash) and used for validation
    init_weights: str | None = None      # start from these weights (fine-tuning); see INIT_MAY_CHANGE
    val_every: int = 500
    val_max_pairs: int = 8
    val_crop: int = 256                  # validation images are centre-cropped to at most this size

    def __post_init__(self):
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}; choose {' or '.join(TASKS)}")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"unknown schedule {self.schedule!r}; choose cosine or constant")
        if not self.sources:
            raise UsageError("no training data: give --ir DIR --vis DIR (repeatable) or --pairs FILE.csv")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "val_every", "val_max_pairs"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UsageError("warmup-steps and grad-clip must be >= 0 and min-lr-ratio in [0, 1]")
        if self.val_holdout < 0:
            raise UsageError(f"val-holdout must be >= 0, got {self.val_holdout}")
        if self.crop is not None and self.crop < 16:
            raise UsageError(f"crop must be at least 16 pixels, got {self.crop}")
        check_jitter("scale-jitter", self.scale_jitter)
        check_jitter("gamma-jitter", self.gamma_jitter)
        if any(spec.loss_scale for spec in self.val_sources):
            raise UsageError("loss_scale applies to training sources only; a validation source cannot have one")
        loss = self.loss_weights()  # also validates the loss settings early
        if loss.vif and self.crop_size < VIF_MIN_SIDE:
            raise UsageError(f"the VIF loss term needs crops of at least {VIF_MIN_SIDE} pixels, got {self.crop_size}")
        for spec in self.sources:
            idle = sorted(t for t, f in (spec.loss_scale or {}).items() if f != 0 and getattr(loss, t) == 0)
            if idle:
                raise UsageError(f"source {spec.label}: a loss_scale factor on a term of weight 0 does nothing "
                                 f"({', '.join(idle)}): give each a weight under [loss] or drop its factor")
        if loss.anchor and not self.init_weights:
            raise UsageError("the anchor loss term holds a fine-tune near the model it starts from: it needs --init")

    @property
    def crop_size(self) -> int:
        return self.crop if self.crop is not None else DEFAULT_CROP[self.task]

    def loss_weights(self) -> LossWeights:
        base = LOSS_PRESETS[self.task]
        if not self.loss:
            return base
        try:
            return LossWeights(**{**base.to_dict(), **self.loss})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad loss settings {self.loss}: {exc}") from None

    def model_config(self):
        from diffmf_cli.models import PRESETS, DiffMFConfig

        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        try:
            return DiffMFConfig.from_dict({**PRESETS[self.preset].to_dict(), **self.model_overrides})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad model options {self.model_overrides}: {exc}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = [s.to_dict() for s in self.sources]
        d["val_sources"] = [s.to_dict() for s in self.val_sources]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown training settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        d["sources"] = [SourceSpec.from_dict(s) for s in d.get("sources", [])]
        d["val_sources"] = [SourceSpec.from_dict(s) for s in d.get("val_sources", [])]
        return cls(**d)


@dataclass
class TrainResult:
    run_dir: Path
    step: int                # steps completed
    total_steps: int
    finished: bool           # True when step == total_steps
    stopped_by: str | None   # "time budget" / "signal" when stopped early
    wall_time_s: float       # over all sessions of the run
    last_loss: float | None  # mean loss of the last row written to log.jsonl (this session)
    last_loss_step: int | None = None  # the step that row ends at


def learning_rate(settings: TrainSettings, step: int) -> float:
    """LR of (0-based) ``step``: linear warmup over ``warmup_steps``, then cosine decay or constant."""
    base = settings.lr
    if settings.warmup_steps and step < settings.warmup_steps:
        return base * (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return base
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = base * settings.min_lr_ratio
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------
# Run folder


class RunFiles:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.settings = self.dir / "settings.json"
        self.data = self.dir / "data.json"
        self.checkpoint = self.dir / "checkpoint.pt"
        self.log = self.dir / "log.jsonl"
        self.plot = self.dir / "curves.png"
        self.model = self.dir / "model.safetensors"
        self.partial = self.dir / "model.partial.safetensors"
        self.name = self.dir / "name.txt"


def read_settings(run_dir: str | Path) -> TrainSettings:
    files = RunFiles(run_dir)
    try:
        return TrainSettings.from_dict(json.loads(files.settings.read_text()))
    except FileNotFoundError:
        raise UsageError(f"{files.dir}: not a training run folder (no settings.json)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{files.settings}: unreadable ({exc})") from None


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def parameter_groups(model: torch.nn.Module, weight_decay: float):
    """What the optimiser gets: all parameters (one group) without weight decay; with it, two groups, the
    parameters tagged ``_no_weight_decay`` (the SSM's A_log, D and Δ bias, as in mamba-ssm) without decay."""
    if not weight_decay:
        return model.parameters()
    params = list(model.parameters())
    keep = [p for p in params if getattr(p, "_no_weight_decay", False)]
    return [{"params": [p for p in params if not getattr(p, "_no_weight_decay", False)]},
            {"params": keep, "weight_decay": 0.0}]


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a diffmf training checkpoint")
    return ckpt


# ---------------------------------------------------------------------------------------------------------
# EMA


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema ← d·ema + (1 − d)·model with d = min(decay, (1 + step) / (10 + step)); buffers are copied."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# ---------------------------------------------------------------------------------------------------------
# Validation


def load_validation(settings: TrainSettings, held: list | None = None
                    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Up to ``val_max_pairs`` validation pairs (held-out training pairs first, then the validation
    sources, spread over their sorted list), centre-cropped to ``val_crop``."""
    flat = list(held or [])
    if settings.val_sources:
        images, _ = load_sources(settings.val_sources, 0)
        flat += [p for src in images for p in src]
    if len(flat) > settings.val_max_pairs:
        idx = np.linspace(0, len(flat) - 1, settings.val_max_pairs).round().astype(int)
        flat = [flat[i] for i in idx]
    out = []
    for p in flat:
        h, w = p.ir.shape
        ch, cw = min(h, settings.val_crop), min(w, settings.val_crop)
        y, x = (h - ch) // 2, (w - cw) // 2
        from diffmf_cli.io.images import to_float

        ir = torch.from_numpy(np.ascontiguousarray(to_float(p.ir[y:y + ch, x:x + cw])))[None, None]
        vis = torch.from_numpy(np.ascontiguousarray(luminance(p.vis[y:y + ch, x:x + cw])))[None, None]
        out.append((p.name, ir, vis))
    return out


def _metric_functions() -> tuple[Callable | None, list[str], str | None]:
    """``(compute_metrics, names, note)`` from ``diffmf_cli.metrics``, or ``(None, [], reason)``."""
    try:
        from diffmf_cli.metrics import METRIC_NAMES, compute_metrics
    except Exception as exc:  # the metrics package is optional for training
        return None, [], f"diffmf_cli.metrics unavailable ({type(exc).__name__}: {exc}); loss only"
    names = [n for n in VAL_METRICS if n in METRIC_NAMES]
    return compute_metrics, names, None


VAL_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def _fuse(model: torch.nn.Module, ir: torch.Tensor, vis: torch.Tensor, loss_weights: LossWeights):
    """(fused in [0, 1], the head's value before its clamp or None): the latter only for the excess term."""
    if not loss_weights.excess:
        return model(ir, vis), None
    unclamped = model(ir, vis, clamp=False)
    return unclamped.clamp(0, 1), unclamped


@torch.no_grad()
def validate(model: torch.nn.Module, pairs, loss_weights: LossWeights) -> dict[str, float]:
    """Mean fusion loss (and, when ``diffmf_cli.metrics`` offers ``compute_metrics``, metrics) on ``pairs``.

    A pair whose scoring raises is left out of the metric means and counted: ``val_metric_failures`` and the
    first ``val_metric_error`` ("NAME: message") appear then, so a broken evaluator cannot pass unnoticed."""
    was_training = model.training
    model.eval()
    compute, names, _ = _metric_functions()
    losses, sums, counts, failures = [], {}, {}, []
    # The anchor term measures distance from the starting model, not the fusion: the validation loss leaves it out.
    loss_weights = replace(loss_weights, anchor=0.0)
    for name, ir, vis in pairs:
        fused, unclamped = _fuse(model, ir, vis, loss_weights)
        if min(ir.shape[-2:]) >= (VIF_MIN_SIDE if loss_weights.vif else 11):
            total, _ = fusion_loss(fused, ir, vis, loss_weights, unclamped)
            losses.append(float(total))
        if compute is not None:
            # As the evaluator sees files: the fused image on the 8-bit grid, all on the 0..255 scale.
            f255 = np.round(fused[0, 0].double().numpy() * 255)
            try:
                values, _ = compute(f255, ir[0, 0].double().numpy() * 255, vis[0, 0].double().numpy() * 255,
                                    names=names)
            except Exception as exc:  # a metric failing must not stop a training run; the log says so
                values = {}
                failures.append(f"{name}: {one_line(exc)}")
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
    model.train(was_training)
    out = {"val_loss": float(np.mean(losses))} if losses else {}
    out.update({f"val_{k}": sums[k] / counts[k] for k in sums})
    if failures:
        out["val_metric_failures"] = len(failures)
        out["val_metric_error"] = failures[0]
    return out


# ---------------------------------------------------------------------------------------------------------
# Plot


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Loss terms (left) and validation values (right) against step, from ``log.jsonl``, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    train, val = [], []
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        (val if row.get("kind") == "val" else train).append(row)
    if not train:
        return
    val_keys = sorted({k for r in val for k in r if k.startswith("val_")},
                      key=lambda k: (k != "val_loss", k))
    # Training loss on the left (both rows); one small panel per validation value on the right.
    vcols = (len(val_keys) + 1) // 2
    fig = Figure(figsize=(6 + 2.6 * vcols, 4.6))
    grid = fig.add_gridspec(2, 1 + vcols, width_ratios=[2.4] + [1] * vcols)
    ax = fig.add_subplot(grid[:, 0])
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["loss"] for r in train], label="loss", color="black")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    for key, color in (("intensity", "tab:red"), ("gradient", "tab:blue"), ("ssim", "tab:green")):
        twin.plot(steps, [r[key] for r in train], label=key, color=color, alpha=0.6, linewidth=0.8)
    twin.set_ylabel("terms (unweighted)")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize=8)
    for i, key in enumerate(val_keys):
        pts = [(r["step"], r[key]) for r in val if key in r]
        vax = fig.add_subplot(grid[i % 2, 1 + i // 2])
        vax.plot(*zip(*pts), marker="o", markersize=3, color="tab:purple")
        vax.set_title(f"val {key[4:]}", fontsize=9)
        vax.tick_params(labelsize=7)
        vax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ---------------------------------------------------------------------------------------------------------
# The loop


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between steps (only in the main thread)."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resume starts from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    atomic_write(path, lambda tmp: tmp.write_text("".join(l + "\n" for l in keep)))


def _init_from(model: torch.nn.Module, path: str) -> None:
    """Copy the weights of a diffmf weights file into ``model``, whose config must be the file's except for
    ``INIT_MAY_CHANGE`` (e.g. the head's ``select_gain``: a fine-tuning choice)."""
    from diffmf_cli.weights import load_weights

    source, _ = load_weights(path)
    theirs, ours = source.config.to_dict(), model.config.to_dict()
    rewired = sorted(k for k in ours if ours[k] != theirs.get(k) and k not in INIT_MAY_CHANGE)
    if rewired:
        raise UsageError(f"{path}: --init may change only {', '.join(INIT_MAY_CHANGE)} of the file's model "
                         f"config; this run also changes {', '.join(rewired)}")
    model.load_state_dict(source.state_dict())


def _recorded_weights(files: RunFiles, listed, weights):
    """On resume: check that every source still lists the pairs it had, and reuse the sampling weights the
    run started with (so a later change of the default weighting cannot change a resumed run's data)."""
    try:
        recorded = json.loads(files.data.read_text())["sources"]
    except (OSError, ValueError, KeyError):
        return weights
    if len(recorded) != len(listed):
        raise UsageError(f"{files.data}: the run had {len(recorded)} sources, now {len(listed)}")
    for k, (rec, pairs) in enumerate(zip(recorded, listed)):
        if rec.get("pairs") != [p.name for p in pairs]:
            raise UsageError(f"{files.data}: the pairs of source {k + 1} ({rec.get('source')}) changed since the "
                             "run started; a resume would not continue the same run")
    return [float(rec["weight"]) for rec in recorded]


def train(settings: TrainSettings, run_dir: str | Path, *, resume: bool = False,
          max_minutes: float | None = None, report: Report | None = None,
          handle_signals: bool = True) -> TrainResult:
    """Train (or resume) the run in ``run_dir``. See the module docstring for what the folder holds.

    ``max_minutes``: stop cleanly (checkpoint first) once this session has run that long.
    ``report(kind, info)``: kinds ``"start"``, ``"step"`` (every log interval), ``"val"``, ``"checkpoint"``.
    """
    report = report or (lambda kind, info: None)
    files = RunFiles(run_dir)
    listed = [list_source_pairs(spec) for spec in settings.sources]
    _check_run_folder_apart(files.dir, settings, listed)
    ckpt = _open_run(settings, files, resume)
    cfg = settings.model_config()
    loss_weights = settings.loss_weights()

    images, listed = load_sources(settings.sources, settings.crop_size, listed)
    held: list = []
    if settings.val_holdout:
        images, listed, held = hold_out(images, listed, settings.val_holdout)
    weights = [s.weight for s in settings.sources]
    if ckpt is not None:
        weights = _recorded_weights(files, listed, weights)
    sampler = CropSampler(images, settings.crop_size, settings.seed, weights, settings.scale_jitter,
                          settings.gamma_jitter)
    val_pairs = load_validation(settings, held)

    state = _TrainingState.create(settings, cfg, ckpt, files)
    if ckpt is None:
        _write_run_record(files, settings, sampler, listed, val_pairs)

    _, _, metrics_note = _metric_functions()
    report("start", {"step": state.step, "total": settings.steps, "resumed": ckpt is not None,
                     "pairs": [len(s) for s in images], "weights": sampler.weights.tolist(),
                     "validation_pairs": len(val_pairs), "metrics_note": metrics_note if val_pairs else None,
                     "params": sum(p.numel() for p in state.model.parameters())})

    start = time.monotonic()
    window = _LogWindow(start)
    stopped_by, last_loss, last_loss_step = None, None, None
    log_fh = open(files.log, "a", encoding="utf-8")
    with log_fh, (_stop_on_signals() if handle_signals else _no_signals()) as flag:
        while state.step < settings.steps:
            lr, loss, parts = _train_step(state, sampler, settings, loss_weights, files)
            window.add(loss, parts)
            step = state.step
            now = time.monotonic()
            if step % settings.log_every == 0 or step == settings.steps:
                row = window.row(step, lr, now, state.wall_before + now - start)
                last_loss, last_loss_step = row["loss"], step
                _log(log_fh, report, "step", row)
            if val_pairs and (step % settings.val_every == 0 or step == settings.steps):
                _log(log_fh, report, "val", {"kind": "val", "step": step,
                                             **validate(state.ema, val_pairs, loss_weights)})
            over_time = max_minutes is not None and (time.monotonic() - start) >= max_minutes * 60
            if flag["signal"]:
                stopped_by = f"signal {flag['signal']}"
            elif over_time and step < settings.steps:
                stopped_by = "time budget"
            if step % settings.checkpoint_every == 0 or step == settings.steps or stopped_by:
                log_fh.flush()
                state.save(files, settings, state.wall_before + time.monotonic() - start)
                report("checkpoint", {"step": step, "path": str(files.checkpoint)})
            if stopped_by:
                break
    wall = state.wall_before + time.monotonic() - start
    return TrainResult(files.dir, state.step, settings.steps, state.step >= settings.steps, stopped_by, wall,
                       last_loss, last_loss_step)


def _check_run_folder_apart(run_dir: Path, settings: TrainSettings, listed: list[list]) -> None:
    """UsageError when the run folder is a folder of training or validation images, or inside a folder given
    as a source (`ir`/`vis`): its files (checkpoint.pt, curves.png, ...) would mix with the images, and
    curves.png could replace one. `listed`: the training sources' pairs. Checked before anything is read or
    written (listing the pairs is cheap)."""
    from diffmf_cli.io.outputs import check_outside

    specs = [*settings.sources, *settings.val_sources]
    check_outside(run_dir, [Path(d) for spec in specs for d in (spec.ir, spec.vis) if d is not None], "--out")
    pairs = [pair for source in listed for pair in source]
    pairs += [pair for spec in settings.val_sources for pair in list_source_pairs(spec)]
    folders: dict[Path, Path] = {}  # each folder once, with the first image listed in it
    for pair in pairs:
        for image in (pair.ir, pair.vis):
            folders.setdefault(image.parent, image)
    real = Path(os.path.realpath(run_dir))
    for folder, image in folders.items():
        if Path(os.path.realpath(folder)) == real:
            raise UsageError(f"--out {run_dir}: is the folder of the training image {image}; the run's "
                             "files would mix with the images (give a folder of its own)")


def _open_run(settings: TrainSettings, files: RunFiles, resume: bool) -> dict | None:
    """The checkpoint to continue from (None: start at step 0), after checking the run folder fits `resume`."""
    if not resume:
        if files.checkpoint.exists():
            raise UsageError(f"{files.dir}: already holds a training run; use --resume, or another --out")
        if files.settings.exists():
            raise UsageError(f"{files.dir}: holds a training run with no checkpoint yet (still running, or stopped "
                             "before its first); if it stopped, --resume starts it again from step 0 with its "
                             "settings, or remove the folder")
        return None
    stored = read_settings(files.dir)
    if stored.to_dict() != settings.to_dict():
        raise UsageError(f"{files.settings}: settings differ from this run's; resume takes them from there")
    # A run killed before its first checkpoint starts again from step 0.
    ckpt = load_checkpoint(files.checkpoint) if files.checkpoint.exists() else None
    if ckpt is None:
        _truncate_log(files.log, 0)
    return ckpt


@dataclass
class _TrainingState:
    """What a checkpoint holds: the model, its EMA, the optimiser, the step and the wall time before this
    session (torch's RNG state is saved and restored beside them), and for the anchor loss term the frozen
    model the run started from (so a resume needs the ``--init`` file no more than without it)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    wall_before: float = 0.0
    anchor: torch.nn.Module | None = None

    @classmethod
    def create(cls, settings: TrainSettings, cfg, ckpt: dict | None, files: RunFiles) -> _TrainingState:
        """A model of config `cfg`, fresh (seeded, or from ``init_weights``) or restored from `ckpt`."""
        from diffmf_cli.models import create_model

        torch.manual_seed(settings.seed)
        model = create_model(cfg)
        if settings.init_weights and ckpt is None:
            _init_from(model, settings.init_weights)
        model.train()
        ema = copy.deepcopy(model)
        ema.requires_grad_(False)
        optimizer = torch.optim.Adam(parameter_groups(model, settings.weight_decay), lr=settings.lr,
                                     weight_decay=settings.weight_decay)
        anchor = _frozen_start(settings, ckpt, files) if settings.loss_weights().anchor else None
        state = cls(model, ema, optimizer, anchor=anchor)
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
                ema.load_state_dict(ckpt["ema"])
                optimizer.load_state_dict(ckpt["optimizer"])
                torch.set_rng_state(ckpt["torch_rng"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{files.checkpoint}: does not fit this run ({str(exc).splitlines()[0]})"
                                      ) from None
            state.step, state.wall_before = int(ckpt["step"]), float(ckpt["wall_time_s"])
            _truncate_log(files.log, state.step)
        return state

    def save(self, files: RunFiles, settings: TrainSettings, wall: float) -> None:
        """Write the checkpoint (atomically) and redraw the loss plot."""
        state = {
            "format": CHECKPOINT_FORMAT, "step": self.step, "wall_time_s": wall,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            **({"anchor": self.anchor.state_dict(), "anchor_config": json.dumps(self.anchor.config.to_dict())}
               if self.anchor is not None else {}),
            "torch_rng": torch.get_rng_state(), "threads": torch.get_num_threads(),
            "data_order": {"seed": settings.seed, "next_step": self.step},
            "settings": json.dumps(settings.to_dict(), sort_keys=True),
        }
        atomic_write(files.checkpoint, lambda tmp: torch.save(state, tmp))
        if files.log.is_file():
            plot_curves(files.log, files.plot)


def _frozen_start(settings: TrainSettings, ckpt: dict | None, files: RunFiles) -> torch.nn.Module:
    """The model the anchor term compares with: the ``--init`` file's own (its config too: a head option the
    run changes, ``INIT_MAY_CHANGE``, does not change what the file fused), frozen; on resume, the checkpoint's."""
    from diffmf_cli.models import DiffMFConfig, create_model
    from diffmf_cli.weights import load_weights

    if ckpt is None:
        model, _ = load_weights(settings.init_weights)
    else:
        try:
            # The term's first checkpoints kept no config: they anchored to the file's weights in the run's.
            config = (DiffMFConfig.from_dict(json.loads(ckpt["anchor_config"])) if "anchor_config" in ckpt
                      else settings.model_config())
            model = create_model(config)
            model.load_state_dict(ckpt["anchor"])
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{files.checkpoint}: no starting model for the anchor term "
                                  f"({str(exc).splitlines()[0]})") from None
    model.eval()
    model.requires_grad_(False)
    return model


def _write_run_record(files: RunFiles, settings: TrainSettings, sampler: CropSampler, listed, val_pairs) -> None:
    """A new run's settings.json and data.json (the pairs and sampling weights a resume must find again)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    _write_json(files.settings, settings.to_dict())
    _write_json(files.data, {
        "sources": [{"source": spec.to_dict(), "weight": float(w), "pairs": [p.name for p in pairs],
                     "files": [[str(p.ir), str(p.vis)] for p in pairs]}
                    for spec, w, pairs in zip(settings.sources, sampler.weights, listed)],
        "validation_pairs": [name for name, _, _ in val_pairs],
    })


def _sample_scale(sources: list[SourceSpec], origin) -> dict[str, torch.Tensor] | None:
    """Per-crop factors on the loss terms that some source's ``loss_scale`` names (None when none does)."""
    terms = sorted({term for spec in sources for term in (spec.loss_scale or {})})
    if not terms:
        return None
    return {term: torch.tensor([float((sources[k].loss_scale or {}).get(term, 1.0)) for k in origin])
            for term in terms}


def _train_step(state: _TrainingState, sampler: CropSampler, settings: TrainSettings, loss_weights: LossWeights,
                files: RunFiles) -> tuple[float, torch.Tensor, dict]:
    """One optimiser step on batch `state.step` (then the EMA, and the step count); returns (lr, loss, parts).
    DiffMFError when the loss is not finite (the last checkpoint is named)."""
    lr = learning_rate(settings, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    ir, vis, origin = sampler.batch_with_sources(state.step, settings.batch_size)
    fused, unclamped = _fuse(state.model, ir, vis, loss_weights)
    anchor = None
    if state.anchor is not None:
        with torch.no_grad():
            anchor = state.anchor(ir, vis)
    loss, parts = fusion_loss(fused, ir, vis, loss_weights, unclamped, _sample_scale(settings.sources, origin),
                              anchor)
    if not torch.isfinite(loss):
        raise DiffMFError(f"training diverged: loss is {float(loss)} at step {state.step + 1}; "
                          f"lower --lr (last checkpoint: {files.checkpoint})")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
    state.optimizer.step()
    ema_update(state.ema, state.model, settings.ema_decay, state.step)
    state.step += 1
    return lr, loss, parts


class _LogWindow:
    """Loss sums and step count since the last log row."""

    def __init__(self, start: float):
        self.start, self.steps = start, 0
        self.sums = {"loss": 0.0, "intensity": 0.0, "gradient": 0.0, "ssim": 0.0}

    def add(self, loss: torch.Tensor, parts: dict) -> float:
        value = float(loss.detach())
        self.steps += 1
        self.sums["loss"] += value
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        return value

    def row(self, step: int, lr: float, now: float, wall_time_s: float) -> dict:
        """The "train" log row of the window ending now; starts the next window."""
        row = {"kind": "train", "step": step, "lr": lr, **{k: v / self.steps for k, v in self.sums.items()},
               "steps_per_s": self.steps / max(now - self.start, 1e-9), "wall_time_s": wall_time_s}
        self.start, self.steps = now, 0
        self.sums = dict.fromkeys(self.sums, 0.0)
        return row


def _log(log_fh, report: Report, kind: str, row: dict) -> None:
    log_fh.write(json.dumps(row) + "\n")
    log_fh.flush()
    report(kind, row)


@contextmanager
def _no_signals():
    yield {"signal": None}


# ---------------------------------------------------------------------------------------------------------
# Export


def export_run(run_dir: str | Path, out: str | Path, name: str | None = None,
               metrics: dict | None = None) -> Path:
    """Write the run's EMA weights to ``out`` (safetensors) with the config and training facts."""
    from diffmf_cli.models import create_model
    from diffmf_cli.weights import save_weights

    files = RunFiles(run_dir)
    settings = read_settings(files.dir)
    ckpt = load_checkpoint(files.checkpoint)
    model = create_model(settings.model_config())
    try:
        model.load_state_dict(ckpt["ema"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{files.checkpoint}: EMA weights do not fit the run's model "
                              f"({str(exc).splitlines()[0]})") from None
    last_val = {}
    if files.log.is_file():
        for line in files.log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("kind") == "val" and row.get("step", 0) <= ckpt["step"]:
                last_val = row
    data = json.loads(files.data.read_text()) if files.data.is_file() else {}
    if name is None and files.name.is_file():
        name = files.name.read_text().strip() or None
    meta = {
        "name": name or f"diffmf-{settings.task}-{settings.preset}",
        "task": settings.task,
        "preset": settings.preset,
        "weights": "EMA",
        "training": {
            "steps": int(ckpt["step"]), "total_steps": settings.steps, "seed": settings.seed,
            "wall_time_s": round(float(ckpt["wall_time_s"]), 1),
            "settings": settings.to_dict(),
            "data": [{"source": s["source"], "pairs": len(s["pairs"]), "weight": s["weight"]}
                     for s in data.get("sources", [])],
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": int(ckpt.get("threads", 0)) or None},
        },
        "validation": last_val,
        "metrics": metrics or {},
        **code_version(),
    }
    return save_weights(out, model, meta)
