"""How the CLI meets bad input: one escaped line on stderr, exit 2, before any work.

- `OneLineErrors`: the root command class; Click's usage errors (unknown option, a value that
  is not an integer, a missing option) become one line instead of Typer's boxed panel.
- `check_parsed_options`: every command's parsed values go through stepvar.validate's one rule
  table before its body runs.
- `--model-file` / `--method-file`: a preset given as a file is its own option; `--model` and
  `--method` only ever take names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

try:  # recent Typer vendors its own Click: its exceptions and context stack are not `click`'s
    from typer._click import exceptions as click_errors
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - Typer versions that use the installed Click
    from click import exceptions as click_errors
    from click.globals import get_current_context
from typer.core import TyperGroup

from stepvar.validate import check_options

from .safe_print import print_error

# Presets given as files, on purpose: names (--model, --method) are only ever names.
ModelFileOpt = Annotated[Optional[Path], typer.Option("--model-file", help="A model preset YAML file (instead of --model NAME).")]
MethodFileOpt = Annotated[Optional[Path], typer.Option("--method-file", help="A method preset YAML file (instead of --method NAME).")]


def check_parsed_options() -> None:
    """Validate the running command's parsed options (stepvar.validate's rules); raises ConfigError."""
    ctx = get_current_context(silent=True)
    if ctx is not None:
        check_options(ctx.params)


def preset_from_options(model: str | None, model_file: Path | None):
    """--model NAME or --model-file PATH (a ModelPreset), never both."""
    if model_file is None:
        return model
    from stepvar.errors import ConfigError
    from stepvar.models.config import load_model_preset_file

    if model is not None:
        raise ConfigError("give either --model or --model-file, not both")
    return load_model_preset_file(model_file)


class OneLineErrors(TyperGroup):
    """The root group: usage errors are printed as one line (exit 2), not as a box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D401
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:  # `stepvar` alone: the help, as Typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            from .console import err  # the app's stderr console (tests capture it)

            hint = ""
            ctx = getattr(exc, "ctx", None)
            if ctx is not None and isinstance(exc, click_errors.UsageError):
                hint = f" (see '{ctx.command_path} --help')"
            print_error(err, exc.format_message().rstrip(".").replace("\n", " ") + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)
