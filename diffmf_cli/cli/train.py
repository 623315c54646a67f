"""`diffmf train`: train DIFF-MF on registered pairs, resume a run, or export a run's EMA weights.

Settings come from, in rising priority: built-in defaults, a TOML file (``--config``), the command line.
A run folder (``--out``) holds everything (see ``diffmf_cli.training.loop``); ``--resume`` continues it with
the settings stored there (repeating them is allowed, changing them is not). A finished run exports its EMA
weights to ``RUN_DIR/model.safetensors``; a session stopped early (``--max-minutes``, SIGTERM, Ctrl-C) exports
those of its last checkpoint to ``RUN_DIR/model.partial.safetensors``.
Progress goes to stderr (a bar on a terminal, one line per checkpoint otherwise); the summary to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from diffmf_cli.cli.app import app
from diffmf_cli.cli.common import consoles, progress_bar, run_command
from diffmf_cli.errors import UsageError
from diffmf_cli.training import INIT_MAY_CHANGE

def _parse_model_options(options: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-option {item}: expected KEY=VALUE (e.g. use_guidance=false)")
        try:
            out[key.strip()] = json.loads(value.strip().lower() if value.strip().lower() in ("true", "false")
                                          else value.strip())
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _abs(path: Path | str) -> str:
    return str(Path(path).expanduser().resolve())


def _folder_sources(irs: list[Path], viss: list[Path], what: str) -> list[dict]:
    if len(irs) != len(viss):
        raise UsageError(f"--{what}ir and --{what}vis must come in pairs (got {len(irs)} and {len(viss)})")
    return [{"ir": _abs(i), "vis": _abs(v)} for i, v in zip(irs, viss)]


@app.command("train")
def train_command(
    ir: List[Path] = typer.Option([], "--ir", metavar="DIR", help="Folder of training IR (or MRI) images; repeatable, paired "
                                  "in order with --vis.", show_default=False),
    vis: List[Path] = typer.Option([], "--vis", metavar="DIR", help="Folder of training visible (or CT/PET/SPECT) images.",
                                   show_default=False),
    pairs: List[Path] = typer.Option([], "--pairs", metavar="LIST.csv", help="CSV pair list (rows ir,vis), one more source; "
                                     "repeatable.", show_default=False),
    source_weight: List[float] = typer.Option([], "--source-weight", metavar="W", help="Sampling weight of each source, in "
                                              "order (--ir/--vis sources, then --pairs) (default sqrt of "
                                              "pixel count).", show_default=False),
    task: Optional[str] = typer.Option(None, "--task", help="ir-vis (default) or medical: picks the loss "
                                       "and the default crop."),
    medical: bool = typer.Option(False, "--medical", help="Same as --task medical."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset: tiny, cpu (default), gpu."),
    model_option: List[str] = typer.Option([], "--model-option", metavar="KEY=VALUE", help="KEY=VALUE override of the preset's "
                                           "config (e.g. use_guidance=false); repeatable.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (checkpoint, logs, plot, weights)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps in all (default 10000)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per step (default 8)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Crop size (default 128 ir-vis, 64 medical)."),
    scale_jitter: Optional[float] = typer.Option(None, "--scale-jitter", help="Rescale each crop by a random "
                                                 "factor in [1/(1+J), 1+J], J in [0, 1] (default 0 = off)."),
    gamma_jitter: Optional[float] = typer.Option(None, "--gamma-jitter", help="Raise each modality's crop to "
                                                 "a random power in [1/(1+G), 1+G], G in [0, 1] (default 0 = off)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (Adam) (default 2e-4)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine (default) or constant, after "
                                           "warmup."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warmup (default 100)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA decay (default 0.999)."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm, 0 = off "
                                              "(default 1.0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights and data order (default 0)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between "
                                                   "checkpoints (default 200)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Steps per row of RUN_DIR/log.jsonl "
                                            "(mean loss over them) and per progress-bar update (default 10); "
                                            "off a terminal stderr gets a line per checkpoint and validation."),
    val_ir: List[Path] = typer.Option([], "--val-ir", metavar="DIR", help="Validation IR folder (repeatable, with --val-vis).",
                                      show_default=False),
    val_vis: List[Path] = typer.Option([], "--val-vis", metavar="DIR", help="Validation visible folder.", show_default=False),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Steps between validations "
                                            "(default 500)."),
    val_holdout: Optional[int] = typer.Option(None, "--val-holdout", help="Hold N training pairs out (chosen "
                                              "by name hash) and validate on them (default 0)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (.safetensors or a "
                                        "shipped name) instead of random ones: fine-tuning; the model config "
                                        "is the file's, except head options given with --model-option "
                                        f"({', '.join(INIT_MAY_CHANGE)})."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of settings (command-line options "
                                          "win): the options' names with _ (batch_size = 8, init_weights = "
                                          "FILE), [[source]] / [[val_source]] tables (ir + vis, or pairs) for "
                                          "--ir/--vis, and [model] / [loss] tables; examples in "
                                          "weights/training/*.toml."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop cleanly (after a "
                                                "checkpoint) after this many minutes; --resume continues."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default torch's)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Export RUN_DIR's EMA weights (to -o) "
                                          "instead of training."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --export: the .safetensors file."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name stored in exported weights."),
) -> None:
    """Train DIFF-MF: --ir DIR --vis DIR [...] --out RUN_DIR; --resume; or --export RUN_DIR -o FILE."""
    err, stdout = consoles()
    if threads is not None and threads >= 1:
        _limit_numba_pool(threads)

    def body() -> int:
        if export is not None:
            return _export(stdout, export, output, name)
        else:
            cli = {
                "task": "medical" if medical else task, "preset": preset, "steps": steps,
                "batch_size": batch_size, "crop": crop, "scale_jitter": scale_jitter, "lr": lr,
                "gamma_jitter": gamma_jitter, "schedule": schedule,
                "warmup_steps": warmup_steps, "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed,
                "checkpoint_every": checkpoint_every, "log_every": log_every, "val_every": val_every,
                "val_holdout": val_holdout,
            }
            if medical and task not in (None, "medical"):
                raise UsageError(f"--medical contradicts --task {task}")
            sources = _folder_sources(ir, vis, "") + [{"pairs": _abs(p)} for p in pairs]
            if source_weight:
                if len(source_weight) != len(sources):
                    raise UsageError(f"--source-weight given {len(source_weight)} times for {len(sources)} sources")
                for s, w in zip(sources, source_weight):
                    s["weight"] = w
            val_sources = _folder_sources(val_ir, val_vis, "val-")
            if init is not None:
                if preset is not None:
                    raise UsageError("--init takes the model config from the weights file; drop --preset")
                cli["init_weights"] = str(init)
            return _train(err, stdout, TrainRequest(cli, sources, val_sources, _parse_model_options(model_option),
                                                    config, out, resume, max_minutes, threads, name))

    run_command("train", err, body)


@dataclass(frozen=True)
class TrainRequest:
    """What `diffmf train` was asked: `cli` the run settings given as options (None: not given), the sources
    as dicts, the --model-option overrides, and the session's --config, --out, --resume, --max-minutes,
    --threads and --name."""

    cli: dict
    sources: list
    val_sources: list
    model_overrides: dict
    config_path: Path | None
    out: Path | None
    resume: bool
    max_minutes: float | None
    threads: int | None
    name: str | None


def _limit_numba_pool(threads: int) -> None:
    """Size numba's thread pool to --threads before numba is imported.

    The scan kernel sets numba's thread count from torch's, but numba starts a pool of one thread per core
    at import, and a pool larger than the threads in use competes with torch's threads for the cores (a
    several-fold slower training step on a busy machine) and varies the order of float sums between calls.
    """
    if "numba" not in sys.modules and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = str(int(threads))


def _check_export_target(run_dir: Path, output: Path) -> None:
    """`--export RUN -o FILE` writes a weights file and nothing else: FILE may not be one of the run's own
    files, and an existing FILE is replaced only when it is a diffmf weights file (never an image or a
    source someone pointed -o at by mistake)."""
    from diffmf_cli.errors import CheckpointError
    from diffmf_cli.training.loop import RunFiles
    from diffmf_cli.weights import read_metadata

    files = RunFiles(run_dir)
    own = [files.settings, files.data, files.checkpoint, files.log, files.plot, files.model, files.partial,
           files.name]
    if output.exists() and any(f.exists() and os.path.samefile(f, output) for f in own):
        raise UsageError(f"-o {output}: is a file of the run {run_dir}; exporting there would destroy it "
                         "(give another .safetensors path)")
    if output.is_dir():
        raise UsageError(f"-o {output}: is a folder; give the .safetensors file to write")
    if output.exists():
        try:
            read_metadata(output)
        except CheckpointError:
            raise UsageError(f"-o {output}: exists and is not a diffmf weights file; refusing to replace it "
                             "(give another path)") from None


def _export(stdout: Console, run_dir: Path, output: Path | None, name: str | None) -> int:
    from diffmf_cli.training.loop import export_run

    if output is None:
        raise UsageError("--export RUN_DIR needs -o FILE.safetensors")
    _check_export_target(run_dir, output)
    path = export_run(run_dir, output, name=name)
    from diffmf_cli.weights import read_metadata

    training = read_metadata(path).get("training", {})
    step, total = training.get("steps"), training.get("total_steps")
    unfinished = f" (step {step} of {total}: the run is not finished)" if step != total else ""
    stdout.print(f"exported EMA weights of {run_dir} to {path}{unfinished}", markup=False)
    return 0


def _train(err, stdout, req: TrainRequest) -> int:
    import torch

    from diffmf_cli.training.loop import RunFiles, export_run, read_settings, train
    from diffmf_cli.training.settings import merge_settings, read_config

    max_minutes = req.max_minutes
    threads = req.threads

    if req.resume:
        run_dir = req.out
        if run_dir is None and req.config_path is not None:
            run_dir = read_config(req.config_path).get("out")
        if run_dir is None:
            raise UsageError("--resume needs --out RUN_DIR")
        stored = read_settings(run_dir)
        # Settings may be repeated on a resume (scripts do), but none may change.
        settings, session = merge_settings(req.cli, req.sources, req.val_sources, req.model_overrides,
                                           req.config_path, base=stored.to_dict())
        before, after = stored.to_dict(), settings.to_dict()
        changed = [k for k in before if before[k] != after.get(k)]
        if changed:
            detail = ", ".join(f"{k} {before[k]!r} -> {after.get(k)!r}" for k in changed[:3])
            raise UsageError(f"--resume continues {run_dir} with its own settings, but these differ: {detail}; "
                             "drop them, or start a new run with another --out")
        settings = stored
    else:
        settings, session = merge_settings(req.cli, req.sources, req.val_sources, req.model_overrides,
                                           req.config_path)
    run_dir = req.out if req.out is not None else (Path(session["out"]) if "out" in session else None)
    if run_dir is None:
        raise UsageError("give --out RUN_DIR (the folder for checkpoints, logs and weights)")
    max_minutes = max_minutes if max_minutes is not None else session.get("max_minutes")
    threads = threads if threads is not None else session.get("threads")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    if max_minutes is not None and max_minutes <= 0:
        raise UsageError(f"--max-minutes must be positive, got {max_minutes}")

    reporter = _Reporter(err)
    files = RunFiles(run_dir)
    try:
        result = train(settings, run_dir, resume=req.resume, max_minutes=max_minutes, report=reporter)
    finally:
        reporter.close()
    if req.name:
        files.name.write_text(req.name + "\n")
    stdout.print(f"run {files.dir}: step {result.step}/{result.total_steps}, "
                 f"{result.wall_time_s / 60:.1f} min of training in all"
                 + (f", loss {result.last_loss:.4f} (the log's row at step {result.last_loss_step})"
                    if result.last_loss is not None else ""), markup=False)
    # model.safetensors exists once the run is finished; an early stop exports model.partial.safetensors
    # (the EMA weights of the checkpoint it stopped at; the metadata records the step).
    if result.finished:
        export_run(run_dir, files.model)
        files.partial.unlink(missing_ok=True)
        stdout.print(f"EMA weights: {files.model}", markup=False)
        return 0
    export_run(run_dir, files.partial)
    stdout.print(f"EMA weights so far (step {result.step}): {files.partial}", markup=False)
    stdout.print(f"stopped early ({result.stopped_by}); continue with: diffmf train --out {files.dir} --resume",
                 markup=False)
    return 0 if result.stopped_by == "time budget" else 130


class _Reporter:
    """Renders the loop's events: a rich progress bar on a terminal, else a line per checkpoint/validation."""

    def __init__(self, err: Console):
        self.err = err
        self.progress = None
        self.task = None
        self.last: dict = {}

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            pairs = ", ".join(f"{n} pairs (weight {w:.2f})" for n, w in zip(info["pairs"], info["weights"]))
            verb = "resuming at step" if info["resumed"] else "training from step"
            self.err.print(f"{verb} {info['step']}/{info['total']}: {info['params']:,} parameters; "
                           f"sources: {pairs}; {info['validation_pairs']} validation pairs", markup=False)
            if info.get("metrics_note"):
                self.err.print(f"validation: {info['metrics_note']}", markup=False)
            if self.err.is_terminal:
                self.progress = progress_bar(self.err, "training", stats="{task.fields[stats]}")
                self.task = self.progress.add_task("train", total=info["total"], completed=info["step"],
                                                   stats="")
                self.progress.start()
        elif kind == "step":
            self.last = info
            if self.progress is not None:
                self.progress.update(self.task, completed=info["step"],
                                     stats=f"loss {info['loss']:.4f}  {info['steps_per_s']:.2f} steps/s")
        elif kind == "val":
            values = "  ".join(f"{k[4:]} {v:.4f}" for k, v in info.items() if k.startswith("val_"))
            self._line(f"step {info['step']}: validation {values}")
        elif kind == "checkpoint" and self.last:
            logged = (f"loss {self.last['loss']:.4f}, lr {self.last['lr']:.2e}, "
                      f"{self.last['steps_per_s']:.2f} steps/s")
            if self.last["step"] == info["step"]:
                self._line(f"step {info['step']}: {logged}, checkpoint saved")
            else:  # the checkpoint falls between log rows: say which row the figures are from
                self._line(f"step {info['step']}: checkpoint saved (log row of step {self.last['step']}: {logged})")

    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        (self.progress.console if self.progress is not None else self.err).print(f"[{stamp}] {text}", markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
