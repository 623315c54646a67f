#!/usr/bin/env python
"""Write RoadScene train pair lists with two validation groups held out: a random one and a TNO-like one.

    python scripts/make_ir_vis_split.py --data ../shared/data --out runs/ir_vis_lists

writes, in ``--out`` (rows ``ir,vis``, paths relative to the CSV, for ``[[source]]`` / ``[[val_source]]``
``pairs`` of a training config, or ``validate_models.py --ir-lists``):

- ``roadscene_anti.csv``: ``--anti`` RoadScene train pairs whose infrared and visible luminance are
  anti-correlated (Pearson r < ``--below``, default −0.5), the ones with the smallest SHA-1 of their names.
  TNO's test pairs are like this (median r = −0.34, 80 % below 0); LLVIP's train pairs never are. Held out
  from the first training stage on, they were meant to predict TNO; measured, they did not (the fine-tune
  they preferred, scored on TNO, lost MI, SF and AG there; weights/training/README.md);
- ``roadscene_val.csv``: ``--val`` of the remaining pairs, again by smallest SHA-1 of the name;
- ``roadscene_train.csv``: the rest;
- ``report.json``: every pair's r and the three groups.

The test splits are never read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_medical_split import write_pair_list  # noqa: E402  (the same CSV rows, paths relative to the list)
from validate_models import ANTI_CORRELATION, correlation  # noqa: E402

from diffmf_cli.errors import DiffMFError, UsageError  # noqa: E402
from diffmf_cli.io.files import atomic_write_text  # noqa: E402
from diffmf_cli.io.pairs import Pair, pair_folders  # noqa: E402


def split_roadscene(data: Path, n_anti: int, n_val: int,
                    below: float = ANTI_CORRELATION) -> tuple[dict[str, list[Pair]], dict[str, float]]:
    """``({"train", "val", "anti"}: pairs, {name: r})`` for the RoadScene train split under `data`."""
    pairs = pair_folders(data / "roadscene/train/ir", data / "roadscene/train/vi").pairs
    r = {p.name: correlation(p) for p in pairs}
    by_hash = sorted(pairs, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    anti_pool = [p for p in by_hash if r[p.name] < below]
    if len(anti_pool) < n_anti:
        raise UsageError(f"{data / 'roadscene/train'}: only {len(anti_pool)} pairs have r < {below}, "
                         f"--anti asks for {n_anti}")
    anti = {p.name for p in anti_pool[:n_anti]}
    rest = [p for p in by_hash if p.name not in anti]
    if len(rest) <= n_val:
        raise UsageError(f"{data / 'roadscene/train'}: --val {n_val} would leave no training pairs")
    val = {p.name for p in rest[:n_val]}
    groups = {"train": [p for p in pairs if p.name not in anti | val],
              "val": [p for p in pairs if p.name in val],
              "anti": [p for p in pairs if p.name in anti]}
    return groups, r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="datasets folder")
    parser.add_argument("--out", type=Path, default=Path("runs/ir_vis_lists"), help="folder for the lists")
    parser.add_argument("--anti", type=int, default=16, help="anti-correlated pairs held out (default 16)")
    parser.add_argument("--val", type=int, default=12, help="other pairs held out (default 12)")
    parser.add_argument("--below", type=float, default=ANTI_CORRELATION,
                        help=f"r below which a pair counts as anti-correlated (default {ANTI_CORRELATION})")
    args = parser.parse_args(argv)
    if args.anti < 0 or args.val < 0:
        print("make_ir_vis_split: error: --anti and --val must be >= 0", file=sys.stderr)
        return 2
    try:
        groups, r = split_roadscene(args.data, args.anti, args.val, args.below)
    except DiffMFError as exc:
        print(f"make_ir_vis_split: error: {exc}", file=sys.stderr)
        return 2
    report = {"below": args.below,  # a flat image's r is NaN: null in the JSON
              "correlation": {k: (v if math.isfinite(v) else None) for k, v in sorted(r.items())},
              "groups": {name: [p.name for p in pairs] for name, pairs in groups.items()}}
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        out_dir = args.out.resolve()
        for name, pairs in groups.items():
            write_pair_list(out_dir / f"roadscene_{name}.csv", pairs, out_dir)
        atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"make_ir_vis_split: error: {args.out}: cannot write the lists ({exc.strerror or exc})", file=sys.stderr)
        return 2
    for name, pairs in groups.items():
        print(f"roadscene {name}: {len(pairs)} pairs -> {out_dir / f'roadscene_{name}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
