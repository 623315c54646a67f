"""The fusion engine: pairs of files in, fused files out. Never prints; results come back as values.

Pipeline (one `FusionEngine.run` call):

    reader threads ──> same-size groups ──> model (main thread) ──> writer thread
    (decode, gray,       (look-ahead window,   (batched, tiled when     (chroma back, encode,
     YCrCb split)         batch_size)           large, device/dtype)     atomic write)

Reading and writing run in threads (OpenCV releases the GIL while it decodes, converts and encodes), so
the model works while the next pairs load and the last ones are written. With output records
(`FuseOptions.settings`, see `diffmf_cli.io.records`) a pair whose output exists from the same settings is
skipped before it is read (a re-run resumes), and outputs of other settings stop the run before anything is
fused; every failure is caught per pair and reported with a one-line reason, and the other pairs go on.

Large images are fused in overlapping square tiles blended without seams, the tile size chosen from the
memory the device has free (or fixed with `tile=`): `diffmf_cli.tiling` plans and computes, this module
reads, groups and writes. Device and precision names live in `diffmf_cli.device`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from diffmf_cli.device import PRECISIONS, resolve_device, resolve_precision  # noqa: F401 (re-exported)
from diffmf_cli.errors import DiffMFError, InputError, UsageError, one_line
from diffmf_cli.io.images import (
    SIXTEEN_BIT_EXTENSIONS,
    bit_depth,
    from_float,
    is_gray,
    read_image,
    rgb_to_ycrcb,
    to_float,
    encode_image,
    to_gray,
    ycrcb_to_rgb,
)
from diffmf_cli.io.files import atomic_write_bytes
from diffmf_cli.io.outputs import check_inputs_untouched
from diffmf_cli.io.pairs import IMAGE_EXTENSIONS, Pair
from diffmf_cli.io.records import (
    CONFLICT,
    SKIP,
    OutputSettings,
    check_output,
    conflict_message,
    file_sha256,
    find_other_formats,
    other_format_message,
    write_record,
)
from diffmf_cli.tiling import MemoryPlanner, TiledForward, tile_starts, working_bytes_per_pixel  # noqa: F401

#: Loaded-but-not-yet-fused pixels the readers may run ahead by (bounds host memory for huge images).
PREFETCH_PIXELS = 24_000_000


# -------------------------------------------------------------------------------------------- results


@dataclass
class PairResult:
    """What happened to one pair. `status` is "fused", "skipped" or "failed"; `ms` the wall time spent on it
    (its read and write, plus its share of the batch's compute); `reason` why it was skipped, or why an
    existing output was made again."""

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
    reason: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)

    def to_record(self) -> dict:
        return {
            "name": self.name,
            "ir": None if self.ir is None else str(self.ir),
            "vis": None if self.vis is None else str(self.vis),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "error": self.error,
            "reason": self.reason,
            "warnings": [message for _kind, message in self.notes],
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
    overwrite: redo pairs whose output exists, whatever made it.
    settings: what decides the pixels (`diffmf_cli.io.records.OutputSettings`, which must match `gray` and
        the run's weights/precision/tile). Given, every output gets a record, existing outputs are skipped
        only when their record shows these settings, and outputs of other settings (or without a record)
        stop the run before anything is fused, unless `overwrite`. None: no records, and any existing
        output is skipped.
    batch_size: most same-size pairs (or tiles) per forward pass; None = 1 on CPU (batching gains nothing
        there, and a pair's result then never depends on which pairs share its batch, so a resumed run
        writes the same bytes as an uninterrupted one) and 8 on CUDA.
    tile: None = automatic (from free memory), 0 = never tile, N = tiles of at most N×N pixels.
    tile_overlap: pixels two neighbouring tiles share (blended linearly).
    memory_budget: bytes the network may use per forward pass; None = chosen from free memory.
    readers: reader threads.
    durable: fsync each output before renaming it into place.
    on_tiles: called as ``on_tiles(done, total)`` while a large image is fused in tiles (progress within it).
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
    settings: OutputSettings | None = None
    on_tiles: Callable[[int, int], None] | None = None

    def __post_init__(self):
        if "." + self.ext.lower().lstrip(".") not in IMAGE_EXTENSIONS:
            raise UsageError(f"--ext {self.ext}: expected one of png, jpg, jpeg, bmp, tif, tiff")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.tile is not None and self.tile != 0 and self.tile < 16:
            raise UsageError(f"--tile {self.tile}: tiles must be at least 16 pixels (or off for no tiling)")
        if self.tile_overlap < 0:
            raise UsageError(f"tile overlap must be >= 0, got {self.tile_overlap}")
        if self.settings is not None and self.settings.gray != self.gray:
            raise ValueError("FuseOptions: settings.gray must equal gray")


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
    reason: str | None = None
    ir_sha256: str = ""
    vis_sha256: str = ""
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ir.shape  # type: ignore[return-value]


#: Kinds of `PairResult.notes`: things done to a pair that the user did not ask for in so many words.
NOTE_DECODER, NOTE_COLOUR_IR, NOTE_8BIT = "damaged input decoded anyway", "colour IR reduced to luminance", \
    "16-bit written as 8-bit"
NOTE_ALPHA = "transparency dropped"


def load_pair(pair: Pair, keep_colour: bool = True,
              notes: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Read a pair -> (ir, y, crcb, depth) as described in `_Loaded` (see `prepare_pair`). InputError on a
    bad file or a size mismatch (the message gives both sizes). `notes` gets (kind, message) for what the
    user should hear about (a damaged file decoded anyway, a colour IR image)."""
    said: list[str] = []
    alpha: list[str] = []
    ir_raw, vis_raw = read_image(pair.ir, said, alpha), read_image(pair.vis, said, alpha)
    if notes is not None:
        notes.extend((NOTE_DECODER, line) for line in said)
        notes.extend((NOTE_ALPHA, line) for line in alpha)
    return prepare_pair(ir_raw, vis_raw, keep_colour, str(pair.ir), str(pair.vis), notes)


def prepare_pair(ir_raw: np.ndarray, vis_raw: np.ndarray, keep_colour: bool = True, ir_name: str = "ir",
                 vis_name: str = "vis",
                 notes: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Raw images (see `diffmf_cli.io.images`) -> (ir, y, crcb, depth): IR and visible luminance (H, W) float32
    in [0, 1], the visible chroma (H, W, 2) or None (gray visible, or `keep_colour` off) and the bit depth
    (16 when either input has 16 bits). Gray, fake-gray (R=G=B) and colour inputs are all accepted (a colour
    IR image, e.g. a false-colour palette, is reduced to its luminance: noted in `notes`); InputError
    (naming both) when the sizes differ, since nothing is resized."""
    if ir_raw.shape[:2] != vis_raw.shape[:2]:
        (ih, iw), (vh, vw) = ir_raw.shape[:2], vis_raw.shape[:2]
        raise InputError(
            f"{ir_name} is {iw}x{ih} but {vis_name} is {vw}x{vh} (width x height); "
            "a pair must be registered at one size, nothing is resized"
        )
    depth = max(bit_depth(ir_raw), bit_depth(vis_raw))
    if notes is not None and not is_gray(ir_raw):
        notes.append((NOTE_COLOUR_IR, f"{ir_name}: a colour infrared image (a false-colour palette?) is fused "
                      "as its luminance, not as the temperatures the palette stands for"))
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


# ------------------------------------------------------------------------------------------------ engine


class FusionEngine:
    """Runs a DIFF-MF model over pairs of files, or over arrays.

    model: a module with ``forward(ir, vis_y)``, both (B, 1, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1], and a
    ``config`` (used to plan memory); device/dtype: where and how to compute (half precision via autocast).
    Three pieces do the work: `planner` (a `MemoryPlanner`: batch and tile per image size), `forward` (a
    `TiledForward`: the network on arrays, tiled, with the out-of-memory fallback) and, per `run`, a
    `FilePipeline` (reader threads, same-size groups, a writer thread).
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
        self.planner = MemoryPlanner(config, self.device, dtype, options.batch_size, options.tile,
                                     options.memory_budget)
        self.forward = TiledForward(self.model, self.device, dtype, options.batch_size, options.tile_overlap,
                                    self.planner.multiple, options.on_tiles)

    def max_pixels(self) -> int:
        """Most input pixels one forward pass may hold (batch × H × W), from the memory budget (measured
        once per `run`)."""
        return self.planner.max_pixels()

    def plan(self, height: int, width: int) -> tuple[int, int | None]:
        """(pairs per forward pass, tile size or None) for images of this size."""
        return self.planner.plan(height, width)

    def tiles_per_image(self, height: int, width: int, tile: int | None = None) -> int:
        """Tiles an H×W image is fused in with `tile` (None: the tile `plan` chooses); 0 = whole."""
        if tile is None:
            tile = self.plan(height, width)[1]
        return self.forward.tiles(height, width, tile)

    def fuse_images(self, ir: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fuse same-size images as a run would: ir, y (B, H, W) float32 in [0, 1] -> (B, H, W), in the
        batches and tiles that `plan` chooses, with the out-of-memory fallback. DiffMFError when the network
        fails."""
        batch, tile = self.plan(*ir.shape[1:])
        return np.concatenate([self.forward.with_fallback(ir[i:i + batch], y[i:i + batch], tile)
                               for i in range(0, ir.shape[0], batch)])

    def fuse_arrays(self, ir: np.ndarray, y: np.ndarray, tile: int | None = None,
                    tile_batch: int | None = None) -> np.ndarray:
        """Fuse a batch of same-size images: ir, y (B, H, W) float32 in [0, 1] -> fused (B, H, W) float32.

        With `tile`, each image is fused in overlapping tile×tile pieces (`tile_batch`, default batch_size,
        tiles per pass) and blended."""
        return self.forward(ir, y, tile, tile_batch)

    def _fuse_with_fallback(self, ir: np.ndarray, y: np.ndarray, tile: int | None,
                            tile_batch: int | None = None) -> np.ndarray:
        return self.forward.with_fallback(ir, y, tile, tile_batch)

    def run(self, pairs: Iterable[Pair], out_dir: Path | None = None) -> Iterator[PairResult]:
        """Fuse every pair; yields one PairResult per pair as each finishes (not in input order)."""
        return FilePipeline(self).run(pairs, out_dir)


def write_fused(out: Path, fused: np.ndarray, crcb: np.ndarray | None, depth: int, durable: bool = True,
                before: Callable[[bytes], None] | None = None) -> None:
    """The write step of a run: the fused luminance (H, W) in [0, 1] with the visible chroma put back (when
    given), at `depth` bits where the format keeps 16 (png, tif) and 8 otherwise, written atomically.
    `before` gets the encoded bytes before they are written (the output record goes first)."""
    depth = depth if out.suffix.lower() in SIXTEEN_BIT_EXTENSIONS else 8
    data = encode_image(out, finish_pair(fused, crcb, depth))
    if before is not None:
        before(data)
    try:
        atomic_write_bytes(out, data, durable=durable)
    except OSError as exc:
        raise InputError(f"{out}: cannot write output ({exc.strerror or exc})") from None


class FilePipeline:
    """One `FusionEngine.run`: pairs of files in, fused files out, reading and writing in threads.

    Pairs whose output exists are skipped before they are read; loaded pairs wait in same-size groups (a
    look-ahead window bounded in pairs and pixels) until a batch is full; the engine fuses them on the calling
    thread; one writer thread encodes and writes. Every failure becomes a failed PairResult.
    """

    def __init__(self, engine: FusionEngine):
        self.engine = engine
        self.options = engine.options

    def run(self, pairs: Iterable[Pair], out_dir: Path | None = None) -> Iterator[PairResult]:
        opts = self.options
        todo: list[tuple[int, Pair, Path, str | None]] = []
        early: list[PairResult] = []
        conflicts: list[tuple[Path, str]] = []
        planned: list[tuple[int, Pair, Path]] = []
        for index, pair in enumerate(pairs):
            try:
                planned.append((index, pair, output_path(pair, out_dir, opts.ext)))
            except DiffMFError as exc:
                early.append(PairResult(index, pair.name, pair.ir, pair.vis, None, "failed", str(exc)))
        seen: dict[Path, Pair] = {}
        for _i, pair, out in planned:  # two pairs, one file: the second would silently replace the first
            first = seen.setdefault(Path(os.path.realpath(out)), pair)
            if first is not pair:
                raise UsageError(f"{out}: the output of both {first.ir} and {pair.ir}; give the pairs outputs of "
                                 "their own")
        # never onto a source, whoever calls (the CLI checks this earlier, with the input folders too)
        check_inputs_untouched([out for _i, _p, out in planned], [f for _i, p, _o in planned for f in (p.ir, p.vis)],
                               out_dir if any(p.out is None for _i, p, _o in planned) else None)
        if self.options.settings is not None:  # outputs with records: one format per pair and folder
            other_formats = find_other_formats([out for _i, pair, out in planned if pair.out is None])
            if other_formats:
                raise UsageError(other_format_message(other_formats))
        for index, pair, out in planned:
            verdict, reason = self._verdict(pair, out)
            if verdict == SKIP:
                early.append(PairResult(index, pair.name, pair.ir, pair.vis, out, "skipped", reason=reason))
            elif verdict == CONFLICT:
                conflicts.append((out, reason or ""))
            else:
                todo.append((index, pair, out, reason))
        if conflicts:
            raise UsageError(conflict_message(conflicts))
        yield from early
        if not todo:
            return
        self.engine.planner.refresh()  # re-read free memory for this run

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
                        batch, _tile = self.engine.plan(*loaded.shape)
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

    def _verdict(self, pair: Pair, out: Path) -> tuple[str, str | None]:
        """What to do with a pair's output: fuse (with why, when it exists), skip (why) or conflict (why)."""
        if self.options.overwrite:
            return "fuse", ("replaced an existing output, --overwrite" if out.exists() else None)
        if self.options.settings is None:
            return (SKIP, "output exists") if out.exists() else ("fuse", None)
        return check_output(out, self.options.settings, pair.ir, pair.vis)

    def _load(self, index: int, pair: Pair, out: Path, reason: str | None = None) -> _Loaded | PairResult:
        start = time.perf_counter()
        try:
            notes: list[tuple[str, str]] = []
            ir, y, crcb, depth = load_pair(pair, keep_colour=not self.options.gray, notes=notes)
            digests = (file_sha256(pair.ir), file_sha256(pair.vis)) if self.options.settings else ("", "")
        except OSError as exc:
            return PairResult(index, pair.name, pair.ir, pair.vis, out, "failed",
                              f"{exc.filename or pair.ir}: cannot read file ({exc.strerror or exc})",
                              ms=(time.perf_counter() - start) * 1e3)
        except DiffMFError as exc:
            return PairResult(index, pair.name, pair.ir, pair.vis, out, "failed", str(exc),
                              ms=(time.perf_counter() - start) * 1e3)
        except Exception as exc:  # an unexpected decoder failure must not stop the other pairs
            return PairResult(index, pair.name, pair.ir, pair.vis, out, "failed",
                              f"{pair.ir}: {one_line(exc)}", ms=(time.perf_counter() - start) * 1e3)
        return _Loaded(index, pair, out, ir, y, crcb, depth, (time.perf_counter() - start) * 1e3, reason, *digests,
                       notes)

    def _compute_largest(self, groups, writes, write_pool) -> int:
        shape = max(groups, key=lambda s: len(groups[s]))
        return self._compute(groups.pop(shape), writes, write_pool)

    def _compute(self, items: list[_Loaded], writes: deque, write_pool: ThreadPoolExecutor) -> int:
        """Fuse same-size items (in batches the plan allows) and queue their writes; returns pixels done."""
        batch, tile = self.engine.plan(*items[0].shape)
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            start = time.perf_counter()
            try:
                fused = self.engine.forward.with_fallback(np.stack([it.ir for it in chunk]),
                                                          np.stack([it.y for it in chunk]), tile)
                error = None
            except DiffMFError as exc:
                fused, error = None, str(exc)
            share = (time.perf_counter() - start) * 1e3 / len(chunk)
            tiles = self.engine.forward.tiles(*chunk[0].shape, tile)
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

    def _write(self, item: _Loaded, fused: np.ndarray, ms: float, tiles: int) -> PairResult:
        start = time.perf_counter()
        pair = item.pair
        settings = self.options.settings
        record = None
        if settings is not None:
            def record(data: bytes) -> None:
                try:
                    replaces = file_sha256(item.out) if item.out.exists() else None
                except OSError as exc:
                    raise InputError(f"{item.out}: cannot read the file this output replaces "
                                     f"({exc.strerror or exc})") from None
                try:
                    write_record(item.out, settings, hashlib.sha256(data).hexdigest(), pair.ir, pair.vis,
                                 item.ir_sha256, item.vis_sha256, self._made(tiles), self.options.durable,
                                 replaces_sha256=replaces)
                except OSError as exc:
                    raise InputError(f"{item.out}: cannot write its record ({exc.strerror or exc})") from None
        notes = list(item.notes)
        if item.depth == 16 and item.out.suffix.lower() not in SIXTEEN_BIT_EXTENSIONS:
            notes.append((NOTE_8BIT, f"{item.out}: 16-bit inputs written with 8 bits ({item.out.suffix[1:]} holds "
                          "no more; --ext png or tif keeps 16)"))
        try:
            write_fused(item.out, fused, item.crcb, item.depth, self.options.durable, before=record)
            status, error = "fused", None
        except DiffMFError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:
            status, error = "failed", f"{item.out}: {one_line(exc)}"
        ms += (time.perf_counter() - start) * 1e3
        return PairResult(item.index, pair.name, pair.ir, pair.vis, item.out, status, error, ms, item.shape, tiles,
                          item.reason if status == "fused" else None, notes)

    def _made(self, tiles: int) -> dict:
        engine = self.engine
        return {"device": str(engine.device), "batch_size": self.options.batch_size, "tiles": tiles}


def _done(result: PairResult) -> Future:
    """An already finished future holding `result` (a failure queued among the pending writes, in order)."""
    fut: Future = Future()
    fut.set_result(result)
    return fut


@dataclass
class Summary:
    """Totals of a run, for the CLI to render."""

    fused: int = 0
    skipped: int = 0
    failed: int = 0
    unmatched: int = 0
    seconds: float = 0.0
    results: list[PairResult] = field(default_factory=list)
    reasons: dict[str, dict[str, int]] = field(default_factory=lambda: {"fused": {}, "skipped": {}})

    def add(self, result: PairResult) -> None:
        self.results.append(result)
        if result.status == "fused":
            self.fused += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if result.reason and result.status in self.reasons:
            counts = self.reasons[result.status]
            counts[result.reason] = counts.get(result.reason, 0) + 1

    @property
    def pairs_per_second(self) -> float:
        return self.fused / self.seconds if self.seconds > 0 else 0.0


__all__ = [
    "FilePipeline",
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
    "write_fused",
]
