"""The Python API: `Fuser` loads a DIFF-MF model once and fuses arrays, or runs pairs of files to outputs.

`diffmf fuse` (the local engine), the Ray engine's workers and users' own code all go through `Fuser`, so the
same pair gives the same bytes everywhere::

    import cv2
    from diffmf_cli import Fuser

    fuser = Fuser("ir-vis")                                     # loads the shipped weights once
    ir = cv2.imread("ir/00001.png", cv2.IMREAD_UNCHANGED)       # gray or BGR, 8- or 16-bit
    vis = cv2.imread("vis/00001.png", cv2.IMREAD_UNCHANGED)
    fused = fuser.fuse(ir, vis)                                 # what `diffmf fuse` writes for this pair
    cv2.imwrite("fused.png", fused)

Nothing here prints; problems raise the typed errors of `diffmf_cli.errors`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from diffmf_cli.errors import CheckpointError, InputError, UsageError
from diffmf_cli.fusion import (
    PRECISIONS,
    FuseOptions,
    FusionEngine,
    PairResult,
    finish_pair,
    parse_tile,
    prepare_pair,
    resolve_device,
    resolve_precision,
)
from diffmf_cli.io.images import from_opencv, to_opencv
from diffmf_cli.io.pairs import Pair


def resolve_model(model: str | None, weights: str | Path | None) -> tuple[str | None, Path]:
    """(shipped model name or None, weights file) for a shipped model name or a weights file: UsageError for an
    unknown name or both given, CheckpointError (exit 2) when the file is missing."""
    from diffmf_cli.weights import SHIPPED_MODELS, resolve_weights

    if weights is not None:
        if model is not None:
            raise UsageError("give --model or --weights, not both")
        return None, resolve_weights(weights)
    name = model or "ir-vis"
    if name not in SHIPPED_MODELS:
        raise UsageError(f"--model {name}: expected one of {', '.join(SHIPPED_MODELS)} (or use --weights PATH)")
    try:
        return name, resolve_weights(name)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; no trained weights, so nothing is fused (pass --weights PATH)") from None


def load_model(model: str | None, weights: str | Path | None, device: torch.device) -> tuple[torch.nn.Module, Path]:
    """(network on `device`, weights file) for a shipped model name or a weights file (see `resolve_model`);
    CheckpointError when the file cannot be trusted."""
    from diffmf_cli.weights import load_weights

    _name, path = resolve_model(model, weights)
    net, _meta = load_weights(path, device=device)
    return net, path


class Fuser:
    """A DIFF-MF model loaded once, fusing image arrays or pairs of files.

    model: a shipped model name (``"ir-vis"``, ``"medical"``).
    weights: a ``.safetensors`` file written by ``diffmf train``, used instead of a shipped model (give it
        with the default `model` or ``model=None``).
    device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` on CUDA.
    tile: ``"auto"`` (large images in tiles sized from free memory), ``"off"``, or a tile size in pixels.
    batch_size: most same-size pairs per forward pass (default 1 on CPU, 8 on CUDA, as `diffmf fuse`).

    Raises UsageError (bad setting) or CheckpointError (weights missing or unusable).
    """

    def __init__(self, model: str | None = "ir-vis", *, weights: str | Path | None = None, device: str = "auto",
                 precision: str = "fp32", tile: str | int | None = "auto", batch_size: int | None = None):
        if weights is not None and model == "ir-vis":
            model = None  # the default name gives way to an explicit file
        options = FuseOptions(tile=parse_tile(tile), batch_size=batch_size)
        self.device: torch.device = resolve_device(device)
        self.dtype: torch.dtype = resolve_precision(precision, self.device)
        self.precision: str = next(k for k, v in PRECISIONS.items() if v == self.dtype)
        net, self.weights_path = load_model(model, weights, self.device)
        self.model_name: str = str(model or "ir-vis") if weights is None else str(self.weights_path)
        self._engine = FusionEngine(net, self.device, self.dtype, options)

    @property
    def batch_size(self) -> int:
        """Pairs per forward pass (resolved for the device)."""
        return int(self._engine.options.batch_size)

    def fuse(self, ir: np.ndarray, vis: np.ndarray, *, gray: bool = False) -> np.ndarray:
        """Fuse one registered pair of arrays as OpenCV reads them (``cv2.IMREAD_UNCHANGED``).

        ir, vis: (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA, uint8 or uint16, the same H and W.
        Returns what `diffmf fuse` writes for this pair as a PNG or TIFF file: (H, W, 3) BGR when the visible
        image has colour (and not `gray`), else (H, W); uint16 when either input is 16-bit, else uint8. For
        8-bit formats (JPEG) the CLI writes 8 bits: ``(fused / 257 + 0.5)`` in that case. InputError for
        arrays of another type or two sizes.
        """
        return self.fuse_batch([ir], [vis], gray=gray)[0]

    def fuse_batch(self, irs: Sequence[np.ndarray], viss: Sequence[np.ndarray], *, gray: bool = False) -> list[np.ndarray]:
        """`fuse` for a list of same-size pairs, through the network `batch_size` pairs at a time. Each result
        equals `fuse` of its own pair when the batch size is 1 (the CPU default); larger batches may change
        the last bit of a float sum, as they do in `diffmf fuse`."""
        if len(irs) != len(viss):
            raise InputError(f"fuse_batch: {len(irs)} infrared but {len(viss)} visible images")
        if not irs:
            return []
        prepared = [prepare_pair(from_opencv(ir, f"ir[{i}]"), from_opencv(vis, f"vis[{i}]"), not gray,
                                 f"ir[{i}]", f"vis[{i}]") for i, (ir, vis) in enumerate(zip(irs, viss))]
        shapes = {p[0].shape for p in prepared}
        if len(shapes) > 1:
            raise InputError(f"fuse_batch: pairs of one size only, got {', '.join(f'{w}x{h}' for h, w in sorted(shapes))}"
                             " (width x height); call it per size")
        fused = self._engine.fuse_images(np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared]))
        return [to_opencv(finish_pair(f, crcb, depth)) for f, (_ir, _y, crcb, depth) in zip(fused, prepared)]

    def run(self, pairs: Iterable[Pair | tuple], out_dir: str | os.PathLike | None = None, *, ext: str = "png",
            gray: bool = False, overwrite: bool = False,
            on_tiles: Callable[[int, int], None] | None = None) -> Iterator[PairResult]:
        """Fuse pairs of files into `out_dir` (or each pair's own `out`), as `diffmf fuse` does. `pairs`:
        `Pair`s (`diffmf_cli.io.pair_folders(ir_dir, vis_dir).pairs`) or ``(ir, vis)`` / ``(ir, vis, out)``
        tuples of paths (the output is named after the IR file's stem). Every output
        gets a record of what made it (`diffmf_cli.io.records`); outputs that exist from the same settings
        are skipped, outputs of other settings raise UsageError before anything is fused (unless
        `overwrite`); every output is written atomically; a bad pair is a "failed" result and the others go
        on. Yields one `PairResult` per pair as each finishes; `on_tiles(done, total)` is called while a large
        image is fused in tiles."""
        from diffmf_cli.io.records import settings_for

        pairs = (_as_pair(p) for p in pairs)
        out_dir = None if out_dir is None else Path(out_dir)

        settings = settings_for(self.weights_path, gray=gray, precision=self.precision,
                                tile=self._engine.options.tile, model=self.model_name)
        options = dataclasses.replace(self._engine.options, ext=ext.lower().lstrip("."), gray=gray,
                                      overwrite=overwrite, settings=settings, on_tiles=on_tiles)
        engine = FusionEngine(self._engine.model, self.device, self.dtype, options)
        yield from engine.run(pairs, out_dir)


def _as_pair(item: Pair | tuple) -> Pair:
    """A `Pair`, or one made from an ``(ir, vis[, out])`` tuple of paths; TypeError for anything else."""
    if isinstance(item, Pair):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        ir, vis = Path(item[0]), Path(item[1])
        return Pair(ir.stem, ir, vis, Path(item[2]) if len(item) == 3 and item[2] is not None else None)
    raise TypeError(f"Fuser.run: a pair is a Pair or an (ir, vis[, out]) tuple of paths, got {item!r}")


__all__ = ["Fuser", "load_model", "resolve_model"]
