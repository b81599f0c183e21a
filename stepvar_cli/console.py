"""What every command shares at run time: the consoles, exit codes and the one-line error rule."""

from __future__ import annotations

import typer
from rich.console import Console

from stepvar.errors import StepvarError

out = Console()
err = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(fn):
    """Run a command body; a StepvarError becomes one line on stderr and exit 2."""
    try:
        return fn()
    except StepvarError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
