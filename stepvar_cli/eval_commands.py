"""`stepvar bench` and `stepvar compare`: option parsing and printing around stepvar.bench / stepvar.compare.

Registered on the app at the bottom of stepvar_cli/app.py. The shared option aliases are
imported from app.py at the END of this module: annotations are strings here (resolved by
Typer when the CLI is built), so either module can be imported first without a cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

ResListOpt = Annotated[Optional[str], typer.Option(
    "--resolution", "-r", help="256, 512, 768, 1024, 2048, or a comma list (e.g. 256,512,1024); default: the model's own.")]
MethodsOpt = Annotated[str, typer.Option(
    help="Comma list of methods (see `stepvar methods`); name@KEEP pins a keep, name:key=value sets options. "
         "dense is always run: speedups are against it.")]
KeepListOpt = Annotated[Optional[str], typer.Option(
    "--keep", help="Keep ratio(s), comma list, for methods whose preset has a keep (stepvar and ablations); "
                   "fastvar/fastvar-skip run at their release ratios unless written fastvar@0.4.")]
PromptOpt = Annotated[str, typer.Option("--prompt", "-p", help="Prompt used for every run.")]


def _resolutions(text: str | None, default_budget: str) -> list[int]:
    from stepvar.errors import ConfigError
    from stepvar.options import parse_int_list
    from stepvar.schedules import RESOLUTIONS

    if text is None:
        return [next(r for r, b in RESOLUTIONS.items() if b == default_budget)]
    values = parse_int_list(text, "resolution") or []
    bad = [v for v in values if v not in RESOLUTIONS]
    if not values or bad:
        raise ConfigError(f"--resolution must be one or more of {', '.join(map(str, RESOLUTIONS))}, got {text!r}")
    return list(dict.fromkeys(values))


def _keeps(text: str | None) -> list[float] | None:
    from stepvar.options import parse_float_list
    from stepvar.pruning.base import check_keep

    value = parse_float_list(text, "keep")
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return [check_keep(v, "--keep") for v in values]


def _sampling(model: str | None, cfg: str | None, tau: str | None, top_p: float | None, seed: int):
    return cli.sampling_options(model, cfg, tau, top_p, seed)


def _note_untrained(pipe) -> None:
    if not pipe.trained:
        cli.err.print(f"[yellow]note:[/] model {pipe.preset.name} is {pipe.status}: timings and FLOPs are real, "
                      "fidelity numbers describe random weights")


def _table(head: list[str], cells: list[list[str]], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(head):  # configuration names are what a reader scans for: never cut them
        if name == "config":
            table.add_column(name, no_wrap=True, min_width=max((len(r[i]) for r in cells), default=6))
        else:
            table.add_column(name)
    for row in cells:
        failed = any(c in ("FAILED", "INTERRUPTED") for c in row)
        table.add_row(*row, style="red" if failed else None)
    return table


def bench(
    resolution: ResListOpt = None, aspect: cli.AspectOpt = None,
    methods: MethodsOpt = "dense,stepvar,fastvar,fastvar-skip", keep: KeepListOpt = None,
    batch: Annotated[int, typer.Option(help="Prompts per generation (one larger batch is worth a second run).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs per configuration (median and IQR).")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs per configuration.")] = 2,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt used for every run (default: the model preset's example prompt).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for report.json/.csv/.md and plots (created).")] = None,
    flops_only: Annotated[bool, typer.Option("--flops-only", help="Analytic FLOPs only: nothing runs, no weights needed (any model on any machine).")] = False,
    model: cli.ModelOpt = None, weights: cli.WeightsOpt = None, vae: cli.VaeOpt = None, text_encoder: cli.TextEncOpt = None,
    seed: cli.SeedOpt = 0, cfg: cli.CfgOpt = None, tau: cli.TauOpt = None, top_p: cli.TopPOpt = None,
    device: cli.DeviceOpt = "auto", dtype: cli.DtypeOpt = "auto", as_json: cli.JsonOpt = False,
) -> None:
    """Time, memory and FLOPs of every method x keep, interleaved in one process. Exit 3 if a configuration failed."""
    from stepvar.bench import prepare_out_dir, run_bench, write_bench_outputs
    from stepvar.report_md import bench_compact_rows

    def body():
        keeps = _keeps(keep)
        methods_list = _split(methods)
        from stepvar.hart_pipeline import is_hart_model

        if is_hart_model(model):
            from stepvar_cli import hart_commands

            return hart_commands.bench(model, resolution, methods_list, keeps, flops_only, repeats, prompt, weights,
                                       text_encoder, seed, device, as_json, cli.out, cli.err)
        sampling = _sampling(model, cfg, tau, top_p, seed)
        from stepvar.models.config import load_model_preset
        from stepvar.pipeline import DEFAULT_MODEL

        text = prompt if prompt is not None else load_model_preset(model or DEFAULT_MODEL).example_prompt
        if flops_only:
            report = _flops_only(model, resolution, methods_list, keeps, batch, text, aspect, sampling)
            if out_dir is not None:
                write_bench_outputs(report, prepare_out_dir(out_dir), final=True)
        else:
            from stepvar.bench import expand_configs
            from stepvar.pipeline import load_pipeline

            # Everything that can be checked without weights is checked before they load.
            res = _resolutions(resolution, load_model_preset(model or DEFAULT_MODEL).arch.default_budget)
            expand_configs(methods_list, keeps)
            if out_dir is not None:
                prepare_out_dir(out_dir)
            pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
            _note_untrained(pipe)
            try:
                report = run_bench(pipe, res, methods_list, keeps, batch, repeats, warmup, [text], seed,
                                   out_dir=out_dir, aspect=aspect or "1:1", sampling=sampling,
                                   on_progress=lambda msg: cli.err.print(msg, highlight=False))
            except KeyboardInterrupt:
                where = f"; finished rows are in {out_dir / 'report.json'}" if out_dir is not None else ""
                cli.fail(f"interrupted{where}", 130)
        _print_report(report.to_dict(), as_json, bench_compact_rows, _bench_title(report), out_dir)
        if report.failures:
            cli.err.print(f"[red]{len(report.failures)} configuration(s) failed[/]: "
                          + "; ".join(f"{r['label']} at {r['resolution']}: {r['status']}" for r in report.failures),
                          highlight=False)
            raise typer.Exit(cli.EXIT_CHECK_FAILED)

    cli.run_guarded(body)


def _bench_title(report) -> str:
    env = report.environment
    if not env.get("device"):
        return f"stepvar bench --flops-only: {env.get('model')} (analytic FLOPs per image; bound = dense / method)"
    s = report.settings
    return (f"stepvar bench: {env['model']}, {env['device']} ({env['device_name']}, {env['threads']} threads, "
            f"{env['dtype']}), batch {s['batch']}, median of {s['repeats']} runs after {s['warmup']} warm-up. "
            "speedup: end to end vs dense; loop×: transformer loop only; bound / loop bnd: FLOP bounds; "
            f"MiB: peak memory ({_memory_kind(report.rows)})")


def _memory_kind(rows: list[dict]) -> str:
    from stepvar.report_md import MEMORY_KINDS

    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    return "; ".join(MEMORY_KINDS.get(k, k) for k in kinds) or "not measured"


def _split(methods: str) -> list[str]:
    from stepvar.pruning.registry import split_method_list

    return split_method_list(methods)


def _flops_only(model, resolution, methods_list, keeps, batch, prompt, aspect, sampling):
    from stepvar.bench import plan_bench
    from stepvar.models.config import load_model_preset
    from stepvar.pipeline import DEFAULT_MODEL

    preset = load_model_preset(model or DEFAULT_MODEL)
    res = _resolutions(resolution, preset.arch.default_budget)
    return plan_bench(preset.name, res, methods_list, keeps, batch, [prompt], aspect or "1:1", sampling)


def _print_report(data: dict, as_json: bool, table_rows, title: str, out_dir: Path | None) -> None:
    if as_json:
        print(json.dumps(data, default=str))
        return
    cli.out.print(_table(*table_rows(data["results"]), title=title))
    if out_dir is not None:
        cli.out.print(f"wrote {out_dir}/report.json, report.csv, report.md and plots", highlight=False)


def compare(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for images, grid.png, report.json, report.md (created).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="One prompt.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="A text file, one prompt per line (# comments and blank lines skipped).")] = None,
    methods: MethodsOpt = "dense,stepvar,fastvar,fastvar-skip", keep: KeepListOpt = None,
    resolution: cli.ResOpt = None, aspect: cli.AspectOpt = None, size: cli.SizeOpt = None,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs of every method before the compared runs.")] = 1,
    model: cli.ModelOpt = None, weights: cli.WeightsOpt = None, vae: cli.VaeOpt = None, text_encoder: cli.TextEncOpt = None,
    seed: cli.SeedOpt = 0, cfg: cli.CfgOpt = None, tau: cli.TauOpt = None, top_p: cli.TopPOpt = None,
    device: cli.DeviceOpt = "auto", dtype: cli.DtypeOpt = "auto", as_json: cli.JsonOpt = False,
) -> None:
    """Run every method with the same seed; images, a labelled grid and fidelity to dense (PSNR, SSIM, tokens, latent)."""
    from stepvar.bench import prepare_out_dir
    from stepvar.compare import run_compare
    from stepvar.options import choose_schedule
    from stepvar.pipeline import load_pipeline
    from stepvar.report_md import compare_compact_rows, paired_table_rows, summary_table_rows

    def body():
        prompts = _read_prompts(prompt, prompts_file)
        keeps = _keeps(keep)
        methods_list = _split(methods)
        sampling = _sampling(model, cfg, tau, top_p, seed)
        if warmup < 0:
            cli.fail(f"--warmup must be >= 0, got {warmup}")
        prepare_out_dir(out_dir)
        pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
        schedule = choose_schedule(resolution, aspect, size, pipe.preset.arch.default_budget, pipe.vae.cfg.token_stride)
        _note_untrained(pipe)
        try:
            report = run_compare(pipe, prompts, methods_list, keeps, seed, schedule, out_dir, sampling, warmup,
                                 on_progress=lambda msg: cli.err.print(msg, highlight=False))
        except KeyboardInterrupt:
            cli.fail(f"interrupted; finished prompts are in {out_dir / 'report.json'}", 130)
        data = report.to_dict()
        if as_json:
            print(json.dumps(data, default=str))
        else:
            cli.out.print(_table(*compare_compact_rows(data["results"]),
                                 title=f"stepvar compare: fidelity to dense, seed {seed}, {schedule.describe()}"))
            if len(prompts) > 1:
                cli.out.print(_table(*summary_table_rows(data["summary"]), title=f"mean ± std over {len(prompts)} prompts"))
                if data["paired"]:
                    cli.out.print(_table(*paired_table_rows(data["paired"]),
                                         title="paired over the same prompts: A − B ± standard error"))
            cli.out.print(f"wrote {out_dir}/grid.png, report.json, report.md and one PNG per image", highlight=False)
        if report.failures:
            raise typer.Exit(cli.EXIT_CHECK_FAILED)

    cli.run_guarded(body)


def _read_prompts(prompt: str | None, path: Path | None) -> list[str]:
    from stepvar.errors import StepvarError
    from stepvar.text import check_prompts

    if (prompt is None) == (path is None):
        raise StepvarError("give exactly one of --prompt TEXT and --prompts FILE")
    if prompt is not None:
        return check_prompts([prompt])
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StepvarError(f"cannot read --prompts {path}: {exc.strerror}") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise StepvarError(f"--prompts {path} holds no prompt")
    return check_prompts(prompts)


# At the end on purpose (see the module docstring): the annotations above name these aliases.
import stepvar_cli.app as cli  # noqa: E402
