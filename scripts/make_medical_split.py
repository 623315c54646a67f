#!/usr/bin/env python
"""Write the medical training pair lists: Harvard train names minus the CDDFuse test slices.

    python scripts/make_medical_split.py --data ../shared/data --out runs/medical_lists

writes ``harvard_train_MRI_CT.csv``, ``harvard_train_MRI_PET.csv``, ``harvard_train_MRI_SPECT.csv`` (rows
``ir,vis`` = MRI, other modality; paths relative to the CSV) and ``report.json`` (what was dropped and why),
for ``diffmf train --task medical --pairs ... --pairs ... --pairs ...``. With ``--val-per-type N`` it also
moves N training pairs of each type (the smallest SHA-1 of their names) into ``harvard_val_<TYPE>.csv``, a
validation set that covers every pair type (``[[val_source]]`` of a training config); ``--val-holdout``
would take them all from the largest type. The rule is
``harvard_train_pairs`` below: drop a pair whose MRI or other image equals a
``harvard_cddfuse`` image pixel for pixel, or correlates with one at >= 0.99 (the same atlas slice stored
with slightly different pixels).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from diffmf_cli.errors import DiffMFError, UsageError
from diffmf_cli.io.images import read_image, to_gray
from diffmf_cli.io.pairs import Pair, pair_folders


HARVARD_PAIR_TYPES = ("MRI_CT", "MRI_PET", "MRI_SPECT")
#: Pearson correlation at or above which two slices count as the same slice (**ours**; see below).
NEAR_DUPLICATE_CORRELATION = 0.99


def pixel_hash(img: np.ndarray) -> str:
    """Hash of an image's pixels, the same for a gray image and its R=G=B three-channel copy."""
    canon = to_gray(img) if img.ndim == 3 and _fake_gray(img) else img
    h = hashlib.sha256()
    h.update(f"{canon.shape}|{canon.dtype}".encode())
    h.update(np.ascontiguousarray(canon).tobytes())
    return h.hexdigest()


def _fake_gray(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def _unit(img: np.ndarray) -> np.ndarray:
    """Gray image -> zero-mean, unit-norm float32 vector of its 64x64 area-downsampled copy (Pearson
    correlation by a dot product; downsampling keeps the comparison of 1000 x 270 slices fast)."""
    gray = to_gray(img).astype(np.float32)
    v = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA).ravel()
    v = v - v.mean()
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def harvard_train_pairs(data_root: str | Path,
                        near: float = NEAR_DUPLICATE_CORRELATION) -> tuple[dict[str, list[Pair]], dict]:
    """Harvard ``train_split_xianming-gu.txt`` pairs per type, minus the slices of ``harvard_cddfuse/``.

    A pair is dropped when its MRI (``a``) or its other image (``b``) has the same pixels as any
    ``harvard_cddfuse`` image (the data README's rule), **or** (ours) when either correlates at ``>= near``
    with a ``harvard_cddfuse`` image of the same role: all 21 CDDFuse MRI–CT test slices are atlas slices of
    ``harvard/MRI_CT`` (correlation > 0.997) stored with slightly different pixels (mean difference ~1.6
    grey levels), so exact hashing alone would keep 13 of them in training.

    Returns ``(pairs_by_type, report)``; the report counts listed / dropped / kept pairs per type and names
    the dropped ones, with the reason (``exact`` or ``near``).
    """
    root = Path(data_root)
    cdd = root / "harvard_cddfuse"
    if not cdd.is_dir():
        raise UsageError(f"{cdd}: not found (needed to remove the CDDFuse test slices from training)")
    test_hashes: set[str] = set()
    test_vectors: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for role in ("a", "b"):
        for path in sorted(cdd.glob(f"*/{role}/*")):
            if path.is_file() and not path.name.startswith("."):
                img = read_image(path)
                test_hashes.add(pixel_hash(img))
                test_vectors[role].append(_unit(img))
    if not test_vectors["a"]:
        raise UsageError(f"{cdd}: holds no */a/* images")
    test_matrix = {role: np.stack(v) for role, v in test_vectors.items() if v}

    out: dict[str, list[Pair]] = {}
    report: dict = {"test_images": sum(len(v) for v in test_vectors.values()),
                    "near_duplicate_correlation": near, "types": {}}
    for kind in HARVARD_PAIR_TYPES:
        folder = root / "harvard" / kind
        names_file = folder / "train_split_xianming-gu.txt"
        if not names_file.is_file():
            raise UsageError(f"{names_file}: train name list not found")
        names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        by_stem = {p.name: p for p in pair_folders(folder / "a", folder / "b").pairs}
        kept, dropped = [], {}
        for name in names:
            pair = by_stem.get(Path(name).stem)
            if pair is None:
                raise UsageError(f"{names_file}: '{name}' has no a/b image pair in {folder}")
            reason = None
            for role, path in (("a", pair.ir), ("b", pair.vis)):
                img = read_image(path)
                if pixel_hash(img) in test_hashes:
                    reason = "exact"
                    break
                if role in test_matrix and float((test_matrix[role] @ _unit(img)).max()) >= near:
                    reason = "near"
            if reason is None:
                kept.append(pair)
            else:
                dropped[pair.name] = reason
        out[kind] = kept
        report["types"][kind] = {
            "listed": len(names), "kept": len(kept), "dropped": len(dropped),
            "dropped_exact": sum(r == "exact" for r in dropped.values()),
            "dropped_near": sum(r == "near" for r in dropped.values()),
            "dropped_names": dict(sorted(dropped.items())),
        }
    return out, report



