"""The `diffmf` command: one small module per sub-command (parse -> call -> render)."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="diffmf",
    help="Fuse registered multi-modal image pairs with DIFF-MF and measure fusion quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each command module adds itself to `app`; heavy imports (torch) stay inside the commands.
    from diffmf_cli.cli import benchmark, evaluate, fuse, train  # noqa: F401


def main() -> None:
    # OpenMP threads that spin while waiting make torch 4-20x slower whenever the cores are shared (a data
    # pipeline, a second job); sleeping waiters cost little when they are not. Must precede importing torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _register()
    app()
