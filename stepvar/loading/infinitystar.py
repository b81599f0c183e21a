"""Building an InfinityStar model: the released weights loaded strictly, or seeded random weights.

The released 8B checkpoints are sharded safetensors with model.safetensors.index.json; they go
through the same reader and strict key/shape check as every other checkpoint (containers.py,
checkpoints.py). The index's total_size is never compared with the tensors' bytes: the official
writer counts shared storages, so the released 8B index says 384 bytes more than its tensors hold.
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, ConfigError
from ..models.infinitystar import InfinityStar, build_on_meta, init_random_, star_preset
from ..models.video_vae import VideoVAEConfig, VideoVAEDecoder
from .checkpoints import LoadReport, _assign, _mismatch_message, check_against, load_model_weights, read_checkpoint

# Parts of infinitystar_videovae.pth that decoding never uses: the encoder, the quantizer's bit-mask
# buffers (stored twice, under two names) and the encode-side projections.
VAE_UNUSED_PREFIXES = ("encoder.", "quantizer.", "quantize.", "proj_down.", "proj_down_two.", "proj_up_two.")


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


def video_vae_shapes(cfg: VideoVAEConfig = VideoVAEConfig()) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VideoVAEDecoder(cfg).state_dict().items()}


def load_video_vae(path: str | os.PathLike | None, device="cpu", seed: int = 0, use_ema: bool = False,
                   cfg: VideoVAEConfig = VideoVAEConfig()) -> tuple[VideoVAEDecoder, LoadReport | None]:
    """The video VAE's decoder from infinitystar_videovae.pth (its 'vae' or 'ema' entry), strictly:
    every decoder key present with its shape, nothing unknown; encoder-side keys are set aside by name.
    Without a path: seeded random weights (untrained), for tests and timing."""
    if path is None:
        g = torch.Generator().manual_seed(seed)
        vae = VideoVAEDecoder(cfg)
        with torch.no_grad():
            for name, p in vae.named_parameters():
                base = 1.0 if name.endswith("gamma") or name == "scale_learnable_parameters" else 0.0
                p.copy_(base + torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.1))
        return vae.to(device).eval().requires_grad_(False), None
    ckpt = read_checkpoint(path, use_ema=use_ema)
    used = {k: t for k, t in ckpt.tensors.items() if not k.startswith(VAE_UNUSED_PREFIXES)}
    dropped = sorted(set(ckpt.tensors) - set(used))
    problems = check_against(video_vae_shapes(cfg), used)
    if problems:
        raise CheckpointError(_mismatch_message(ckpt, "the InfinityStar video VAE decoder", problems,
                                                "not infinitystar_videovae.pth, or a damaged copy"))
    with torch.device("meta"):
        vae = VideoVAEDecoder(cfg)
    converted = _assign(vae, vae.state_dict(), used, ckpt.path)
    report = LoadReport(str(ckpt.path), ckpt.container, "infinitystar-videovae", ckpt.n_tensors, ckpt.n_params,
                        ckpt.dtypes, dropped, [f"{len(dropped)} encoder-side tensors not used for decoding"], converted)
    return vae.to(device).eval().requires_grad_(False), report
