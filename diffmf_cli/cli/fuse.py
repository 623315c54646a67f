"""`diffmf fuse`: fuse registered pairs (two folders, one pair of files, or a CSV list) into images.

Parse the command line, collect the pairs (`diffmf_cli.io.pairs`), load the weights, hand everything to the
engine (`diffmf_cli.fusion`) and render what comes back: a progress bar on stderr when it is a terminal, one
line per failure on stderr, and a summary (or, with --json, one JSON document) on stdout.
Exit codes: 0 every pair fused or skipped, 1 some pairs failed, 2 the command could not run at all.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from diffmf_cli.cli.app import app
from diffmf_cli.cli.common import consoles, progress_bar, run_command
from diffmf_cli.errors import UsageError


@app.command("fuse")
def fuse_command(
    ir: Optional[Path] = typer.Argument(None, metavar="IR", show_default=False,
                                        help="Folder of infrared (or MRI) images, or one image file."),
    vis: Optional[Path] = typer.Argument(None, metavar="VIS", show_default=False,
                                         help="Folder of visible (or CT/PET/SPECT) images, or one file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="OUT", show_default=False,
                                          help="Output folder (or, for one pair of files, an output file "
                                          "name). Needed unless every --pairs row names its output."),
    pairs_csv: Optional[Path] = typer.Option(None, "--pairs", metavar="LIST.csv", show_default=False,
                                             help="CSV of pairs: rows ir,vis[,out]; relative paths are "
                                             "relative to the CSV file. - reads it from stdin (paths "
                                             "relative to the current folder)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders; mirror them in OUTPUT."),
    strict: bool = typer.Option(False, "--strict", help="Files without a partner are an error (nothing is fused)."),
    gray: bool = typer.Option(False, "--gray", help="Write the fused luminance only, even for colour inputs."),
    ext: str = typer.Option("png", "--ext", metavar="png|jpg|tif|bmp", help="Output format: png, jpg (jpeg), tif "
                            "(tiff) or bmp (16-bit inputs keep 16 bits in png/tif)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo pairs whose output exists, whatever "
                                   "made it (default: skip outputs of the same settings, refuse others)."),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]",
                               help="Where to run: CUDA when there is one, else the CPU."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="N", show_default=False,
                                             help="Most same-size pairs per forward pass.  [default: 1 on CPU, "
                                             "8 on CUDA]"),
    precision: str = typer.Option("fp32", "--precision", metavar="fp32|bf16|fp16",
                                  help="Compute precision (bf16/fp16 on CUDA only)."),
    tile: str = typer.Option("auto", "--tile", metavar="auto|off|N", help="Tile size in pixels for large "
                             "images; auto picks it from free memory."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N|auto", show_default=False,
                                        help="Fuse only the K-th (0-based) of N disjoint, stable slices of "
                                        "the pairs; auto: this SLURM array task's slice.  [default: all "
                                        "pairs]"),
    model: Optional[str] = typer.Option(None, "--model", metavar="ir-vis|medical", show_default=False,
                                        help="Shipped model.  [default: ir-vis]"),
    weights: Optional[Path] = typer.Option(None, "--weights", metavar="FILE", show_default=False,
                                           help="A diffmf weights file (.safetensors) instead of a shipped "
                                           "model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (a record per pair) on stdout."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON record per pair on stdout as soon as it "
                               "is done (flushed), for a downstream step to start before the run ends."),
    engine: str = typer.Option("local", "--engine", help="local (this process), or ray: an actor pool on the "
                               "Ray cluster at $RAY_ADDRESS, else on a new local one (pip install "
                               "\"diffmf[ray]\")."),
    workers: int = typer.Option(1, "--workers", help="--engine ray: actors, each loading the model once."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="--engine ray: CPUs (and torch "
                                          "threads) per actor."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="--engine ray: GPUs per actor "
                                          "(fractions share a GPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no summary; failures still listed."),
) -> None:
    """Fuse every registered pair: IR_DIR VIS_DIR -o OUT_DIR, or IR_FILE VIS_FILE -o FUSED_FILE, or --pairs."""
    err, out = consoles()

    def body() -> int:
        scale = _engine_choice(engine, workers, cpus_per_worker, gpus_per_worker)
        return _run(err, out, FuseRequest(ir, vis, output, pairs_csv, recursive, strict, gray, ext, overwrite,
                                          device, batch_size, precision, tile, shard, model, weights, as_json,
                                          quiet, jsonl, scale))

    run_command("fuse", err, body, interrupted="finished outputs are kept, run again to resume")


@dataclass(frozen=True)
class FuseRequest:
    """What `diffmf fuse` was asked, as given on the command line (checked by `_run`)."""

    ir: Path | None
    vis: Path | None
    output: Path | None
    pairs_csv: Path | None
    recursive: bool
    strict: bool
    gray: bool
    ext: str
    overwrite: bool
    device: str
    batch_size: int | None
    precision: str
    tile: str
    shard: str | None
    model: str | None
    weights: Path | None
    as_json: bool
    quiet: bool
    jsonl: bool = False
    scale: object = None  # the Ray actor pool's settings (`--engine ray`), None for the local engine


def _engine_choice(engine: str, workers: int, cpus_per_worker: float, gpus_per_worker: float):
    """None for the local engine, else the Ray actor pool's settings (checked before anything runs)."""
    key = engine.strip().lower()
    if key == "local":
        if (workers, cpus_per_worker, gpus_per_worker) != (1, 1.0, 0.0):
            raise UsageError("--workers, --cpus-per-worker and --gpus-per-worker go with --engine ray")
        return None
    if key != "ray":
        raise UsageError(f"--engine {engine}: expected local or ray")
    from diffmf_cli.ray_engine import RaySettings, import_ray

    settings = RaySettings(workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    import_ray()  # not installed: one line saying how, before the pairs are listed
    return settings


def _run(err, out, req: FuseRequest) -> int:
    from diffmf_cli.api import Fuser
    from diffmf_cli.fusion import FuseOptions, PairResult, Summary, parse_tile, resolve_device, resolve_precision
    from diffmf_cli.fusion import output_path
    from diffmf_cli.io.outputs import check_inputs_untouched, prepare_output_folders
    from diffmf_cli.io.pairs import Pair, is_image_file, pair_folders, parse_shard, read_pair_list, select_shard

    stdout = sys.stdout  # records go here even while an engine (Ray) points sys.stdout elsewhere

    options = FuseOptions(ext=req.ext.lower().lstrip("."), gray=req.gray, overwrite=req.overwrite,
                          batch_size=req.batch_size, tile=parse_tile(req.tile))
    shard_k_n = parse_shard(req.shard) if req.shard is not None else None
    if req.as_json and req.jsonl:
        raise UsageError("give --json (one document at the end) or --jsonl (a record per pair), not both")
    if req.model is not None and req.weights is not None:
        raise UsageError("give --model or --weights, not both")
    torch_device = resolve_device(req.device)
    resolve_precision(req.precision, torch_device)  # a bad setting stops the run before the pairs are listed

    # ---- which pairs
    pairs: list[Pair]
    unmatched: list[Path] = []
    failed_early: list[tuple[str, str]] = []
    out_dir: Path | None = req.output
    if req.pairs_csv is not None:
        if req.ir is not None or req.vis is not None:
            raise UsageError("give either IR VIS or --pairs LIST.csv, not both")
        pairs = read_pair_list(req.pairs_csv)
        if not pairs:
            raise UsageError(f"--pairs {req.pairs_csv}: the list has no pairs (rows ir,vis[,out]); nothing to do")
    elif req.ir is None or req.vis is None:
        raise UsageError("give IR and VIS (two folders or two image files), or --pairs LIST.csv")
    elif req.ir.is_file() or req.vis.is_file():
        for path in (req.ir, req.vis):
            if not path.is_file():
                raise UsageError(f"{path}: not an image file (IR and VIS must both be files or both folders)")
        if _same(req.ir, req.vis):
            raise UsageError(f"{req.ir} is given as both IR and VIS; it would be fused with itself")
        pairs = [Pair(req.ir.stem, req.ir, req.vis)]  # into the folder -o (an existing one, whatever its name)
        if req.output is not None and not req.output.is_dir():
            if is_image_file(req.output):
                pairs, out_dir = [Pair(req.ir.stem, req.ir, req.vis, req.output)], None
            elif req.output.name.startswith("."):
                raise UsageError(f"-o {req.output}: a hidden name (starting with .) is never written as an "
                                 "output; give another name")
            elif req.output.suffix:
                raise UsageError(f"-o {req.output}: {req.output.suffix} is not an output format (png, jpg, jpeg, "
                                 "bmp, tif, tiff); give a file with one of those, or a folder that exists")
    else:
        if _same(req.ir, req.vis):
            raise UsageError(f"{req.ir} is given as both IR and VIS; every image would be fused with itself")
        pairing = pair_folders(req.ir, req.vis, recursive=req.recursive)
        if not pairing.pairs and not pairing.ambiguous:
            raise UsageError(_no_pairs(req.ir, req.vis, req.recursive, pairing))
        unmatched = pairing.unmatched
        failed_early = [(name, f"{name}: ambiguous, several files share this name: "
                         + ", ".join(str(p) for p in files)) for name, files in pairing.ambiguous.items()]
        if req.strict and (unmatched or failed_early):
            problems = [f"{p} (no partner)" for p in unmatched] + [reason for _, reason in failed_early]
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise UsageError(f"--strict: {len(problems)} file(s) cannot be paired: {'; '.join(problems[:3])}{more}"
                             "; nothing was fused")
        pairs = pairing.pairs
    if out_dir is None and any(p.out is None for p in pairs):
        single = req.pairs_csv is None and req.ir is not None and req.ir.is_file()
        raise UsageError("give -o OUT_FILE (or an output folder)" if single else "give an output folder with -o OUT_DIR")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: output exists and is not a folder")
    outputs = [output_path(p, out_dir, options.ext) for p in pairs]
    check_inputs_untouched(outputs, [f for p in pairs for f in (p.ir, p.vis)],
                           out_dir if any(p.out is None for p in pairs) else None,
                           [d for d in (req.ir, req.vis) if req.pairs_csv is None and d is not None and d.is_dir()])
    total = len(pairs)
    if shard_k_n is not None:
        pairs = select_shard(pairs, *shard_k_n)
        failed_early = [(n, r) for n, r in failed_early if _in_shard(n, shard_k_n)]
        if not pairs and not failed_early:
            if not req.quiet:
                err.print(f"shard {shard_k_n[0]}/{shard_k_n[1]}: none of the {total} pairs fall in this slice; "
                          "nothing to do", markup=False)
            return 0

    # ---- the model (local: loaded here; ray: each worker loads it, the driver checks the weights file)
    if req.scale is None:
        fuser = Fuser(req.model, weights=req.weights, device=req.device, precision=req.precision, tile=options.tile,
                      batch_size=options.batch_size)
        weights_path = fuser.weights_path
        where = str(torch_device)
    else:
        from diffmf_cli.api import resolve_model
        from diffmf_cli.weights import read_metadata

        name, weights_path = resolve_model(req.model, req.weights)
        read_metadata(weights_path)  # a corrupt file stops here (exit 2), not in every worker
        from diffmf_cli.io.records import find_other_formats, other_format_message

        other_formats = find_other_formats([output_path(p, out_dir, options.ext) for p in pairs if p.out is None])
        if other_formats:
            raise UsageError(other_format_message(other_formats))
        if not req.overwrite:  # outputs of other settings stop the run here, not in a worker
            from diffmf_cli.io.records import conflict_message, find_conflicts, settings_for

            settings = settings_for(weights_path, gray=req.gray, precision=req.precision.strip().lower(),
                                    tile=options.tile, model=name or str(weights_path))
            conflicts = find_conflicts([(output_path(p, out_dir, options.ext), p.ir, p.vis) for p in pairs],
                                       settings)
            if conflicts:
                raise UsageError(conflict_message(conflicts))
        where = f"ray ({req.scale.workers} worker{'s' if req.scale.workers != 1 else ''})"
    # the output folder (or each listed output's folder) exists and takes files before any pair is fused;
    # a problem with a mirrored sub-folder (-r) fails only the pairs that go there
    folders = {p.out.parent for p in pairs if p.out is not None}
    if out_dir is not None and any(p.out is None for p in pairs):
        folders.add(out_dir)
    prepare_output_folders(folders)
    shown: dict = {}  # the progress display, once there is one: large images report their tiles to it

    def on_tiles(done: int, total: int) -> None:
        bar = shown.get("progress")
        if bar is None:
            return
        if "tiles" not in shown:
            shown["tiles"] = bar.add_task("  tiles of this image", total=total)
        bar.update(shown["tiles"], completed=done, total=total, visible=done < total)

    if req.scale is None:
        results = fuser.run(pairs, out_dir, ext=options.ext, gray=options.gray, overwrite=options.overwrite,
                            on_tiles=on_tiles)
    else:
        from diffmf_cli.ray_engine import FuserSpec, run_ray

        spec = FuserSpec(model=name, weights=None if name else str(weights_path.resolve()), device=req.device,
                         precision=req.precision, tile=options.tile, batch_size=options.batch_size, ext=options.ext,
                         gray=options.gray, overwrite=options.overwrite)
        results = run_ray(pairs, out_dir, spec, req.scale)

    # ---- run
    if not req.quiet:
        for path in unmatched:
            err.print(f"no partner: {path}", markup=False)
    summary = Summary(unmatched=len(unmatched))

    def add(result: PairResult) -> None:
        summary.add(result)
        if req.jsonl:
            stdout.write(json.dumps(result.to_record()) + "\n")
            stdout.flush()

    for name, reason in failed_early:
        add(PairResult(-1, name, None, None, None, "failed", reason))
    start = time.perf_counter()
    progress = progress_bar(err) if (not req.quiet and err.is_terminal and pairs) else None
    try:
        task = progress.add_task("fusing", total=len(pairs)) if progress else None
        if progress:
            shown["progress"] = progress
            progress.start()
        for result in results:
            add(result)
            if progress:
                progress.advance(task)
    finally:
        if progress:
            progress.stop()
    summary.seconds = time.perf_counter() - start

    # ---- render
    summary.results.sort(key=lambda r: (r.index, r.name))
    if not req.quiet:
        for line in _warnings(summary.results):
            err.print(f"warning: {line}", markup=False)
    for result in summary.results:
        if result.status == "failed":
            err.print(f"failed: {result.error}", markup=False)
    if req.as_json:
        doc = {
            "fused": summary.fused, "skipped": summary.skipped, "failed": summary.failed,
            "unmatched": summary.unmatched, "seconds": round(summary.seconds, 3),
            "pairs_per_second": round(summary.pairs_per_second, 3),
            "device": where, "precision": req.precision, "weights": str(weights_path),
            "unmatched_files": [str(p) for p in unmatched],
            "reasons": summary.reasons,
            "pairs": [r.to_record() for r in summary.results],
        }
        stdout.write(json.dumps(doc) + "\n")
        stdout.flush()
    elif not req.quiet:
        fused = _counted(summary.fused, "fused", summary.reasons["fused"])
        skipped = _counted(summary.skipped, "skipped", summary.reasons["skipped"])
        line = (f"{fused}, {skipped}, {summary.failed} failed, "
                f"{summary.unmatched} without a partner in {summary.seconds:.1f} s "
                f"({summary.pairs_per_second:.2f} pairs/s) on {where}")
        (err if req.jsonl else out).print(line, markup=False)  # with --jsonl, stdout holds records only
    return 1 if summary.failed else 0


def _warnings(results) -> list[str]:
    """One line per kind of silent conversion (a damaged file decoded anyway, a colour IR image reduced to
    luminance, 16 bits written as 8): the first case, and how many more pairs it happened to."""
    kinds: dict[str, list[str]] = {}
    for result in results:
        for kind, message in result.notes:
            kinds.setdefault(kind, []).append(message)
    return [messages[0] + (f" (and {len(messages) - 1} more like it)" if len(messages) > 1 else "")
            for messages in kinds.values()]


def _counted(count: int, word: str, reasons: dict[str, int]) -> str:
    """``25 skipped (output exists from the same settings)``; several reasons each with their count."""
    if not reasons:
        return f"{count} {word}"
    if len(reasons) == 1 and next(iter(reasons.values())) == count:
        return f"{count} {word} ({next(iter(reasons))})"
    return f"{count} {word} (" + "; ".join(f"{n}: {why}" for why, n in reasons.items()) + ")"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _no_pairs(ir: Path, vis: Path, recursive: bool, pairing) -> str:
    """The one line for two folders without a single pair: what each holds, and -r when it would help."""
    counts = f"{len(pairing.unmatched_ir)} image(s) in {ir}, {len(pairing.unmatched_vis)} in {vis}"
    if pairing.unmatched_ir and pairing.unmatched_vis:
        why = "no file name (stem) is in both"
    else:
        why = "nothing to pair"
    nested = [str(folder) for folder in dict.fromkeys((ir, vis)) if _has_subfolders(folder)]
    hint = f"; {' and '.join(nested)} {'has' if len(nested) == 1 else 'have'} sub-folders: add -r to walk them" \
        if nested and not recursive else ""
    return f"no image pairs: {counts} ({why}){hint}"


def _has_subfolders(folder: Path) -> bool:
    try:
        return any(entry.is_dir() and not entry.name.startswith(".") for entry in folder.iterdir())
    except OSError:
        return False


def _in_shard(name: str, k_n: tuple[int, int]) -> bool:
    from diffmf_cli.io.pairs import shard_of

    return shard_of(name, k_n[1]) == k_n[0]
