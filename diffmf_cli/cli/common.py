"""What the four commands share: their two consoles, the error wrapper that turns typed errors into one line
and an exit code, and the progress bar."""

from __future__ import annotations

from typing import Callable, NoReturn

import typer
from rich.console import Console

from diffmf_cli.errors import DiffMFError


def consoles() -> tuple[Console, Console]:
    """(stderr console for progress, warnings and errors; stdout console for results)."""
    return Console(stderr=True, highlight=False, soft_wrap=True), Console(highlight=False, soft_wrap=True)


def run_command(name: str, err: Console, body: Callable[[], int], interrupted: str | None = None) -> NoReturn:
    """Run a command's body and exit with the code it returns. A DiffMFError becomes ``diffmf NAME: error:
    MESSAGE`` on stderr and its exit code; with `interrupted`, Ctrl-C becomes ``diffmf NAME: interrupted;
    INTERRUPTED`` and exit code 130."""
    try:
        code = body()
    except DiffMFError as exc:
        err.print(f"diffmf {name}: error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        err.print(f"diffmf {name}: interrupted; {interrupted}", markup=False)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def progress_bar(console: Console, label: str = "{task.description}", stats: str | None = None):
    """A transient Rich progress bar on `console`: label, bar, done/total, (a `stats` text column, a Rich
    template such as ``"{task.fields[stats]}"``), time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if stats is not None:
        columns.append(TextColumn(stats))
    return Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
