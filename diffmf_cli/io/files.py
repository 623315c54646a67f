"""Writing files so that they appear complete or not at all.

Every file diffmf writes (fused images, weights, checkpoints, logs, results) goes through `atomic_write`: the
content goes to a hidden temporary file in the same folder (``.NAME.<random>.tmp``), which is then renamed
over the target, so readers and re-runs never see a truncated file. With `durable` the data is fsync'ed
before the rename (a power cut cannot leave an empty file behind the new name).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = True,
                 mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside `path`, then rename it into place (creating the
    folder). The file gets permissions `mode` (mkstemp's are 0600). Any exception (OSError included) removes
    the temporary file and propagates; `path` is then untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)
