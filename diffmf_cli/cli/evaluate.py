"""`diffmf evaluate`: fusion metrics for one or several methods' fused images against their sources.

Parse the command line, pair the folders (`diffmf_cli.metrics.evaluation`), score (optionally in several
processes), and render: a table (or CSV / JSON) on stdout or in --output, problems one line each on stderr,
and with --report an HTML page with images and charts. Exit codes: 0 every image scored, 1 some file was
unusable (the others are still scored), 2 the command could not run at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperCommand
from rich.table import Table

from diffmf_cli.cli.app import app
from diffmf_cli.cli.common import consoles, progress_bar, run_command
from diffmf_cli.errors import InputError, UsageError

FORMATS = ("table", "csv", "json")
MAX_WARNINGS = 8


class _EvaluateCommand(TyperCommand):
    """`evaluate` with a plain usage line (Typer would print ``{[FUSED_DIR] IR_DIR VIS_DIR}...``)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return ["[OPTIONS]", "[FUSED_DIR] IR_DIR VIS_DIR"]


@app.command("evaluate", cls=_EvaluateCommand)
def evaluate_command(
    folders: list[Path] = typer.Argument(
        ..., metavar="[FUSED_DIR] IR_DIR VIS_DIR", show_default=False,
        help="The fused images' folder (optional with --fused), then the infrared (or MRI) and visible (or "
        "CT/PET/SPECT) source folders. Files pair by stem, as for `diffmf fuse`. With --combine: result files.",
    ),
    fused: list[str] = typer.Option(
        [], "--fused", metavar="NAME=DIR", show_default=False,
        help="A method's fused-image folder under a name; repeat to compare methods side by side.",
    ),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", "-m", help="Comma-separated subset, e.g. EN,SD,VIF,Qabf,SSIM (default: all 14)."
    ),
    convention: str = typer.Option(
        "reference", "--convention", "-c",
        help="reference (the CDDFuse/EMMA evaluator, default) or standard, optionally followed by variants "
        "joined with '+': ssim-range255, ssim-mean, mi-bits, psnr-peak255, ag-matlab, msssim-standard.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to this file "
                                          "instead of stdout."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report (images, values, "
                                          "charts) and a PNG contact sheet into this folder."),
    per_image: bool = typer.Option(False, "--per-image", help="Table format: also list every image's values."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Processes to score images in parallel."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders (stems are relative "
                                   "paths)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no warnings; errors are "
                               "still listed."),
    combine: bool = typer.Option(False, "--combine", help="Combine JSON/CSV results of several shards (given "
                                 "instead of folders) into one, equal to scoring all their images at once."),
) -> None:
    """Score fused images: EN SD SF AG MI SCD VIF Qabf SSIM CC MSE PSNR Nabf MS-SSIM, per image and summarised."""
    err, out = consoles()

    def body() -> int:
        if combine:
            return _combine(out, folders, fmt, output, per_image, bool(fused or metrics or report))
        return _run(err, out, EvaluateRequest(folders, fused, metrics, convention, fmt, output, report, per_image,
                                              jobs, recursive, quiet))

    run_command("evaluate", err, body)


@dataclass(frozen=True)
class EvaluateRequest:
    """What `diffmf evaluate` was asked, as given on the command line (checked by `_run`)."""

    folders: list
    fused: list
    metrics: str | None
    convention: str
    fmt: str
    output: Path | None
    report: Path | None
    per_image: bool
    jobs: int
    recursive: bool
    quiet: bool


