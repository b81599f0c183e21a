"""Paired fidelity of a pruned generation to the dense one with the same seed.

PSNR is computed here (one line of numpy); SSIM comes from scikit-image, the maintained
reference implementation (its default uniform 7x7 window, data_range 255, per channel then mean).
Token agreement and latent cosine compare what the sampler produced before decoding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PSNR_IDENTICAL = math.inf  # PSNR of identical images; reports write it as null with identical=true


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")


def psnr(a_HW3: np.ndarray, b_HW3: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (peak 255); inf when identical."""
    _check_pair(a_HW3, b_HW3)
    mse = float(np.mean((a_HW3.astype(np.float64) - b_HW3.astype(np.float64)) ** 2))
    return PSNR_IDENTICAL if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a_HW3: np.ndarray, b_HW3: np.ndarray) -> float:
    """Structural similarity of two uint8 RGB images (skimage.metrics.structural_similarity)."""
    from skimage.metrics import structural_similarity

    _check_pair(a_HW3, b_HW3)
    return float(structural_similarity(a_HW3, b_HW3, channel_axis=-1, data_range=255))


def token_agreement(bits_a: torch.Tensor | None, bits_b: torch.Tensor | None) -> float | None:
    """Fraction of equal bits at one scale, (B, h, w, d) bool each; None if either run skipped it."""
    if bits_a is None or bits_b is None:
        return None
    if bits_a.shape != bits_b.shape:
        raise ValueError(f"bits differ in shape: {tuple(bits_a.shape)} vs {tuple(bits_b.shape)}")
    return float((bits_a == bits_b).float().mean())


def latent_cosine(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Cosine similarity of two final latents (B, d, H, W), per image then averaged."""
    a, b = z_a.float().flatten(1), z_b.float().flatten(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def paired_fidelity(ref, result, pruned_scales: list[int] | None = None) -> dict:
    """Fidelity of `result` to `ref` (two GenerationResults of the same prompts and seed).

    PSNR and SSIM are averaged over the batch images. token_agreement lists every scale
    (None where a run skipped it); token_agreement_pruned averages the pruned scales given.
    """
    images = list(zip(ref.images, result.images))
    psnrs = [psnr(a, b) for a, b in images]
    per_scale = [token_agreement(a, b) for a, b in zip(ref.sample.bits, result.sample.bits)]
    pruned = [per_scale[si] for si in (pruned_scales or []) if per_scale[si] is not None]
    return {
        "psnr_db": float(np.mean(psnrs)) if all(math.isfinite(p) for p in psnrs) else PSNR_IDENTICAL,
        "identical": all(not math.isfinite(p) for p in psnrs),
        "ssim": float(np.mean([ssim(a, b) for a, b in images])),
        "token_agreement": per_scale,
        "token_agreement_pruned": float(np.mean(pruned)) if pruned else None,
        "latent_cosine": latent_cosine(ref.sample.latent_BdHW, result.sample.latent_BdHW),
    }
