#!/usr/bin/env python
"""Score candidate weights against each other and the pixel maximum on pairs from the *train* splits only.

    python scripts/validate_models.py --task ir-vis --data ../shared/data \
        stage2=weights/diffmf_ir_vis.safetensors candidate=runs/cand.safetensors
    python scripts/validate_models.py --task medical --lists runs/medical_lists \
        shipped=weights/diffmf_medical.safetensors candidate=runs/cand.safetensors

Each group is fused at full size (``--gray``, as `scripts/eval_quality.py` fuses the test sets) and scored
with the metrics of `diffmf evaluate` (default convention); one table per group, every model beside the
pixel maximum of its sources, and with ``--json`` the means as a file. The test splits are never read.

IR–visible groups (``--task ir-vis``):

- ``roadscene-val``: the RoadScene pairs a training run held out (``validation_pairs`` of ``--run``'s
  ``data.json``; default the shipped stage 2), never trained on;
- ``roadscene-anti``: up to 16 RoadScene train pairs (by name) whose infrared and visible luminance are
  **anti-correlated** over the image (Pearson r < −0.5: bright sky dark in the infrared, hot targets on a
  dark visible background). TNO's test pairs are like this (median r = −0.34, 80 % below 0), the other
  train splits mostly are not (LLVIP: all above 0.18). It shows a fine-tune that flattens these scenes
  (the SCD term with 96² crops: MI −32 %, as on TNO), but the shipped models trained on these pairs, so it
  flatters a fine-tune of them: one that gained MI, SF and AG here lost them on TNO
  (weights/training/README.md). Use it to reject candidates, not to accept them;
- with ``--ir-lists DIR`` (``scripts/make_ir_vis_split.py``'s output) both RoadScene groups are its
  ``roadscene_val.csv`` and ``roadscene_anti.csv`` instead: pairs held out of training from the first stage
  on (models trained on that split never saw them; the shipped ones trained on 14 of the 16 anti pairs).
  Even so, the fine-tune these groups preferred, scored on TNO, lost MI, SF and AG there
  (weights/training/README.md): they did not predict the test sets either;
- ``llvip``: every 6th LLVIP train pair (low light, 1280×1024); ``msrs``: the MSRS train pairs.

Medical groups (``--task medical``): the per-type validation lists of
``scripts/make_medical_split.py --val-per-type N`` (``harvard_val_<TYPE>.csv`` in ``--lists``), never
trained on; the last line counts, per model, the (type, metric) cells below the pixel maximum on the
issue's medical goals (VIF, Qabf, SSIM, EN, SD, SF, AG).

``--resampled F`` (0 < F < 1) adds, for every group, ``GROUP resampled``: the same pairs with each source
shrunk by F (area averaging) and enlarged back to its size (bilinear), on the source's own grid (8 or 16
bits), as an image that was resized before it reached the tool. The Harvard train slices have hard edges (CT
bone at 255 next to 0) and CDDFuse's test slices resampled ones; on the plain validation pairs CT EN is far
above the pixel maximum, on the test pairs below it, and with F = 0.8 below it here too
(weights/training/README.md). For the medical task a second line per model counts the cells below the maximum
on the resampled groups.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from diffmf_cli import Fuser
from diffmf_cli.errors import DiffMFError, UsageError
from diffmf_cli.io.files import atomic_write_text
from diffmf_cli.io.pairs import Pair, pair_folders, read_pair_list
from diffmf_cli.io.images import read_image, to_opencv
from diffmf_cli.metrics.evaluation import metrics_gray, read_for_metrics
from diffmf_cli.metrics.registry import compute_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_quality import METRICS, markdown_table  # noqa: E402  (the README's columns, the same table)

#: Pearson r of IR and visible luminance below which a pair counts as anti-correlated (**ours**).
ANTI_CORRELATION = -0.5
ANTI_PAIRS = 16
LLVIP_STRIDE = 6
MEDICAL_TYPES = ("MRI_CT", "MRI_PET", "MRI_SPECT")
MEDICAL_GOALS = ("VIF", "Qabf", "SSIM", "EN", "SD", "SF", "AG")
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "weights" / "training" / "ir_vis_stage2"


def correlation(pair: Pair) -> float:
    """Pearson r of a pair's infrared and visible luminance as the metrics read them (NaN if either is flat)."""
    a, _ = read_for_metrics(pair.ir)
    b, _ = read_for_metrics(pair.vis)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def ir_vis_groups(data: Path, held_out: set[str] | None = None, lists: Path | None = None,
                  limit: int = ANTI_PAIRS) -> dict[str, list[Pair]]:
    """The IR–visible validation groups (see the module docstring) from the train splits under `data`:
    the RoadScene ones from a run's `held_out` names, or from the `lists` of make_ir_vis_split.py."""
    if lists is not None:
        roadscene_groups = {}
        for group, name in (("roadscene-val", "roadscene_val.csv"), ("roadscene-anti", "roadscene_anti.csv")):
            if not (lists / name).is_file():
                raise UsageError(f"{lists / name}: not found (write it with scripts/make_ir_vis_split.py)")
            roadscene_groups[group] = read_pair_list(lists / name)
    else:
        held_out = held_out or set()
        roadscene = pair_folders(data / "roadscene/train/ir", data / "roadscene/train/vi").pairs
        missing = held_out - {p.name for p in roadscene}
        if missing:
            raise UsageError(f"held-out pairs not in {data / 'roadscene/train'}: {', '.join(sorted(missing))}")
        anti = [p for p in roadscene if p.name not in held_out and correlation(p) < ANTI_CORRELATION][:limit]
        roadscene_groups = {"roadscene-val": [p for p in roadscene if p.name in held_out], "roadscene-anti": anti}
    return roadscene_groups | {
        "llvip": pair_folders(data / "llvip/train/ir", data / "llvip/train/vi").pairs[::LLVIP_STRIDE],
        "msrs": pair_folders(data / "msrs/train/ir", data / "msrs/train/vi").pairs,
    }


