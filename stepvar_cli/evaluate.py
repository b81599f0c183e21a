"""`stepvar eval`: GenEval-style scores on the toy world's prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import err, out, run_guarded
from .options import CfgDropOpt, ResOpt, SkipLastOpt, TrainDeviceOpt, make_method, sampling_options
from .safe_print import note, plain
from .validators import MethodFileOpt


def eval_cmd(
    images: Annotated[Optional[Path], typer.Option(help="Score the PNGs in this directory (prompt read from each PNG).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompt file, one per line (default: the held-out set).")] = None,
    samples: Annotated[int, typer.Option(help="Images per prompt (seeds seed, seed+1, ...).")] = 1,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model preset.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Another export of the model (`stepvar train export`), e.g. a continued run.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Pruning method; default: dense, or the recommended preset with --keep.")] = None,
    keep: Annotated[Optional[float], typer.Option(help="Keep ratio of the pruned scales.")] = None,
    seed: Annotated[int, typer.Option(help="First sampler seed.")] = 0,
    cfg: Annotated[Optional[str], typer.Option(help="CFG scale or per-scale list. [default: the model preset's]")] = None,
    tau: Annotated[Optional[str], typer.Option(help="Temperature or per-scale list. [default: the model preset's]")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the images and eval.json here.")] = None,
    resolution: ResOpt = None,
    device: TrainDeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    cfg_drop_from: CfgDropOpt = None, skip_last: SkipLastOpt = None, method_file: MethodFileOpt = None,
) -> None:
    """Score images GenEval-style on the toy world: object, count, colour, position."""
    from stepvar.errors import StepvarError
    from stepvar.eval.evaluate import evaluate_image_dir, evaluate_pipeline
    from stepvar.toy.evaluator import STRAY_BLOB_MIN_AREA, load_prompts
    from stepvar.user_files import make_output_dir

    def body():
        if images is not None:
            report = evaluate_image_dir(images)
            status = settings = None
        else:
            from stepvar.pipeline import load_pipeline

            if samples < 1:
                raise StepvarError(f"--samples must be >= 1, got {samples}")
            prompt_list = load_prompts(prompts)
            pruner = make_method(method, keep, None, None, method_file, cfg_drop_from, skip_last)
            pipe = load_pipeline(model, weights, device=device)
            status = pipe.status
            if not pipe.trained:
                err.print(note(f"{pipe.preset.name} is {pipe.status}; its score says nothing about trained quality"))
            schedule = pipe.schedule(resolution=resolution)
            pipe.check_schedule(schedule)  # before any directory is made
            for line in pruner.validate(schedule, len(pipe.model.blocks)):
                err.print(note(line))
            if out_dir is not None:
                make_output_dir(out_dir)
            sampling = sampling_options(model, cfg, tau, None, seed)
            report, _, settings = evaluate_pipeline(pipe, prompt_list, pruner, sampling, samples, out_dir,
                                                    schedule=schedule)
        data = report.to_dict() | ({"model_status": status} if status else {}) | ({"settings": settings} if settings else {})
        if as_json:
            print(json.dumps(data, default=str))
            return
        for name, value in data.get("categories", {}).items():
            out.print(f"{name:>14}: {value:.3f}")
        if settings:
            pruning, (h, w) = settings["pruning"], settings["schedule"]["pixel_size_hw"]
            kept = f", keep {pruning['keep']}" if pruning.get("keep") is not None else ""
            out.print(plain(f"{'method':>14}: {pruning['method']}{kept}, {h}x{w} px, seeds from {settings['seed']}"))
        out.print(f"{'overall':>14}: [bold]{data['overall']:.3f}[/] over {data['n_images']} images")
        out.print(f"{'stray objects':>14}: {data['stray_share']:.3f} of the images show an object the prompt did not ask for")
        out.print(f"{'stray blobs':>14}: {data['stray_blob_share']:.3f} counting coloured specks down to "
                  f"{STRAY_BLOB_MIN_AREA:.1%} of the image")

    run_guarded(body)