def _run(err, out, req: EvaluateRequest) -> int:
    fmt = req.fmt
    from diffmf_cli.io.outputs import check_outside
    from diffmf_cli.metrics import parse_convention, parse_metric_names
    from diffmf_cli.metrics.evaluation import build_document, parse_method, plan_evaluation, score_tasks

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if req.jobs < 1:
        raise UsageError(f"--jobs {req.jobs}: expected 1 or more")
    names = parse_metric_names(req.metrics)
    conv = parse_convention(req.convention)
    methods = [parse_method(text) for text in req.fused]
    if len(req.folders) == 3:
        methods.insert(0, (_folder_name(req.folders[0]), req.folders[0]))
    elif len(req.folders) != 2:
        raise UsageError(f"expected [FUSED_DIR] IR_DIR VIS_DIR, got {len(req.folders)} folder(s)")
    if not methods:
        raise UsageError("no fused images: give FUSED_DIR IR_DIR VIS_DIR, or IR_DIR VIS_DIR with --fused NAME=DIR")
    for _, folder in methods:
        if not folder.is_dir():
            raise UsageError(f"{folder}: fused-image folder does not exist" if not folder.exists()
                             else f"{folder}: is not a folder")
    ir_dir, vis_dir = req.folders[-2], req.folders[-1]
    read = [folder for _, folder in methods] + [ir_dir, vis_dir]
    if req.output is not None:
        check_outside(req.output, read, "-o")
    if req.report is not None:
        check_outside(req.report, read, "--report", contain=True)
    plan = plan_evaluation(methods, ir_dir, vis_dir, req.recursive)
    for line in plan.errors:
        err.print(f"diffmf evaluate: error: {line}", markup=False)
    if plan.skipped_sources and not req.quiet:
        err.print(f"note: {plan.skipped_sources} source pair(s) have no fused image and are not scored",
                  markup=False)
    if not plan.tasks and not plan.errors:
        raise UsageError(f"nothing to evaluate: no fused image has a source pair in {ir_dir} and {vis_dir}")

    progress = progress_bar(err) if (not req.quiet and err.is_terminal and plan.tasks) else None
    failures: list[str] = []

    def done(result) -> None:
        for line in result.errors:
            failures.append(line)
            if progress:
                progress.console.print(f"diffmf evaluate: error: {line}", markup=False)
            else:
                err.print(f"diffmf evaluate: error: {line}", markup=False)
        if progress:
            progress.advance(bar)

    if progress:
        bar = progress.add_task("scoring", total=len(plan.tasks))
        progress.start()
    try:
        results = score_tasks(plan.tasks, names, conv, jobs=req.jobs, on_done=done)
    finally:
        if progress:
            progress.stop()

    warnings = [w for r in results for w in r.warnings]
    if warnings and not req.quiet:
        for line in warnings[:MAX_WARNINGS]:
            err.print(f"diffmf evaluate: warning: {line} -> NaN", markup=False)
        if len(warnings) > MAX_WARNINGS:
            err.print(f"diffmf evaluate: warning: ... and {len(warnings) - MAX_WARNINGS} more", markup=False)
    notes = []
    if any(r.sixteen_bit for r in results):
        notes.append("16-bit inputs were scaled to 0..255 (and rounded) before scoring")
    if fmt == "csv" and not req.quiet:
        for note in notes:  # the table and JSON carry their notes; CSV has no place for them
            err.print(f"note: {note}", markup=False)
    doc = build_document(plan.methods, results, names, conv, notes)
    text = render(doc, names, fmt, req.per_image)
    if req.output is not None:
        _write_text(req.output, text)
    else:
        if fmt == "table":
            _print_table(out, doc, names, req.per_image)
        else:
            typer.echo(text, nl=False)  # verbatim: no Rich markup, emoji codes or wrapping in data
    if req.report is not None:
        from diffmf_cli.metrics.report import write_report

        written = write_report(req.report, plan, results, doc, names)
        if not req.quiet:
            err.print(f"report: {written}", markup=False)
    return 1 if (plan.errors or failures) else 0


def _combine(out, files, fmt, output, per_image, scoring_options) -> int:
    from diffmf_cli.metrics.combine import combine_results

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if scoring_options:
        raise UsageError("--combine takes result files only (--fused, --metrics and --report score images)")
    if output is not None and output.exists() and any(Path(f).exists() and os.path.samefile(f, output)
                                                      for f in files):
        raise UsageError(f"-o {output}: is one of the results being combined; refusing to write over an input "
                         "(give another output name)")
    try:
        doc = combine_results(files)
    except InputError as exc:  # a result file that cannot be read: nothing is combined
        raise UsageError(str(exc)) from None
    names = list(doc["metrics"])
    text = render(doc, names, fmt, per_image)
    if output is not None:
        _write_text(output, text)
    elif fmt == "table":
        _print_table(out, doc, names, per_image)
    else:
        typer.echo(text, nl=False)
    return 1 if doc["errors"] else 0


