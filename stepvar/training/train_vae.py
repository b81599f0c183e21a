"""Training the BSQ VAE on rendered toy scenes.

Loss (kept simple on purpose; no GAN, no perceptual network):
    l1_weight     * |x_rec - x|                      pixel reconstruction
  + edge_weight   * |grad x_rec - grad x|            L1 of horizontal/vertical differences: keeps
                                                     edges and the fine textures from washing out
  + commit_weight * ||z - sg(z_q)||^2                pulls the encoder towards what the multi-scale
                                                     quantizer can represent (VQ-VAE commitment)

z_q is the sum of the upsampled per-scale codes of the multi-scale residual quantizer
(the same function the transformer's targets come from), so the decoder is
trained on exactly what it decodes at generation time. The quantizer has no parameters;
gradients pass it with a straight-through estimator, z + sg(z_q - z). BSQ's entropy terms
(per-sample entropy down, codebook entropy up) are left out to keep the loss small: the
residual over several scales already spreads information over the bits. If a long run shows
bits stuck at one value, they are the first thing to add.

Two options for a second stage: `object_weight` multiplies the L1 and edge terms on object
pixels by (1 + object_weight) (the renderer knows where the objects are), because objects are a
small fraction of a scene but carry everything the evaluator reads (colour, shape, position);
`decoder_only` (with `init_from`) freezes the encoder, so the codes, and a transformer already
trained on them, stay valid while the decoder improves.

Training uses random crops (default 128 px of 256 px scenes, so texture statistics match
the 256 px images the model generates). The VAE is fully convolutional; on a 128 px crop
(latent 8 x 8) the schedule's grids up to 8 x 8 are used.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.bsq_vae import VAE_PRESETS, BSQVAE, VAEConfig, multiscale_encode
from ..schedules import RESOLUTIONS, get_schedule
from ..toy.world import LAYOUTS
from .common import Job, OptimConfig, Rngs, RunSettings, TrainResult, autocast, check_cpu_bf16, clip_and_step, lr_at, make_optimizer, \
    read_training_checkpoint, resolve_device, run_job
from .data import random_crops, sample_pairs, sample_pairs_with_masks, to_model_images

# The embedded model's VAE (suggested preset "toy"): stride 16, d = 16, about 1M parameters (sized for CPU training).
TOY_VAE = VAE_PRESETS["toy"]  # the embedded model's VAE


@dataclass
class VAETrainConfig(RunSettings):
    vae: VAEConfig = TOY_VAE
    image_size: int = 256          # scenes are rendered at this size ...
    crop: int = 128                # ... and trained on random crops of this size (multiple of the stride)
    batch_size: int = 16
    budget: str = "0.06M"          # whose scale grids the multi-scale quantizer uses
    l1_weight: float = 1.0
    edge_weight: float = 0.5
    commit_weight: float = 0.25
    object_weight: float = 0.0     # extra L1/edge weight on object pixels (1 + object_weight there)
    init_from: str | None = None   # a VAE run directory or checkpoint, or an export directory, whose weights start this run
    decoder_only: bool = False     # freeze the encoder: the codes (and a transformer trained on them) stay valid
    # mix_batch more crops per update from scenes rendered at mix_image_size (e.g. 512 beside 256), so one
    # decoder serves both resolutions: textures are periodic in pixels, so a 512 px crop is not a 256 px one.
    mix_image_size: int | None = None
    mix_batch: int = 0
    layout: str = "free"           # scene layout (stepvar.toy.world.LAYOUTS); the transformer's pools use "slots"
    # quantize_whole (decoder only): quantize each whole scene's latent over the schedule generation uses at its
    # size (0.06M at 256, 0.25M at 512), then decode a crop of it with `context` latents of neighbours on each
    # side, scored on the crop only. A crop quantized on its own (the default) has the scales of an 8 x 8 latent,
    # not those of a 32 x 32 one, so at 512 px the decoder is trained on sums of codes it never sees.
    quantize_whole: bool = False
    context: int = 2
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=3e-4, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=200, decay_steps=20000, grad_clip=1.0))

    def __post_init__(self) -> None:
        if isinstance(self.vae, dict):
            self.vae = VAEConfig(**self.vae)
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if self.crop % self.vae.stride or self.crop > self.image_size:
            raise ConfigError(f"crop {self.crop} must be a multiple of the VAE stride {self.vae.stride} and <= image_size")
        if self.vae.patchify:
            raise ConfigError("VAE training does not support the patchify variant")
        if self.decoder_only and self.init_from is None:
            raise ConfigError("decoder_only needs init_from: a trained encoder to keep")
        if (self.mix_image_size is None) != (self.mix_batch == 0) or self.mix_batch < 0:
            raise ConfigError("mix_image_size and mix_batch > 0 go together")
        if self.mix_image_size is not None and self.crop > self.mix_image_size:
            raise ConfigError(f"crop {self.crop} must be <= mix_image_size {self.mix_image_size}")
        if self.quantize_whole and not self.decoder_only:
            raise ConfigError("quantize_whole trains the decoder only: add decoder_only")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        sizes = [self.image_size] + ([self.mix_image_size] if self.mix_image_size else [])
        if self.quantize_whole and any(s not in RESOLUTIONS for s in sizes):
            raise ConfigError(f"quantize_whole needs image sizes with a schedule: {', '.join(map(str, RESOLUTIONS))}")
        if self.context < 0:
            raise ConfigError(f"context must be >= 0, got {self.context}")


def quantizer_grids(budget: str, latent_hw: tuple[int, int], token_stride: int = 16) -> list[tuple[int, int]]:
    """The budget's (square-template) grids that fit the latent, ending with the latent grid itself."""
    H, W = latent_hw
    grids = [(s.h, s.w) for s in get_schedule(budget, 1.0, token_stride).scales if s.h <= H and s.w <= W]
    if not grids or grids[-1] != (H, W):
        grids.append((H, W))
    return grids


