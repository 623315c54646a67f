#!/usr/bin/env python
"""CPU time per pair of the output heads, side by side in one run.

    python scripts/bench_head.py [--threads 2] [--rounds 9] [--size 480 640]

The cpu preset with the blend head (the default), the blend head with the selection prior k = 40, the same
with the residual bounded by the blend's room (the shipped medical model's) and the direct head (the first
release's), random weights, float32, torch.inference_mode, after warm-up; passes alternate (and which goes first rotates) so
load from other processes falls on both alike. Reports each head's median wall time and process CPU time per
pair and the ratios to the direct head of both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from diffmf_cli.models import create_model, get_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu_cfg = get_config("cpu")
    models = {"blend": create_model(cpu_cfg.replace(head="blend")).eval(),
              "blend k=40": create_model(cpu_cfg.replace(head="blend", select_gain=40.0)).eval(),
              "blend k=40 range": create_model(cpu_cfg.replace(head="blend", select_gain=40.0,
                                                               residual_bound="range")).eval(),
              "direct": create_model(cpu_cfg.replace(head="direct")).eval()}
    ir, vis = torch.rand(1, 1, *args.size), torch.rand(1, 1, *args.size)
    wall: dict[str, list[float]] = {h: [] for h in models}
    cpu: dict[str, list[float]] = {h: [] for h in models}
    with torch.inference_mode():
        for model in models.values():
            model(ir, vis)
        for r in range(args.rounds):
            order = list(models)[r % len(models):] + list(models)[:r % len(models)]  # rotate who goes first
            for head in order:
                t0, c0 = time.perf_counter(), time.process_time()
                models[head](ir, vis)
                wall[head].append(time.perf_counter() - t0)
                cpu[head].append(time.process_time() - c0)
    med = {h: (statistics.median(wall[h]), statistics.median(cpu[h])) for h in models}
    for head, (w, c) in med.items():
        print(f"{head:16s} head: {w * 1000:7.1f} ms wall, {c * 1000:7.1f} ms CPU per {args.size[0]}x{args.size[1]} pair")
    for head in ("blend", "blend k=40", "blend k=40 range"):
        print(f"{head} / direct: wall {med[head][0] / med['direct'][0]:.3f}, CPU {med[head][1] / med['direct'][1]:.3f}")
    print(f"(load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
