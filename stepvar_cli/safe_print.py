"""Printing user-controlled text: escaped, never Rich markup; tables at full width in logs.

A prompt, a path or a checkpoint key reaches the terminal through `plain` (or `note`,
`print_error`): control characters are escaped, so an escape sequence in a key name cannot drive
the terminal, and '[/x]' prints as itself instead of crashing Rich's markup parser. `LogConsole`
keeps Rich's terminal width on a terminal and is unbounded when piped or redirected, so a table
in a CI log is never cut to 80 columns.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.text import Text

from stepvar.validate import shown

ERROR_LIMIT = 400  # characters of an error message; echoed user text inside it is already cut
LOG_WIDTH = 100_000  # "as wide as the content" for a console that is not a terminal


class LogConsole(Console):
    """A Console whose width is the terminal's on a terminal and unbounded in a pipe or a file."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)
        if self.is_terminal or self._width is not None:
            return dims
        return ConsoleDimensions(LOG_WIDTH, dims.height)

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


def plain(text: Any, limit: int = 10_000, style: str | None = None) -> Text:
    """A Rich Text of user-controlled text: printed literally, control characters escaped."""
    return Text(shown(text, limit), style=style or "")


def note(text: str) -> Text:
    """'note: ...' in yellow, the rest printed literally."""
    line = Text()
    line.append("note:", style="yellow")
    line.append(" " + shown(text, 2000))
    return line


def print_error(console: Console, message: str, prefix: str = "error:") -> None:
    line = Text()
    line.append(prefix, style="bold red")
    line.append(" " + shown(message.splitlines()[0] if message else "", ERROR_LIMIT))
    console.print(line, highlight=False, soft_wrap=True)


def step_progress(console: Console, total: int | None, label: str, enabled: bool = True):
    """A progress bar on a terminal (steps done, rate, time left), advanced by calling the returned
    function with the number of steps done; a no-op when the console is not a terminal."""
    if not enabled or total is None or not console.is_terminal:
        return lambda done: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import sys

    # Log lines printed to a terminal stdout go above the bar; a redirected stdout stays a plain file.
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=True, redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
    task = bar.add_task(label, total=total)
    bar.start()

    def advance(done: int) -> None:
        bar.update(task, completed=done)
        if done >= total:
            bar.stop()
    return advance
