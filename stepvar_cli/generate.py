"""`stepvar generate`: one image from a prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from stepvar.errors import StepvarError

from .console import err, out, run_guarded
from .safe_print import note, plain
from .validators import MethodFileOpt, ModelFileOpt, preset_from_options
from .options import (AspectOpt, CfgDropOpt, CfgOpt, DeviceOpt, DtypeOpt, FirstScaleOpt, JsonOpt, KeepOpt, KeepTableOpt, MethodOpt,
                      ModelOpt, NumericsOpt, ResOpt, SeedOpt, SizeOpt, SkipLastOpt, TauOpt, TextEncOpt, TopPOpt, VaeOpt, WeightsOpt, make_method,
                      sampling_options)


FramesOpt = Annotated[Optional[int], typer.Option("--frames", help="Video models: pixel frames, 16 per second + 1 (17, 33, ..., 81, 161).")]
DurationOpt = Annotated[Optional[int], typer.Option("--duration", help="Video models: whole seconds (instead of --frames). [default: 5]")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", help="A prompt set: a text file (one prompt a line) or GenEval's evaluation_metadata.jsonl; --out is then a directory in GenEval's layout. Under torchrun the set is shared over the ranks; a rerun makes only what is missing.")]
SamplesOpt = Annotated[Optional[int], typer.Option("--samples", help="With --prompts: images per prompt. [default: 1]")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="With --prompts: images generated together (each is the image it would be alone). [default: 1]")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="none; text-encoder (moved off the device once the prompts are encoded); model (blocks streamed to the device one at a time).")]


def generate(
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text prompt.")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output image (.png or .jpg) or, for a video model, .mp4 (plus a poster PNG); a .json sidecar is written beside it; with --prompts, a directory. [default: stepvar.png / stepvar.mp4]")] = None,
    model: ModelOpt = None, weights: WeightsOpt = None, vae: VaeOpt = None, text_encoder: TextEncOpt = None,
    resolution: ResOpt = None, aspect: AspectOpt = None, size: SizeOpt = None,
    seed: SeedOpt = 0, cfg: CfgOpt = None, tau: TauOpt = None, top_p: TopPOpt = None,
    method: MethodOpt = None, keep: KeepOpt = None, keep_per_scale: KeepTableOpt = None, first_scale: FirstScaleOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", numerics: NumericsOpt = "exact", as_json: JsonOpt = False,
    model_file: ModelFileOpt = None, method_file: MethodFileOpt = None,
    frames: FramesOpt = None, duration: DurationOpt = None,
    cfg_drop_from: CfgDropOpt = None, skip_last: SkipLastOpt = None,
    prompts: PromptsOpt = None, samples: SamplesOpt = None, batch_size: BatchSizeOpt = None, offload: OffloadOpt = "none",
) -> None:
    """Generate one image, a prompt set (--prompts), or a video with an InfinityStar model."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stepvar.models.infinitystar import is_star_preset

    if prompts is not None:
        return _generate_set(prompt, prompts, out_path, samples, batch_size, offload, model, weights, vae, text_encoder,
                             resolution, aspect, size, seed, cfg, tau, top_p, method, keep, keep_per_scale, first_scale,
                             device, dtype, numerics, as_json, model_file, method_file, frames, duration, cfg_drop_from,
                             skip_last)
    if prompt is None or samples is not None or batch_size is not None or (offload != "none" and is_star_preset(model)):
        return run_guarded(lambda: _refuse_usage(prompt, samples, batch_size, offload, model))
    if is_star_preset(model):
        return _generate_video(prompt, out_path or Path("stepvar.mp4"), model, weights, vae, text_encoder, resolution,
                               seed, cfg, tau, (method, keep, keep_per_scale, first_scale, method_file, cfg_drop_from,
                                                skip_last), device, as_json, frames, duration)
    out_path = out_path or Path("stepvar.png")

    from stepvar.errors import ConfigError
    from stepvar.io import check_image_outputs, save_image_with_sidecar
    from stepvar.models.blocks import NUMERICS
    from stepvar.offload import check_offload
    from stepvar.pipeline import load_pipeline
    from stepvar.text import check_prompts

    def body():
        from stepvar.hart_pipeline import is_hart_model

        if is_hart_model(model):
            if offload != "none":
                raise StepvarError(f"--offload is for the Infinity family; {model} does not take it")
            return _generate_hart(prompt, out_path, model, weights, vae, text_encoder, resolution, aspect, size, seed, cfg,
                                  tau, top_p, make_method(method, keep, keep_per_scale, first_scale, None, cfg_drop_from,
                                                          skip_last), device, as_json)
        # Everything is checked before any weights load or any compute runs.
        if frames is not None or duration is not None:
            raise StepvarError(f"--frames / --duration are for video models (infinitystar-*); "
                               f"{model or 'the default model'} makes images")
        check_prompts([prompt])
        check_offload(offload)
        check_image_outputs(out_path)  # the image and its .json sidecar: neither is written unless both can be
        if numerics not in NUMERICS:
            raise ConfigError(f"--numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        chosen = preset_from_options(model, model_file)
        sampling = sampling_options(chosen, cfg, tau, top_p, seed)
        pruner = make_method(method, keep, keep_per_scale, first_scale, method_file, cfg_drop_from, skip_last)
        pipe = load_pipeline(chosen, weights, vae, text_encoder, device, dtype, numerics=numerics, offload=offload)
        pipe.check_prompts([prompt])
        schedule = pipe.schedule(aspect=aspect, resolution=resolution, size=size)
        pipe.check_schedule(schedule)
        sampling.validate(len(schedule))
        for line in pruner.validate(schedule, len(pipe.model.blocks)):
            err.print(note(line))
        if not pipe.trained:
            err.print(note(f"model {pipe.preset.name} is {pipe.status}: the image shows the architecture running, not a trained result"))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} scales"),
                      TimeElapsedColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
            task = bar.add_task(f"{pruner.name} {schedule.pixel_size[1]}x{schedule.pixel_size[0]}", total=len(schedule))
            result = pipe.generate([prompt], schedule, pruner, sampling, on_scale=lambda si, n: bar.update(task, completed=si + 1))
        record = result.record | {"output": str(out_path), "tokens_per_layer": result.sample.counter.total() // max(1, len(pipe.model.blocks))}
        _, sidecar = save_image_with_sidecar(out_path, result.images[0], {"prompt": prompt, "seed": str(seed), "record": record}, record)
        if as_json:
            print(json.dumps(record | {"sidecar": str(sidecar)}, default=str))
        else:
            t = result.timings
            out.print(plain(f"wrote {out_path} ({schedule.pixel_size[1]}x{schedule.pixel_size[0]}, {pruner.name}, seed {seed}) "
                            f"in {t['total_s']:.2f}s (transformer {t['transformer_s']:.2f}s, decode {t['decode_s']:.2f}s); "
                            f"settings in {sidecar}"))

    run_guarded(body)


def _refuse_usage(prompt, samples, batch_size, offload, model) -> None:
    if prompt is None:
        raise StepvarError("give --prompt TEXT (one image) or --prompts FILE (a prompt set)")
    if samples is not None or batch_size is not None:
        raise StepvarError("--samples and --batch-size go with --prompts FILE")
    raise StepvarError(f"--offload is for the Infinity family; {model} does not take it")


def _generate_set(prompt, prompts_file, out_dir, samples, batch_size, offload, model, weights, vae, text_encoder, resolution,
                  aspect, size, seed, cfg, tau, top_p, method, keep, keep_per_scale, first_scale, device, dtype, numerics,
                  as_json, model_file, method_file, frames, duration, cfg_drop_from=None, skip_last=None) -> None:
    """A prompt set into a directory (stepvar.batch_generate does the work; under torchrun, this rank's share)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from stepvar import distributed
    from stepvar.batch_generate import check_job, run_prompt_set
    from stepvar.errors import ConfigError
    from stepvar.hart_pipeline import is_hart_model
    from stepvar.models.blocks import NUMERICS
    from stepvar.models.infinitystar import is_star_preset
    from stepvar.offload import check_offload
    from stepvar.pipeline import load_pipeline
    from stepvar.prompt_sets import read_prompt_set

    ranks = None

    def body():
        nonlocal ranks
        # Everything is checked before any rank starts, any weights load or anything is written.
        if prompt is not None:
            raise StepvarError("give either --prompt TEXT or --prompts FILE, not both")
        if out_dir is None:
            raise StepvarError("--prompts needs --out DIR (the output directory)")
        if is_star_preset(model) or is_hart_model(model):
            raise StepvarError(f"--prompts is for the Infinity family; {model} makes one output per call")
        if frames is not None or duration is not None:
            raise StepvarError("--frames / --duration are for video models (infinitystar-*)")
        if numerics not in NUMERICS:
            raise ConfigError(f"--numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        chosen_offload = check_offload(offload)
        entries = read_prompt_set(prompts_file)
        job = check_job(prompts_file, entries, out_dir, 1 if samples is None else samples,
                        1 if batch_size is None else batch_size, seed)
        chosen = preset_from_options(model, model_file)
        sampling = sampling_options(chosen, cfg, tau, top_p, seed)
        pruner = make_method(method, keep, keep_per_scale, first_scale, method_file, cfg_drop_from, skip_last)
        ranks = distributed.from_environment(device)
        pipe = load_pipeline(chosen, weights, vae, text_encoder, ranks.device(device), dtype, numerics=numerics,
                             offload=chosen_offload)
        pipe.check_prompts([e.prompt for e in entries])
        schedule = pipe.schedule(aspect=aspect, resolution=resolution, size=size)
        pipe.check_schedule(schedule)
        sampling.validate(len(schedule))
        plan_notes = pruner.validate(schedule, len(pipe.model.blocks))
        talk = ranks.is_main and not as_json
        for line in plan_notes if talk else []:
            err.print(note(line))
        if not pipe.trained and talk:
            err.print(note(f"model {pipe.preset.name} is {pipe.status}: the images show the architecture running, not a trained result"))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True,
                      disable=not talk or not err.is_terminal) as bar:
            where = f"rank 0 of {ranks.world}: " if ranks.world > 1 else ""
            task = bar.add_task(f"{where}{pruner.name} {schedule.pixel_size[1]}x{schedule.pixel_size[0]}", total=None)
            result = run_prompt_set(job, pipe, schedule, pruner, sampling, ranks,
                                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                                    on_note=lambda msg: err.print(note(msg)) if talk else None)
        ranks.close()
        if not ranks.is_main:
            return
        summary = result.summary
        if as_json:
            print(json.dumps({"out": str(out_dir), "manifest": str(out_dir / "manifest.json"), **summary}, default=str))
        else:
            out.print(plain(f"{out_dir}: {summary['complete']}/{summary['images']} images ({summary['generated_this_run']} made now "
                            f"by {ranks.world} rank(s), {summary['skipped_as_complete']} already there) in "
                            f"{summary['seconds_this_run']:.1f}s; settings in {out_dir / 'manifest.json'}"))

    run_guarded(body)


def _generate_hart(prompt, out_path, model, weights, vae, text_encoder, resolution, aspect, size, seed, cfg, tau, top_p,
                   pruner, device, as_json) -> None:
    """HART's branch: one 1024 px image (stepvar.hart_pipeline does the work)."""
    from stepvar.devices import resolve_device
    from stepvar.hart_pipeline import check_hart_options, load_hart_pipeline
    from stepvar.hart_pruning import hart_plan
    from stepvar.io import IMAGE_SUFFIXES, check_output_path, save_image, save_json
    from stepvar.models.hart_presets import hart_preset
    from stepvar.text import check_prompts

    check_prompts([prompt])
    check_output_path(out_path, IMAGE_SUFFIXES)
    guidance = check_hart_options(resolution, aspect, size, tau, top_p, vae, cfg)
    arch = hart_preset(model).model
    hart_plan(pruner, arch.patch_nums, arch.depth)  # a method HART cannot run fails before anything loads
    pipe = load_hart_pipeline(model, weights, text_encoder, str(resolve_device(device)))
    if not pipe.trained:
        err.print(note(f"model {model} is {pipe.status}: the image shows the architecture running, not a trained result"))
    run = pipe.generate([prompt], pruner, pipe.sampling(seed=seed, cfg=guidance))
    record = run.record | {"output": str(out_path)}
    save_image(out_path, run.images[0].numpy(), {"prompt": prompt, "seed": str(seed), "record": json.dumps(record, default=str)})
    sidecar = save_json(out_path.with_suffix(".json"), record)
    if as_json:
        print(json.dumps(record | {"sidecar": str(sidecar)}, default=str))
        return
    t = run.timings
    out.print(plain(f"wrote {out_path} (1024x1024, {pruner.name}, seed {seed}, {run.token_passes} token passes) in "
                    f"{sum(t.values()):.2f}s (scale loop {t['transformer']:.2f}s, diffusion {t['diffusion']:.2f}s, "
                    f"decode {t['decode']:.2f}s); settings in {sidecar}"))


def _generate_video(prompt, out_path, model, weights, vae, text_encoder, resolution, seed, cfg, tau,
                    method_options, device, as_json, frames, duration) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stepvar.devices import resolve_device
    from stepvar.models.infinitystar import star_preset
    from stepvar.text import check_prompts
    from stepvar.video_pipeline import (check_video_output, frames_from_request, load_video_pipeline,
                                        save_video_outputs)
    from stepvar.video_pruning import check_video_method
    from stepvar.video_sampling import StarSampling
    from stepvar.video_schedules import RESOLUTIONS

    def body():
        # Everything is checked before any weights load or any compute runs.
        check_prompts([prompt])
        pruner = make_method(*method_options)
        preset = star_preset(model)
        res = f"{resolution}p" if resolution is not None and f"{resolution}p" in preset.resolutions else (
            str(resolution) if resolution is not None else preset.resolutions[0])
        if res not in preset.resolutions:
            raise StepvarError(f"{model} generates at {', '.join(preset.resolutions)} (--resolution "
                               f"{', '.join(r.rstrip('p') for r in preset.resolutions)}); got {resolution}")
        n_frames = frames_from_request(frames, duration, RESOLUTIONS[res].max_seconds)
        check_video_output(out_path, n_frames)
        pruner = check_video_method(pruner, RESOLUTIONS[res].schedule(n_frames), preset.depth)
        sampling = StarSampling.from_options(cfg, tau, seed)
        pipe = load_video_pipeline(model, weights, vae, text_encoder, res, str(resolve_device(device)), seed)
        schedule = pipe.schedule(n_frames)
        if not pipe.trained:
            err.print(note(f"model {model} is {pipe.status}: the video shows the architecture running, not a trained result"))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} passes"),
                      TimeElapsedColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
            task = bar.add_task(f"{model} {n_frames} frames", total=schedule.block_passes - 1)

            def on_pass(scale, repeat, logits):
                bar.update(task, advance=1, description=f"clip {scale.clip + 1}/{schedule.n_clips} scale {scale.rel + 1}/{schedule.scales_per_clip}")

            result = pipe.generate(prompt, n_frames, sampling, on_pass=on_pass, pruner=pruner)
        result.record["output"] = str(out_path)
        written = save_video_outputs(out_path, result)
        if as_json:
            print(json.dumps(result.record | {k: str(v) for k, v in written.items()}, default=str))
        else:
            t = result.timings
            h, w = result.frames.shape[1:3]
            out.print(plain(f"wrote {out_path} ({result.frames.shape[0]} frames, {w}x{h}, {pruner.name}, seed {seed}, "
                            f"{result.record['token_passes']} token passes) in "
                            f"{sum(t.values()):.1f}s (transformer {t['sample']:.1f}s, decode {t['decode']:.1f}s); "
                            f"settings in {written['sidecar']}"))

    run_guarded(body)