def medical_groups(lists: Path) -> dict[str, list[Pair]]:
    """The per-type medical validation lists written by make_medical_split.py (paths relative to the CSV)."""
    groups = {}
    for kind in MEDICAL_TYPES:
        path = lists / f"harvard_val_{kind}.csv"
        if not path.is_file():
            raise UsageError(f"{path}: not found (write it with scripts/make_medical_split.py --val-per-type N)")
        groups[kind] = read_pair_list(path)
    return groups


def check_groups(groups: dict[str, list[Pair]]) -> None:
    """UsageError naming the first group without pairs (nothing to score there)."""
    for name, pairs in groups.items():
        if not pairs:
            raise UsageError(f"validation group {name}: no pairs")


def resampled(raw: np.ndarray, factor: float, name: str = "image") -> np.ndarray:
    """`raw` shrunk by `factor` (area averaging) and enlarged back to its own size (bilinear), same dtype.
    UsageError when `factor` leaves the image's size unchanged (nothing would be resampled)."""
    h, w = raw.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        raise UsageError(f"--resampled {factor} leaves {name} ({w}x{h}) at its size; use a smaller factor")
    small = cv2.resize(raw, size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _read_pair(pair: Pair, resample: float | None):
    """(IR, visible) as the metrics see them, and as OpenCV reads them for the fuser; resampled first if asked."""
    out = []
    for path in (pair.ir, pair.vis):
        raw = read_image(path)
        if resample is not None:
            raw = resampled(raw, resample, str(path))
        out.append((metrics_gray(raw)[0], to_opencv(raw)))
    (a, ir), (b, vis) = out
    return a, b, ir, vis


def score_group(pairs: list[Pair], fusers: dict[str, Fuser | None],
                resample: float | None = None) -> dict[str, dict[str, float]]:
    """{method: {metric: mean over `pairs`}} for each `Fuser` (``None``: the pixel maximum of the two
    sources); each pair's files are read once for all of them (and, with `resample`, resampled first)."""
    rows: dict[str, list[list[float]]] = {name: [] for name in fusers}
    for pair in pairs:
        a, b, ir, vis = _read_pair(pair, resample)
        for name, fuser in fusers.items():
            if fuser is None:
                fused = np.maximum(a, b)
            else:
                out = fuser.fuse(ir, vis, gray=True)
                fused = out.astype(np.float64)
                if out.dtype == np.uint16:  # 16-bit sources give a 16-bit fusion: the metrics' 0..255 scale
                    fused = np.round(fused * (255.0 / 65535.0))
            values, _ = compute_metrics(fused, a, b, METRICS)
            rows[name].append([values[k] for k in METRICS])
    with np.errstate(all="ignore"):
        means = {name: np.nanmean(np.array(r, dtype=np.float64), axis=0) for name, r in rows.items()}
    return {name: dict(zip(METRICS, m.tolist())) for name, m in means.items()}


def cells_below(scores: dict[str, dict[str, float]], maximum: dict[str, dict[str, float]],
                metrics=MEDICAL_GOALS) -> list[str]:
    """'GROUP METRIC' for every cell where a model scores below the pixel maximum."""
    return [f"{g} {m}" for g in scores for m in metrics if scores[g][m] < maximum[g][m]]


def parse_models(specs: list[str]) -> dict[str, Path]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{spec!r}: expected NAME=WEIGHTS_FILE")
        if name == "max" or name in models:
            raise UsageError(f"{spec!r}: model names must be unique and not 'max'")
        if not Path(path).is_file():
            raise UsageError(f"{path}: weights file not found")
        models[name] = Path(path)
    return models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=WEIGHTS")
    ap.add_argument("--task", choices=("ir-vis", "medical"), default="ir-vis")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="data root (ir-vis)")
    ap.add_argument("--run", type=Path,
                    help="training run whose held-out RoadScene pairs form roadscene-val (ir-vis; default the "
                         "shipped stage 2)")
    ap.add_argument("--ir-lists", type=Path,
                    help="make_ir_vis_split.py output folder: roadscene-val and roadscene-anti from its lists, "
                         "held out of training from the start (ir-vis; instead of --run)")
    ap.add_argument("--lists", type=Path, default=Path("runs/medical_lists"),
                    help="make_medical_split.py output folder (medical)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, help="write the means here as JSON")
    ap.add_argument("--resampled", type=float, metavar="F",
                    help="also score every group with its sources shrunk by F (0 < F < 1) and enlarged back")
    args = ap.parse_args(argv)
    try:
        if args.resampled is not None and not 0 < args.resampled < 1:
            raise UsageError(f"--resampled must be between 0 and 1, got {args.resampled}")
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.json is not None and not args.json.parent.is_dir():
            raise UsageError(f"--json {args.json}: folder {args.json.parent} does not exist")
        models = parse_models(args.models)
        if args.ir_lists is not None and (args.run is not None or args.task != "ir-vis"):
            raise UsageError("--ir-lists replaces --run and is for --task ir-vis only")
        if args.ir_lists is not None:
            groups = ir_vis_groups(args.data, lists=args.ir_lists)
        elif args.task == "ir-vis":
            record = (args.run or DEFAULT_RUN) / "data.json"
            try:
                held = set(json.loads(record.read_text()).get("validation_pairs", []))
            except FileNotFoundError:
                raise UsageError(f"{record}: not found (--run names a training run folder)") from None
            except (OSError, ValueError, AttributeError) as exc:
                raise UsageError(f"{record}: not a training run's data record ({exc})") from None
            groups = ir_vis_groups(args.data, held_out=held)
        else:
            groups = medical_groups(args.lists)
        check_groups(groups)
        plain = list(groups)
        factors: dict[str, float | None] = dict.fromkeys(plain)
        if args.resampled is not None:
            for g in plain:
                groups[f"{g} resampled"] = groups[g]
                factors[f"{g} resampled"] = args.resampled
        fusers = {"max": None} | {name: Fuser(weights=path, device="cpu") for name, path in models.items()}
        # group -> method -> metric
        by_group = {g: score_group(pairs, fusers, factors[g]) for g, pairs in groups.items()}
    except DiffMFError as exc:
        print(f"validate_models: error: {exc}", file=sys.stderr)
        return 2
    for group, pairs in groups.items():
        print(markdown_table(group, by_group[group], len(pairs)))
    results = {name: {g: by_group[g][name] for g in groups} for name in fusers}  # method -> group -> metric
    if args.task == "medical":
        for name in models:
            for kind, names in (("", plain), (" on the resampled groups", [g for g in groups if g not in plain])):
                if not names:
                    continue
                below = cells_below({g: results[name][g] for g in names}, results["max"])
                print(f"{name}: {len(below)} cells below the pixel maximum{kind}"
                      + (f" ({', '.join(below)})" if below else ""))
    if args.json:
        doc = {"task": args.task, "groups": {g: [p.name for p in ps] for g, ps in groups.items()},
               "resampled": args.resampled,
               "models": {k: str(v) for k, v in models.items()}, "means": results}
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
