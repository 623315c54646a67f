"""How much of `diffmf fuse` is spent outside the model, on CPU, for 480x640 pairs.

Stages are timed separately, one after the other, on the same pairs:
  read   = decode both files, gray conversion, RGB -> YCrCb split       (fusion.load_pair)
  model  = one forward pass per pair                                    (FusionEngine.fuse_arrays)
  write  = YCrCb -> RGB, 8-bit conversion, PNG encode, atomic write     (what the writer thread does)
then the whole pipeline (FusionEngine.run: reader threads + model + writer thread) is timed end to end.
"outside share" = (read + write) / (read + model + write); "pipeline overhead" = how much longer the
real run takes than the model alone (what overlapping I/O with compute leaves over).

Pairs: MSRS test pairs from ../shared/data (480x640, 1-ch IR PNG + RGB PNG) when present, else generated.
Model: the shipped ir-vis weights when installed, else the "cpu" preset with random weights (same cost).

    python scripts/bench_fuse_io.py [--pairs 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffmf_cli.errors import CheckpointError
    from diffmf_cli.fusion import FuseOptions, FusionEngine, load_pair
    from diffmf_cli.io.images import from_float, write_image, ycrcb_to_rgb
    from diffmf_cli.io.pairs import pair_folders
    from diffmf_cli.models import create_model
    from diffmf_cli.ops import last_scan_path
    from diffmf_cli.weights import load_weights

    try:
        model, meta = load_weights("ir-vis")
        model_name = f"shipped ir-vis ({meta.get('config', {}).get('dim')} dim)"
    except CheckpointError:
        torch.manual_seed(0)
        model, model_name = create_model("cpu"), "cpu preset, random weights (shipped weights not installed)"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        msrs = args.data / "msrs" / "test"
        if (msrs / "ir").is_dir():
            pairs = pair_folders(msrs / "ir", msrs / "vi").pairs[: args.pairs]
            source = f"MSRS test ({msrs})"
        else:
            rng = np.random.default_rng(0)
            for i in range(args.pairs):
                write_image(tmp / "ir" / f"{i}.png", rng.integers(0, 256, (480, 640), dtype=np.uint8))
                write_image(tmp / "vi" / f"{i}.png", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
            pairs = pair_folders(tmp / "ir", tmp / "vi").pairs
            source = "generated noise"
        engine = FusionEngine(model, "cpu", options=FuseOptions(tile=0))

        # warm-up (kernel compilation, allocator) outside every timed region
        ir, y, crcb, depth = load_pair(pairs[0])
        engine.fuse_arrays(ir[None], y[None])

        t_read = t_model = t_write = 0.0
        for i, pair in enumerate(pairs):
            t0 = time.perf_counter()
            ir, y, crcb, depth = load_pair(pair)
            t1 = time.perf_counter()
            fused = engine.fuse_arrays(ir[None], y[None])[0]
            t2 = time.perf_counter()
            image = from_float(ycrcb_to_rgb(fused, crcb), 8) if crcb is not None else from_float(fused, 8)
            write_image(tmp / "staged" / f"{i}.png", image)
            t3 = time.perf_counter()
            t_read, t_model, t_write = t_read + t1 - t0, t_model + t2 - t1, t_write + t3 - t2
        scan = last_scan_path()

        t0 = time.perf_counter()
        results = list(engine.run(pairs, tmp / "pipeline"))
        t_pipe = time.perf_counter() - t0
        assert all(r.status == "fused" for r in results), [r.error for r in results if r.status != "fused"]

    n = len(pairs)
    staged = t_read + t_model + t_write
    print(f"device cpu, torch threads {torch.get_num_threads()}, fp32, scan path {scan}, model: {model_name}")
    print(f"pairs: {n} x {ir.shape[0]}x{ir.shape[1]} from {source}")
    print(f"per pair (ms): read+colour {1e3 * t_read / n:.1f}, model {1e3 * t_model / n:.1f}, "
          f"colour+write {1e3 * t_write / n:.1f}")
    print(f"outside share (staged): {100 * (t_read + t_write) / staged:.2f}% of {staged / n * 1e3:.0f} ms/pair")
    print(f"pipeline (FusionEngine.run): {1e3 * t_pipe / n:.1f} ms/pair; overhead over the model alone: "
          f"{100 * (t_pipe - t_model) / t_model:+.2f}%")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
