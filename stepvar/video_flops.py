"""Analytic FLOPs of InfinityStar over a spatio-temporal schedule, dense or with pruned scales.

Per pass of L tokens (one guidance row): 2 x (block parameters) x L for the linear layers of every
block, plus 4 x L x Lk x C per layer for attention (scores and values), where the keys Lk are the
text prefix, the referenced scale (the previous clip's largest) and the scale itself. A pruned
scale runs its blocks on its kept tokens and only those enter its own keys; the text and the
reference stay whole. The head, word embedding and VAE are left out (under 0.1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .models.infinitystar import InfinityStarConfig
from .video_schedules import StarSchedule


def block_params(cfg: InfinityStarConfig) -> int:
    C, k = cfg.width, cfg.head_dim
    attn = C * cfg.heads * k * 2 + C * cfg.kv_heads * k * 2 + 2 * k
    return attn + 3 * C * cfg.ffn_hidden + 2 * C


@dataclass(frozen=True)
class VideoFlops:
    text: float
    per_scale: tuple[float, ...]  # all repeats of each scale

    @property
    def total(self) -> float:
        return self.text + sum(self.per_scale)


def video_flops(cfg: InfinityStarConfig, schedule: StarSchedule, keep: dict[int, float] | None = None,
                text_tokens: int = 100) -> VideoFlops:
    """FLOPs of one guidance row; `keep` maps scale index -> kept fraction of its tokens."""
    keep = keep or {}
    P, C, D = block_params(cfg), cfg.width, cfg.depth

    def kept(s) -> int:
        return s.tokens if keep.get(s.index, 1.0) >= 1.0 else max(1, math.ceil(keep[s.index] * s.tokens))

    text = 2 * P * D * text_tokens + 4 * text_tokens * text_tokens * C * D
    per = []
    for s in schedule.scales:
        L = kept(s)
        Lk = text_tokens + L + sum(schedule.scales[r].tokens for r in s.refs)
        per.append(s.repeats * (2 * P * D * L + 4 * L * Lk * C * D))
    return VideoFlops(float(text), tuple(float(f) for f in per))


def last_video_scales(schedule: StarSchedule, n: int = 3) -> list[int]:
    """The last n scales of every video clip: where three quarters of the compute is (the image clip
    stays dense: it is about 5% and its largest scale is every video scale's reference)."""
    k = schedule.scales_per_clip
    return [s.index for s in schedule.scales if s.clip > 0 and s.rel >= k - n]


def plan_flops(cfg: InfinityStarConfig, schedule: StarSchedule, plan, text_tokens: int = 100) -> VideoFlops:
    """FLOPs of one guidance row when a method runs by `plan` (a PruningPlan over the video schedule):
    each layer of each pass runs on the tokens the plan gives it, and only those enter its own keys;
    a skipped scale costs nothing. Scores, propagation and restoration are not counted."""
    P, C = block_params(cfg), cfg.width
    text = 2 * P * cfg.depth * text_tokens + 4 * text_tokens * text_tokens * C * cfg.depth
    per = []
    for s in schedule.scales:
        ref = sum(schedule.scales[r].tokens for r in s.refs)
        one = 0
        for layer in range(cfg.depth):
            L = plan.tokens(s.index, layer)
            one += 2 * P * L + 4 * L * (text_tokens + ref + L) * C if L else 0
        per.append(s.repeats * one)
    return VideoFlops(float(text), tuple(float(f) for f in per))