def _folder_name(path: Path) -> str:
    return path.resolve().name or str(path)



def _write_text(path: Path, text: str) -> None:
    from diffmf_cli.io.files import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise InputError(f"{path}: cannot write output ({exc.strerror or exc})") from None


# --- rendering ------------------------------------------------------------------------------------------


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def render(doc: dict, names, fmt: str, per_image: bool = False) -> str:
    """The document as text: JSON (NaN and infinities as null), CSV, or a plain-text table."""
    if fmt == "json":
        return json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return _csv(doc, names)
    buf = io.StringIO()
    console = Console(file=buf, width=200, highlight=False, color_system=None, soft_wrap=True)
    _print_table(console, doc, names, per_image)
    return buf.getvalue()


def _csv(doc: dict, names) -> str:
    from diffmf_cli.metrics.evaluation import method_blocks

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "method", "image", *names, "convention"])
    for method, block in method_blocks(doc).items():
        for image, values in block["per_image"].items():
            writer.writerow(["image", method, image, *(_fmt_csv(values[m]) for m in names), doc["convention"]])
        for stat in ("mean", "std", "n", "excluded"):
            row = [block["summary"][m][stat] for m in names]
            writer.writerow([stat, method, "", *(_fmt_csv(v) for v in row), doc["convention"]])
    return buf.getvalue()


def _fmt_csv(value) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    return repr(float(value)) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _print_table(console: Console, doc: dict, names, per_image: bool) -> None:
    from diffmf_cli.metrics import METRICS
    from diffmf_cli.metrics.evaluation import best_methods, format_value, method_blocks, same_images

    blocks = method_blocks(doc)
    best = best_methods(doc, names)
    counts = {k: len(b["per_image"]) for k, b in blocks.items()}
    n_images = max(counts.values(), default=0)
    table = Table(title=f"fusion metrics, convention: {doc['convention']} ({n_images} image"
                  f"{'s' if n_images != 1 else ''})", title_justify="left")
    table.add_column("metric")
    for method in blocks:
        table.add_column(_escape(f"{method} (mean ± std)" if len(blocks) == 1 else method), justify="right")
    table.add_row("images", *(str(counts[m]) for m in blocks), end_section=True)
    excluded_any = False
    for metric in names:
        cells = []
        for method, block in blocks.items():
            s = block["summary"][metric]
            text = f"{format_value(s['mean'])} ± {format_value(s['std'])}"
            if s["excluded"]:
                text += f" ({s['excluded']} nan)"
                excluded_any = True
            cells.append(f"[bold green]{_escape(text)} *[/]" if method in best[metric] else _escape(text))
        table.add_row(f"{metric} {METRICS[metric].arrow}", *cells)
    console.print(table)
    if len(blocks) > 1 and same_images(doc):
        console.print("* (bold green): best mean per metric (↑ higher is better, ↓ lower)", markup=False)
    elif len(blocks) > 1:
        console.print("no best marked: the methods were scored on different images, so their means do not "
                      "compare", markup=False)
    if excluded_any:
        console.print("(k nan): images where the metric is undefined, left out of mean and std", markup=False)
    for note in doc.get("notes", []):
        console.print(f"note: {note}", markup=False)
    if per_image:
        for method, block in blocks.items():
            t = Table(title=_escape(f"per image ({method})"), title_justify="left")
            t.add_column("image")
            for metric in names:
                t.add_column(f"{metric} {METRICS[metric].arrow}", justify="right")
            for image, values in block["per_image"].items():
                t.add_row(_escape(image), *(format_value(values[m]) for m in names))
            console.print(t)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
