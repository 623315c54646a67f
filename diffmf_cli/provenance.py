"""What code produced a result: the diffmf version and, in a git checkout, the commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def git_commit(short: bool = False) -> str | None:
    """The checkout's commit (abbreviated with `short`), with ``+dirty`` when tracked files are modified;
    None outside a git checkout or without git."""
    if not (_REPO / ".git").exists():  # an installed package: never report an enclosing repository's commit
        return None
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", *(["--short"] if short else []), "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def code_version() -> dict:
    """``{"diffmf_version": ..., "git_commit": ...}`` (the commit only when known)."""
    from diffmf_cli import __version__

    info = {"diffmf_version": __version__}
    commit = git_commit()
    if commit:
        info["git_commit"] = commit
    return info
