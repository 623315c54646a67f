#!/usr/bin/env python
"""Write the medical training pair lists: Harvard train names minus the CDDFuse test slices.

    python scripts/make_medical_split.py --data ../shared/data --out runs/medical_lists

writes ``harvard_train_MRI_CT.csv``, ``harvard_train_MRI_PET.csv``, ``harvard_train_MRI_SPECT.csv`` (rows
``ir,vis`` = MRI, other modality; paths relative to the CSV) and ``report.json`` (what was dropped and why),
for ``diffmf train --task medical --pairs ... --pairs ... --pairs ...``. The rule is in
``diffmf_cli.training.data.harvard_train_pairs``: drop a pair whose MRI or other image equals a
``harvard_cddfuse`` image pixel for pixel, or correlates with one at >= 0.99 (the same atlas slice stored
with slightly different pixels).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from diffmf_cli.errors import DiffMFError
from diffmf_cli.training.data import NEAR_DUPLICATE_CORRELATION, harvard_train_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="datasets folder")
    parser.add_argument("--out", type=Path, default=Path("runs/medical_lists"), help="folder for the lists")
    parser.add_argument("--near", type=float, default=NEAR_DUPLICATE_CORRELATION,
                        help="correlation at which a slice counts as a test slice (>1: exact matches only)")
    args = parser.parse_args(argv)
    try:
        pairs, report = harvard_train_pairs(args.data, near=args.near)
    except DiffMFError as exc:
        print(f"make_medical_split: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    out_dir = args.out.resolve()
    for kind, kept in pairs.items():
        path = out_dir / f"harvard_train_{kind}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["ir", "vis"])
            for p in kept:
                writer.writerow([os.path.relpath(Path(p.ir).resolve(), out_dir),
                                 os.path.relpath(Path(p.vis).resolve(), out_dir)])
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for kind, info in report["types"].items():
        print(f"{kind}: {info['listed']} listed, {info['dropped']} dropped "
              f"({info['dropped_exact']} exact, {info['dropped_near']} near), {info['kept']} kept "
              f"-> {out_dir / f'harvard_train_{kind}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
