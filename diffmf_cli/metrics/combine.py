"""Combining `diffmf evaluate` results of several shards or machines into one result.

Each input is the JSON or CSV that `diffmf evaluate --format json|csv` wrote. Their per-image values are read
back exactly (both formats write each float's shortest round-trip form), the images are put back in the
order a single run scores them (by name), and the summary is recomputed by the same code
(`evaluation.build_document`), so the combined document equals the one that scoring every image in one run
gives, to the last bit.

Limits, both from the formats: JSON writes NaN and infinities as ``null`` (read back as NaN; an infinite
value, e.g. PSNR of two identical images, survives only in CSV); CSV carries no notes or errors.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffmf_cli.errors import InputError, UsageError
from diffmf_cli.metrics.convention import parse_convention
from diffmf_cli.metrics.evaluation import ImageResult, build_document
from diffmf_cli.metrics.registry import METRIC_NAMES


@dataclass
class ResultFile:
    """What one evaluate result holds: its convention, metric names (registry order), per method the
    per-image values, and (JSON only) its notes and errors."""

    path: Path
    convention: str
    metrics: list[str]
    methods: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_result_file(path: Path | str) -> ResultFile:
    """Parse a result written by ``diffmf evaluate --format json`` or ``--format csv``; InputError naming the
    file when it is neither."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: result file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read result file ({getattr(exc, 'strerror', None) or exc})") from None
    if text.lstrip().startswith("{"):
        return _from_json(path, text)
    return _from_csv(path, text)


def _from_json(path: Path, text: str) -> ResultFile:
    try:
        doc = json.loads(text)
        blocks = doc["methods"] if "methods" in doc else {doc["method"]: doc}
        metrics = list(doc["metrics"])
        result = ResultFile(path, str(doc["convention"]), _metric_order(path, metrics),
                            notes=list(doc.get("notes", [])), errors=list(doc.get("errors", [])))
        for method, block in blocks.items():
            result.methods[str(method)] = {
                str(image): {m: _number(values[m]) for m in metrics} for image, values in block["per_image"].items()
            }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a diffmf evaluate JSON result ({type(exc).__name__}: {exc})") from None
    return result


def _from_csv(path: Path, text: str) -> ResultFile:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0][:3] != ["kind", "method", "image"] or rows[0][-1] != "convention":
        raise InputError(f"{path}: not a diffmf evaluate JSON or CSV result (first row: {','.join(rows[0][:4]) if rows else 'none'})")
    metrics = rows[0][3:-1]
    result = ResultFile(path, "", _metric_order(path, metrics))
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise InputError(f"{path}:{lineno}: expected {len(rows[0])} cells, got {len(row)}")
        kind, method, image, *cells, convention = row
        if result.convention and convention != result.convention:
            raise InputError(f"{path}:{lineno}: convention {convention!r} differs from {result.convention!r}")
        result.convention = convention
        if kind != "image":
            continue  # summary rows: recomputed from the images
        try:
            values = {m: float(cell) for m, cell in zip(metrics, cells)}
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
        result.methods.setdefault(method, {})[image] = values
    if not result.convention:
        raise InputError(f"{path}: result has no rows")
    return result


def _metric_order(path: Path, metrics: Sequence[str]) -> list[str]:
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise InputError(f"{path}: unknown metric column(s) {', '.join(unknown) or '(none)'}")
    return [m for m in METRIC_NAMES if m in metrics]


def _number(value) -> float:
    return math.nan if value is None else float(value)


def combine_results(paths: Sequence[Path | str]) -> dict:
    """One evaluate document (see `evaluation.build_document`) from several results of disjoint images.

    The files must share the convention, the metrics and the methods (results of one method each are taken
    as the same method, named as in the first file, since shards' folders are often named apart); an image that two files both score
    (for the same method) is a UsageError, since it would count twice."""
    if not paths:
        raise UsageError("--combine: give the JSON or CSV results to combine")
    files = [read_result_file(p) for p in paths]
    first = files[0]
    if all(len(f.methods) == 1 for f in files):  # one method each (folders named shard0, shard1...): the same
        name = next(iter(first.methods))
        for f in files:
            f.methods = {name: next(iter(f.methods.values()))}
    for other in files[1:]:
        for what, mine, theirs in (("convention", first.convention, other.convention),
                                   ("metrics", first.metrics, other.metrics),
                                   ("methods", sorted(first.methods), sorted(other.methods))):
            if mine != theirs:
                raise UsageError(f"--combine: {other.path} has {what} {_show(theirs)} but {first.path} has "
                                 f"{_show(mine)}; results combine only when scored alike")
    results: dict[str, ImageResult] = {}
    owner: dict[tuple[str, str], Path] = {}
    for f in files:
        for method, images in f.methods.items():
            for image, values in images.items():
                if (method, image) in owner:
                    raise UsageError(f"--combine: image {image!r} ({method}) is in both {owner[method, image]} "
                                     f"and {f.path}")
                owner[method, image] = f.path
                results.setdefault(image, ImageResult(image)).values[method] = values
    if not results:
        raise UsageError(f"--combine: no scored image in {', '.join(str(f.path) for f in files)}")
    ordered = [results[name] for name in sorted(results)]  # a single run scores its images in name order
    for f in files:
        if f.errors:
            ordered.append(ImageResult("", errors=f.errors))
    notes = list(dict.fromkeys(n for f in files for n in f.notes))
    methods = list(first.methods)
    return build_document(methods, ordered, first.metrics, parse_convention(first.convention), notes)


def _show(value) -> str:
    return ",".join(value) if isinstance(value, list) else repr(value)


__all__ = ["ResultFile", "combine_results", "read_result_file"]
