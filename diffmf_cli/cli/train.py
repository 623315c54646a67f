"""`diffmf train` (being written)."""

from diffmf_cli.cli.app import app


@app.command("train")
def train_command() -> None:
    """Not yet available."""
    raise SystemExit("diffmf train: not yet available")
