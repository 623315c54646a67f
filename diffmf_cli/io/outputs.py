"""Where outputs may go: never onto an input, and into a folder that exists and can be written.

Both checks run before anything is fused, so a bad `-o` costs nothing:

* `check_inputs_untouched`: an output folder equal to, inside, or containing an input folder, or an output file
  that is an input file, is a UsageError, `--overwrite` or not. Paths are compared after resolving symbolic
  links, `..` and the current folder, so `ir`, `./ir` and a link to it are one folder.
* `check_outside`: a result file or report folder of `evaluate` may not lie in a folder it reads (nor, for a
  folder, contain one): it would replace an image or be taken for one by the next run.
* `prepare_output_folders`: each folder that will receive outputs is created, then proven writable by
  creating and removing a hidden probe file (permission bits alone do not tell: read-only mounts, ACLs).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from diffmf_cli.errors import UsageError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_inputs_untouched(outputs: Iterable[Path], inputs: Iterable[Path], out_dir: Path | None = None,
                           input_dirs: Iterable[Path] = ()) -> None:
    """UsageError when an output would be written over an input or mixed with them.

    outputs: every output file the run may write; inputs: every input file it reads. out_dir: the output
    folder (when outputs are derived from it); input_dirs: folders given as inputs (IR_DIR, VIS_DIR). The
    output folder may not be an input folder or the folder of an input file, nor be inside or contain a
    given input folder (a later `-r` run would take the outputs for sources). An output named one by one (a
    pair list, a single pair) may sit beside its inputs, but a file already there that diffmf did not write
    (no record) in or below the folder of an input file may be a source this run does not read: it is never
    replaced, `--overwrite` or not.
    """
    from diffmf_cli.io.records import record_path

    input_files = {_real(p): p for p in inputs}
    if out_dir is not None:
        real_out = _real(out_dir)
        given = {_real(d): d for d in input_dirs}
        folders = dict(given)
        for real_file, file in input_files.items():
            folders.setdefault(real_file.parent, file.parent)
        for real_dir, folder in sorted(folders.items()):
            if real_out == real_dir:
                raise UsageError(f"-o {out_dir}: is the input folder {folder}; outputs would replace or mix "
                                 "with the sources (give another output folder)")
        for real_dir, folder in sorted(given.items()):
            if _within(real_out, real_dir):
                raise UsageError(f"-o {out_dir}: is inside the input folder {folder}; outputs would mix with "
                                 "the sources (give a folder outside it)")
            if _within(real_dir, real_out):
                raise UsageError(f"-o {out_dir}: contains the input folder {folder}; outputs would mix with "
                                 f"the sources (give a folder beside it, e.g. {out_dir / 'fused'})")
    input_folders = {real.parent: file for real, file in sorted(input_files.items())}
    for output in outputs:
        real = _real(output)
        if real in input_files:
            raise UsageError(f"{output}: is an input file ({input_files[real]}); refusing to write over a "
                             "source (give another output name)")
        if output.exists() and not record_path(output).exists():
            beside = next((file for folder, file in input_folders.items() if _within(real.parent, folder)), None)
            if beside is not None:
                raise UsageError(f"{output}: exists without a diffmf record, in the folder of the input {beside}; "
                                 "it may be a source, so it is never replaced, --overwrite or not (give another "
                                 "output name)")


def check_outside(path: Path, folders: Iterable[Path], option: str, contain: bool = False) -> None:
    """UsageError when `path` (given as `option PATH`) is one of `folders` or inside one; with `contain` (an
    output folder) also when it contains one. Compared as `check_inputs_untouched` compares."""
    real = _real(path)
    for folder in folders:
        real_dir = _real(folder)
        if _within(real, real_dir):
            where = "is the input folder" if real == real_dir else "is inside the input folder"
            raise UsageError(f"{option} {path}: {where} {folder}; it would replace or mix with the images read "
                             "(give a path outside the folders read)")
        if contain and _within(real_dir, real):
            raise UsageError(f"{option} {path}: contains the input folder {folder}; its files would mix with the "
                             "images read (give a folder outside the folders read)")


def prepare_output_folders(folders: Iterable[Path]) -> None:
    """Create each folder (with its parents) and prove it writable; UsageError naming the folder otherwise."""
    for folder in sorted(set(folders)):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder}: output folder is a file")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"{folder}: cannot create the output folder (a file is in the way)") from None
        except OSError as exc:
            raise UsageError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
        probe = folder / f".diffmf-write-test.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            probe.open("xb").close()
        except OSError as exc:
            raise UsageError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None
        try:
            probe.unlink()
        except OSError:
            pass


__all__ = ["check_inputs_untouched", "check_outside", "prepare_output_folders"]
