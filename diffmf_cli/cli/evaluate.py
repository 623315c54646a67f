"""`diffmf evaluate` (being written)."""

from diffmf_cli.cli.app import app


@app.command("evaluate")
def evaluate_command() -> None:
    """Not yet available."""
    raise SystemExit("diffmf evaluate: not yet available")
