"""Training data from the toy world: freshly rendered (prompt, image) pairs, never repeated.

The world is procedural, so there is no data set on disk and no epoch: each step draws new
scenes from the run's numpy generator (stepvar.toy.world.make_pair), which makes the data
stream part of the reproducible, resumable state.
"""

from __future__ import annotations

import numpy as np
import torch

from ..toy.world import make_example, make_pair, objects_mask


def sample_pairs(rng: np.random.Generator, n: int, size: int = 256,
                 layout: str = "free") -> tuple[list[str], np.ndarray]:
    """n canonical prompts and their rendered images, uint8 (n, size, size, 3); layout: world.LAYOUTS."""
    prompts, images = [], []
    for _ in range(n):
        prompt, image, _ = make_pair(rng, size, layout)
        prompts.append(prompt)
        images.append(image)
    return prompts, np.stack(images)


def sample_pairs_with_masks(rng: np.random.Generator, n: int, size: int = 256,
                            layout: str = "free") -> tuple[list[str], np.ndarray, np.ndarray]:
    """sample_pairs (the same draws from rng) plus each scene's object mask, bool (n, size, size)."""
    prompts, images, masks = [], [], []
    for _ in range(n):
        prompt, image, _, scene = make_example(rng, size, layout)
        prompts.append(prompt)
        images.append(image)
        masks.append(objects_mask(scene, size))
    return prompts, np.stack(images), np.stack(masks)


def random_crops(images_NHW3: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """One random crop x crop window per image (any offset: translation augmentation); any trailing channels."""
    n, H, W, _ = images_NHW3.shape
    if crop >= H and crop >= W:
        return images_NHW3
    ys = rng.integers(0, H - crop + 1, n)
    xs = rng.integers(0, W - crop + 1, n)
    return np.stack([im[y:y + crop, x:x + crop] for im, y, x in zip(images_NHW3, ys, xs)])


def to_model_images(images_NHW3: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] on device."""
    x = torch.from_numpy(np.ascontiguousarray(images_NHW3)).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
