"""`stepvar bench`, `compare` and `overhead`: option parsing and printing around stepvar.eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table


from .console import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, err, fail, out, run_guarded
from .options import (AspectOpt, CfgDropOpt, CfgOpt, DeviceOpt, DtypeOpt, JsonOpt, KeepListOpt, MethodsOpt, ModelOpt,
                      ResListOpt, ResOpt, SeedOpt, SizeOpt, SkipLastOpt, TauOpt, TextEncOpt, TopPOpt, VaeOpt, WeightsOpt,
                      accelerated_methods, sampling_options)
from .safe_print import note, plain


def _resolutions(text: str | None, default_budget: str) -> list[int]:
    from stepvar.options import parse_int_list
    from stepvar.schedules import check_resolutions, resolution_for_budget

    if text is None:
        return [resolution_for_budget(default_budget)]
    return check_resolutions(parse_int_list(text, "resolution") or [])


def _keeps(text: str | None) -> list[float] | None:
    from stepvar.options import parse_float_list
    from stepvar.pruning.base import check_keep

    value = parse_float_list(text, "keep")
    if value is None:
        return None
    values = [check_keep(v, "--keep") for v in (value if isinstance(value, list) else [value])]
    unique = list(dict.fromkeys(values))
    if len(unique) < len(values):
        err.print(note(f"--keep lists a ratio more than once; each is measured once ({unique})"))
    return unique


def _note_untrained(pipe) -> None:
    if not pipe.trained:
        err.print(note(f"model {pipe.preset.name} is {pipe.status}: timings and FLOPs are real, "
                       "fidelity numbers describe random weights"))


def _table(head: list[str], cells: list[list[str]], title: str) -> Table:
    table = Table(title=plain(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(head):  # configuration names are what a reader scans for: never cut them
        if name == "config":
            table.add_column(name, no_wrap=True, min_width=max((len(r[i]) for r in cells), default=6))
        else:
            table.add_column(name)
    for row in cells:
        failed = any(c in ("FAILED", "INTERRUPTED") for c in row)
        table.add_row(*(plain(c) for c in row), style="red" if failed else None)
    return table


def bench(
    resolution: ResListOpt = None, aspect: AspectOpt = None,
    methods: MethodsOpt = "dense,stepvar,fastvar,fastvar-skip", keep: KeepListOpt = None,
    batch: Annotated[int, typer.Option(help="Prompts per generation (one larger batch is worth a second run).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs per configuration (median and IQR).")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs per configuration.")] = 2,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt used for every run (default: the model preset's example prompt).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for report.json/.csv/.md and plots (created).")] = None,
    flops_only: Annotated[bool, typer.Option("--flops-only", help="Analytic FLOPs only: nothing runs, no weights needed (any model on any machine).")] = False,
    model: ModelOpt = None, weights: WeightsOpt = None, vae: VaeOpt = None, text_encoder: TextEncOpt = None,
    seed: SeedOpt = 0, cfg: CfgOpt = None, tau: TauOpt = None, top_p: TopPOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", as_json: JsonOpt = False,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Video models: pixel frames (16 per second + 1). [default: 81, 5 s]")] = None,
    cfg_drop_from: CfgDropOpt = None, skip_last: SkipLastOpt = None,
    decode: Annotated[bool, typer.Option("--decode/--no-decode", help="Time the VAE decode (the same for every method). --no-decode times text + transformer loop only: most of a 1024 px run on a CPU is the decode.")] = True,
) -> None:
    """Time, memory and FLOPs of every method x keep, interleaved in one process. Exit 3 if a configuration failed."""
    from stepvar.eval.bench import run_bench, save_bench_report
    from stepvar.eval.runs import check_out_dir
    from stepvar.eval.report_md import bench_compact_rows

    def body():
        keeps = _keeps(keep)
        methods_list = accelerated_methods(_split(methods), cfg_drop_from, skip_last)
        from stepvar.hart_pipeline import is_hart_model
        from stepvar.models.infinitystar import is_star_preset

        if not decode and (flops_only or is_star_preset(model) or is_hart_model(model)):
            fail("--no-decode is for timed image benches (infinity and toy models); --flops-only already reports "
                 "the transformer loop's bound apart" if flops_only else
                 f"--no-decode is for infinity and toy models; {model} times its own phases")
        if is_star_preset(model):
            return _bench_video(model, resolution, methods_list, keeps, flops_only, repeats, warmup, prompt, seed, cfg,
                                tau, frames, device, as_json, out_dir)
        if frames is not None:
            fail(f"--frames is for video models (infinitystar-*); {model or 'the default model'} makes images")
        if is_hart_model(model):
            return _bench_hart(model, resolution, aspect, methods_list, keeps, flops_only, repeats, prompt, weights, vae,
                               text_encoder, seed, cfg, tau, top_p, device, as_json)
        sampling = sampling_options(model, cfg, tau, top_p, seed)
        from stepvar.models.config import load_model_preset

        text = prompt if prompt is not None else load_model_preset(model).example_prompt
        if flops_only:
            report = _flops_only(model, resolution, methods_list, keeps, batch, text, aspect, sampling)
            for line in report.notes:
                err.print(note(line))
            if out_dir is not None:
                save_bench_report(report, out_dir, on_note=lambda m: err.print(f"note: {m}", highlight=False))
        else:
            from stepvar.eval.runs import expand_configs
            from stepvar.pipeline import load_pipeline

            # Everything that can be checked without weights is checked before they load.
            res = _resolutions(resolution, load_model_preset(model).arch.default_budget)
            expand_configs(methods_list, keeps)
            if out_dir is not None:
                check_out_dir(out_dir)
            pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
            _note_untrained(pipe)
            try:
                report = run_bench(pipe, res, methods_list, keeps, batch, repeats, warmup, [text], seed,
                                   out_dir=out_dir, aspect=aspect or "1:1", sampling=sampling,
                                   on_progress=lambda msg: err.print(plain(msg), highlight=False), decode=decode)
            except KeyboardInterrupt:
                where = f"; finished rows are in {out_dir / 'report.json'}" if out_dir is not None else ""
                fail(f"interrupted{where}", EXIT_INTERRUPTED)
        _print_report(report.to_dict(), as_json, bench_compact_rows, _bench_title(report), out_dir)
        if report.failures:
            err.print(plain(f"{len(report.failures)} configuration(s) failed: "
                            + "; ".join(f"{r['label']} at {r['resolution']}: {r['status']}" for r in report.failures),
                            style="red"), highlight=False)
            raise typer.Exit(EXIT_CHECK_FAILED)

    run_guarded(body)


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
    from stepvar.eval.report_md import MEMORY_KINDS

    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    return "; ".join(MEMORY_KINDS.get(k, k) for k in kinds) or "not measured"


def _split(methods: str) -> list[str]:
    from stepvar.pruning.registry import split_method_list

    return split_method_list(methods)


def _flops_only(model, resolution, methods_list, keeps, batch, prompt, aspect, sampling):
    from stepvar.eval.bench import plan_bench
    from stepvar.models.config import load_model_preset

    preset = load_model_preset(model)
    res = _resolutions(resolution, preset.arch.default_budget)
    return plan_bench(preset.name, res, methods_list, keeps, batch, [prompt], aspect or "1:1", sampling)


def _print_report(data: dict, as_json: bool, table_rows, title: str, out_dir: Path | None) -> None:
    if as_json:
        print(json.dumps(data, default=str))
        return
    out.print(_table(*table_rows(data["results"]), title=title))
    if out_dir is not None:
        out.print(plain(f"wrote {out_dir}/report.json, report.csv, report.md and plots"), highlight=False)


def compare(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for images, grid.png, report.json, report.md (created).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="One prompt.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="A text file, one prompt per line (# comments and blank lines skipped).")] = None,
    methods: MethodsOpt = "dense,stepvar,fastvar,fastvar-skip", keep: KeepListOpt = None,
    resolution: ResOpt = None, aspect: AspectOpt = None, size: SizeOpt = None,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs of every method before the compared runs.")] = 1,
    model: ModelOpt = None, weights: WeightsOpt = None, vae: VaeOpt = None, text_encoder: TextEncOpt = None,
    seed: SeedOpt = 0, cfg: CfgOpt = None, tau: TauOpt = None, top_p: TopPOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", as_json: JsonOpt = False,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Video models: pixel frames (16 per second + 1). [default: 81, 5 s]")] = None,
    cfg_drop_from: CfgDropOpt = None, skip_last: SkipLastOpt = None,
) -> None:
    """Run every method with the same seed; images, a labelled grid and fidelity to dense (PSNR, SSIM, tokens, latent).
    With a video model: per-frame PSNR / SSIM, temporal consistency, KV-cache bytes, FLOPs and a side-by-side MP4."""
    from stepvar.eval.compare import run_compare
    from stepvar.eval.runs import check_out_dir
    from stepvar.pipeline import load_pipeline
    from stepvar.eval.report_md import compare_compact_rows, paired_table_rows, summary_table_rows

    def body():
        from stepvar.models.infinitystar import is_star_preset

        prompts = _read_prompts(prompt, prompts_file)
        keeps = _keeps(keep)
        methods_list = accelerated_methods(_split(methods), cfg_drop_from, skip_last)
        if is_star_preset(model):
            return _compare_video(model, prompts, methods_list, keeps, resolution, frames, seed, cfg, tau, device,
                                  as_json, out_dir)
        if frames is not None:
            fail(f"--frames is for video models (infinitystar-*); {model or 'the default model'} makes images")
        sampling = sampling_options(model, cfg, tau, top_p, seed)
        if warmup < 0:
            fail(f"--warmup must be >= 0, got {warmup}")
        check_out_dir(out_dir)
        pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
        schedule = pipe.schedule(aspect=aspect, resolution=resolution, size=size)
        _note_untrained(pipe)
        try:
            report = run_compare(pipe, prompts, methods_list, keeps, seed, schedule, out_dir, sampling, warmup,
                                 on_progress=lambda msg: err.print(plain(msg), highlight=False))
        except KeyboardInterrupt:
            fail(f"interrupted; finished prompts are in {out_dir / 'report.json'}", EXIT_INTERRUPTED)
        data = report.to_dict()
        if as_json:
            print(json.dumps(data, default=str))
        else:
            out.print(_table(*compare_compact_rows(data["results"]),
                                 title=f"stepvar compare: fidelity to dense, seed {seed}, {schedule.describe()}"))
            if len(prompts) > 1:
                out.print(_table(*summary_table_rows(data["summary"]), title=f"mean ± std over {len(prompts)} prompts"))
                if data["paired"]:
                    out.print(_table(*paired_table_rows(data["paired"]),
                                         title="paired over the same prompts: A − B ± standard error"))
            out.print(plain(f"wrote {out_dir}/grid.png, report.json, report.md and one PNG per image"), highlight=False)
        if report.failures:
            raise typer.Exit(EXIT_CHECK_FAILED)

    run_guarded(body)


def _read_prompts(prompt: str | None, path: Path | None) -> list[str]:
    from stepvar.errors import StepvarError
    from stepvar.text import check_prompts

    if (prompt is None) == (path is None):
        raise StepvarError("give exactly one of --prompt TEXT and --prompts FILE")
    if prompt is not None:
        return check_prompts([prompt])
    from stepvar.user_files import read_lines

    return check_prompts([line for _, line in read_lines(path, "--prompts")])


def overhead(
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture whose width and depth are used.")] = "infinity-2b",
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="Nominal resolution; the last scale is measured.")] = 1024,
    keep: Annotated[float, typer.Option(help="Keep ratio.")] = 0.4,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 3,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Time StepVAR's selection + propagation against the dense block stack of the same scale."""
    from stepvar.devices import resolve_device
    from stepvar.errors import StepvarError
    from stepvar.eval.overhead import measure_selection_overhead
    from stepvar.models.config import load_model_preset
    from stepvar.pruning.plan import check_keep
    from stepvar.schedules import RESOLUTIONS

    def body():
        if resolution not in RESOLUTIONS:
            raise StepvarError(f"no schedule for resolution {resolution}; choose one of {', '.join(map(str, RESOLUTIONS))}")
        check_keep(keep)
        load_model_preset(model)  # an unknown name (or a path) is refused before anything is built
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


