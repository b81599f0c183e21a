"""What every command shares at run time: the consoles, exit codes and the one-line error rule."""

from __future__ import annotations

import typer

from stepvar.errors import StepvarError

from .safe_print import LogConsole, print_error
from .validators import check_parsed_options

out = LogConsole()
err = LogConsole(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print_error(err, message)
    raise typer.Exit(code)


def run_guarded(fn):
    """Run a command body after checking its options; a StepvarError becomes one line on stderr and
    exit 2, and so does an OS error on a named file (a full disk, a read-only or missing place)."""
    try:
        check_parsed_options()
        return fn()
    except StepvarError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except OSError as exc:
        if exc.filename is None:
            raise
        fail(f"{exc.filename}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
