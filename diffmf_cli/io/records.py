"""Output records: what made each fused image, so a re-run keeps only outputs of its own settings.

Every output ``OUT/name.png`` gets a record ``OUT/.diffmf/name.png.json`` (one small JSON file per output, in a
hidden folder beside it, mirrored sub-folders included). A record holds the settings that decide the pixels
(`OutputSettings`: the weights file's SHA-256, --gray, the precision, the tile setting, the diffmf version),
the SHA-256 of the output's bytes and of both inputs, and, for people, the model name, device, batch size,
host and time.

Writing order makes this crash-safe: the image is encoded, its digest goes into the record (with the digest of
the file it replaces, when one is there), the record is written atomically, and only then is the image written
atomically. After a crash (or `kill -9`) between the two, the record describes an image that is not there, or
the file it was replacing, and the pair is simply redone. Any other bytes were not left by diffmf: someone
changed the output, and the run will not silently replace their work. (A record of an older diffmf names no
replaced file; its pair is redone, as it was then.) One file per output means shards on several machines
writing into one folder never touch the same record (no locks, no shared manifest to corrupt).

A re-run decides per output (`check_output`):

* no output: fuse it;
* a record of these settings whose digests match the output and both inputs: skip ("same settings");
* a record of these settings, but the output is the file an interrupted run was replacing, or an input
  changed since: fuse it again;
* a record of other settings, an output changed since diffmf wrote it, no record at all, or an unreadable
  one: a conflict. The run is refused before anything is fused, naming the difference and the way out
  (--overwrite, or another output folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from diffmf_cli.io.files import atomic_write_text

FORMAT = "diffmf-output/1"
RECORD_DIR = ".diffmf"

#: Verdicts of `check_output`.
FUSE, SKIP, CONFLICT = "fuse", "skip", "conflict"


@dataclass(frozen=True)
class OutputSettings:
    """What decides an output's pixels. `model` (a shipped name or the weights file's path) is for people
    only: two files with the same SHA-256 make the same pixels."""

    weights_sha256: str
    gray: bool
    precision: str
    tile: str  # "auto", "off" or a size in pixels
    diffmf_version: str
    model: str = ""

    def key(self) -> dict:
        """The fields two runs must share for one to keep the other's outputs."""
        data = asdict(self)
        data.pop("model")
        return data

    def describe(self) -> str:
        colour = "--gray" if self.gray else "colour"
        return (f"model {self.model or '?'} (weights {self.weights_sha256[:12]}), {colour}, {self.precision}, "
                f"tile {self.tile}, diffmf {self.diffmf_version}")

    def differences(self, other: "OutputSettings") -> str:
        """The settings that differ, as ``name: theirs -> ours`` parts (self = the record's)."""
        parts = []
        if self.weights_sha256 != other.weights_sha256:
            parts.append(f"weights {self.model or '?'} ({self.weights_sha256[:12]}) -> "
                         f"{other.model or '?'} ({other.weights_sha256[:12]})")
        if self.gray != other.gray:
            parts.append(f"gray {_on(self.gray)} -> {_on(other.gray)}")
        for name in ("precision", "tile", "diffmf_version"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                parts.append(f"{name.replace('_', ' ')} {mine} -> {theirs}")
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: dict) -> "OutputSettings":
        fields = ("weights_sha256", "gray", "precision", "tile", "diffmf_version", "model")
        return cls(**{k: data[k] for k in fields if k in data})


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def settings_for(weights_path: Path, *, gray: bool, precision: str, tile: int | None, model: str = "") -> OutputSettings:
    """The settings record of a run with this weights file and these options (`tile` as `parse_tile` gives
    it: None = auto, 0 = off)."""
    from diffmf_cli import __version__

    tile_text = "auto" if tile is None else ("off" if tile == 0 else str(int(tile)))
    return OutputSettings(weights_sha256=file_sha256(weights_path), gray=bool(gray), precision=precision,
                          tile=tile_text, diffmf_version=__version__, model=model or str(weights_path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(output: Path) -> Path:
    """Where the record of `output` lives: ``<its folder>/.diffmf/<its name>.json``."""
    return output.parent / RECORD_DIR / f"{output.name}.json"


def write_record(output: Path, settings: OutputSettings, output_sha256: str, ir: Path, vis: Path,
                 ir_sha256: str, vis_sha256: str, extra: dict | None = None, durable: bool = True,
                 replaces_sha256: str | None = None) -> None:
    """Write the record of `output` atomically (before the output itself; see the module doc).
    `replaces_sha256`: the digest of the file this output replaces, if one is there (so a run killed before the
    replacement is told apart from an output someone changed)."""
    doc = {
        "format": FORMAT,
        "output": output.name,
        "output_sha256": output_sha256,
        "replaces_sha256": replaces_sha256,
        "settings": asdict(settings),
        "inputs": {"ir": str(ir), "ir_sha256": ir_sha256, "vis": str(vis), "vis_sha256": vis_sha256},
        "made": {"host": socket.gethostname(), "pid": os.getpid(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})},
    }
    atomic_write_text(record_path(output), json.dumps(doc, indent=1, sort_keys=True) + "\n", durable=durable)


def read_record(output: Path) -> dict | None:
    """The record of `output`, or None when there is none; ValueError when it cannot be read or parsed."""
    path = record_path(output)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc})") from None
    try:
        doc = json.loads(text)
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a diffmf output record")
        OutputSettings.from_dict(doc["settings"])
        doc["output_sha256"], doc["inputs"]["ir_sha256"], doc["inputs"]["vis_sha256"]  # noqa: B018
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: damaged record") from None
    return doc


