"""The `stepvar` command: parses options, calls the library, prints. No model logic lives here.

Exit codes: 0 success; 1 an unexpected internal error; 2 bad input or configuration
(one line on stderr); 3 a check that ran but failed (inspect: no match; bench: a failed
configuration).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stepvar import __version__
from stepvar.errors import StepvarError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Faster next-scale (VAR) image generation by training-free token pruning, measured honestly.")
out = Console()
err = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT, EXIT_CHECK_FAILED = 2, 3

# ---- shared options (declared once, reused by every command) ---------------------------
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model preset (see `stepvar models`).", envvar="STEPVAR_MODEL")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Local transformer weights (.pth, .safetensors or a sharded directory); for toy, another export directory of it.")]
VaeOpt = Annotated[Optional[Path], typer.Option(help="Local VAE weights (.pth with a 'vae' key).")]
TextEncOpt = Annotated[Optional[Path], typer.Option("--text-encoder", help="Local flan-t5-xl directory (needs stepvar\\[t5]).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.", envvar="STEPVAR_DEVICE")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")]
ResOpt = Annotated[Optional[int], typer.Option("--resolution", "-r", help="256, 512, 768, 1024 or 2048 (default: the model's own).")]
AspectOpt = Annotated[Optional[str], typer.Option(help="Aspect ratio W:H (e.g. 1:1, 4:3) or h/w; snapped to the nearest template.")]
SizeOpt = Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT in pixels, snapped to the nearest schedule.")]
SeedOpt = Annotated[int, typer.Option(help="Sampler seed.")]
CfgOpt = Annotated[Optional[str], typer.Option(help="CFG scale, or one per scale as a comma list. 1 disables CFG. [default: the model preset's, else 3]")]
TauOpt = Annotated[Optional[str], typer.Option(help="Sampling temperature, or one per scale as a comma list. [default: the model preset's, else 0.5]")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Top-p on each bit. [default: the model preset's, else 0.97]")]
MethodOpt = Annotated[str, typer.Option(help="Pruning method (see `stepvar methods`).")]
KeepOpt = Annotated[Optional[float], typer.Option(help="Keep ratio of the pruned scales, in (0, 1]; default: the method preset's.")]
KeepTableOpt = Annotated[Optional[str], typer.Option("--keep-per-scale", help="Per-scale keep ratios, e.g. 9:0.6,10:0.5.")]
FirstScaleOpt = Annotated[Optional[int], typer.Option("--first-scale", help="Prune this scale index and all later ones.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record on stdout (for scripts).")]


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
        fail("interrupted", 130)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"stepvar {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """stepvar: generate, compare and benchmark pruned next-scale generation."""


def _pruner(method: str, keep: float | None, keep_table: str | None, first_scale: int | None):
    from stepvar.options import parse_keep_table
    from stepvar.pruning.registry import make_pruner

    table = parse_keep_table(keep_table)
    if table is not None and keep is not None:
        raise StepvarError("give either --keep or --keep-per-scale, not both")
    overrides = {}
    if table is not None:
        overrides["scales"] = sorted(table)
    if first_scale is not None:
        overrides["first_scale"] = first_scale
    return make_pruner(method, keep=table if table is not None else keep, **overrides)


def sampling_options(model: str | None, cfg: str | None, tau: str | None, top_p: float | None, seed: int | None):
    """SamplingConfig from the command line, falling back to the model preset's sampling defaults."""
    from stepvar.models.config import load_model_preset
    from stepvar.options import parse_float_list
    from stepvar.pipeline import DEFAULT_MODEL
    from stepvar.sampling import SamplingConfig

    return SamplingConfig.for_model(load_model_preset(model or DEFAULT_MODEL).sampling, parse_float_list(cfg, "cfg"),
                                    parse_float_list(tau, "tau"), top_p, seed)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output image (.png or .jpg); a .json sidecar is written beside it.")] = Path("stepvar.png"),
    model: ModelOpt = None, weights: WeightsOpt = None, vae: VaeOpt = None, text_encoder: TextEncOpt = None,
    resolution: ResOpt = None, aspect: AspectOpt = None, size: SizeOpt = None,
    seed: SeedOpt = 0, cfg: CfgOpt = None, tau: TauOpt = None, top_p: TopPOpt = None,
    method: MethodOpt = "dense", keep: KeepOpt = None, keep_per_scale: KeepTableOpt = None, first_scale: FirstScaleOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Generate one image."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stepvar.io import check_output_path, save_image, save_json, IMAGE_SUFFIXES
    from stepvar.options import choose_schedule
    from stepvar.pipeline import load_pipeline
    from stepvar.text import check_prompts

    def body():
        # Everything is checked before any weights load or any compute runs.
        check_prompts([prompt])
        check_output_path(out_path, IMAGE_SUFFIXES)
        sampling = sampling_options(model, cfg, tau, top_p, seed)
        pruner = _pruner(method, keep, keep_per_scale, first_scale)
        pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
        schedule = choose_schedule(resolution, aspect, size, pipe.preset.arch.default_budget, pipe.vae.cfg.token_stride)
        pipe.check_schedule(schedule)
        sampling.validate(len(schedule))
        pruner.validate(schedule, len(pipe.model.blocks))
        if not pipe.trained:
            err.print(f"[yellow]note:[/] model {pipe.preset.name} is {pipe.status}: the image shows the architecture running, not a trained result")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} scales"),
                      TimeElapsedColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
            task = bar.add_task(f"{method} {schedule.pixel_size[1]}x{schedule.pixel_size[0]}", total=len(schedule))
            result = pipe.generate([prompt], schedule, pruner, sampling, on_scale=lambda si, n: bar.update(task, completed=si + 1))
        record = result.record | {"output": str(out_path), "tokens_per_layer": result.sample.counter.total() // max(1, len(pipe.model.blocks))}
        save_image(out_path, result.images[0], {"prompt": prompt, "seed": str(seed), "record": record})
        sidecar = save_json(out_path.with_suffix(".json"), record)
        if as_json:
            print(json.dumps(record | {"sidecar": str(sidecar)}, default=str))
        else:
            t = result.timings
            out.print(f"wrote [bold]{out_path}[/] ({schedule.pixel_size[1]}x{schedule.pixel_size[0]}, {method}, seed {seed}) "
                      f"in {t['total_s']:.2f}s (transformer {t['transformer_s']:.2f}s, decode {t['decode_s']:.2f}s); settings in {sidecar}")

    run_guarded(body)


@app.command()
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


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the model presets and what each needs."""
    from stepvar.models.config import list_model_presets, load_model_preset
    from stepvar.pipeline import DEFAULT_MODEL

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


@app.command()
def methods(as_json: JsonOpt = False) -> None:
    """List the pruning methods (YAML presets in presets/methods)."""
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


@app.command()
def overhead(
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture whose width and depth are used.")] = "infinity-2b",
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="Nominal resolution; the last scale is measured.")] = 1024,
    keep: Annotated[float, typer.Option(help="Keep ratio.")] = 0.4,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 3,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Time StepVAR's selection + propagation against the dense block stack of the same scale."""
    from stepvar.overhead import measure_selection_overhead
    from stepvar.devices import resolve_device
    from stepvar.schedules import RESOLUTIONS

    def body():
        if resolution not in RESOLUTIONS:
            raise StepvarError(f"no schedule for resolution {resolution}; choose one of {', '.join(map(str, RESOLUTIONS))}")
        from stepvar.pruning.base import check_keep
        check_keep(keep)
        r = measure_selection_overhead(model, RESOLUTIONS[resolution], -1, keep, repeats=repeats,
                                       device=str(resolve_device(device)))
        if as_json:
            print(json.dumps(r.to_dict()))
            return
        out.print(f"{model} {r.grid[0]}x{r.grid[1]} scale, width {r.width}, {r.rows} rows, keep {keep}, {r.device}, {r.threads} threads")
        out.print(f"  selection + propagation: {r.selection_s * 1e3:.1f} ms  ({', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in r.selection_parts_s.items())})")
        out.print(f"  one dense block: {r.block_s:.3f} s; block stack ({r.depth} layers): {r.stack_s:.2f} s")
        out.print(f"  overhead: [bold]{100 * r.overhead_fraction:.3f}%[/] of the scale's dense block-stack time")

    run_guarded(body)


# bench and compare live in their own module; registered here, after every shared alias exists.
from stepvar_cli.eval_commands import bench, compare  # noqa: E402

app.command()(bench)
app.command()(compare)


from .train_commands import eval_cmd, train_app  # noqa: E402  (registered after the shared helpers exist)

app.add_typer(train_app, name="train")
app.command("eval")(eval_cmd)


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
