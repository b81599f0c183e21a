"""Regenerate tests/data/regression_images.json, the references test_regression_images.py checks.

Run only when a change is *meant* to alter the images (and say why in the commit):
    python scripts/record_regression.py
Every method runs on the embedded toy model through the public library API, with the
model preset's sampling settings, for each prompt and seed below. The file holds the
SHA-256 of every image's uint8 pixels (bit-identical or not) and each image's mean pixel
value (so a failure shows how far off it is); the images themselves would be ~1 MB.
The hashes hold for one CPU kind and one thread (set here): recorded on the project's
2-core x86-64 VM with torch 2.13.0+cpu; another CPU or torch build may round differently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "regression_images.json"

PROMPTS = ["a red circle above a blue square", "three green squares", "a yellow triangle"]
SEEDS = [0, 1]
# method preset name -> keep (None: the preset's own keep ratios)
METHODS = {"dense": None, "stepvar": 0.4, "fastvar": None, "fastvar-skip": None, "fastvar-release-skip": None,
           "fastvar-pos": None, "fastvar-pos-skip": None, "random": 0.4}


def image_key(method: str, seed: int, prompt: str) -> str:
    return f"{method}|seed={seed}|{prompt}"


def generate_all() -> dict[str, dict]:
    """{image_key: {"sha256": ..., "mean": ...}} for every method, seed and prompt."""
    from stepvar.pipeline import load_pipeline
    from stepvar.pruning.registry import make_pruner
    from stepvar.sampling import SamplingConfig

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums split over threads round differently: pin one
    try:
        return _generate_all(load_pipeline, make_pruner, SamplingConfig)
    finally:
        torch.set_num_threads(threads)


def _generate_all(load_pipeline, make_pruner, SamplingConfig) -> dict[str, dict]:
    pipe = load_pipeline("toy", device="cpu")
    out = {}
    for method, keep in METHODS.items():
        for seed in SEEDS:
            sampling = SamplingConfig.for_model(pipe.preset.sampling, seed=seed)
            result = pipe.generate(PROMPTS, pipe.schedule(), make_pruner(method, keep=keep), sampling)
            for prompt, img in zip(PROMPTS, result.images):
                out[image_key(method, seed, prompt)] = {
                    "sha256": hashlib.sha256(img.tobytes()).hexdigest(),
                    "shape": list(img.shape),
                    "mean": round(float(img.mean()), 4),
                }
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(generate_all(), indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
