"""The `diffmf` command: one small module per sub-command (parse -> call -> render).

Help is plain text (no rich panels: it reads the same in a terminal, a pipe or a log), and every usage error
(unknown option, bad number, missing argument) is one line on stderr, ``diffmf CMD: error: ...``, exit 2,
like the errors the commands raise themselves.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # newer typer vendors click; older ones depend on it
    from typer import _click as click
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]


class _OneLineErrors(TyperGroup):
    """The command group, with usage errors turned into one line on stderr (exit 2) instead of a panel."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name or "diffmf", complete_var=complete_var,
                                standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `diffmf` or `diffmf CMD` alone: the help
            if not standalone_mode:
                raise
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            if not standalone_mode:
                raise
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "diffmf"
            hint = f" (see {where} --help)" if isinstance(exc, click.exceptions.UsageError) else ""
            message = " ".join(exc.format_message().split()).rstrip(".")
            print(f"{where}: error: {message}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        # The Abort this typer's click raises (an EOFError; Ctrl-C with older typers, where typer.Abort is
        # click.Abort; newer ones turn Ctrl-C into exit 130 themselves).
        except typer.Abort:
            if not standalone_mode:
                raise
            print("diffmf: interrupted", file=sys.stderr)
            sys.exit(130)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="diffmf",
    cls=_OneLineErrors,
    help="Fuse registered multi-modal image pairs with DIFF-MF and measure fusion quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["--help", "-h"], "max_content_width": 100},
)


def _print_version(value: bool) -> None:
    if value:
        from diffmf_cli import __version__

        print(f"diffmf {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Fuse registered multi-modal image pairs with DIFF-MF and measure fusion quality."""


def _register() -> None:
    # Each command module adds itself to `app`; heavy imports (torch) stay inside the commands.
    from diffmf_cli.cli import benchmark, evaluate, fuse, train  # noqa: F401


def main() -> None:
    # OpenMP threads that spin while waiting make torch 4-20x slower whenever the cores are shared (a data
    # pipeline, a second job); sleeping waiters cost little when they are not. Must precede importing torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _register()
    app()
