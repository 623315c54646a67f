"""The fusion engine: pairs of files in, fused files out. Never prints; results come back as values.

Pipeline (one `FusionEngine.run` call):

    reader threads ──> same-size groups ──> model (main thread) ──> writer thread
    (decode, gray,       (look-ahead window,   (batched, tiled when     (chroma back, encode,
     YCrCb split)         batch_size)           large, device/dtype)     atomic write)

Reading and writing run in threads (OpenCV releases the GIL while it decodes, converts and encodes), so
the model works while the next pairs load and the last ones are written. A pair whose output already
exists is skipped before it is read (a re-run resumes); every failure is caught per pair and reported
with a one-line reason, and the other pairs go on.

Large images are fused in overlapping square tiles, blended with weights that ramp linearly across the
overlaps, so no seam shows. The network mixes global information (its scans run over the whole grid and
its channel exchange pools globally), so a tiled result is close to, not equal to, the untiled one; the
tile size is chosen from the memory the device has free (or fixed with `tile=`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from diffmf_cli.errors import DiffMFError, InputError, UsageError
from diffmf_cli.io.images import (
    SIXTEEN_BIT_EXTENSIONS,
    bit_depth,
    from_float,
    is_gray,
    read_image,
    rgb_to_ycrcb,
    to_float,
    to_gray,
    write_image,
    ycrcb_to_rgb,
)
from diffmf_cli.io.pairs import IMAGE_EXTENSIONS, Pair

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Automatic tiling on CPU keeps the network's working memory under this many bytes (bigger tiles run no
#: faster on a CPU, and the whole process should fit in a few GiB for any image size).
CPU_WORKING_MEMORY_CAP = 1 << 30
#: Share of the device's free memory that automatic tiling may plan for.
FREE_MEMORY_SHARE = 0.5
#: Loaded-but-not-yet-fused pixels the readers may run ahead by (bounds host memory for huge images).
PREFETCH_PIXELS = 24_000_000


# --------------------------------------------------------------------------------------------- devices


def resolve_device(text: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; UsageError otherwise."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use cpu or auto)")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise UsageError(f"--device {text}: expected cuda or cuda:N") from None
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s) (0..{count - 1})")
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    raise UsageError(f"--device {text}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(text: str, device: torch.device) -> torch.dtype:
    """``fp32`` anywhere; ``bf16`` / ``fp16`` on CUDA only (UsageError elsewhere)."""
    key = (text or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise UsageError(f"--precision {text}: expected one of {', '.join(PRECISIONS)}")
    if key != "fp32" and device.type != "cuda":
        raise UsageError(f"--precision {key}: half precision runs on CUDA only (this run is on {device})")
    if key == "bf16" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return PRECISIONS[key]


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new allocations on `device` (CUDA: driver's free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def working_bytes_per_pixel(config, dtype: torch.dtype = torch.float32) -> float:
    """Planned peak working memory of one forward pass, in bytes per input pixel.

    The full-resolution tensors dominate: both stems' features (kept as decoder skips), the decoder's input
    concatenation and its output, and the padded inputs; the scan grid adds features and the VSS inner
    tensors divided by the grid's area. A factor of 2 covers temporaries (convolution workspaces, copies).
    """
    size = torch.finfo(dtype).bits // 8
    full = 2 * config.stem_channels + (config.dim + 2 * config.stem_channels) + 3 * config.decoder_channels + 4
    grid_area = 4 ** config.stem_downsample
    inner = max(1, round(config.expand * config.dim))
    grid = (12 * config.dim + 8 * inner + 4 * inner * config.d_state / 4) / grid_area
    half = 2 * config.dim * 3 / 4 if config.stem_downsample > 1 else 0.0  # the 1/2-resolution skips
    return 2.0 * size * (full + grid + half)


# -------------------------------------------------------------------------------------------- results


@dataclass
class PairResult:
    """What happened to one pair. `status` is "fused", "skipped" or "failed"; `ms` the wall time spent on it
    (its read and write, plus its share of the batch's compute)."""

    index: int
    name: str
    ir: Path | None
    vis: Path | None
    output: Path | None
    status: str
    error: str | None = None
    ms: float = 0.0
    size: tuple[int, int] | None = None
    tiles: int = 0

    def to_record(self) -> dict:
        return {
            "name": self.name,
            "ir": None if self.ir is None else str(self.ir),
            "vis": None if self.vis is None else str(self.vis),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "error": self.error,
            "ms": round(self.ms, 2),
            "height": None if self.size is None else self.size[0],
            "width": None if self.size is None else self.size[1],
            "tiles": self.tiles,
        }


@dataclass(frozen=True)
class FuseOptions:
    """How to fuse and write.

    ext: output format for pairs without an explicit output path ("png", "jpg", "tif", ...).
    gray: write the fused luminance only, even for colour visible inputs.
    overwrite: redo pairs whose output exists (default: skip them, so re-runs resume).
    batch_size: most same-size pairs (or tiles) per forward pass; None = 1 on CPU (batching gains nothing
        there, and a pair's result then never depends on which pairs share its batch, so a resumed run
        writes the same bytes as an uninterrupted one) and 8 on CUDA.
    tile: None = automatic (from free memory), 0 = never tile, N = tiles of at most N×N pixels.
    tile_overlap: pixels two neighbouring tiles share (blended linearly).
    memory_budget: bytes the network may use per forward pass; None = chosen from free memory.
    readers: reader threads.
    durable: fsync each output before renaming it into place.
    """

    ext: str = "png"
    gray: bool = False
    overwrite: bool = False
    batch_size: int | None = None
    tile: int | None = None
    tile_overlap: int = 64
    memory_budget: int | None = None
    readers: int = 2
    durable: bool = True

    def __post_init__(self):
        if "." + self.ext.lower().lstrip(".") not in IMAGE_EXTENSIONS:
            raise UsageError(f"--ext {self.ext}: expected one of png, jpg, jpeg, bmp, tif, tiff")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.tile is not None and self.tile != 0 and self.tile < 16:
            raise UsageError(f"--tile {self.tile}: tiles must be at least 16 pixels (or 0 for no tiling)")
        if self.tile_overlap < 0:
            raise UsageError(f"tile overlap must be >= 0, got {self.tile_overlap}")


def output_path(pair: Pair, out_dir: Path | None, ext: str) -> Path:
    """Where a pair's result goes: its explicit `out`, else OUT_DIR/<name>.<ext> (sub-folders mirrored)."""
    if pair.out is not None:
        return pair.out
    if out_dir is None:
        raise UsageError(f"{pair.name}: no output folder given")
    return out_dir / f"{pair.name}.{ext.lower().lstrip('.')}"


# --------------------------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    """A pair ready for the network: IR (H, W) and visible Y (H, W) float32 in [0, 1], and what the writer
    needs to rebuild colour (CrCb (H, W, 2) or None) and choose the bit depth."""

    index: int
    pair: Pair
    out: Path
    ir: np.ndarray
    y: np.ndarray
    crcb: np.ndarray | None
    depth: int
    ms: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.ir.shape  # type: ignore[return-value]


def load_pair(pair: Pair, keep_colour: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Read a pair -> (ir, y, crcb, depth) as described in `_Loaded` (see `prepare_pair`). InputError on a
    bad file or a size mismatch (the message gives both sizes)."""
    return prepare_pair(read_image(pair.ir), read_image(pair.vis), keep_colour, str(pair.ir), str(pair.vis))


def prepare_pair(ir_raw: np.ndarray, vis_raw: np.ndarray, keep_colour: bool = True, ir_name: str = "ir",
                 vis_name: str = "vis") -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Raw images (see `diffmf_cli.io.images`) -> (ir, y, crcb, depth): IR and visible luminance (H, W) float32
    in [0, 1], the visible chroma (H, W, 2) or None (gray visible, or `keep_colour` off) and the bit depth
    (16 when either input has 16 bits). Gray, fake-gray (R=G=B) and colour inputs are all accepted;
    InputError (naming both) when the sizes differ, since nothing is resized."""
    if ir_raw.shape[:2] != vis_raw.shape[:2]:
        (ih, iw), (vh, vw) = ir_raw.shape[:2], vis_raw.shape[:2]
        raise InputError(
            f"{ir_name} is {iw}x{ih} but {vis_name} is {vw}x{vh} (width x height); "
            "a pair must be registered at one size, nothing is resized"
        )
    depth = max(bit_depth(ir_raw), bit_depth(vis_raw))
    ir = to_float(to_gray(ir_raw))
    if is_gray(vis_raw):
        return ir, to_float(to_gray(vis_raw)), None, depth
    y, crcb = rgb_to_ycrcb(to_float(vis_raw))
    return ir, y, (crcb if keep_colour else None), depth


def finish_pair(fused: np.ndarray, crcb: np.ndarray | None, depth: int) -> np.ndarray:
    """The fused luminance (H, W) float in [0, 1] -> the raw image that is written: gray, or RGB with the
    visible chroma put back; uint8 (depth 8) or uint16 (depth 16)."""
    if crcb is not None:
        return from_float(ycrcb_to_rgb(fused, crcb), depth)
    return from_float(fused, depth)


def parse_tile(value: str | int | None) -> int | None:
    """Tile setting: ``"auto"`` / None (from free memory) -> None, ``"off"`` / 0 -> 0, a size in pixels -> int."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    key = str(value).strip().lower()
    if key == "auto":
        return None
    if key in ("off", "0", "none"):
        return 0
    try:
        return int(key)
    except ValueError:
        raise UsageError(f"--tile {value}: expected auto, off or a size in pixels") from None


# ------------------------------------------------------------------------------------------------ tiling


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared pixels."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(start: int, size: int, total: int, overlap: int) -> np.ndarray:
    """1-D blending weight of a tile [start, start + size) of an axis of `total` pixels: 1 inside, ramping
    linearly (from 0.5/overlap) over `overlap` pixels on each side that touches a neighbouring tile."""
    w = np.ones(size, np.float32)
    n = min(overlap, size)
    if n <= 0:
        return w
    ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
    if start > 0:
        w[:n] = ramp
    if start + size < total:
        w[-n:] = np.minimum(w[-n:], ramp[::-1])
    return w


# ------------------------------------------------------------------------------------------------ engine


class FusionEngine:
    """Runs a DIFF-MF model over pairs of files.

    model: a module with ``forward(ir, vis_y)``, both (B, 1, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1], and a
    ``config`` (used to plan memory); device/dtype: where and how to compute (half precision via autocast).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, options: FuseOptions | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        options = options or FuseOptions()
        if options.batch_size is None:
            options = dataclasses.replace(options, batch_size=8 if self.device.type == "cuda" else 1)
        self.options = options
        self.model = model.to(self.device).eval()
        config = getattr(model, "config", None)
        self._bytes_per_pixel = working_bytes_per_pixel(config, dtype) if config is not None else 256.0
        self._multiple = getattr(config, "stride_multiple", 16) if config is not None else 16
        self._max_pixels: int | None = None

    # ---- planning

    def max_pixels(self) -> int:
        """Most input pixels one forward pass may hold (batch × H × W), from the memory budget (measured
        once per `run`)."""
        if self._max_pixels is None:
            self._max_pixels = self._budget_pixels()
        return self._max_pixels

    def _budget_pixels(self) -> int:
        budget = self.options.memory_budget
        if budget is None:
            budget = int(free_memory_bytes(self.device) * FREE_MEMORY_SHARE)
            if self.device.type == "cpu":
                budget = min(budget, CPU_WORKING_MEMORY_CAP)
        return max(64 * 64, int(budget / self._bytes_per_pixel))

    def plan(self, height: int, width: int) -> tuple[int, int | None]:
        """(pairs per forward pass, tile size or None) for images of this size."""
        tile = self.options.tile
        if tile == 0:
            return self.options.batch_size, None
        if tile is not None:
            if height <= tile and width <= tile:
                return self.options.batch_size, None
            return self.options.batch_size, tile
        max_pixels = self.max_pixels()
        if height * width <= max_pixels:
            return max(1, min(self.options.batch_size, max_pixels // (height * width))), None
        side = int(math.sqrt(max_pixels))
        return 1, max(self._multiple, side - side % self._multiple)

    # ---- compute

    def fuse_images(self, ir: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fuse same-size images as a run would: ir, y (B, H, W) float32 in [0, 1] -> (B, H, W), in the
        batches and tiles that `plan` chooses, with the out-of-memory fallback. DiffMFError when the network
        fails."""
        batch, tile = self.plan(*ir.shape[1:])
        return np.concatenate([self._fuse_with_fallback(ir[i:i + batch], y[i:i + batch], tile)
                               for i in range(0, ir.shape[0], batch)])

    @torch.inference_mode()
    def fuse_arrays(self, ir: np.ndarray, y: np.ndarray, tile: int | None = None,
                    tile_batch: int | None = None) -> np.ndarray:
        """Fuse a batch of same-size images: ir, y (B, H, W) float32 in [0, 1] -> fused (B, H, W) float32.

        With `tile`, each image is fused in overlapping tile×tile pieces (`tile_batch`, default batch_size,
        tiles per pass) and blended."""
        if tile is None or (ir.shape[1] <= tile and ir.shape[2] <= tile):
            return self._forward(ir, y)
        step = tile_batch or self.options.batch_size
        return np.stack([self._fuse_tiled(ir[i], y[i], tile, step) for i in range(ir.shape[0])])

    def _forward(self, ir: np.ndarray, y: np.ndarray) -> np.ndarray:
        t_ir = torch.from_numpy(np.ascontiguousarray(ir)).unsqueeze(1).to(self.device, non_blocking=True)
        t_y = torch.from_numpy(np.ascontiguousarray(y)).unsqueeze(1).to(self.device, non_blocking=True)
        if self.dtype == torch.float32:
            out = self.model(t_ir, t_y)
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                out = self.model(t_ir, t_y)
        return out[:, 0].float().clamp_(0.0, 1.0).cpu().numpy()

    def _overlap(self, tile: int) -> int:
        return min(self.options.tile_overlap, tile // 4)

    def _fuse_tiled(self, ir: np.ndarray, y: np.ndarray, tile: int, step: int) -> np.ndarray:
        h, w = ir.shape
        overlap = self._overlap(tile)
        th, tw = min(tile, h), min(tile, w)
        boxes = [(r, c) for r in tile_starts(h, th, overlap) for c in tile_starts(w, tw, overlap)]
        acc = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        for i in range(0, len(boxes), step):
            chunk = boxes[i:i + step]
            out = self._forward(np.stack([ir[r:r + th, c:c + tw] for r, c in chunk]),
                                np.stack([y[r:r + th, c:c + tw] for r, c in chunk]))
            for (r, c), piece in zip(chunk, out):
                wgt = np.outer(_ramp(r, th, h, overlap), _ramp(c, tw, w, overlap))
                acc[r:r + th, c:c + tw] += piece * wgt
                weight[r:r + th, c:c + tw] += wgt
        return acc / weight

    # ---- the pipeline

    def run(self, pairs: Iterable[Pair], out_dir: Path | None = None) -> Iterator[PairResult]:
        """Fuse every pair; yields one PairResult per pair as each finishes (not in input order)."""
        opts = self.options
        todo: list[tuple[int, Pair, Path]] = []
        for index, pair in enumerate(pairs):
            try:
                out = output_path(pair, out_dir, opts.ext)
            except DiffMFError as exc:
                yield PairResult(index, pair.name, pair.ir, pair.vis, None, "failed", str(exc))
                continue
            if not opts.overwrite and out.exists():
                yield PairResult(index, pair.name, pair.ir, pair.vis, out, "skipped")
                continue
            todo.append((index, pair, out))
        if not todo:
            return
        self._max_pixels = None  # re-read free memory for this run

        read_pool = ThreadPoolExecutor(max(1, opts.readers), thread_name_prefix="diffmf-read")
        write_pool = ThreadPoolExecutor(1, thread_name_prefix="diffmf-write")
        reads: deque[Future] = deque()
        writes: deque[Future] = deque()
        groups: dict[tuple[int, int], list[_Loaded]] = {}
        waiting_pixels = 0
        source = iter(todo)
        exhausted = False
        window = opts.batch_size * 2 + opts.readers

        largest = 0  # pixels of the largest image read so far: huge images are read ahead fewer at a time

        def submit_reads() -> None:
            nonlocal exhausted
            ahead = opts.readers if largest == 0 else max(1, min(window, PREFETCH_PIXELS // largest))
            while not exhausted and len(reads) < ahead and waiting_pixels < PREFETCH_PIXELS:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    return
                reads.append(read_pool.submit(self._load, *item))

        try:
            submit_reads()
            while reads or groups:
                if reads:
                    loaded = reads.popleft().result()
                    if isinstance(loaded, PairResult):
                        yield loaded
                    else:
                        group = groups.setdefault(loaded.shape, [])
                        group.append(loaded)
                        waiting_pixels += loaded.ir.size
                        largest = max(largest, loaded.ir.size)
                        batch, _tile = self.plan(*loaded.shape)
                        if len(group) >= batch:
                            waiting_pixels -= self._compute(groups.pop(loaded.shape), writes, write_pool)
                        elif sum(len(g) for g in groups.values()) >= window or waiting_pixels >= PREFETCH_PIXELS:
                            waiting_pixels -= self._compute_largest(groups, writes, write_pool)
                    submit_reads()
                else:
                    waiting_pixels -= self._compute_largest(groups, writes, write_pool)
                    submit_reads()
                while writes and writes[0].done():
                    yield writes.popleft().result()
            while writes:
                yield writes.popleft().result()
        finally:
            for fut in reads:
                fut.cancel()
            read_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True)

    def _load(self, index: int, pair: Pair, out: Path) -> _Loaded | PairResult:
        start = time.perf_counter()
        try:
            ir, y, crcb, depth = load_pair(pair, keep_colour=not self.options.gray)
        except DiffMFError as exc:
            return PairResult(index, pair.name, pair.ir, pair.vis, out, "failed", str(exc),
                              ms=(time.perf_counter() - start) * 1e3)
        except Exception as exc:  # an unexpected decoder failure must not stop the other pairs
            return PairResult(index, pair.name, pair.ir, pair.vis, out, "failed",
                              f"{pair.ir}: {_one_line(exc)}", ms=(time.perf_counter() - start) * 1e3)
        return _Loaded(index, pair, out, ir, y, crcb, depth, (time.perf_counter() - start) * 1e3)

    def _compute_largest(self, groups, writes, write_pool) -> int:
        shape = max(groups, key=lambda s: len(groups[s]))
        return self._compute(groups.pop(shape), writes, write_pool)

    def _compute(self, items: list[_Loaded], writes: deque, write_pool: ThreadPoolExecutor) -> int:
        """Fuse same-size items (in batches the plan allows) and queue their writes; returns pixels done."""
        batch, tile = self.plan(*items[0].shape)
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            start = time.perf_counter()
            try:
                fused = self._fuse_with_fallback(np.stack([it.ir for it in chunk]),
                                                 np.stack([it.y for it in chunk]), tile)
                error = None
            except DiffMFError as exc:
                fused, error = None, str(exc)
            share = (time.perf_counter() - start) * 1e3 / len(chunk)
            tiles = self._count_tiles(chunk[0].shape, tile)
            for j, item in enumerate(chunk):
                if fused is None:
                    writes.append(_done(PairResult(item.index, item.pair.name, item.pair.ir, item.pair.vis,
                                                   item.out, "failed", f"{item.pair.ir}: {error}",
                                                   item.ms + share, item.shape)))
                    continue
                limit = 2 * self.options.batch_size + 4
                if len(writes) > limit:  # back-pressure: the writer may lag by `limit` images at most
                    writes[-limit].result()
                writes.append(write_pool.submit(self._write, item, fused[j], item.ms + share, tiles))
        return sum(it.ir.size for it in items)

    def _fuse_with_fallback(self, ir: np.ndarray, y: np.ndarray, tile: int | None,
                            tile_batch: int | None = None) -> np.ndarray:
        """fuse_arrays, retried on out-of-memory with one image at a time, one tile at a time, then tiles
        half as large (down to 32 pixels)."""
        try:
            return self.fuse_arrays(ir, y, tile, tile_batch)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise DiffMFError(f"the network failed ({_one_line(exc)})") from None
        self._release_cache()
        if ir.shape[0] > 1:
            return np.concatenate([self._fuse_with_fallback(ir[i:i + 1], y[i:i + 1], tile, tile_batch)
                                   for i in range(ir.shape[0])])
        h, w = ir.shape[1:]
        tiled = tile is not None and (h > tile or w > tile)
        if tiled and (tile_batch or self.options.batch_size) > 1:
            return self._fuse_with_fallback(ir, y, tile, 1)
        current = tile if tiled else max(h, w)
        smaller = current // 2
        smaller = max(32, smaller - smaller % self._multiple) if smaller >= self._multiple else smaller
        if smaller < 32 or smaller >= current:
            raise DiffMFError(f"out of memory on {self.device} even with {current}-pixel tiles")
        return self._fuse_with_fallback(ir, y, smaller, tile_batch)

    def _release_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _count_tiles(self, shape: tuple[int, int], tile: int | None) -> int:
        if tile is None or (shape[0] <= tile and shape[1] <= tile):
            return 0
        overlap = self._overlap(tile)
        return (len(tile_starts(shape[0], min(tile, shape[0]), overlap))
                * len(tile_starts(shape[1], min(tile, shape[1]), overlap)))

    def _write(self, item: _Loaded, fused: np.ndarray, ms: float, tiles: int) -> PairResult:
        start = time.perf_counter()
        pair = item.pair
        try:
            depth = item.depth if item.out.suffix.lower() in SIXTEEN_BIT_EXTENSIONS else 8
            image = finish_pair(fused, item.crcb, depth)
            write_image(item.out, image, durable=self.options.durable)
            status, error = "fused", None
        except DiffMFError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:
            status, error = "failed", f"{item.out}: {_one_line(exc)}"
        ms += (time.perf_counter() - start) * 1e3
        return PairResult(item.index, pair.name, pair.ir, pair.vis, item.out, status, error, ms, item.shape, tiles)


def _done(result: PairResult) -> Future:
    fut: Future = Future()
    fut.set_result(result)
    return fut


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass
class Summary:
    """Totals of a run, for the CLI to render."""

    fused: int = 0
    skipped: int = 0
    failed: int = 0
    unmatched: int = 0
    seconds: float = 0.0
    results: list[PairResult] = field(default_factory=list)

    def add(self, result: PairResult) -> None:
        self.results.append(result)
        if result.status == "fused":
            self.fused += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1

    @property
    def pairs_per_second(self) -> float:
        return self.fused / self.seconds if self.seconds > 0 else 0.0


__all__ = [
    "FuseOptions",
    "FusionEngine",
    "PairResult",
    "Summary",
    "finish_pair",
    "load_pair",
    "output_path",
    "parse_tile",
    "prepare_pair",
    "resolve_device",
    "resolve_precision",
    "tile_starts",
    "working_bytes_per_pixel",
]
