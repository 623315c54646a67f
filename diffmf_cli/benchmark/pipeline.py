"""Timing `diffmf fuse` on real files: end to end, and stage by stage."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from diffmf_cli.benchmark.runs import BenchModel, Progress, _nothing
from diffmf_cli.device import precision_name, synchronizer
from diffmf_cli.errors import InputError, UsageError


def time_pipeline(bench: BenchModel, ir_dir: Path, vis_dir: Path, device, dtype=torch.float32, *,
                  batch_size: int | None = None, tile: int | None = None, limit: int | None = None,
                  progress: Progress = _nothing) -> dict:
    """Time `diffmf fuse` on real files (outputs go to a temporary folder, deleted afterwards).

    Two measurements of the same pairs, after one untimed warm-up pair:
    * end to end: `FusionEngine.run`, exactly what `diffmf fuse` runs (reading and writing in threads,
      overlapping the model), wall time;
    * split: the same stages one after another per pair — read (`load_pair`), model (`fuse_images`: host
      arrays in and out, the engine's batching and tiling plan), write (`write_fused`: colour back, encode,
      atomic write) — so each stage's time is its own.
    """
    from diffmf_cli.fusion import FuseOptions, FusionEngine, load_pair, write_fused
    from diffmf_cli.io.pairs import pair_folders

    for folder in (ir_dir, vis_dir):
        if not Path(folder).is_dir():
            raise UsageError(f"--input: {folder} is not a folder")
    pairing = pair_folders(ir_dir, vis_dir)
    pairs = pairing.pairs[:limit] if limit else pairing.pairs
    if not pairs:
        raise InputError(f"--input: no pairs in {ir_dir} and {vis_dir} (files are paired by name)")
    options = FuseOptions(batch_size=batch_size, tile=tile, overwrite=True)
    engine = FusionEngine(bench.model, device, dtype, options)
    sync = synchronizer(device)
    with tempfile.TemporaryDirectory(prefix="diffmf-benchmark-") as tmp:
        out_dir = Path(tmp)
        progress("warm-up pair")
        ir, y, _crcb, _depth = load_pair(pairs[0])
        engine.fuse_images(ir[None], y[None])
        sync()

        progress(f"end to end: {len(pairs)} pairs")
        start = time.perf_counter()
        results = list(engine.run(pairs, out_dir / "run"))
        sync()
        wall = time.perf_counter() - start
        fused = [r for r in results if r.status == "fused"]
        failed = [r for r in results if r.status == "failed"]

        progress(f"stage by stage: {len(pairs)} pairs")
        read_s = model_s = write_s = 0.0
        pixels = 0
        split_out = out_dir / "split"
        split_out.mkdir()
        measured = 0
        for pair in pairs:
            t0 = time.perf_counter()
            try:
                ir, y, crcb, depth = load_pair(pair)
            except InputError:
                continue
            t1 = time.perf_counter()
            fused_y = engine.fuse_images(ir[None], y[None])[0]
            sync()
            t2 = time.perf_counter()
            write_fused(split_out / f"{pair.name.replace('/', '_')}.png", fused_y, crcb, depth, options.durable)
            t3 = time.perf_counter()
            read_s, model_s, write_s = read_s + t1 - t0, model_s + t2 - t1, write_s + t3 - t2
            pixels += ir.size
            measured += 1
    stage_total = read_s + model_s + write_s
    megapixels = sum((r.size[0] * r.size[1]) for r in fused if r.size) / 1e6
    return {
        "ir_dir": str(ir_dir),
        "vis_dir": str(vis_dir),
        "pairs": len(pairs),
        "fused": len(fused),
        "failed": len(failed),
        "errors": [r.error for r in failed][:5],
        "device": str(device),
        "precision": precision_name(dtype),
        "batch_size": engine.options.batch_size,
        "tile": tile,
        "end_to_end_s": wall,
        "end_to_end_pairs_per_s": len(fused) / wall if wall > 0 else None,
        "end_to_end_megapixels_per_s": megapixels / wall if wall > 0 else None,
        "split_pairs": measured,
        "split_megapixels": pixels / 1e6,
        "read_s": read_s,
        "model_s": model_s,
        "write_s": write_s,
        "read_share": read_s / stage_total if stage_total else None,
        "model_share": model_s / stage_total if stage_total else None,
        "write_share": write_s / stage_total if stage_total else None,
        "overlap_gain": stage_total / wall if wall > 0 and measured == len(fused) else None,
    }
