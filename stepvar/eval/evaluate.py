"""GenEval-style scoring of a pipeline (or of saved images) on the toy world's prompt set.

The evaluator reads objects by colour segmentation and geometry (stepvar.toy.evaluator), so
pruning quality is measurable without a GPU and without a person judging pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import StepvarError
from ..io import save_image, save_json
from ..pipeline import Pipeline
from ..pruning.base import Pruner
from ..sampling import SamplingConfig
from ..schedules import ScaleSchedule
from ..toy.evaluator import EvalReport, evaluate, load_prompts
from ..toy.grammar import parse


class PipelineEval(NamedTuple):
    report: EvalReport
    images: list[np.ndarray]
    settings: dict  # what the images depend on: model, schedule, sampling, method, seeds


def evaluate_pipeline(pipe: Pipeline, prompts: list[str] | None = None, pruner: Pruner | None = None,
                      sampling: SamplingConfig | None = None, samples: int = 1, out_dir: Path | None = None,
                      on_image=None, schedule: ScaleSchedule | None = None) -> PipelineEval:
    """Generate `samples` images per prompt (seeds seed, seed+1, ...) on `schedule` (default: the
    model's own) and score them; eval.json in `out_dir` carries the settings beside the scores."""
    from ..batch_generate import image_settings
    from ..pruning.registry import make_pruner

    prompts = load_prompts() if prompts is None else prompts
    for p in prompts:
        parse(p)  # every prompt must be in the world's grammar: fail before generating anything
    sampling = sampling or SamplingConfig()
    schedule = schedule or pipe.schedule()
    pipe.check_schedule(schedule)
    sampling.validate(len(schedule))  # bad settings fail here, before the first image
    pruner = make_pruner("dense") if pruner is None else pruner
    pruner.validate(schedule, len(pipe.model.blocks))
    base_seed = 0 if sampling.seed is None else sampling.seed
    settings = image_settings(pipe, schedule, pruner, sampling) | {"seed": base_seed, "samples": samples,
                                                                   "seed_rule": "sample s draws with seed + s"}
    images, used = [], []
    for i, prompt in enumerate(prompts):
        for s in range(samples):
            cfg = SamplingConfig(cfg=sampling.cfg, tau=sampling.tau, top_p=sampling.top_p, seed=base_seed + s)
            img = pipe.generate(prompt, schedule, pruner, cfg).images[0]
            images.append(img)
            used.append(prompt)
            if out_dir is not None:
                save_image(out_dir / f"{i:04d}_{s}.png", img, {"prompt": prompt, "seed": str(base_seed + s)})
            if on_image is not None:
                on_image(len(images), len(prompts) * samples)
    report = evaluate(images, used)
    if out_dir is not None:
        save_json(out_dir / "eval.json", report.to_dict() | {"model": pipe.preset.name, "model_status": pipe.status,
                                                              "settings": settings})
    return PipelineEval(report, images, settings)


def evaluate_image_dir(directory: Path) -> EvalReport:
    """Score saved PNGs whose prompt is in their stepvar text chunk (as `generate` writes them)."""
    from ..user_files import open_image_rgb
    from ..validate import shown

    if not Path(directory).is_dir():
        raise StepvarError(f"--images {shown(directory)}: not a directory")
    files = sorted(Path(directory).glob("*.png"))
    if not files:
        raise StepvarError(f"no PNG images in {shown(directory)}")
    images, prompts = [], []
    for f in files:
        image, text = open_image_rgb(f, "image")
        prompt = text.get("stepvar:prompt")
        if prompt is None:
            raise StepvarError(f"{shown(f)}: no stepvar prompt in its PNG text chunks")
        images.append(image)
        prompts.append(prompt)
    return evaluate(images, prompts)
