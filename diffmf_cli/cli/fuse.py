"""`diffmf fuse` (being written)."""

from diffmf_cli.cli.app import app


@app.command("fuse")
def fuse_command() -> None:
    """Not yet available."""
    raise SystemExit("diffmf fuse: not yet available")
