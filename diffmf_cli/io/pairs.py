"""Which files make a pair: matching two folders by file stem, CSV pair lists, and stable shards.

Rules (shared by `fuse` and `evaluate`):

* An image file is one whose extension is png, jpg, jpeg, bmp, tif or tiff, in any case. Hidden files
  (leading dot, e.g. a writer's temporary file) are never images.
* Two folders pair by *relative stem*: ``ir/a/00123.png`` pairs with ``vis/a/00123.jpg`` (name ``a/00123``).
  Nothing is paired by sort order.
* Two image files with the same stem in one folder (``x.png`` and ``x.jpg``) are ambiguous: the name is
  reported, never guessed.
* A shard is chosen by a hash of the pair's name, so each pair's shard never depends on which other files
  exist, and the N shards are disjoint and together cover every pair.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from diffmf_cli.errors import UsageError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    """One registered pair.

    `name` is the pair's relative stem in POSIX form (``"a/00123"``); it names the output and the shard.
    `out` is an explicit output path (from a pair list or single-file mode), or None to derive one.
    """

    name: str
    ir: Path
    vis: Path
    out: Path | None = None


@dataclass
class Pairing:
    """The result of matching two folders.

    `pairs` are sorted by name. `unmatched_ir` / `unmatched_vis` are image files without a partner.
    `ambiguous` maps a name to the files that share its stem in one folder (those names are not paired).
    """

    pairs: list[Pair] = field(default_factory=list)
    unmatched_ir: list[Path] = field(default_factory=list)
    unmatched_vis: list[Path] = field(default_factory=list)
    ambiguous: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def unmatched(self) -> list[Path]:
        return sorted(self.unmatched_ir) + sorted(self.unmatched_vis)


def is_image_file(path: Path | str) -> bool:
    """True when the file name has an image extension (any case) and is not hidden."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path | str, recursive: bool = False) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files of `folder` keyed by relative stem (POSIX form).

    Returns ``(by_name, ambiguous)``; a stem that two files share is only in `ambiguous`.
    Hidden sub-folders are not walked. Raises UsageError when `folder` is not a readable directory.
    """
    root = Path(folder)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UsageError(f"{root}: {what}")
    found: dict[str, list[Path]] = {}
    try:
        for path in _walk(root, recursive):
            rel = path.relative_to(root)
            name = str(PurePosixPath(*rel.parent.parts, rel.stem))
            found.setdefault(name, []).append(path)
    except PermissionError as exc:
        raise UsageError(f"{exc.filename or root}: cannot list folder (permission denied)") from exc
    by_name = {n: files[0] for n, files in found.items() if len(files) == 1}
    ambiguous = {n: sorted(files) for n, files in found.items() if len(files) > 1}
    return by_name, ambiguous


def _walk(root: Path, recursive: bool):
    if not recursive:
        for entry in os.scandir(root):
            if entry.is_file() and is_image_file(entry.name):
                yield Path(entry.path)
        return
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if is_image_file(fname):
                yield Path(dirpath) / fname


def _raise(exc: OSError) -> None:
    raise exc


def pair_folders(ir_dir: Path | str, vis_dir: Path | str, recursive: bool = False) -> Pairing:
    """Match the image files of two folders by relative stem (see module doc)."""
    ir_files, ir_amb = list_images(ir_dir, recursive)
    vis_files, vis_amb = list_images(vis_dir, recursive)
    ambiguous: dict[str, list[Path]] = {}
    for name in sorted(set(ir_amb) | set(vis_amb)):
        files = ir_amb.get(name) or ([ir_files[name]] if name in ir_files else [])
        files = files + (vis_amb.get(name) or ([vis_files[name]] if name in vis_files else []))
        ambiguous[name] = files
    pairs = [
        Pair(name, ir_files[name], vis_files[name])
        for name in sorted(set(ir_files) & set(vis_files))
        if name not in ambiguous
    ]
    return Pairing(
        pairs=pairs,
        unmatched_ir=sorted(p for n, p in ir_files.items() if n not in vis_files and n not in ambiguous),
        unmatched_vis=sorted(p for n, p in vis_files.items() if n not in ir_files and n not in ambiguous),
        ambiguous=ambiguous,
    )


def read_pair_list(csv_path: Path | str, stdin: TextIO | None = None) -> list[Pair]:
    """Pairs from a CSV file with rows ``ir,vis[,out]``; ``-`` reads the CSV from `stdin` (default
    ``sys.stdin``), with relative paths taken from the current folder.

    A first row whose first two cells are ``ir,vis`` (any case) is a header. Relative paths are taken
    relative to the CSV file's folder. A pair's name is the stem of its `out` cell when given, else the
    stem of its IR file; two rows with the same name (or the same output) are a UsageError, since their
    outputs would overwrite each other. The files themselves are not checked here.
    """
    if str(csv_path) == "-":
        stream = stdin if stdin is not None else sys.stdin
        try:
            text = stream.read()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"--pairs -: cannot read the pair list from standard input ({_reason(exc)})") from exc
        return parse_pair_list(text.lstrip("\ufeff"), Path("."), "<stdin>")
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: pair list does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read pair list ({_reason(exc)})") from exc
    return parse_pair_list(text, path.parent, str(path))


def parse_pair_list(text: str, base: Path, source: str) -> list[Pair]:
    """Pairs from the text of a pair list (see `read_pair_list`); `base` anchors relative paths and
    `source` names the list in error messages."""
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and len(cells) >= 2 and [c.lower() for c in cells[:2]] == ["ir", "vis"]:
            continue
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise UsageError(f"{source}:{lineno}: expected 'ir,vis' or 'ir,vis,out', got {len(cells)} cells")
        ir, vis = base / cells[0], base / cells[1]
        out = base / cells[2] if len(cells) == 3 and cells[2] else None
        name = str(PurePosixPath(cells[2].replace("\\", "/")).with_suffix("")) if out else ir.stem
        key = str(out.resolve()) if out else name
        if key in seen:
            raise UsageError(f"{source}:{lineno}: same output as line {seen[key]} ({out or name})")
        seen[key] = lineno
        pairs.append(Pair(name, ir, vis, out))
    return pairs


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Parse ``K/N`` (0 <= K < N) into (K, N), or ``auto`` for the shard of this SLURM array task (see
    `slurm_array_shard`); raises UsageError otherwise."""
    if text.strip().lower() == "auto":
        return slurm_array_shard(os.environ if environ is None else environ)
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard: expected K/N with 0 <= K < N (e.g. 0/4) or auto, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard: expected K/N with 0 <= K < N (e.g. 0/4 ... 3/4), got {text!r}")
    return k, n


