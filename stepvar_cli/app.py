"""The `stepvar` command: builds the app from one module per command group, and runs it.

Exit codes: 0 success; 1 an unexpected internal error; 2 bad input or configuration
(one line on stderr); 3 a check that ran but failed (inspect: no match; bench: a failed
configuration); 130 interrupted. Commands parse options, call the library and print;
shared options live in stepvar_cli/options.py, the consoles and the error rule in
stepvar_cli/console.py. No command module imports another.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from stepvar import __version__

from . import benchmark, evaluate, generate, info, train
from .console import err, out

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Faster next-scale (VAR) image generation by training-free token pruning, measured honestly.")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"stepvar {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """stepvar: generate, compare and benchmark pruned next-scale generation."""


app.command()(generate.generate)
app.command()(info.inspect)
app.command()(info.models)
app.command()(info.methods)
app.command()(benchmark.overhead)
app.command()(benchmark.bench)
app.command()(benchmark.compare)
app.add_typer(train.train_app, name="train")
app.command("eval")(evaluate.eval_cmd)


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # an internal bug: still one line, but say it is ours
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                  " (please report; run with STEPVAR_DEBUG=1 for the traceback)", highlight=False)
        import os
        if os.environ.get("STEPVAR_DEBUG"):
            raise
        sys.exit(1)


if __name__ == "__main__":
    main()
