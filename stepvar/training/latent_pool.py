"""A pool of pre-encoded training scenes: render and VAE-encode once, train many epochs.

Why: on a 2-core CPU the frozen VAE's encoder costs ~43 ms per 256² scene, as much as the
transformer's forward and backward on that scene, so fresh data every step halves the
update rate. A pool of N scenes encoded once (`stepvar train latents`) lets the transformer
train on them for many epochs at twice the rate; the world is procedural, so N is a choice,
not a limit of the data.

The file is safetensors: `z` (N, d, h, w) fp32, the VAE's continuous latents before any
quantisation (the multi-scale targets and self-correction flips are derived per step,
teacher_forcing.multiscale_targets), and in the metadata the prompts, the seed, the image
size and a fingerprint of the encoder, so a pool cannot silently be used with another VAE.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..io import atomic_path
from ..models.bsq_vae import BSQVAE
from .data import sample_pairs, to_model_images

FORMAT = "stepvar-latent-pool/1"


@dataclass
class LatentPool:
    prompts: list[str]
    z: torch.Tensor          # (N, d, h, w) fp32
    seed: int
    image_size: int
    encoder_sha256: str
    layout: str = "free"     # the world's layout the scenes were drawn with (world.LAYOUTS)

    def __len__(self) -> int:
        return len(self.prompts)


def encoder_fingerprint(vae: BSQVAE) -> str:
    """sha256 over the encoder's (and quantiser's) fp32 parameters, in key order."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        if not name.startswith("decoder."):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_pool_settings(n: int, size: int, layout: str) -> None:
    """The pool's settings, checked before a VAE loads or a scene renders."""
    from ..toy.world import check_layout

    if n < 1:
        raise ConfigError(f"a latent pool needs n >= 1 scenes, got {n}")
    if size < 16 or size % 16:
        raise ConfigError(f"--size must be a multiple of 16 pixels (the VAE's stride), got {size}")
    check_layout(layout)


@torch.no_grad()
def build_latent_pool(vae: BSQVAE, n: int, seed: int = 0, size: int = 256, chunk: int = 64,
                      device: torch.device | str = "cpu", layout: str = "free",
                      on_progress: Callable[[int, int], None] | None = None) -> LatentPool:
    """Render n scenes from numpy seed `seed` (the trainers' data stream) and encode them."""
    check_pool_settings(n, size, layout)
    if chunk < 1:
        raise ConfigError("a latent pool needs chunk >= 1")
    vae = vae.eval()
    rng = np.random.default_rng(seed)
    prompts, zs = [], []
    for start in range(0, n, chunk):
        p, images = sample_pairs(rng, min(chunk, n - start), size, layout)
        zs.append(vae.encode(to_model_images(images, device)).float().cpu())
        prompts += p
        if on_progress is not None:
            on_progress(len(prompts), n)
    return LatentPool(prompts, torch.cat(zs), seed, size, encoder_fingerprint(vae), layout)


def merge_latent_pools(pools: list[LatentPool]) -> LatentPool:
    """One pool holding every scene of `pools`, in order; they must share image size, layout and
    encoder (a pool's seed reproduces only its own scenes, so the merged pool records the first's)."""
    if not pools:
        raise ConfigError("merging latent pools needs at least one pool")
    first = pools[0]
    for i, p in enumerate(pools[1:], 2):
        for what, a, b in (("image size", first.image_size, p.image_size), ("layout", first.layout, p.layout),
                           ("encoder", first.encoder_sha256[:12], p.encoder_sha256[:12])):
            if a != b:
                raise ConfigError(f"latent pool {i} has {what} {b}, pool 1 has {a}: only pools of one kind can be merged")
    return LatentPool([q for p in pools for q in p.prompts], torch.cat([p.z for p in pools]), first.seed,
                      first.image_size, first.encoder_sha256, first.layout)


def save_latent_pool(pool: LatentPool, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": FORMAT, "prompts": json.dumps(pool.prompts), "seed": str(pool.seed),
            "image_size": str(pool.image_size), "encoder_sha256": pool.encoder_sha256, "layout": pool.layout}
    with atomic_path(path) as tmp:
        save_file({"z": pool.z.contiguous()}, str(tmp), metadata=meta)
    return path


def load_latent_pool(path: str | os.PathLike, vae: BSQVAE | None = None) -> LatentPool:
    """Read a pool; with `vae`, refuse one encoded by a different encoder."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such latent pool (make one with `stepvar train latents`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            z = f.get_tensor("z")
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise CheckpointError(f"{path}: not a latent pool ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a latent pool (format {meta.get('format')!r}, expected {FORMAT!r})")
    pool = LatentPool(json.loads(meta["prompts"]), z.float(), int(meta["seed"]), int(meta["image_size"]),
                      meta["encoder_sha256"], meta.get("layout", "free"))  # pools before layouts were free
    if len(pool.prompts) != pool.z.shape[0]:
        raise CheckpointError(f"{path}: {len(pool.prompts)} prompts but {pool.z.shape[0]} latents")
    if vae is not None and encoder_fingerprint(vae) != pool.encoder_sha256:
        raise CheckpointError(f"{path}: encoded by a different VAE encoder than the one given; rebuild the pool "
                              "with this VAE")
    return pool
