"""`stepvar inspect`, `models` and `methods`: what a checkpoint holds, which presets and methods exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .console import EXIT_CHECK_FAILED, out, run_guarded
from .options import JsonOpt


def inspect(
    path: Annotated[Path, typer.Argument(help="A checkpoint file or sharded directory.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Check every key against this preset.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint; with --model, list every missing, unexpected or mis-shaped key. Exit 0 only on a match."""
    from stepvar.loading.inspect import inspect_checkpoint

    def body():
        report = inspect_checkpoint(path, model)
        data = report.to_dict()
        if as_json:
            print(json.dumps(data, default=str))
        else:
            _print_inspect(data)
        if not report.ok:
            raise typer.Exit(EXIT_CHECK_FAILED)

    run_guarded(body)


def _print_inspect(data: dict) -> None:
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if key == "problems":
            continue
        table.add_row(f"[bold]{key}[/]", str(value))
    out.print(table)
    problems = data.get("problems") or []
    for p in problems[:50]:
        out.print(f"  [red]{p}[/]" if isinstance(p, str) else f"  [red]{p}[/]")
    if len(problems) > 50:
        out.print(f"  ... and {len(problems) - 50} more")


def models(as_json: JsonOpt = False) -> None:
    """List the model presets and what each needs."""
    from stepvar.models.config import list_model_presets, load_model_preset
    from stepvar.models.config import DEFAULT_MODEL

    def body():
        rows = []
        for name in list_model_presets():
            p = load_model_preset(name)
            rows.append({"name": name, "depth": p.arch.depth, "width": p.arch.width, "heads": p.arch.heads,
                         "resolution_budget": p.arch.default_budget, "vae": p.arch.vae, "text_encoder": p.text_encoder,
                         "needs": p.needs, "weights_file": p.weights_file, "vae_file": p.vae_file,
                         "embedded": p.embedded, "default": name == DEFAULT_MODEL, "description": p.description})
        if as_json:
            print(json.dumps(rows))
            return
        table = Table("preset", "depth x width", "budget", "needs", "description")
        for r in rows:
            needs = ", ".join(r["needs"]) or "nothing (runs out of the box)"
            name = r["name"] + (" (default)" if r["default"] else "")
            table.add_row(name, f"{r['depth']} x {r['width']}", r["resolution_budget"], needs, r["description"])
        out.print(table)

    run_guarded(body)


def methods(as_json: JsonOpt = False) -> None:
    """List the pruning methods: the registered methods and their presets (presets/methods)."""
    from stepvar.pruning.registry import describe_methods

    def body():
        rows = describe_methods()
        if as_json:
            print(json.dumps([{"name": n, "description": d} for n, d in rows]))
            return
        table = Table("method", "description")
        for n, d in rows:
            table.add_row(n, d)
        out.print(table)

    run_guarded(body)