def write_pair_list(path: Path, pairs: list[Pair], out_dir: Path) -> None:
    """A pair list CSV (``ir,vis`` rows, paths relative to `out_dir`) that io.pairs.read_pair_list reads back."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ir", "vis"])
        for p in pairs:
            writer.writerow([os.path.relpath(Path(p.ir).resolve(), out_dir),
                             os.path.relpath(Path(p.vis).resolve(), out_dir)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="datasets folder")
    parser.add_argument("--out", type=Path, default=Path("runs/medical_lists"), help="folder for the lists")
    parser.add_argument("--val-per-type", type=int, default=0,
                        help="training pairs of each type moved to harvard_val_<TYPE>.csv (default 0)")
    parser.add_argument("--near", type=float, default=NEAR_DUPLICATE_CORRELATION,
                        help="correlation at which a slice counts as a test slice (>1: exact matches only)")
    args = parser.parse_args(argv)
    if args.val_per_type < 0:
        print("make_medical_split: error: --val-per-type must be >= 0", file=sys.stderr)
        return 2
    try:
        pairs, report = harvard_train_pairs(args.data, near=args.near)
    except DiffMFError as exc:
        print(f"make_medical_split: error: {exc}", file=sys.stderr)
        return 2
    short = [kind for kind, kept in pairs.items() if len(kept) <= args.val_per_type]
    if short:
        print(f"make_medical_split: error: --val-per-type {args.val_per_type} would leave no training pairs of "
              f"{', '.join(short)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    out_dir = args.out.resolve()
    for kind, kept in pairs.items():
        by_hash = sorted(kept, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
        val = {p.name for p in by_hash[:args.val_per_type]}
        report["types"][kind]["validation"] = sorted(val)
        write_pair_list(out_dir / f"harvard_train_{kind}.csv", [p for p in kept if p.name not in val], out_dir)
        val_list = out_dir / f"harvard_val_{kind}.csv"
        if val:
            write_pair_list(val_list, [p for p in kept if p.name in val], out_dir)
        else:  # an earlier run's list would name pairs that are now training pairs
            val_list.unlink(missing_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for kind, info in report["types"].items():
        print(f"{kind}: {info['listed']} listed, {info['dropped']} dropped "
              f"({info['dropped_exact']} exact, {info['dropped_near']} near), {info['kept']} kept "
              f"({len(info['validation'])} of them for validation) -> {out_dir / f'harvard_train_{kind}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