def check_output(output: Path, settings: OutputSettings, ir: Path, vis: Path) -> tuple[str, str | None]:
    """What a run with `settings` does with `output` (see the module doc): (FUSE | SKIP | CONFLICT, reason)."""
    if not output.exists():
        return FUSE, None
    try:
        doc = read_record(output)
    except ValueError as exc:
        return CONFLICT, f"its record is unusable ({exc})"
    if doc is None:
        return CONFLICT, "no record of what made it (another tool, or an older diffmf)"
    theirs = OutputSettings.from_dict(doc["settings"])
    if theirs.key() != settings.key():
        return CONFLICT, f"made with other settings: {theirs.differences(settings)}"
    try:
        digest = file_sha256(output)
        if digest != doc["output_sha256"]:
            if "replaces_sha256" not in doc:  # a record of an older diffmf cannot tell a crash from an edit
                return FUSE, "the output was not the one its record describes (an interrupted run)"
            if digest == doc["replaces_sha256"]:
                return FUSE, "the run that was replacing it was interrupted"
            return CONFLICT, "changed since diffmf wrote it (its bytes are not those its record describes)"
        if (file_sha256(ir) != doc["inputs"]["ir_sha256"] or file_sha256(vis) != doc["inputs"]["vis_sha256"]):
            return FUSE, "an input changed since the last run"
    except OSError:
        return FUSE, None  # an unreadable input fails when the pair is read, with its own message
    return SKIP, "output exists from the same settings"


def other_format_output(output: Path) -> Path | None:
    """This pair's output in another format, written by diffmf into the same folder (a run with another
    --ext): two outputs of one pair make the folder ambiguous for `diffmf evaluate` and for the next run."""
    from diffmf_cli.io.pairs import IMAGE_EXTENSIONS

    for ext in sorted(IMAGE_EXTENSIONS):
        other = output.with_suffix(ext)
        if other.suffix.lower() != output.suffix.lower() and other.exists() and record_path(other).exists():
            return other
    return None


def find_other_formats(outputs: list[Path]) -> list[tuple[Path, Path]]:
    """(output, its pair's output in another format) for each of `outputs` that has one (`other_format_output`)."""
    return [(out, other) for out in outputs if (other := other_format_output(out)) is not None]


def other_format_message(found: list[tuple[Path, Path]]) -> str:
    """One line for outputs whose pair already has an output in another format: (output, other) pairs."""
    out, other = found[0]
    more = f" (and {len(found) - 1} more output(s))" if len(found) > 1 else ""
    return (f"{out}{more}: this pair's output is already there as {other.name}, from a run with --ext "
            f"{other.suffix[1:]}; nothing was fused. Keep one format per folder: give --ext {other.suffix[1:]}, "
            "another output folder, or remove those outputs")


def conflict_message(conflicts: list[tuple[Path, str]]) -> str:
    """One line for outputs that a run may neither keep nor silently replace: (output, reason) pairs."""
    out, reason = conflicts[0]
    more = f" (and {len(conflicts) - 1} more output(s))" if len(conflicts) > 1 else ""
    return (f"{out}{more}: {reason}; nothing was fused. Add --overwrite to replace them with this run's "
            "settings, or give another output folder")


def find_conflicts(planned: list[tuple[Path, Path, Path]], settings: OutputSettings) -> list[tuple[Path, str]]:
    """(output, reason) for each (output, ir, vis) whose existing output this run may not keep."""
    found = []
    for out, ir, vis in planned:
        verdict, reason = check_output(out, settings, ir, vis)
        if verdict == CONFLICT:
            found.append((out, reason or ""))
    return found


__all__ = [
    "conflict_message",
    "other_format_message",
    "other_format_output",
    "find_conflicts",
    "find_other_formats",
    "CONFLICT",
    "FORMAT",
    "FUSE",
    "RECORD_DIR",
    "SKIP",
    "OutputSettings",
    "check_output",
    "file_sha256",
    "read_record",
    "record_path",
    "settings_for",
    "write_record",
]
