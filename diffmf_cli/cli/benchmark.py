"""`diffmf benchmark` (being written)."""

from diffmf_cli.cli.app import app


@app.command("benchmark")
def benchmark_command() -> None:
    """Not yet available."""
    raise SystemExit("diffmf benchmark: not yet available")
