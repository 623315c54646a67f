"""Evaluating folders: pairing fused results with their sources, scoring (optionally in processes), summaries.

Pairing follows `diffmf_cli.io.pairs` (the rules `fuse` uses): the sources pair by relative file stem, and
each fused image joins the source pair with its stem. Nothing here prints; problems come back as values.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from diffmf_cli.errors import InputError, UsageError
from diffmf_cli.io.images import read_image
from diffmf_cli.io.pairs import list_images, pair_folders
from diffmf_cli.metrics.convention import REFERENCE, Convention
from diffmf_cli.metrics.registry import METRIC_NAMES, METRICS, compute_metrics


def read_for_metrics(path: Path | str) -> tuple[np.ndarray, bool]:
    """Read an image file as the metrics see it: float64 (H, W), whole gray levels 0..255.

    Colour files become gray as OpenCV's BGR2GRAY computes it in float, rounded (the reference evaluator's
    ``image_read_cv2(path, 'GRAY')``); 16-bit files are first scaled to 0..255. Returns (image, was_16_bit).
    Raises InputError naming the file when it cannot be read.
    """
    return metrics_gray(read_image(path))


def metrics_gray(raw: np.ndarray) -> tuple[np.ndarray, bool]:
    """A decoded image (``read_image``'s (H, W) gray or (H, W, 3) RGB, uint8 or uint16) as the metrics see
    it: see :func:`read_for_metrics`."""
    sixteen = raw.dtype == np.uint16
    img = raw.astype(np.float32)
    if sixteen:
        img *= np.float32(255.0 / 65535.0)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.round(img).astype(np.float64), sixteen


@dataclass(frozen=True)
class ImageTask:
    """One source pair and the fused result of each method for it (method name -> file)."""

    name: str
    ir: Path
    vis: Path
    fused: dict[str, Path]


@dataclass
class ImageResult:
    """Scores of one image: per method, metric -> value (NaN where undefined); problems as one-line texts."""

    name: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sixteen_bit: bool = False


@dataclass
class Plan:
    """What will be scored: tasks in name order, and one-line problems found while pairing."""

    methods: list[str]
    tasks: list[ImageTask]
    errors: list[str] = field(default_factory=list)
    skipped_sources: int = 0  # source pairs that no method has a fused image for


def parse_method(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` -> (NAME, DIR); UsageError otherwise."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise UsageError(f"--fused: expected NAME=DIR, got {text!r}")
    return name.strip(), Path(folder.strip())


def plan_evaluation(
    methods: Sequence[tuple[str, Path]], ir_dir: Path, vis_dir: Path, recursive: bool = False
) -> Plan:
    """Match each method's fused folder against the source pairs of `ir_dir` and `vis_dir` by stem.

    A fused image without a source pair, a stem shared by two files, and a source pair that one method has a
    result for but another lacks are errors (reported, not fatal). Source pairs that no method has a result
    for are only counted (evaluating part of a dataset is normal). Raises UsageError for a missing folder or
    duplicate method names.
    """
    names = [m for m, _ in methods]
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise UsageError(f"--fused: method name given twice: {', '.join(dupes)}")
    pairing = pair_folders(ir_dir, vis_dir, recursive)
    errors = [
        f"{name}: ambiguous, several source files share this stem: {', '.join(map(str, files))}"
        for name, files in pairing.ambiguous.items()
    ]
    sources = {p.name: p for p in pairing.pairs}
    ir_names = {p.name for p in pairing.pairs} | {_rel_stem(p, ir_dir) for p in pairing.unmatched_ir}
    vis_names = {p.name for p in pairing.pairs} | {_rel_stem(p, vis_dir) for p in pairing.unmatched_vis}
    fused_by_method: dict[str, dict[str, Path]] = {}
    for method, folder in methods:
        found, ambiguous = list_images(folder, recursive)
        for name, files in ambiguous.items():
            errors.append(f"{name}: ambiguous, several files of '{method}' share this stem: "
                          f"{', '.join(map(str, files))}")
        for name, path in sorted(found.items()):
            if name in sources or name in pairing.ambiguous:
                continue
            missing = [side for side, have in (("infrared", ir_names), ("visible", vis_names)) if name not in have]
            errors.append(f"{path}: no {' or '.join(missing)} source image with stem '{name}'")
        fused_by_method[method] = {n: p for n, p in found.items() if n in sources}
    used = sorted(set().union(*fused_by_method.values()))
    tasks = []
    for name in used:
        have = {m: f[name] for m, f in fused_by_method.items() if name in f}
        for method, folder in methods:
            if method not in have:
                errors.append(f"{name}: no fused image of method '{method}' in {folder}")
        pair = sources[name]
        tasks.append(ImageTask(name, pair.ir, pair.vis, have))
    return Plan(names, tasks, errors, skipped_sources=len(sources) - len(used))


def _rel_stem(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return str(PurePosixPath(*rel.parent.parts, rel.stem))


def score_task(
    task: ImageTask, metric_names: Sequence[str] = METRIC_NAMES, convention: Convention = REFERENCE
) -> ImageResult:
    """Read one source pair and its fused images and score each method. Never raises for bad files:
    an unreadable file or a size mismatch becomes an error text naming the file(s)."""
    result = ImageResult(task.name)
    try:
        ir, ir16 = read_for_metrics(task.ir)
        vis, vis16 = read_for_metrics(task.vis)
    except InputError as exc:
        result.errors.append(str(exc))
        return result
    if ir.shape != vis.shape:
        result.errors.append(f"{task.name}: size mismatch: {task.ir} is {_size(ir)}, {task.vis} is {_size(vis)}")
        return result
    result.sixteen_bit = ir16 or vis16
    for method, path in task.fused.items():
        try:
            fused, f16 = read_for_metrics(path)
        except InputError as exc:
            result.errors.append(str(exc))
            continue
        if fused.shape != ir.shape:
            result.errors.append(f"{path}: size {_size(fused)} differs from its sources' {_size(ir)} "
                                 f"({task.ir}, {task.vis})")
            continue
        result.sixteen_bit |= f16
        values, warnings = compute_metrics(fused, ir, vis, metric_names, convention)
        result.values[method] = values
        result.warnings.extend(f"{task.name} ({method}): {w}" for w in warnings)
    return result


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


def _init_worker() -> None:
    # One process per core: keep OpenCV from starting threads of its own.
    cv2.setNumThreads(1)


def _score_star(args) -> ImageResult:
    return score_task(*args)


def score_tasks(
    tasks: Sequence[ImageTask],
    metric_names: Sequence[str] = METRIC_NAMES,
    convention: Convention = REFERENCE,
    jobs: int = 1,
    on_done: Callable[[ImageResult], None] | None = None,
) -> list[ImageResult]:
    """Score every task, in `jobs` processes when jobs > 1. Results come back in task order; `on_done`
    is called once per finished task (in completion order), e.g. to advance a progress bar."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    names = list(metric_names)
    if jobs == 1 or len(tasks) <= 1:
        results = []
        for task in tasks:
            results.append(score_task(task, names, convention))
            if on_done:
                on_done(results[-1])
        return results
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    out: list[ImageResult | None] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                             initializer=_init_worker) as pool:
        futures = {pool.submit(_score_star, (task, names, convention)): i for i, task in enumerate(tasks)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                res = fut.result()
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory): say so per image
                res = ImageResult(tasks[i].name, errors=[f"{tasks[i].name}: worker process died ({exc})"])
            out[i] = res
            if on_done:
                on_done(res)
    return [r for r in out if r is not None]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over the images where the metric is a
    number; `n` such images, `excluded` NaN values left out."""

    mean: float
    std: float
    n: int
    excluded: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "excluded": self.excluded}


def summarize(values: Iterable[float]) -> Summary:
    arr = np.asarray(list(values), dtype=np.float64)
    nan = np.isnan(arr)
    kept = arr[~nan]
    if kept.size == 0:
        return Summary(math.nan, math.nan, 0, int(nan.sum()))
    with np.errstate(invalid="ignore"):
        mean = float(kept.mean())
        std = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    return Summary(mean, std, int(kept.size), int(nan.sum()))


def summarize_method(results: Iterable[ImageResult], method: str, metric_names: Sequence[str]) -> dict[str, Summary]:
    scored = [r.values[method] for r in results if method in r.values]
    return {m: summarize(v[m] for v in scored) for m in metric_names}


# --- the result document (what `diffmf evaluate` renders as a table, CSV, JSON or a report) ----------------


def build_document(
    methods: Sequence[str],
    results: Sequence[ImageResult],
    names: Sequence[str],
    conv: Convention,
    notes: Sequence[str] = (),
) -> dict:
    """The JSON-shaped result: ``{"convention", "method", "per_image", "summary"}`` for one method; for several,
    ``{"convention", "methods": {name: {"convention", "per_image", "summary"}}}``. Both carry
    ``metrics`` (name -> higher_is_better), ``conventions`` (settings in words), ``notes`` and ``errors``."""
    blocks = {}
    for method in methods:
        per_image = {r.name: r.values[method] for r in results if method in r.values}
        summary = {m: s.to_dict() for m, s in summarize_method(results, method, names).items()}
        blocks[method] = {"convention": conv.name, "per_image": per_image, "summary": summary}
    doc: dict = {"convention": conv.name}
    if len(methods) == 1:
        doc["method"] = methods[0]
        doc.update(blocks[methods[0]])
    else:
        doc["methods"] = blocks
    doc["metrics"] = {m: {"higher_is_better": METRICS[m].higher_is_better} for m in names}
    doc["conventions"] = conv.describe()
    doc["notes"] = list(notes)
    doc["errors"] = [e for r in results for e in r.errors]
    return doc


def method_blocks(doc: dict) -> dict[str, dict]:
    """Method name -> its block (``per_image``, ``summary``), for one method or several."""
    return doc["methods"] if "methods" in doc else {doc["method"]: doc}


def same_images(doc: dict) -> bool:
    """True when every method of the document was scored on the same images."""
    blocks = doc.get("methods") or {}
    return len({frozenset(b.get("per_image", ())) for b in blocks.values()}) <= 1


def best_methods(doc: dict, names) -> dict[str, set[str]]:
    """Per metric, the method(s) with the best mean (direction from the registry); empty for one method, and
    for methods scored on different images (their means would not be comparable: `same_images`)."""
    blocks = doc.get("methods")
    best: dict[str, set[str]] = {m: set() for m in names}
    if not blocks or len(blocks) < 2 or not same_images(doc):
        return best
    for metric in names:
        means = {k: b["summary"][metric]["mean"] for k, b in blocks.items()}
        finite = {k: v for k, v in means.items() if not math.isnan(v)}
        if not finite:
            continue
        target = max(finite.values()) if METRICS[metric].higher_is_better else min(finite.values())
        best[metric] = {k for k, v in finite.items() if v == target}
    return best


def format_value(value: float | None) -> str:
    """A metric value as tables and the report print it: 4 decimals, or 3 significant digits in scientific
    notation below 0.01; "nan", "inf", "-inf" for the non-finite (None counts as nan)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3e}" if 0 < abs(value) < 0.01 else f"{value:.4f}"
