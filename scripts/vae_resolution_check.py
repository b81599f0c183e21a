"""How well a toy VAE serves each resolution: the evaluator's score and the PSNR of reconstructions of
the multi-scale codes (what a perfect transformer would produce) of ground-truth slot scenes rendered
at 256 and 512 px, and how often a scene's coarse-scale bits agree between its two renders (the
grids both schedules share).

    python scripts/vae_resolution_check.py [--vae stepvar/assets/toy | runs/vae_dec512] \
        [--prompts docs/toy_validation_prompts.txt] [--failures fail.png]

--vae: an export directory or a VAE training run (e.g. a decoder-only fine-tune). The scenes are drawn
from numpy seed 5, one per prompt.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from stepvar.models.bsq_vae import multiscale_encode
from stepvar.schedules import get_schedule
from stepvar.toy.evaluator import evaluate, load_prompts
from stepvar.toy.world import render, sample_scene_for_prompt
from stepvar.training.data import to_model_images
from stepvar.training.train_vae import load_vae_source

SIZES = {256: "0.06M", 512: "0.25M"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def to_uint8(rec: torch.Tensor) -> np.ndarray:
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="stepvar/assets/toy")
    ap.add_argument("--prompts", default="docs/toy_validation_prompts.txt")
    ap.add_argument("--failures", default=None, help="write the first failing 512 px scenes (top) and reconstructions here")
    args = ap.parse_args()
    vae = load_vae_source(args.vae).float().eval()
    prompts = load_prompts(args.prompts)
    rng = np.random.default_rng(5)
    scenes = [sample_scene_for_prompt(p, rng, "slots") for p in prompts]
    bits = {}
    for size, budget in SIZES.items():
        grids = [(s.h, s.w) for s in get_schedule(budget).scales]
        images = np.stack([render(s, size) for s in scenes])
        recs, continuous, scale_bits = [], [], []
        for i in range(0, len(images), 4):
            z = vae.encode(to_model_images(images[i:i + 4], "cpu"))
            codes = multiscale_encode(z, grids)
            recs.append(to_uint8(vae.decode(codes.summed_BdHW)))
            continuous.append(to_uint8(vae.decode(z)))
            scale_bits.append(codes.bits[:7])
        recs = np.concatenate(recs)
        # The decoder on the encoder's unquantized latents: what is lost in the codes, not in the encoder.
        print(f"{size} px: evaluator on decodes of the continuous latents "
              f"{evaluate(list(np.concatenate(continuous)), prompts).overall:.3f}")
        bits[size] = [torch.cat([b[k] for b in scale_bits]) for k in range(7)]
        report = evaluate(list(recs), prompts)
        bad = [i for i, r in enumerate(report.per_image) if not r["overall"]]
        print(f"{size} px: evaluator on reconstructions {report.overall:.3f} ({len(prompts)} scenes), "
              f"PSNR {np.mean([psnr(a, b) for a, b in zip(recs, images)]):.2f} dB; failing: "
              + "; ".join(prompts[i] for i in bad))
        if size == 512 and args.failures and bad:
            from PIL import Image

            Image.fromarray(np.concatenate([np.concatenate([images[i], recs[i]], 0) for i in bad[:6]], 1)).save(args.failures)
    agree = [f"{get_schedule('0.06M').scales[k].h}: {(bits[256][k] == bits[512][k]).float().mean().item():.3f}"
             for k in range(7)]
    print("bit agreement between a scene's 256 and 512 px codes, per shared grid: " + ", ".join(agree))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