def slurm_array_shard(environ: Mapping[str, str]) -> tuple[int, int]:
    """(K, N) of a SLURM array task: K = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP
    (step 1 when unset), N = SLURM_ARRAY_TASK_COUNT. UsageError outside an array job, or for an array whose
    task ids are not one evenly stepped range (``--array=1,5,6``), where K would not be 0..N-1."""
    keys = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    missing = [key for key in keys if not environ.get(key, "").strip()]
    if missing:
        raise UsageError(f"--shard auto: not in a SLURM array job ({', '.join(missing)} not set); "
                         "submit with sbatch --array=0-N or give --shard K/N")
    try:
        task, low, count = (int(environ[key]) for key in keys)
        step = int(environ.get("SLURM_ARRAY_TASK_STEP", "").strip() or 1)
    except ValueError:
        raise UsageError("--shard auto: SLURM_ARRAY_TASK_ID/_MIN/_COUNT/_STEP are not whole numbers: "
                         + ", ".join(f"{k}={environ.get(k)!r}" for k in (*keys, "SLURM_ARRAY_TASK_STEP"))) from None
    offset = task - low
    if step < 1 or count < 1 or offset < 0 or offset % step or offset // step >= count:
        raise UsageError(f"--shard auto: array task {task} is not one of {count} evenly stepped tasks from {low} "
                         f"(step {step}); use --array=A-B[:S], or give --shard K/N")
    return offset // step, count


def shard_of(name: str, n: int) -> int:
    """The shard (0..n-1) that pair `name` belongs to; depends only on the name."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def select_shard(pairs: list[Pair], k: int, n: int) -> list[Pair]:
    """The pairs of shard `k` of `n` (order kept)."""
    return [p for p in pairs if shard_of(p.name, n) == k]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


__all__ = [
    "IMAGE_EXTENSIONS",
    "Pair",
    "Pairing",
    "is_image_file",
    "list_images",
    "pair_folders",
    "parse_pair_list",
    "parse_shard",
    "read_pair_list",
    "select_shard",
    "shard_of",
    "slurm_array_shard",
]