def _edges(x_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x_B3HW[..., :, 1:] - x_B3HW[..., :, :-1], x_B3HW[..., 1:, :] - x_B3HW[..., :-1, :]


def vae_loss(vae: BSQVAE, img_B3HW: torch.Tensor, cfg: VAETrainConfig,
             weight_B1HW: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts for one batch of images in [-1, 1]; optional per-pixel weights."""
    device = img_B3HW.device
    with autocast(device, cfg.amp, cfg.cpu_bf16), torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.decoder_only):
        z = vae.encoder(img_B3HW).float()  # (B, d, H, W)
    grids = quantizer_grids(cfg.budget, tuple(z.shape[-2:]), vae.cfg.token_stride)
    zq = multiscale_encode(z.detach(), grids).summed_BdHW
    with autocast(device, cfg.amp, cfg.cpu_bf16):
        rec = vae.decoder(z + (zq - z).detach()).float()  # straight-through estimator (plain zq when decoder_only)
    return _reconstruction_loss(rec, img_B3HW, weight_B1HW, F.mse_loss(z, zq), cfg)


def whole_scene_loss(vae: BSQVAE, img_B3HW: torch.Tensor, cfg: VAETrainConfig, weight_B1HW: torch.Tensor | None,
                     rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The decoder's loss on crops of whole scenes quantized as generation quantizes them (quantize_whole)."""
    device, stride = img_B3HW.device, vae.cfg.stride
    with torch.no_grad(), autocast(device, cfg.amp, cfg.cpu_bf16):
        z = vae.encoder(img_B3HW).float()
    H, W = z.shape[-2:]
    budget = RESOLUTIONS[img_B3HW.shape[-1]]
    zq = multiscale_encode(z, quantizer_grids(budget, (H, W), vae.cfg.token_stride)).summed_BdHW
    c = cfg.crop // stride
    win = min(c + 2 * cfg.context, H, W)
    ys, xs = rng.integers(0, H - win + 1, len(z)), rng.integers(0, W - win + 1, len(z))
    zq_win = torch.stack([zq[i, :, y:y + win, x:x + win] for i, (y, x) in enumerate(zip(ys, xs))])
    img_win = torch.stack([img_B3HW[i, :, y * stride:(y + win) * stride, x * stride:(x + win) * stride]
                           for i, (y, x) in enumerate(zip(ys, xs))])
    # Score only where the decoder saw the neighbours it sees at generation: a margin that is the
    # scene's own border has none there either, so it is scored too.
    keep = torch.zeros(len(z), 1, win * stride, win * stride, device=device)
    m = (win - c) // 2
    for i, (y, x) in enumerate(zip(ys, xs)):
        y0, y1 = (0 if y == 0 else m), (win if y + win == H else win - m)
        x0, x1 = (0 if x == 0 else m), (win if x + win == W else win - m)
        keep[i, :, y0 * stride:y1 * stride, x0 * stride:x1 * stride] = 1.0
    w = keep if weight_B1HW is None else keep * torch.stack(
        [weight_B1HW[i, :, y * stride:(y + win) * stride, x * stride:(x + win) * stride] for i, (y, x) in enumerate(zip(ys, xs))])
    with autocast(device, cfg.amp, cfg.cpu_bf16):
        rec = vae.decoder(zq_win).float()
    return _reconstruction_loss(rec, img_win, w, torch.zeros((), device=device), cfg, keep)


def _reconstruction_loss(rec: torch.Tensor, img_B3HW: torch.Tensor, weight_B1HW: torch.Tensor | None,
                         commit: torch.Tensor, cfg: VAETrainConfig,
                         scored_B1HW: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    w = torch.ones_like(img_B3HW[:, :1]) if weight_B1HW is None else weight_B1HW
    l1 = ((rec - img_B3HW).abs() * w).mean() / w.mean()
    (rx, ry), (tx, ty) = _edges(rec), _edges(img_B3HW)
    wx, wy = torch.maximum(w[..., :, 1:], w[..., :, :-1]), torch.maximum(w[..., 1:, :], w[..., :-1, :])
    edge = 0.5 * (((rx - tx).abs() * wx).mean() / wx.mean() + ((ry - ty).abs() * wy).mean() / wy.mean())
    loss = cfg.l1_weight * l1 + cfg.edge_weight * edge + cfg.commit_weight * commit
    with torch.no_grad():
        s = torch.ones_like(rec[:, :1]) if scored_B1HW is None else scored_B1HW
        mse = (((rec.clamp(-1, 1) - img_B3HW) ** 2) * s).sum() / (s.sum() * rec.shape[1]).clamp_min(1)
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        values = torch.stack((loss, l1, edge, commit, psnr)).tolist()  # one device sync
    return loss, dict(zip(("loss", "l1", "edge", "commit", "psnr"), values))


class VAEJob(Job):
    kind = "vae"

    def __init__(self, cfg: VAETrainConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        check_cpu_bf16(cfg, self.device)
        torch.manual_seed(cfg.seed)  # weight init only; everything later draws from self.rngs
        self.vae = BSQVAE(cfg.vae)
        if cfg.init_from is not None:
            start = load_vae_source(cfg.init_from)
            if start.cfg != cfg.vae:
                raise ConfigError(f"init_from {cfg.init_from}: its VAE config differs from this run's")
            self.vae.load_state_dict(start.state_dict())
        self.vae.to(self.device).train()
        if cfg.decoder_only:
            self.vae.encoder.requires_grad_(False).eval()
        self.modules = {"vae": self.vae}
        named = [(n, p) for n, p in self.vae.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = make_optimizer(named, cfg.optim)
        self.rngs = Rngs.from_seed(cfg.seed)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        take = self._scenes if self.cfg.quantize_whole else self._crops
        parts = [take(self.cfg.batch_size, self.cfg.image_size)]
        if self.cfg.mix_batch:
            parts.append(take(self.cfg.mix_batch, self.cfg.mix_image_size))
        if self.cfg.quantize_whole:  # two sizes cannot share a tensor: one batch per size
            return [self._to_batch(p) for p in parts]
        return self._to_batch(np.concatenate(parts))

    def _to_batch(self, both: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.cfg.object_weight:
            return to_model_images(both, self.device), None
        weight = 1.0 + self.cfg.object_weight * torch.from_numpy(both[..., 3].astype(np.float32))[:, None]
        return to_model_images(both[..., :3], self.device), weight.to(self.device)

    def _scenes(self, n: int, size: int) -> np.ndarray:
        """n whole fresh scenes (quantize_whole); with object_weight a 4th channel holds the object mask."""
        _, images, masks = sample_pairs_with_masks(self.rngs.data, n, size, self.cfg.layout)
        if not self.cfg.object_weight:
            return images
        return np.concatenate([images, masks[..., None].astype(np.uint8)], -1)

    def _crops(self, n: int, size: int) -> np.ndarray:
        """n random crops of fresh scenes rendered at size; with object_weight a 4th channel holds the object mask."""
        if not self.cfg.object_weight:
            _, images = sample_pairs(self.rngs.data, n, size, self.cfg.layout)
            return random_crops(images, self.cfg.crop, self.rngs.data)
        _, images, masks = sample_pairs_with_masks(self.rngs.data, n, size, self.cfg.layout)
        return random_crops(np.concatenate([images, masks[..., None].astype(np.uint8)], -1), self.cfg.crop, self.rngs.data)

    def update(self, batch, step: int) -> dict[str, float]:
        if self.cfg.quantize_whole:
            # One backward per size, each weighted by its share of the rows, so the step is one mean over all.
            rows = sum(len(b[0]) for b in batch)
            metrics: dict[str, float] = {}
            for (images, weight), size in zip(batch, (self.cfg.image_size, self.cfg.mix_image_size)):
                loss, part = whole_scene_loss(self.vae, images, self.cfg, weight, self.rngs.data)
                (loss * len(images) / rows).backward()
                for k, v in part.items():
                    metrics[k] = metrics.get(k, 0.0) + v * len(images) / rows
                metrics[f"psnr_{size}"] = part["psnr"]
        else:
            loss, metrics = vae_loss(self.vae, batch[0], self.cfg, batch[1])
            loss.backward()
        lr = lr_at(step, self.cfg.optim)
        metrics["grad_norm"] = clip_and_step(self.optimizer, self.params, lr, self.cfg.optim.grad_clip)
        metrics["lr"] = lr
        return metrics

    def step(self, step: int) -> dict[str, float]:
        return self.update(self.next_batch(), step)


def train_vae(config: VAETrainConfig, out_dir: str | os.PathLike, steps: int,
              resume: bool | str | os.PathLike = False, on_log: Callable[[dict], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume training) the VAE until `steps` updates in total; checkpoints go to out_dir."""
    job = VAEJob(config)
    return run_job(job, out_dir, steps, resume, config.ckpt_every, config.log_every, on_log, on_note)


def load_vae_source(path: str | os.PathLike) -> BSQVAE:
    """A VAE training run's VAE, or an export directory's (e.g. the shipped stepvar/assets/toy, upcast to fp32)."""
    from pathlib import Path

    if (Path(path) / "model.json").is_file():
        from ..loading.embedded import load_embedded

        return load_embedded(path)[1]
    return load_trained_vae(path)


def load_trained_vae(path: str | os.PathLike, device: torch.device | str = "cpu") -> BSQVAE:
    """The VAE of a VAE training checkpoint (a file or a run directory), in eval mode."""
    ckpt = read_training_checkpoint(path, "vae", "loading a VAE")
    vae = BSQVAE(VAEConfig(**ckpt["config"]["vae"]))
    vae.load_state_dict(ckpt["modules"]["vae"])
    return vae.to(device).eval()