def _bench_hart(model, resolution, aspect, methods, keeps, flops_only, repeats, prompt, weights, vae, text_encoder, seed,
                cfg, tau, top_p, device, as_json) -> None:
    """HART's branch: FLOP bounds per method and, unless --flops-only, interleaved timings (stepvar.eval.hart_bench)."""
    from stepvar.eval.hart_bench import flop_rows, measure
    from stepvar.hart_pipeline import check_hart_options

    guidance = check_hart_options(resolution, aspect, None, tau, top_p, vae, cfg)
    rows = flop_rows(model, methods, keeps)
    data = {"model": model, "resolution": 1024, "keep": keeps, "flops": [r.to_dict() for r in rows]}
    timing = []
    if not flops_only:
        from stepvar.devices import resolve_device
        from stepvar.hart_pipeline import load_hart_pipeline

        pipe = load_hart_pipeline(model, weights, text_encoder, str(resolve_device(device)))
        if not pipe.trained:
            err.print(note(f"model {model} is {pipe.status}: timings are real, images are not"))
        text = pipe.text_encoder.encode([prompt or "a red apple"], pipe.device)
        timing = measure(pipe.model, pipe.tokenizer, text, methods, keeps, repeats, pipe.sampling(seed=seed, cfg=guidance))
        data["timings"] = [t.to_dict() for t in timing]
    if as_json:
        print(json.dumps(data, default=str))
        return
    table = Table(title=f"{model} 1024x1024, FLOPs per image (CFG)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("method", "TFLOP", "transformer TFLOP", "bound", "bound (transformer)", "published"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.method, f"{r.total / 1e12:.2f}", f"{r.transformer / 1e12:.2f}", f"{r.bound_total:.2f}x",
                      f"{r.bound_transformer:.2f}x", r.published)
    out.print(table)
    if timing:
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        t2 = Table(title=f"measured, {repeats} interleaved run(s) each", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("method", "median s", "CPU s", "scale loop s", "token passes", "speedup", "speedup (scale loop)",
                    "speedup (CPU time)"):
            t2.add_column(col)
        for t in timing:
            t2.add_row(t.method, f"{med(t.seconds):.2f}", f"{med(t.cpu_seconds):.2f}", f"{med(t.transformer_s):.2f}",
                       str(t.token_passes), f"{t.speedup:.2f}x", f"{t.speedup_transformer:.2f}x", f"{t.speedup_cpu:.2f}x")
        out.print(t2)


def _bench_video(model, resolution, methods, keeps, flops_only, repeats, warmup, prompt, seed, cfg, tau, frames, device,
                 as_json, out_dir) -> None:
    """InfinityStar's branch: FLOP bounds per method and, unless --flops-only, interleaved timings of the
    sampling loop (stepvar.eval.video_bench)."""
    from stepvar.eval.video_bench import flop_rows, measure
    from stepvar.models.infinitystar import star_preset
    from stepvar.video_pipeline import frames_from_request
    from stepvar.video_sampling import StarSampling
    from stepvar.video_schedules import RESOLUTIONS

    preset = star_preset(model)
    res = (resolution or preset.resolutions[0]).strip()
    res = res if res in preset.resolutions else f"{res}p"
    if res not in preset.resolutions:
        fail(f"{model} runs at {', '.join(preset.resolutions)}; got --resolution {resolution}")
    if repeats < 1 or warmup < 0:
        fail(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if out_dir is not None:
        fail("--out is for image models; a video bench prints its table (use --json to keep it)")
    n_frames = frames_from_request(frames, None, RESOLUTIONS[res].max_seconds)
    sampling = StarSampling.from_options(cfg, tau, seed)
    rows = flop_rows(model, res, n_frames, methods, keeps)
    data = {"model": model, "resolution": res, "frames": n_frames, "keep": keeps, "flops": [r.to_dict() for r in rows],
            "flops_note": "transformer, one guidance row, about 100 text tokens; selection cost not counted"}
    timing = []
    if not flops_only:
        from stepvar.devices import resolve_device
        from stepvar.video_pipeline import load_video_pipeline

        pipe = load_video_pipeline(model, None, None, None, res, str(resolve_device(device)), seed)
        if not pipe.trained:
            err.print(note(f"model {model} is {pipe.status}: timings and FLOPs are real, the videos are not"))
        text = pipe.encode_prompt(prompt or "a red car", (n_frames - 1) // 16)
        timing = measure(pipe.model, pipe.schedule(n_frames), text, methods, keeps, repeats, sampling, warmup)
        data["timings"] = [t.to_dict() for t in timing]
    if as_json:
        print(json.dumps(data, default=str))
        return
    table = Table(title=f"{model} {res}, {n_frames} frames: transformer TFLOP per video (one guidance row)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("method", "TFLOP", "bound", "pruned scales", "published"):
        table.add_column(col)
    for r in rows:
        table.add_row(plain(r.method), f"{r.pflop * 1e3:,.4g}", f"{r.bound:.2f}x", plain(str(r.pruned_scales)),
                      plain(r.published))
    out.print(table)
    if timing:
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        t2 = Table(title=f"measured sampling loop, {repeats} interleaved run(s) each after {warmup} warm-up",
                   title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("method", "median s", "CPU s", "token passes", "speedup", "speedup (CPU time)"):
            t2.add_column(col)
        for t in timing:
            t2.add_row(plain(t.method), f"{med(t.seconds):.2f}", f"{med(t.cpu_seconds):.2f}", str(t.token_passes),
                       f"{t.speedup:.2f}x", f"{t.speedup_cpu:.2f}x")
        out.print(t2)


def _compare_video(model, prompts, methods, keeps, resolution, frames, seed, cfg, tau, device, as_json, out_dir) -> None:
    """InfinityStar's branch of compare (stepvar.eval.video_compare)."""
    from stepvar.devices import resolve_device
    from stepvar.eval.runs import check_out_dir
    from stepvar.eval.video_compare import run_video_compare
    from stepvar.models.infinitystar import star_preset
    from stepvar.video_pipeline import frames_from_request, load_video_pipeline
    from stepvar.video_pruning import check_video_method
    from stepvar.video_sampling import StarSampling
    from stepvar.video_schedules import RESOLUTIONS
    from stepvar.eval.runs import expand_configs

    if len(prompts) != 1:
        fail(f"a video compare takes one prompt, got {len(prompts)}")
    preset = star_preset(model)
    res = str(resolution) if resolution is not None else preset.resolutions[0]
    res = res if res in preset.resolutions else f"{res}p"
    if res not in preset.resolutions:
        fail(f"{model} runs at {', '.join(preset.resolutions)}; got --resolution {resolution}")
    n_frames = frames_from_request(frames, None, RESOLUTIONS[res].max_seconds)
    sampling = StarSampling.from_options(cfg, tau, seed)
    schedule = RESOLUTIONS[res].schedule(n_frames)
    for c in expand_configs(methods, keeps):  # every method is checked on this schedule before anything loads
        check_video_method(c.pruner(), schedule, preset.depth)
    check_out_dir(out_dir)
    pipe = load_video_pipeline(model, None, None, None, res, str(resolve_device(device)), seed)
    if not pipe.trained:
        err.print(note(f"model {model} is {pipe.status}: the figures compare random-weight videos"))
    try:
        report = run_video_compare(pipe, prompts[0], n_frames, methods, keeps, sampling, out_dir,
                                   on_progress=lambda msg: err.print(plain(msg), highlight=False))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    data = report.to_dict()
    if as_json:
        print(json.dumps(data, default=str))
        return
    head = ["config", "PSNR dB", "SSIM", "temporal", "KV MB", "TFLOP", "bound", "token passes", "s"]
    cells = [[r["method"], "identical" if r["identical"] else f"{r['psnr_mean']:.2f}", f"{r['ssim_mean']:.4f}",
              "-" if r["temporal_agreement"] is None else f"{r['temporal_agreement']:.4f}",
              f"{r['peak_kv_bytes'] / 2**20:.1f}", f"{r['transformer_flops'] / 1e12:.3f}", f"{r['flops_bound']:.2f}x",
              str(r["token_passes"]), f"{r['seconds']:.1f}"] for r in data["results"]]
    out.print(_table(head, cells, f"stepvar compare: {model} ({pipe.status}), {n_frames} frames, seed {seed}; "
                                  "mean per-frame fidelity to dense"))
    out.print(plain(f"wrote {out_dir}/side_by_side.mp4, report.json and one MP4 per method"), highlight=False)
