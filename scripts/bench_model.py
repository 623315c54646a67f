"""Issue 3's speed target: the CPU preset against a DenseFuse-shaped conv net, side by side in one run.

    python scripts/bench_model.py [--threads 2] [--rounds 7] [--preset cpu | --weights FILE] [--json FILE]

What it measures (CPU, float32, torch.inference_mode, after warm-up):
1. a 480x640 pair through DIFF-MF and through the DenseFuse-shaped net, alternating pass by pass (and which
   goes first), so load from other processes on the shared cores falls on both alike; the ratio of medians
   and the median of the per-round ratios are reported;
2. peak memory of the DIFF-MF passes at 480x640: the process's peak RSS (VmHWM, reset just before), and
   what the process held before them;
3. where DIFF-MF's time goes: every `ScanParams.scan` call (all selective scans) timed, against the rest;
4. scaling: 4 sizes from 256x256 to 1024x1280, both nets alternating, and the fitted exponent of time
   against pixel count (1.0 = linear).

On a machine whose cores other processes share, run it with OMP_WAIT_POLICY=PASSIVE: OpenMP's default
spin-waiting (torch's and numba's) collapses there, by up to 20x when the load is several times the core
count, and the process CPU time it reports stays meaningful. The environment is recorded in the JSON.

The DenseFuse-shaped net (Li & Wu, "DenseFuse", IEEE TIP 2019) is built here: encoder conv 1->16, a dense
block of three 3x3 convs each adding 16 channels (64 out), addition fusion of the two encodings, decoder
3x3 convs 64->64->32->16->1; 74,193 parameters. Random weights: timing does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffmf_cli import benchmark as bm  # noqa: E402

SIZES = ((256, 256), (480, 640), (720, 960), (1024, 1280))
TARGET = (480, 640)


class DenseFuse(nn.Module):
    """DenseFuse's shape: ir, vis (B, 1, H, W) -> fused (B, 1, H, W). Reflect padding, ReLU after every conv
    but the last, as in the original."""

    def __init__(self):
        super().__init__()

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")

        self.c1 = conv(1, 16)
        self.dense = nn.ModuleList([conv(16, 16), conv(32, 16), conv(48, 16)])
        self.decoder = nn.ModuleList([conv(64, 64), conv(64, 32), conv(32, 16), conv(16, 1)])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        for layer in self.dense:
            x = torch.cat([x, torch.relu(layer(x))], dim=1)
        return x

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x = self.encode(ir) + self.encode(vis)
        for i, layer in enumerate(self.decoder):
            x = layer(x)
            if i < len(self.decoder) - 1:
                x = torch.relu(x)
        return x


def one_pass(model, ir, vis, cpu_times: list | None = None) -> float:
    """Wall seconds of one forward pass; its process CPU seconds (all threads) go to `cpu_times`."""
    cpu = time.process_time()
    start = time.perf_counter()
    model(ir, vis)
    wall = time.perf_counter() - start
    if cpu_times is not None:
        cpu_times.append(time.process_time() - cpu)
    return wall


def side_by_side(diffmf, densefuse, size, rounds: int, warmup: int) -> dict:
    """Alternate the two nets pass by pass (swapping which goes first each round)."""
    ir, vis = bm.synthetic_pair(1, *size, torch.device("cpu"))
    for _ in range(warmup):
        diffmf(ir, vis)
        densefuse(ir, vis)
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            ours.append(one_pass(diffmf, ir, vis, ours_cpu))
            theirs.append(one_pass(densefuse, ir, vis, theirs_cpu))
        else:
            theirs.append(one_pass(densefuse, ir, vis, theirs_cpu))
            ours.append(one_pass(diffmf, ir, vis, ours_cpu))
    util = (sum(ours_cpu) + sum(theirs_cpu)) / ((sum(ours) + sum(theirs)) * torch.get_num_threads())
    return {
        "size": f"{size[0]}x{size[1]}",
        "pixels": size[0] * size[1],
        "diffmf_s": ours,
        "densefuse_s": theirs,
        "diffmf_median_s": statistics.median(ours),
        "densefuse_median_s": statistics.median(theirs),
        "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
        "median_paired_ratio": statistics.median(a / b for a, b in zip(ours, theirs)),
        "diffmf_cpu_s": statistics.median(ours_cpu),
        "densefuse_cpu_s": statistics.median(theirs_cpu),
        "cpu_time_ratio": statistics.median(ours_cpu) / statistics.median(theirs_cpu),
        "cpu_utilization": util,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="timed passes per net at 480x640")
    parser.add_argument("--scale-rounds", type=int, default=3, help="timed passes per net and size (scaling)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--preset", default=None, help="architecture with random weights [default: cpu]")
    parser.add_argument("--weights", default=None, help="a weights file instead of a preset")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    cpu = torch.device("cpu")
    bm.set_threads(args.threads)
    bench = bm.load_model(cpu, preset=None if args.weights else (args.preset or "cpu"), weights=args.weights)
    diffmf = bench.model.eval()
    torch.manual_seed(0)
    densefuse = DenseFuse().eval()
    dense_params = sum(p.numel() for p in densefuse.parameters())
    facts = bm.machine_facts(cpu)
    report: dict = {"machine": facts, "model": bench.source, "params": bench.cost["params"],
                    "macs_per_megapixel": bench.cost["macs_per_megapixel"],
                    "scan_updates_per_megapixel": bench.cost["scan_updates_per_megapixel"],
                    "densefuse_params": dense_params, "threads": torch.get_num_threads()}

    with torch.inference_mode():
        # 2. peak memory first, so no larger size has been through the allocator yet
        ir, vis = bm.synthetic_pair(1, *TARGET, cpu)
        with bm.PeakMemory(cpu) as memory:
            for _ in range(2):
                diffmf(ir, vis)
        report["peak_memory_bytes"] = memory.peak_bytes
        report["memory_before_bytes"] = memory.before_bytes
        report["peak_memory_kind"] = memory.kind

        # 1. the target, side by side
        report["target"] = side_by_side(diffmf, densefuse, TARGET, args.rounds, args.warmup)

        # 3. scan vs the rest, at the target size
        passes = []
        for _ in range(3):
            with bm.scan_timer(cpu) as scans:
                total = one_pass(diffmf, ir, vis)
            passes.append((scans.seconds, total, scans.calls))
        scan_s = statistics.median(p[0] for p in passes)
        total_s = statistics.median(p[1] for p in passes)
        report["split"] = {"scan_s": scan_s, "total_s": total_s, "other_s": total_s - scan_s,
                           "scan_share": scan_s / total_s, "scan_calls": passes[0][2]}

        # 4. scaling
        rows = [side_by_side(diffmf, densefuse, size, args.scale_rounds, 1) for size in SIZES]
        report["scaling"] = rows
        pixels = [r["pixels"] for r in rows]
        report["exponent_diffmf"] = bm.fit_exponent(pixels, [r["diffmf_median_s"] for r in rows])
        report["exponent_densefuse"] = bm.fit_exponent(pixels, [r["densefuse_median_s"] for r in rows])
        report["exponent_diffmf_cpu"] = bm.fit_exponent(pixels, [r["diffmf_cpu_s"] for r in rows])
        report["exponent_densefuse_cpu"] = bm.fit_exponent(pixels, [r["densefuse_cpu_s"] for r in rows])
    try:
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        report["load_average_at_end"] = None

    t = report["target"]
    mib = 2 ** 20
    lines = [
        f"machine: {facts['cpu_model']}, {facts['usable_cpus']} CPUs, {report['threads']} threads, torch "
        f"{facts['torch_version']}; load {facts['load_average_1_5_15']} at start, "
        f"{report['load_average_at_end']} at end",
        f"DIFF-MF: {bench.source}",
        f"         {report['params']:,} params, {report['macs_per_megapixel'] / 1e9:.2f} GMAC/MP, "
        f"{report['scan_updates_per_megapixel'] / 1e9:.2f} G scan updates/MP",
        f"DenseFuse-shaped: {dense_params:,} params",
        "",
        f"480x640, {args.rounds} alternating passes each, after {args.warmup} warm-up passes:",
        f"  DIFF-MF   median {t['diffmf_median_s']:.3f} s  (min {min(t['diffmf_s']):.3f}, max {max(t['diffmf_s']):.3f})",
        f"  DenseFuse median {t['densefuse_median_s']:.3f} s  (min {min(t['densefuse_s']):.3f}, "
        f"max {max(t['densefuse_s']):.3f})",
        f"  ratio of medians {t['ratio_of_medians']:.2f}x, median of paired ratios {t['median_paired_ratio']:.2f}x; "
        f"CPU use {100 * t['cpu_utilization']:.0f} % of {report['threads']} threads",
        f"  process CPU time per pass (less sensitive to other load): DIFF-MF {t['diffmf_cpu_s']:.3f} s, "
        f"DenseFuse {t['densefuse_cpu_s']:.3f} s, ratio {t['cpu_time_ratio']:.2f}x",
        f"  peak memory ({report['peak_memory_kind']}): {report['peak_memory_bytes'] / mib:.0f} MiB, of which "
        f"{report['memory_before_bytes'] / mib:.0f} MiB held before the passes",
        f"  time split: scans {report['split']['scan_s']:.3f} s ({100 * report['split']['scan_share']:.0f} %, "
        f"{report['split']['scan_calls']} calls), other layers {report['split']['other_s']:.3f} s",
        "",
        f"scaling ({args.scale_rounds} alternating passes per size):",
        "  size        DIFF-MF s   s/MP   DenseFuse s   s/MP   ratio   CPU-s: DIFF-MF  DenseFuse",
    ]
    for r in rows:
        mp = r["pixels"] / 1e6
        lines.append(f"  {r['size']:<10} {r['diffmf_median_s']:9.3f} {r['diffmf_median_s'] / mp:6.2f} "
                     f"{r['densefuse_median_s']:13.3f} {r['densefuse_median_s'] / mp:6.2f} "
                     f"{r['median_paired_ratio']:6.2f}x {r['diffmf_cpu_s']:15.3f} {r['densefuse_cpu_s']:10.3f}")
    lines.append(f"  fitted exponent of time vs pixels: DIFF-MF {report['exponent_diffmf']:.3f}, "
                 f"DenseFuse {report['exponent_densefuse']:.3f} (wall); DIFF-MF {report['exponent_diffmf_cpu']:.3f}, "
                 f"DenseFuse {report['exponent_densefuse_cpu']:.3f} (CPU time)")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
