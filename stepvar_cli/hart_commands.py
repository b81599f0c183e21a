"""The HART branch of `generate`, `inspect` and `bench`: option checks and printing around stepvar.hart_*.

The commands hand over here when --model names a HART preset (hart-0.7b, hart-tiny). HART
runs one schedule (1024 px, 14 scales) and samples with top-k and ramped CFG, so options that
select other schedules or Infinity's sampler are refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.table import Table

from stepvar.errors import ConfigError


def _check_schedule(resolution, aspect=None, size=None) -> None:
    if isinstance(resolution, str):
        resolution = None if resolution.strip() == "1024" else resolution
    if resolution not in (None, 1024):
        raise ConfigError(f"HART runs at 1024 px only (its 14-scale schedule); got --resolution {resolution}")
    if aspect not in (None, "1:1") or size is not None:
        raise ConfigError("HART has one square schedule: --aspect and --size do not apply")


def _cfg(cfg: str | None) -> float | None:
    if cfg is None:
        return None
    try:
        return float(cfg)
    except ValueError:
        raise ConfigError(f"--cfg for HART is one number (ramped over the scales as released), got {cfg!r}") from None


def _check_sampler(tau, top_p) -> None:
    if tau is not None or top_p is not None:
        raise ConfigError("HART samples with top-k (600, then 300) and a Gumbel soft mix: --tau and --top-p do not apply")


def generate(prompt: str, out_path: Path, model: str, weights, vae, text_encoder, resolution, aspect, size, seed: int,
             cfg, tau, top_p, pruner, device: str, as_json: bool, out, err) -> None:
    from stepvar.devices import resolve_device
    from stepvar.hart_pipeline import load_hart_pipeline
    from stepvar.io import IMAGE_SUFFIXES, check_output_path, save_image, save_json
    from stepvar.text import check_prompts

    check_prompts([prompt])
    check_output_path(out_path, IMAGE_SUFFIXES)
    if vae is not None:
        raise ConfigError("HART's tokenizer is the tokenizer/ folder of --weights: --vae does not apply")
    _check_schedule(resolution, aspect, size)
    _check_sampler(tau, top_p)
    guidance = _cfg(cfg)
    from stepvar.hart_pruning import hart_plan
    from stepvar.models.hart_presets import hart_preset

    p = hart_preset(model)
    hart_plan(pruner, p.model.patch_nums, p.model.depth)  # a method HART cannot run fails before loading
    pipe = load_hart_pipeline(model, weights, text_encoder, str(resolve_device(device)))
    if not pipe.trained:
        err.print(f"[yellow]note:[/] model {model} is {pipe.status}: the image shows the architecture running, not a trained result")
    run = pipe.generate([prompt], pruner, pipe.sampling(seed=seed, cfg=guidance))
    record = run.record | {"output": str(out_path)}
    save_image(out_path, run.images[0].numpy(), {"prompt": prompt, "seed": str(seed), "record": json.dumps(record, default=str)})
    sidecar = save_json(out_path.with_suffix(".json"), record)
    if as_json:
        print(json.dumps(record | {"sidecar": str(sidecar)}, default=str))
    else:
        t = run.timings
        out.print(f"wrote [bold]{out_path}[/] (1024x1024, {pruner.name}, seed {seed}, {run.token_passes} token passes) in "
                  f"{sum(t.values()):.2f}s (transformer {t['transformer']:.2f}s, diffusion {t['diffusion']:.2f}s, "
                  f"decode {t['decode']:.2f}s); settings in {sidecar}")


def inspect(path: Path, model: str, as_json: bool, out) -> bool:
    from stepvar.loading.hart import inspect_hart

    report = inspect_hart(path, model)
    data = report.to_dict()
    if as_json:
        print(json.dumps(data, default=str))
    else:
        table = Table(show_header=False, box=None)
        for key in ("path", "preset", "llm_file", "tokenizer_file", "n_params", "ok"):
            table.add_row(f"[bold]{key}[/]", str(data[key]))
        out.print(table)
        for p in report.problems[:50]:
            out.print(f"  [red]{p}[/]")
        if len(report.problems) > 50:
            out.print(f"  ... and {len(report.problems) - 50} more")
    return report.ok


def bench(model: str, resolution, methods: list[str], keeps: list[float] | None, flops_only: bool, repeats: int,
          prompt: str | None, weights, text_encoder, seed: int, device: str, as_json: bool, out, err) -> None:
    from stepvar.hart_bench import flop_rows, measure

    _check_schedule(resolution)
    rows = flop_rows(model, methods, keeps)
    data = {"model": model, "resolution": 1024, "keep": keeps, "flops": [r.to_dict() for r in rows]}
    if not flops_only:
        from stepvar.devices import resolve_device
        from stepvar.hart_pipeline import load_hart_pipeline

        pipe = load_hart_pipeline(model, weights, text_encoder, str(resolve_device(device)))
        if not pipe.trained:
            err.print(f"[yellow]note:[/] model {model} is {pipe.status}: timings are real, images are not")
        text = pipe.text_encoder.encode([prompt or "a red apple"], pipe.device)
        timing = measure(pipe.model, pipe.tokenizer, text, methods, keeps, repeats, pipe.sampling(seed=seed))
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
    if "timings" in data:
        t2 = Table(title=f"measured, {repeats} interleaved run(s) each", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("method", "median s", "CPU s", "transformer s", "token passes", "speedup", "speedup (transformer)",
                    "speedup (CPU time)"):
            t2.add_column(col)
        for t in timing:
            med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            t2.add_row(t.method, f"{med(t.seconds):.2f}", f"{med(t.cpu_seconds):.2f}", f"{med(t.transformer_s):.2f}",
                       str(t.token_passes), f"{t.speedup:.2f}x", f"{t.speedup_transformer:.2f}x", f"{t.speedup_cpu:.2f}x")
        out.print(t2)
