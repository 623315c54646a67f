#!/usr/bin/env python
"""Write the stored small fusions that tests/test_shipped_weights.py checks the shipped weights against.

    python tests/data/make_shipped_fusion.py

Run it after replacing a file in weights/ (and look at the PNGs: they are what the new weights make). For each
shipped model it fuses a crop of one sample pair and writes ``<model>.png`` and the weights' SHA-256 in
``weights.json``, both in tests/data/shipped_fusion/.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "shipped_fusion"
SAMPLES = ROOT / "diffmf_cli" / "samples"
#: model -> (sample pair, crop rows, crop columns)
CASES = {
    "ir-vis": ("tno_07.png", slice(96, 192), slice(64, 192)),
    "medical": ("harvard_mri_pet_11.png", slice(64, 160), slice(64, 192)),
}


def fuse_crop(model: str) -> tuple[np.ndarray, Path]:
    """The shipped `model` on its crop, as `diffmf fuse` computes it: uint8 gray or RGB (H, W[, 3])."""
    from diffmf_cli.fusion import FusionEngine, finish_pair, prepare_pair
    from diffmf_cli.io.images import read_image
    from diffmf_cli.weights import load_weights, resolve_weights

    name, rows, cols = CASES[model]
    path = resolve_weights(model)
    net, _meta = load_weights(path)
    ir = read_image(SAMPLES / "ir" / name)[rows, cols]
    vis = read_image(SAMPLES / "vis" / name)[rows, cols]
    ir_y, vis_y, crcb, depth = prepare_pair(ir, vis)
    fused = FusionEngine(net).fuse_images(ir_y[None], vis_y[None])[0]
    return finish_pair(fused, crcb, depth), path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    from diffmf_cli.io.images import write_image

    OUT.mkdir(exist_ok=True)
    digests = {}
    for model in CASES:
        image, path = fuse_crop(model)
        write_image(OUT / f"{model}.png", image)
        digests[model] = sha256(path)
    (OUT / "weights.json").write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    print(f"wrote {', '.join(f'{m}.png' for m in CASES)} and weights.json to {OUT}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
