"""Teacher forcing: every scale of a schedule in one transformer pass (the training path).

At inference (stepvar.sampling) the blocks run scale by scale, each scale attending to the
KV cache of the earlier ones. Training runs the concatenation of all scale inputs at once
with a block-causal mask: a token attends to every token of its own scale and of all
earlier scales, never a later one. With the same inputs both paths compute the same
logits (tests/test_training.py checks it), so what is trained is what is sampled.

Scale inputs: scale 0 is the start token cond_BD + pos_start; scale s > 0 is
word_embed of the accumulated codes after scale s-1, bilinearly resized to grid s. The
targets are the bits of the residual quantized at each scale. With bitwise
self-correction the inputs follow a trajectory whose bits were randomly flipped,
and the labels are the bits that correct it.

Extra shape letters: Lt = schedule.total_tokens (all scales concatenated).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..errors import ConfigError
from ..models.bsq_vae import bits_to_codes, resize_latent
from ..models.infinity import Conditioning, Infinity
from ..schedules import ScaleSchedule


# --------------------------------------------------------------------------------------------------
# Sequence layout of a schedule
# --------------------------------------------------------------------------------------------------


def scale_ids(schedule: ScaleSchedule, device=None) -> torch.Tensor:
    """(Lt,) int64: the scale index of every token of the concatenated sequence."""
    sizes = torch.tensor([s.n for s in schedule.scales], device=device)
    return torch.repeat_interleave(torch.arange(len(schedule), device=device), sizes)


def block_causal_mask(schedule: ScaleSchedule, device=None) -> torch.Tensor:
    """(Lt, Lt) bool, True = may attend: query i sees key j iff scale(j) <= scale(i)."""
    sid = scale_ids(schedule, device)
    return sid[None, :] <= sid[:, None]


def schedule_positions(schedule: ScaleSchedule, device=None) -> torch.Tensor:
    """(Lt, 2) RoPE (row, col) of every token, scales concatenated in order."""
    return torch.cat([schedule.positions(si) for si in range(len(schedule))]).to(device)


# --------------------------------------------------------------------------------------------------
# Targets and inputs
# --------------------------------------------------------------------------------------------------


class ScaleTargets(NamedTuple):
    bits: list[torch.Tensor]         # n x (B, h, w, d) bool: labels of each scale
    next_inputs: list[torch.Tensor]  # n-1 x (B, d, h', w'): accumulation after scale s, on grid s+1


def _flip_probabilities(B: int, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per-row flip probability drawn uniformly from {0, 0.01, ..., strength}."""
    steps = int(round(strength * 100))
    return torch.randint(0, steps + 1, (B,), generator=generator).float() / 100


def multiscale_targets(
    z_BdHW: torch.Tensor,
    grids: Sequence[tuple[int, int]],
    flip_strength: float = 0.0,
    flip_scales: int | None = None,
    generator: torch.Generator | None = None,
) -> ScaleTargets:
    """Residual bits and next-scale inputs of z over `grids`, optionally with self-correction.

    Without flips this is exactly stepvar.models.bsq_vae.multiscale_encode. With flips, at each of
    the first `flip_scales` scales (all when None) every bit is flipped with the row's probability
    p; the flipped codes are what gets subtracted from the residual and accumulated, so the next
    scale's input carries the error and its label (the next residual's bits) corrects it. The labels
    of a scale are its un-flipped bits. Random draws come from `generator` on the CPU, so a run is
    reproducible whatever the device.
    """
    B, _, H, W = z_BdHW.shape
    n_flip = len(grids) if flip_scales is None else min(flip_scales, len(grids))
    p_B = _flip_probabilities(B, flip_strength, generator) if flip_strength > 0 else None
    residual = z_BdHW.float()
    summed = torch.zeros_like(residual)
    bits_out, next_inputs = [], []
    for si, hw in enumerate(grids):
        bits_Bdhw = resize_latent(residual, hw, "area") > 0
        used = bits_Bdhw
        if p_B is not None and si < n_flip:
            u = torch.rand(bits_Bdhw.shape, generator=generator).to(z_BdHW.device)
            used = bits_Bdhw ^ (u < p_B.to(z_BdHW.device)[:, None, None, None])
        codes_up = resize_latent(bits_to_codes(used, dim=1), (H, W), "bilinear")
        residual = residual - codes_up
        summed = summed + codes_up
        bits_out.append(bits_Bdhw.permute(0, 2, 3, 1))  # (B, h, w, d)
        if si + 1 < len(grids):
            next_inputs.append(resize_latent(summed, grids[si + 1], "bilinear"))
    return ScaleTargets(bits_out, next_inputs)


def flat_bits(bits: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale (B, h, w, d) bits -> (B, Lt, d), row-major within a scale like the sampler."""
    return torch.cat([b.flatten(1, 2) for b in bits], dim=1)


def teacher_forced_inputs(model: Infinity, cond_BD: torch.Tensor, next_inputs: list[torch.Tensor]) -> torch.Tensor:
    """Scale inputs, concatenated: [start token; word_embed(next_inputs[0]); ...] -> (B, Lt, C)."""
    parts = [model.start_tokens(cond_BD)]
    for z_Bdhw in next_inputs:
        parts.append(model.embed_tokens(z_Bdhw.flatten(2).transpose(1, 2)))  # (B, h*w, C)
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------------------------
# The one-pass forward
# --------------------------------------------------------------------------------------------------


def forward_teacher_forced(model: Infinity, cond: Conditioning, x_inputs_BLC: torch.Tensor,
                           schedule: ScaleSchedule) -> torch.Tensor:
    """All scales in one pass with a block-causal mask -> bit logits (B, Lt, 2d) in fp32.

    `x_inputs_BLC` are the scale inputs without level embedding (teacher_forced_inputs); `cond` must
    be fresh for this forward (its cross-attention K/V cache fills during the pass).
    """
    if len(schedule) > model.cfg.num_levels:
        raise ConfigError(f"schedule has {len(schedule)} scales but the model has {model.cfg.num_levels} level embeddings")
    Lt = schedule.total_tokens
    if x_inputs_BLC.shape[1] != Lt:
        raise ConfigError(f"teacher forcing expects {Lt} input tokens ({schedule.describe()}), "
                          f"got {x_inputs_BLC.shape[1]}")
    device = x_inputs_BLC.device
    # Level embedding (and position table) once, before block 0, exactly as model.add_level does per scale.
    x = x_inputs_BLC.float() + model.lvl_embed.weight.float()[scale_ids(schedule, device)]
    if model.cfg.abs_pos_grid:
        x = x + torch.cat([model.position_table(s.h, s.w) for s in schedule.scales])
    cos, sin = model.rope.gather(schedule_positions(schedule, device))
    mask = block_causal_mask(schedule, device)[None, None]  # (1, 1, Lt, Lt)
    for layer, blk in enumerate(model.blocks):
        x = blk(x, cond.mods[layer], cos, sin, None, cond.text, layer, attn_mask=mask)
    return model.logits(x, cond.cond_BD)
