#!/usr/bin/env python
"""Ablation: what difference guidance and the two exchange modules each add, by short identical training runs.

    python scripts/ablation.py --data ../shared/data --out runs/ablation [--steps 400] [--seeds 0 1]
                               [--variants full no-guidance ...]

Each variant is the cpu preset with one switch off (or the first release's direct output head), trained with
the same data, steps and settings on the IR–visible train splits, once per seed, exported, then fused and
scored on tno/test and roadscene/test with `scripts/eval_quality.py`'s machinery. The table gives the mean
over seeds and, beside it, half the range between the seeds (±): a difference between two variants smaller
than their spreads is noise at this length. A short run ranks the designs; it does not reach the shipped
model's quality. OUT/ablation.md holds the table; every run folder stays (re-running resumes and skips what
is done).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_quality import IR_VIS_SETS, METRICS, evaluate_set, summary_rows  # noqa: E402

VARIANTS = {
    "full": [],
    "direct-head": ["head=direct"],
    "no-guidance": ["use_guidance=false"],
    "no-bc-swap": ["exchange_bc=false"],
    "no-channel-exchange": ["use_channel_exchange=false"],
    "no-spatial-exchange": ["use_spatial_exchange=false"],
}
TRAIN_SETS = ("roadscene", "msrs", "llvip")


def train_variant(name: str, options: list[str], seed: int, args) -> Path:
    run_dir = args.out / f"{name}-seed{seed}"
    weights = run_dir / "model.safetensors"
    if weights.exists():
        return weights
    cmd = [sys.executable, "-m", "diffmf_cli", "train", "--preset", "cpu", "--out", str(run_dir),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--crop", str(args.crop),
           "--lr", str(args.lr), "--warmup-steps", "50", "--checkpoint-every", "100", "--log-every", "50",
           "--seed", str(seed), "--threads", str(args.threads), "--name", f"ablation-{name}-seed{seed}"]
    for dataset in TRAIN_SETS:
        cmd += ["--ir", str(args.data / dataset / "train" / "ir"), "--vis", str(args.data / dataset / "train" / "vi")]
    for option in options:
        cmd += ["--model-option", option]
    if (run_dir / "settings.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--sets", nargs="*", default=["tno", "roadscene"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    results: dict[str, dict] = {}  # variant -> seed -> set -> metric -> value
    for name in args.variants:
        results[name] = {}
        for seed in args.seeds:
            weights = train_variant(name, VARIANTS[name], seed, args)
            by_set = results[name][str(seed)] = {}
            for dataset in args.sets:
                ir_rel, vis_rel = IR_VIS_SETS[dataset]
                doc = evaluate_set(dataset, args.data / ir_rel, args.data / vis_rel,
                                   weights.parent / "eval" / dataset, ["--weights", str(weights)],
                                   jobs=args.threads, baselines=False)
                by_set[dataset] = summary_rows(doc)["DIFF-MF (ours)"]
            print(name, seed, json.dumps(by_set), flush=True)

    seeds = ", ".join(map(str, args.seeds))
    lines = [f"Short runs: {args.steps} steps, batch {args.batch_size}, crop {args.crop}, lr {args.lr}, "
             f"seeds {seeds}; mean ± half the range over the seeds.", ""]
    for dataset in args.sets:
        lines += [f"### {dataset}", "", "| variant | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for name, by_seed in results.items():
            cells = []
            for metric in METRICS:
                values = [by_seed[s][dataset][metric] for s in by_seed]
                spread = (max(values) - min(values)) / 2
                cells.append(f"{sum(values) / len(values):.3f} ± {spread:.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    (args.out / "ablation.md").write_text("\n".join(lines))
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
