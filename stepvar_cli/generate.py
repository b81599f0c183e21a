"""`stepvar generate`: one image from a prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .console import err, out, run_guarded
from .options import (AspectOpt, CfgOpt, DeviceOpt, DtypeOpt, FirstScaleOpt, JsonOpt, KeepOpt, KeepTableOpt, MethodOpt,
                      ModelOpt, ResOpt, SeedOpt, SizeOpt, TauOpt, TextEncOpt, TopPOpt, VaeOpt, WeightsOpt, make_method,
                      sampling_options)


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
    from stepvar.pipeline import load_pipeline
    from stepvar.text import check_prompts

    def body():
        # Everything is checked before any weights load or any compute runs.
        check_prompts([prompt])
        check_output_path(out_path, IMAGE_SUFFIXES)
        sampling = sampling_options(model, cfg, tau, top_p, seed)
        pruner = make_method(method, keep, keep_per_scale, first_scale)
        pipe = load_pipeline(model, weights, vae, text_encoder, device, dtype)
        schedule = pipe.schedule(aspect=aspect, resolution=resolution, size=size)
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
