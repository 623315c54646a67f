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
                           input_dirs: Iterable[Path] = (), apart: bool = False) -> None:
    """UsageError when an output would be written over an input or mixed with them.

    outputs: every output file the run may write; inputs: every input file it reads. out_dir: the output
    folder (when outputs are derived from it); input_dirs: folders given as inputs (IR_DIR, VIS_DIR). The
    output folder may not be an input folder or the folder of an input file, nor be inside or contain a
    given input folder (a later `-r` run would take the outputs for sources). With `apart` (outputs named one
    by one, as in a pair list) no output may be in the folder of an input file either: its other files may be
    sources this run does not read, and `--overwrite` would replace them.
    """
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
    folders_of_inputs = {real.parent: file for real, file in sorted(input_files.items())} if apart else {}
    for output in outputs:
        real = _real(output)
        if real in input_files:
            raise UsageError(f"{output}: is an input file ({input_files[real]}); refusing to write over a "
                             "source (give another output name)")
        if real.parent in folders_of_inputs:
            raise UsageError(f"{output}: is in the folder of the input {folders_of_inputs[real.parent]}; outputs "
                             "would mix with the sources (give outputs a folder of their own)")


def check_outside(path: Path, folders: Iterable[Path], option: str, contain: bool = False) -> None:
    """UsageError when `path` (given as `option PATH`) is one of `folders` or inside one; with `contain` (an
    output folder) also when it contains one. Compared as `check_inputs_untouched` compares."""
    real = _real(path)
    for folder in folders:
        real_dir = _real(folder)
        if _within(real, real_dir):
            raise UsageError(f"{option} {path}: is inside the input folder {folder}; it would replace or mix with "
                             "the images read (give a path outside it)")
        if contain and _within(real_dir, real):
            raise UsageError(f"{option} {path}: contains the input folder {folder}; its files would mix with the "
                             f"images read (give a folder beside it, e.g. {path / 'report'})")


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
