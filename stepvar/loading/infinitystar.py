"""Building an InfinityStar model: the released weights loaded strictly, or seeded random weights.

The released 8B checkpoints are sharded safetensors with model.safetensors.index.json; they go
through the same reader and strict key/shape check as every other checkpoint (containers.py,
checkpoints.py). The index's total_size is never compared with the tensors' bytes: the official
writer counts shared storages, so the released 8B index says 384 bytes more than its tensors hold.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from ..models.infinitystar import InfinityStar, build_on_meta, init_random_, star_preset
from .checkpoints import LoadReport, load_model_weights


def load_infinitystar(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[InfinityStar, LoadReport | None]:
    """The preset's model on `device`: from `weights` (strict), or random when the preset is untrained."""
    cfg = star_preset(name)
    if weights is None:
        if not cfg.untrained:
            raise ConfigError(f"{name} needs --weights: the directory holding model.safetensors.index.json "
                              f"({cfg.weights_file})")
        with torch.device(device):
            model = init_random_(InfinityStar(cfg), seed)
        return model.to(dtype).eval().requires_grad_(False), None
    model = build_on_meta(cfg)
    report = load_model_weights(model, weights, name)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), report
