"""The next-scale sampling loop, with a pruner in charge of each scale's blocks.

Phases per scale: level embedding -> blocks (the pruner) -> head -> CFG mix -> bit
sampling -> accumulate codes -> next scale's input. Every method consumes the sampler RNG
identically (all positions are sampled at every scale it runs), so paired comparisons
with the same seed differ only through the pruning itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models.blocks import KVCache, TextContext
from .models.infinity import Conditioning, Infinity
from .pruning.accelerations import guided_cfgs
from .pruning.base import Dense, Pruner, ScaleRun, TokenCounter
from .schedules import ScaleSchedule


@dataclass
class SamplingConfig:
    """Sampler settings. cfg and tau may be one value or one per scale."""

    cfg: float | Sequence[float] = 3.0
    tau: float | Sequence[float] = 0.5
    top_p: float = 0.97
    seed: int | None = 0
    # One seed per prompt row instead of seed + i: a prompt set batches items whose seeds are not
    # consecutive (stepvar.prompt_sets.sample_seed), and each must draw as it would alone.
    row_seeds: Sequence[int] | None = None

    @classmethod
    def for_model(cls, preset_sampling: dict, cfg=None, tau=None, top_p: float | None = None,
                  seed: int | None = 0) -> "SamplingConfig":
        """The preset's defaults (then the class defaults) with every given value taking precedence."""
        unknown = set(preset_sampling) - {"cfg", "tau", "top_p"}
        if unknown:
            raise ConfigError(f"unknown sampling setting(s) in the model preset: {', '.join(sorted(unknown))}")
        base = cls(**preset_sampling)
        return cls(cfg=base.cfg if cfg is None else cfg, tau=base.tau if tau is None else tau,
                   top_p=base.top_p if top_p is None else top_p, seed=seed)

    @classmethod
    def for_preset(cls, model=None, cfg=None, tau=None, top_p: float | None = None,
                   seed: int | None = 0) -> "SamplingConfig":
        """for_model with the model preset's sampling defaults: a preset name (None: the default model)
        or a ModelPreset read from a file."""
        from .models.config import ModelPreset, load_model_preset

        preset = model if isinstance(model, ModelPreset) else load_model_preset(model)
        return cls.for_model(preset.sampling, cfg, tau, top_p, seed)

    def per_scale(self, name: str, n: int) -> list[float]:
        value = getattr(self, name)
        values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != n:
            raise ConfigError(f"--{name} lists {len(values)} values but the schedule has {n} scales")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"--{name} must be finite, got {value}")
        if name == "cfg" and any(v < 0 for v in values):
            raise ConfigError(f"--cfg must be >= 0, got {value}")
        if name == "tau" and any(v <= 0 for v in values):
            raise ConfigError(f"--tau must be > 0, got {value}")
        return values

    def validate(self, n_scales: int) -> None:
        self.per_scale("cfg", n_scales)
        self.per_scale("tau", n_scales)
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        from .validate import OPTION_RULES

        OPTION_RULES["seed"].check(self.seed if self.seed is not None else 0, "--seed")
        for s in self.row_seeds or ():
            OPTION_RULES["seed"].check(s, "row seed")


