"""Does the toy model bind colours when the first scales are given? (a diagnostic, not a test)

For each relation prompt of a prompt set (default: the held-out set), render a scene that satisfies it, encode it with
the model's own VAE, and generate with the first k scales' bits forced to that scene's
(k = 0: ordinary sampling). If the score jumps once the coarse scales are given, the model's
failure is in choosing the early tokens (where colour and layout are committed); if not, the
later scales do not follow what the early ones say.

    python scripts/binding_diagnostic.py [--k 0,1,2,3] [--seed 0] [--prompts FILE] [--weights DIR]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from stepvar.loading.embedded import embedded_meta
from stepvar.pipeline import load_pipeline
from stepvar.sampling import SamplingConfig
from stepvar.toy.evaluator import load_prompts, score
from stepvar.toy.grammar import parse
from stepvar.toy.world import render, sample_scene_for_prompt
from stepvar.training.data import to_model_images
from stepvar.training.teacher_forcing import multiscale_targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", default="0,1,2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="another export of the toy model (default: the shipped one)")
    ap.add_argument("--prompts", default=None, help="prompt file (default: the held-out set)")
    args = ap.parse_args()
    pipe = load_pipeline("toy", args.weights, device="cpu")
    # Real scenes drawn the way the model's training scenes were (model.json's layout; older exports: free).
    layout = embedded_meta(pipe.preset, args.weights).get("layout", "free")
    prompts = [p for p in load_prompts(args.prompts) if parse(p).form == "relation"]
    rng = np.random.default_rng(args.seed)
    scenes = np.stack([render(sample_scene_for_prompt(parse(p), rng, layout), 256) for p in prompts])
    schedule = pipe.schedule()
    with torch.no_grad():
        z = pipe.vae.encode(to_model_images(scenes, "cpu"))
        bits = multiscale_targets(z, [(s.h, s.w) for s in schedule.scales]).bits
    sampling = SamplingConfig.for_model(pipe.preset.sampling, seed=args.seed)
    for k in (int(x) for x in args.k.split(",")):
        images = pipe.generate(prompts, schedule, sampling=sampling, forced_bits=bits[:k]).images
        verdicts = [score(im, p) for im, p in zip(images, prompts)]
        means = {c: float(np.mean([v[c] for v in verdicts])) for c in ("overall", "two_object", "colors", "position")}
        print(json.dumps({"forced_scales": k, "prompts": len(prompts), **means}), flush=True)


if __name__ == "__main__":
    main()
