#!/usr/bin/env python
"""Fuse the test splits with the shipped models and score them with `diffmf evaluate`, beside two trivial fusions.

    python scripts/eval_quality.py --data ../shared/data --out runs/quality [--sets tno roadscene ...]

For every IR–visible test set (tno, roadscene, msrs, llvip: `<set>/test/{ir,vi}`) and every medical test set
(`harvard_cddfuse/MRI_{CT,PET,SPECT}/{a,b}`) it writes, under OUT/<set>/:
  diffmf/   `diffmf fuse --gray` with the IR–visible (or medical) model,
  max/      the pixel-wise maximum of the two sources' gray levels,
  mean/     their mean,
and `diffmf evaluate --format json` over the three (default convention). OUT/quality.md collects one table per
set with the reference rows the project compares against, and OUT/quality.json every number.
Fused images are kept (a re-run skips what exists, as `fuse` does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from diffmf_cli.io.images import read_image, to_gray
from diffmf_cli.io.pairs import pair_folders

IR_VIS_SETS = {name: (f"{name}/test/ir", f"{name}/test/vi") for name in ("tno", "roadscene", "msrs", "llvip")}
MEDICAL_SETS = {f"harvard_{kind}": (f"harvard_cddfuse/{kind}/a", f"harvard_cddfuse/{kind}/b")
                for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT")}
METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"]

# Rows to compare with (issue 6): best value per metric among public-weight methods run on this machine with
# the reference evaluator, and CDDFuse's published numbers (CVPR 2023).
REFERENCE_ROWS = {
    "tno": {
        "best public method": dict(EN=7.10, SD=46.9, SF=12.8, AG=4.83, MI=2.61, SCD=1.72, VIF=0.87, Qabf=0.57,
                                   SSIM=1.05),
        "CDDFuse (paper)": dict(MI=2.19, VIF=0.77, Qabf=0.54, SSIM=1.03),
    },
    "roadscene": {
        "best public method": dict(EN=7.36, SD=54.5, SF=13.8, AG=5.21, MI=2.83, SCD=1.84, VIF=0.80, Qabf=0.56,
                                   SSIM=0.99),
        "CDDFuse (paper)": dict(MI=2.30, VIF=0.69, Qabf=0.52, SSIM=0.98),
    },
}


def _as_8bit(gray: np.ndarray) -> np.ndarray:
    """Gray levels on the 0..255 scale as float64 (16-bit files scaled, as metrics.md says)."""
    return gray.astype(np.float64) / (257.0 if gray.dtype == np.uint16 else 1.0)


def trivial_fusions(ir_dir: Path, vis_dir: Path, out: Path) -> None:
    """Write the pixel-wise max and mean of each pair's gray levels (as metrics.md turns images gray)."""
    for kind in ("max", "mean"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for pair in pair_folders(ir_dir, vis_dir).pairs:
        a = _as_8bit(to_gray(read_image(pair.ir)))
        b = _as_8bit(to_gray(read_image(pair.vis)))
        cv2.imwrite(str(out / "max" / f"{pair.name}.png"), np.maximum(a, b).round().astype(np.uint8))
        cv2.imwrite(str(out / "mean" / f"{pair.name}.png"), ((a + b) / 2).round().astype(np.uint8))


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}")
    return result


def evaluate_set(name: str, ir_dir: Path, vis_dir: Path, out: Path, model_args: list[str], jobs: int,
                 baselines: bool = True) -> dict:
    """Fuse one set with the model (and, with `baselines`, the trivial fusions) and score every method."""
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "diffmf_cli", "fuse", str(ir_dir), str(vis_dir), "-o", str(out / "diffmf"),
         "--gray", "--quiet", *model_args])
    methods = ["--fused", f"DIFF-MF (ours)={out / 'diffmf'}"]
    if baselines:
        trivial_fusions(ir_dir, vis_dir, out)
        methods += ["--fused", f"pixel max={out / 'max'}", "--fused", f"pixel mean={out / 'mean'}"]
    result = run([sys.executable, "-m", "diffmf_cli", "evaluate", *methods, str(ir_dir), str(vis_dir),
                  "--format", "json", "--quiet", "--jobs", str(jobs)])
    return json.loads(result.stdout)


def summary_rows(result: dict) -> dict[str, dict[str, float]]:
    """{method: {metric: mean}} from evaluate's JSON (one block per method)."""
    methods = result["methods"] if "methods" in result else {result["method"]: result}
    return {method: {m: v["mean"] for m, v in block["summary"].items()} for method, block in methods.items()}


def markdown_table(name: str, rows: dict[str, dict[str, float]], n_pairs: int) -> str:
    lines = [f"### {name} ({n_pairs} pairs)", "", "| method | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for method, values in rows.items():
        cells = [f"{values[m]:.3f}" if m in values and values[m] == values[m] else "–" for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--sets", nargs="*", default=[*IR_VIS_SETS, *MEDICAL_SETS])
    parser.add_argument("--weights", default="ir-vis", help="IR–visible model (name or file)")
    parser.add_argument("--medical-weights", default="medical", help="medical model (name or file)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    report, sections = {}, []
    for name in args.sets:
        medical = name in MEDICAL_SETS
        ir_rel, vis_rel = (MEDICAL_SETS if medical else IR_VIS_SETS)[name]
        weights = args.medical_weights if medical else args.weights
        model_args = ["--weights", weights] if Path(weights).suffix == ".safetensors" else ["--model", weights]
        result = evaluate_set(name, args.data / ir_rel, args.data / vis_rel, args.out / name, model_args, args.jobs)
        rows = summary_rows(result)
        n_pairs = max(v["n"] for block in result["methods"].values() for v in block["summary"].values())
        report[name] = {"rows": rows, "n_pairs": n_pairs}
        rows = {**rows, **REFERENCE_ROWS.get(name, {})}
        sections.append(markdown_table(name, rows, n_pairs))
        print(sections[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(report, indent=1))
    (args.out / "quality.md").write_text("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
