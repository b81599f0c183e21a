"""Analytic FLOPs of a generation: what the transformer computes, from token counts alone.

One multiply-add is 2 FLOPs. Only matrix products are counted (projections, attention
scores and weighted sums, FFN, head, embedding); norms, activations, RoPE, sampling,
StepVAR's scoring and propagation are not (their cost is measured by `stepvar overhead`).
With this convention the dense count equals what torch.utils.flop_counter reports for a
real run (tested), so the FLOP-bound speedup dense/method is an upper bound on what
pruning can buy, and the measured speedup can be read against it.

Per scale si and layer l, with n tokens per row in a branch (from the TokenCounter, or
from a method's PruningPlan) and R model rows (2x prompts with CFG):
    SA   qkv 2nC*3C + scores and weighted sum 2*2*n*S*C + out proj 2nC^2, where S is the
         KV length: this layer's SA tokens at every earlier scale plus this scale's; positions
         that only enter the cache (StepVAR's kv: restored) add 2nC*2C and count in S
    CA   q 2nC^2 + attention over T text tokens 2*2*n*T*C + out proj 2nC^2
    FFN  2*2*n*C*F (fc1 + fc2, F = ffn_hidden)
    head every position of a scale that runs: 2*L*C*2d, plus the head AdaLN 2*D*2C per row
    embed the next scale's input: 2*L_next*d*C, on the prompt rows only (CFG copies it)
Once per generation ("conditioning"): text pooling, text_proj_for_ca, shared AdaLN, and
every layer's cross-attention text K/V (2*T*D*2C per row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..models.config import InfinityConfig
from ..schedules import ScaleSchedule

PARTS = ("sa", "ca", "ffn", "head", "embed", "conditioning")


@dataclass
class FlopReport:
    """FLOPs of one generation (all model rows together)."""

    per_scale: list[int]  # blocks + head + next-scale embedding, by the scale that computes them
    by_part: dict[str, int] = field(default_factory=dict)  # PARTS -> FLOPs
    conditioning: int = 0  # once per generation: text pooling/projection, CA text K/V
    total: int = 0  # sum(per_scale) + conditioning

    def to_dict(self) -> dict:
        return asdict(self)


def rows_per_scale(cfg_scales: Sequence[float], batch: int) -> list[int]:
    """Model rows at each scale: 2x prompts while some scale from here on mixes CFG (sampling.py's rule)."""
    return [2 * batch if any(c != 1.0 for c in cfg_scales[si:]) else batch for si in range(len(cfg_scales))]


def conditioning_flops(cfg: InfinityConfig, rows: int, text_len: int) -> int:
    """Per-generation text work: pooling attention, text_proj_for_ca, shared AdaLN, CA text K/V."""
    C, D, Ct, T = cfg.width, cfg.cond_width, cfg.text_channels, text_len
    pool = 2 * T * Ct * 2 * D + 2 * 2 * T * D + 2 * D * D  # mat_kv, one-query attention, proj
    proj_ca = 2 * T * Ct * D + 2 * T * D * D  # text_proj_for_ca: two linears
    shared_ada = 2 * D * 6 * C
    ca_kv = cfg.depth * 2 * T * D * 2 * C
    return rows * (pool + proj_ca + shared_ada + ca_kv)


def count_flops(cfg: InfinityConfig, counts: Mapping[tuple[int, int, str], int], schedule: ScaleSchedule,
                rows: int | Sequence[int], text_len: int, skipped: set[int] | Sequence[int] = (),
                batch: int | None = None) -> FlopReport:
    """FLOPs from per-row token counts {(si, layer, branch): n}; see the module docstring.

    rows: model rows, one number or one per scale; batch: prompts (default rows // 2, i.e.
    CFG on); skipped: scales that ran no blocks (no head either).
    """
    n_scales = len(schedule)
    rows_s = [int(rows)] * n_scales if isinstance(rows, int) else [int(r) for r in rows]
    if len(rows_s) != n_scales:
        raise ConfigError(f"{len(rows_s)} row counts given for {n_scales} scales")
    batch = max(1, rows_s[0] // 2) if batch is None else batch
    skipped = set(skipped)
    C, D, F, d, T = cfg.width, cfg.cond_width, cfg.ffn_hidden, cfg.bits, text_len
    parts = dict.fromkeys(PARTS, 0)
    per_scale = [0] * n_scales
    kv_len = [0] * cfg.depth  # SA tokens per layer so far (the KV cache length)
    for si, scale in enumerate(schedule.scales):
        R = rows_s[si]
        here = dict.fromkeys(PARTS, 0)
        if si not in skipped:
            for layer in range(cfg.depth):
                n_sa = counts.get((si, layer, "sa"), 0)
                n_kv = counts.get((si, layer, "kv"), 0)  # positions that only add keys/values (kv: restored)
                kv_len[layer] += n_sa + n_kv
                here["sa"] += R * (2 * n_sa * C * 3 * C + 4 * n_sa * kv_len[layer] * C + 2 * n_sa * C * C
                                   + 2 * n_kv * C * 2 * C)
                n_ca = counts.get((si, layer, "ca"), 0)
                here["ca"] += R * (4 * n_ca * C * C + 4 * n_ca * T * C)
                here["ffn"] += R * 4 * counts.get((si, layer, "ffn"), 0) * C * F
            here["head"] = R * (2 * scale.n * C * 2 * d + 2 * D * 2 * C)
        if si + 1 < n_scales:
            here["embed"] = batch * 2 * schedule.scales[si + 1].n * d * C
        per_scale[si] = sum(here.values())
        for k, v in here.items():
            parts[k] += v
    cond = conditioning_flops(cfg, rows_s[0], T)
    parts["conditioning"] = cond
    return FlopReport(per_scale, parts, cond, sum(per_scale) + cond)


def result_flops(cfg: InfinityConfig, sample, schedule: ScaleSchedule, cfg_scales: Sequence[float], batch: int,
                 text_len: int) -> FlopReport:
    """FLOPs of a finished generation from its SampleOutput (counts, skipped scales)."""
    skipped = {t.si for t in sample.timings if t.skipped}
    return count_flops(cfg, sample.counter.counts, schedule, rows_per_scale(cfg_scales, batch), text_len,
                       skipped, batch)


# ---- the same count without running the model ------------------------------------------------
def planned_counts(pruner, schedule: ScaleSchedule, depth: int) -> tuple[dict[tuple[int, int, str], int], set[int]]:
    """Per-row token counts a method will produce, and the scales it skips, from its plan alone."""
    plan = pruner.resolved_plan(schedule, depth)
    return plan.counts(), set(plan.skipped)


def plan_flops(cfg: InfinityConfig, schedule: ScaleSchedule, pruner, rows: int | Sequence[int], text_len: int,
               batch: int | None = None) -> FlopReport:
    """FLOPs of a generation without running it (e.g. infinity-2b at 1024 on a laptop)."""
    pruner.validate(schedule, cfg.depth)
    counts, skip = planned_counts(pruner, schedule, cfg.depth)
    return count_flops(cfg, counts, schedule, rows, text_len, skip, batch)


# ---- the VAE decoder ---------------------------------------------------------------------------
_DECODE_CACHE: dict[tuple, int] = {}


def decode_flops(vae_cfg, latent_hw: tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one VAE decode, counted by torch.utils.flop_counter on the meta device (no compute).

    The same for every method (all decode the full latent grid), so it dilutes the end-to-end
    FLOP-bound speedup exactly as decoding dilutes the measured one.
    """
    key = (vae_cfg, tuple(latent_hw), batch)
    if key not in _DECODE_CACHE:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from ..models.bsq_vae import BSQVAE

        with torch.device("meta"):
            vae = BSQVAE(vae_cfg)
        z = torch.zeros(batch, vae_cfg.codebook_dim, *latent_hw, device="meta")
        with FlopCounterMode(display=False) as counter:
            vae.decode(z)
        _DECODE_CACHE[key] = int(counter.get_total_flops())
    return _DECODE_CACHE[key]