@dataclass
class LatentCodec:
    """How sampled bits map to the VAE latent grid: the codebook dim and the 8B patchify."""

    codebook_dim: int
    patchify: bool = False

    def bits_to_latent(self, bits_BhwD: torch.Tensor) -> torch.Tensor:
        """(B, h, w, d_tokens) bits -> (B, d_vae, h', w') codes on the VAE grid."""
        x = bits_BhwD.permute(0, 3, 1, 2).float()
        if self.patchify:
            x = F.pixel_shuffle(x, 2)
        return (2 * x - 1) / math.sqrt(self.codebook_dim)

    def latent_to_tokens(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        """VAE-grid map -> (B, h*w, d_tokens) token features for word_embed."""
        if self.patchify:
            z_BdHW = F.pixel_unshuffle(z_BdHW, 2)
        return z_BdHW.flatten(2).transpose(1, 2)

    def vae_grid(self, h: int, w: int) -> tuple[int, int]:
        return (2 * h, 2 * w) if self.patchify else (h, w)


def resize_codes(z_BdHW: torch.Tensor, hw: tuple[int, int], official: bool = False) -> torch.Tensor:
    """Bilinear resize of a code map (align_corners False). The official code does it as a trilinear
    resize of (B, d, 1, H, W): the same values, computed by another kernel that differs in the last
    bits, so "official" numerics take that path."""
    if official:
        return F.interpolate(z_BdHW.unsqueeze(2), (1, *hw), mode="trilinear", align_corners=False).squeeze(2)
    return F.interpolate(z_BdHW, hw, mode="bilinear", align_corners=False)


@dataclass
class ScaleTiming:
    si: int
    grid: tuple[int, int]
    seconds: float
    skipped: bool = False


@dataclass
class SampleOutput:
    latent_BdHW: torch.Tensor  # accumulated codes, what the VAE decodes
    bits: list[torch.Tensor | None]  # per scale (B, h, w, d) bool; None for a skipped scale
    timings: list[ScaleTiming]
    counter: TokenCounter
    kv_cache_bytes: int
    rows: int  # model batch (2x prompts with CFG)
    hidden: list[torch.Tensor | None] = field(default_factory=list)  # per-scale cond-row hiddens if kept


def sample_bits(logits_BLV: torch.Tensor, top_p: float, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One 2-way draw per bit: logits (B, L, 2d) -> bits (B, L, d) bool.

    Logits 2k and 2k+1 score bit k = 0 and 1. Top-p on a 2-way choice zeroes the
    minority value when its probability is <= 1 - top_p. Each row draws from its own
    generator, so a prompt's image does not depend on what else is in the batch.
    """
    B, L, V = logits_BLV.shape
    probs = logits_BLV.float().reshape(B, -1, 2).softmax(-1)
    if top_p < 1.0:
        probs = probs.masked_fill(probs <= 1.0 - top_p, 0.0)
    draws = [torch.multinomial(probs[b], num_samples=1, generator=generators[b]) for b in range(B)]
    return torch.stack(draws).view(B, L, V // 2).bool()


def drop_uncond_rows(cond: Conditioning, caches: list[KVCache], x_BLC: torch.Tensor, B: int):
    """Keep only the first B (conditional) rows of everything that carries batch rows."""
    rows = torch.arange(B, device=x_BLC.device)
    text = TextContext(cond.text.kv_BTD[:B], cond.text.mask_BT[:B],
                       {layer: (k[:B], v[:B]) for layer, (k, v) in cond.text.ca_kv.items()})
    for c in caches:
        if c.k is not None:
            c.k, c.v = c.k[:B], c.v[:B]
    return Conditioning(cond.cond_BD[:B], [m.rows(rows) for m in cond.mods], text), x_BLC[:B]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_generators(seed: int | None, n: int, device: torch.device,
                    row_seeds: Sequence[int] | None = None) -> list[torch.Generator | None]:
    """Prompt i of a batch samples with seed + i, or with row_seeds[i] when given (None: the global RNG)."""
    if row_seeds is not None:
        if len(row_seeds) != n:
            raise ConfigError(f"{len(row_seeds)} row seeds for a batch of {n} prompts")
        return [torch.Generator(device=device).manual_seed(int(s)) for s in row_seeds]
    if seed is None:
        return [None] * n
    return [torch.Generator(device=device).manual_seed(int(seed) + i) for i in range(n)]


@torch.no_grad()
def sample(
    model: Infinity,
    text_BTCt: torch.Tensor,
    mask_BT: torch.Tensor,
    schedule: ScaleSchedule,
    codec: LatentCodec,
    sampling: SamplingConfig,
    pruner: Pruner | None = None,
    on_scale: Callable[[int, int], None] | None = None,
    keep_hidden: bool = False,
    forced_bits: Sequence[torch.Tensor] | None = None,
) -> SampleOutput:
    """Generate accumulated latent codes for a batch of already-encoded prompts.

    forced_bits: (B, h, w, d) bits for the first len(forced_bits) scales, used instead of sampled
    ones (the model still runs those scales, so its caches hold them): a diagnostic that asks what
    the later scales make of given early ones, e.g. a real scene's.
    """
    # 1. check inputs
    pruner = pruner or Dense()
    n = len(schedule)
    if n > model.cfg.num_levels:
        raise ConfigError(f"schedule has {n} scales but the model has only {model.cfg.num_levels} level embeddings")
    sampling.validate(n)
    pruner.validate(schedule, len(model.blocks))
    pruner.begin(schedule, len(model.blocks))
    # A plan that drops the unconditional row from some scale on samples those scales unguided.
    cfgs, taus = guided_cfgs(sampling.per_scale("cfg", n), pruner.active_plan), sampling.per_scale("tau", n)
    device = text_BTCt.device
    official = getattr(model, "numerics", "exact") == "official"

    # 2. conditioning: [cond; uncond] rows only if some scale uses CFG
    B = text_BTCt.shape[0]
    generators = make_generators(sampling.seed, B, device, sampling.row_seeds)
    use_cfg = any(c != 1.0 for c in cfgs)
    if use_cfg:
        text_BTCt = torch.cat((text_BTCt, model.uncond_text(mask_BT).to(text_BTCt)), 0)
        mask_BT = torch.cat((mask_BT, mask_BT), 0)
    rows = text_BTCt.shape[0]
    cond = model.condition(text_BTCt, mask_BT, schedule.budget)

    # 3. the scale loop
    H, W = codec.vae_grid(schedule.last.h, schedule.last.w)
    summed = torch.zeros(B, codec.codebook_dim, H, W, device=device)
    first_codes = True
    caches = [KVCache() for _ in model.blocks]
    counter = TokenCounter()
    x_BLC = model.start_tokens(cond.cond_BD)
    bits_all: list[torch.Tensor | None] = []
    hidden_all: list[torch.Tensor | None] = []
    timings: list[ScaleTiming] = []
    for si, scale in enumerate(schedule.scales):
        _sync(device)
        t0 = time.perf_counter()
        if use_cfg and all(c == 1.0 for c in cfgs[si:]):
            # No later scale mixes in the unconditional branch: stop computing it.
            cond, x_BLC = drop_uncond_rows(cond, caches, x_BLC, B)
            use_cfg = False
        if pruner.skips(si):
            bits_all.append(None)
            hidden_all.append(None)
        else:
            run = ScaleRun(model, cond, model.add_level(x_BLC, si, (scale.h, scale.w)), si, scale,
                           schedule.positions(si).to(device), caches, counter, cfg_pairs=use_cfg)
            h_BLC = pruner.run_scale(run)
            logits = model.logits(h_BLC, cond.cond_BD) / taus[si]
            if use_cfg:
                logits = model.guide(logits[:B], logits[B:], cfgs[si])
            bits = sample_bits(logits, sampling.top_p, generators).view(B, scale.h, scale.w, -1)
            if forced_bits is not None and si < len(forced_bits):
                bits = forced_bits[si].to(bits)
            bits_all.append(bits)
            hidden_all.append(h_BLC[:B].detach() if keep_hidden else None)
            codes = codec.bits_to_latent(bits)
            up = codes if codes.shape[-2:] == (H, W) else resize_codes(codes, (H, W), official)
            if official and first_codes:
                # The official map starts as the integer 0, so it takes the first resized codes' memory
                # layout (channels-last, from the bits' permute), which later resizes compute in another order.
                summed = 0 + up
            else:
                summed += up
            first_codes = False
        if si + 1 < n:
            nxt = schedule.scales[si + 1]
            z = resize_codes(summed, codec.vae_grid(nxt.h, nxt.w), official)
            x_BLC = model.embed_tokens(codec.latent_to_tokens(z))
            if use_cfg:
                x_BLC = torch.cat((x_BLC, x_BLC), 0)
        _sync(device)
        timings.append(ScaleTiming(si, (scale.h, scale.w), time.perf_counter() - t0, pruner.skips(si)))
        if on_scale is not None:
            on_scale(si, n)
    kv_bytes = sum(c.nbytes for c in caches)
    return SampleOutput(summed, bits_all, timings, counter, kv_bytes, rows, hidden_all)


def to_uint8(img_B3HW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> (B, H, W, 3) uint8, truncating like the official conversion."""
    x = ((img_B3HW.float().clamp(-1, 1) + 1) / 2 * 255).permute(0, 2, 3, 1)
    return x.to(torch.uint8).cpu()
