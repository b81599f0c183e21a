"""FastVAR (ICCV 2025) as released, and its variants (spec fastvar.md).

Per pruned layer and scale, each of SA, CA and FFN re-scores the current full-length
state by squared distance to the row's mean token, runs on the kept tokens (score order),
and fills the other positions from that branch's output cached at the last dense scale,
area-resized to the current grid. The residual stream stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .base import BRANCHES, Pruner, ScaleRun, gather_rows, run_block_dense, run_branch, run_dense_stack
from .plan import (RELEASE_LAYERS, RELEASE_PRUNE_BY_WIDTH, ResolvedPlan, dense_layer_split, release_layers,
                   release_scales, resolve_keep, resolve_scales)
from .propagation import scatter_kept
from .scores import dc_score, keep_count, select_topk

RULES = ("release", "position")


@dataclass
class FastVARConfig:
    # "release": scales by grid width and layers 3-27 as released (plan.release_scales);
    # "position": the scales whose side is at least half the final side, layers 3/32 and 4/32 of
    # the depth dense, cache at the scale before the first pruned one (fastvar-pos).
    rule: str = "release"
    keep: float | list | dict | None = None  # None = the release ratios (release rule) or 0.6 (position rule)
    scales: list[int] | None = None  # explicit pruned scale indices (overrides the rule's choice)
    first_scale: int | None = None
    skip: list[int] | None = None  # explicit scale indices that run no blocks at all
    skip_widths: list[int] | None = None  # release rule: grid widths that run no blocks (fastvar-skip: 48, 64)
    dense_prefix: int | None = None  # None = the rule's layers
    dense_suffix: int | None = None
    rounding: str = "fastvar"  # keep L - int(L * prune_ratio), as released
    cache_scale: int | None = None  # None = the rule's cache scale
    extra: dict = field(default_factory=dict)


class FastVAR(Pruner):
    name = "fastvar"

    def __init__(self, cfg: FastVARConfig | None = None, name: str | None = None):
        self.cfg = cfg or FastVARConfig()
        if name:
            self.name = name
        self.plan: ResolvedPlan | None = None
        self.skip_set: set[int] = set()
        self.cache_si: int | None = None
        self.notes: list[str] = []

    # ---- planning --------------------------------------------------------------------
    def resolve(self, schedule: ScaleSchedule, depth: int) -> tuple[ResolvedPlan, set[int], int | None]:
        plan, skip, cache, _notes = self.resolve_with_notes(schedule, depth)
        return plan, skip, cache

    def resolve_with_notes(self, schedule: ScaleSchedule, depth: int):
        """(plan, skipped scales, cache scale or None, notes on where the release rule had to be completed)."""
        c = self.cfg
        if c.rule not in RULES:
            raise ConfigError(f"fastvar rule must be one of {', '.join(RULES)}, got {c.rule!r}")
        n = len(schedule)
        skip = set(resolve_scales(c.skip, None, schedule)) if c.skip else set()
        explicit = c.scales is not None or c.first_scale is not None
        notes: list[str] = []
        rule_cache = None
        rel = release_scales(schedule, c.skip_widths or ())
        skip |= set(rel.skip)  # skip widths apply whichever scales are pruned
        if c.rule == "release" and not explicit:
            if c.keep is None:
                keep = {si: round(1.0 - r, 10) for si, r in rel.prune.items()}
            elif rel.prune:
                keep = resolve_keep(c.keep, sorted(rel.prune))
            else:
                raise ConfigError(
                    f"{self.name}: a keep ratio was given, but the release's width rule prunes no scale of this schedule "
                    f"(it prunes grids {'/'.join(map(str, RELEASE_PRUNE_BY_WIDTH))} wide); "
                    "use fastvar-pos to choose scales by position, or give scales=[...]")
            rule_cache, notes = rel.cache, list(rel.notes)
            first, end = release_layers(depth, c.dense_prefix, c.dense_suffix)
            if first >= end:
                notes.append(f"the release prunes layers {RELEASE_LAYERS[0]}-{RELEASE_LAYERS[1] - 1}; "
                             f"a {depth}-layer model has none of them: runs dense")
        else:
            notes = [n for n in rel.notes if "skipped before the end" in n]
            scales = resolve_scales(c.scales, c.first_scale, schedule)
            keep = resolve_keep(0.6 if c.keep is None else c.keep, scales)
            first, end = (release_layers(depth, c.dense_prefix, c.dense_suffix) if c.rule == "release"
                          else dense_layer_split(depth, c.dense_prefix, c.dense_suffix))
        keep = {si: k for si, k in keep.items() if si not in skip}
        if explicit and not keep and not skip:
            raise ConfigError("fastvar: no scale to prune or skip on this schedule; set scales and keep explicitly")
        cache = None
        if keep:
            active = sorted(set(keep) | skip)
            if c.cache_scale is not None:
                cache = c.cache_scale + n if c.cache_scale < 0 else c.cache_scale
            else:
                cache = rule_cache if rule_cache is not None else active[0] - 1
            if not (0 <= cache < min(keep)) or cache in skip:
                raise ConfigError(f"fastvar cache scale {cache} must be a dense scale before the first pruned scale {min(keep)}")
        return ResolvedPlan(keep, first, end), skip, cache, notes

    def validate(self, schedule: ScaleSchedule, depth: int) -> None:
        self.resolve(schedule, depth)

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        self.plan, self.skip_set, self.cache_si, self.notes = self.resolve_with_notes(schedule, depth)
        if self.cache_si is not None:
            cache_scale = schedule.scales[self.cache_si]
            self.cache_grid = (cache_scale.h, cache_scale.w)
        self.branch_cache: dict[tuple[int, str], torch.Tensor] = {}

    def skips(self, si: int) -> bool:
        return si in self.skip_set

    def pruned_scales(self, schedule: ScaleSchedule) -> list[int]:
        plan, _, _ = self.resolve(schedule, 10**6)
        return sorted(plan.keep)

    def config_dict(self) -> dict:
        out = super().config_dict()
        if self.plan is not None:
            out["resolved"] = {"keep": self.plan.keep, "skip": sorted(self.skip_set), "cache_scale": self.cache_si,
                               "pruned_layers": [self.plan.first_layer, self.plan.end_layer - 1], "notes": self.notes}
        return out

    # ---- execution -------------------------------------------------------------------
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        if run.si == self.cache_si:
            return self._run_dense_caching(run)
        if not self.plan.prunes(run.si):
            return run_dense_stack(run)
        L = run.scale.n
        k = keep_count(L, self.plan.keep[run.si], rounding=self.cfg.rounding)
        if k >= L:
            return run_dense_stack(run)
        return self._run_pruned(run, k)

    def _run_dense_caching(self, run: ScaleRun) -> torch.Tensor:
        """The cache scale: dense, recording each pruned layer's three gated branch outputs."""
        cos, sin = run.rope(run.pos_L2)
        x = run.x_BLC
        for layer, blk in enumerate(run.model.blocks):
            if not (self.plan.first_layer <= layer < self.plan.end_layer):
                x = run_block_dense(run, layer, x, cos, sin)
                continue
            for name in BRANCHES:
                y = run_branch(blk, name, x, run.cond.mods[layer], cos, sin, run, layer)
                run.count(layer, name, x.shape[1])
                self.branch_cache[(layer, name)] = y
                x = x + y
        return x

    def _restore_base(self, layer: int, name: str, run: ScaleRun) -> torch.Tensor:
        """The cached branch output, area-resized from the cache grid to the current grid: (B, L, C)."""
        # The sampler may have dropped the unconditional rows since the cache scale; the
        # conditional rows come first, so the first rows of the cache are the live ones.
        y = self.branch_cache[(layer, name)][: run.x_BLC.shape[0]]
        ch, cw = self.cache_grid
        h, w = run.grid
        y_BChw = y.transpose(1, 2).unflatten(2, (ch, cw))
        return F.interpolate(y_BChw, size=(h, w), mode="area").flatten(2).transpose(1, 2)

    def _run_pruned(self, run: ScaleRun, k: int) -> torch.Tensor:
        cos, sin = run.rope(run.pos_L2)
        x = run.x_BLC
        official = getattr(run.model, "numerics", "exact") == "official"
        for layer, blk in enumerate(run.model.blocks):
            if not (self.plan.first_layer <= layer < self.plan.end_layer):
                x = run_block_dense(run, layer, x, cos, sin)
                continue
            for name in BRANCHES:
                idx = select_topk(dc_score(x, official), k, order="score")  # re-scored per sub-layer, per row
                cos_k, sin_k = run.rope(run.pos_L2[idx])
                y_kept = run_branch(blk, name, gather_rows(x, idx), run.cond.mods[layer], cos_k, sin_k, run, layer)
                run.count(layer, name, k)
                x = x + scatter_kept(self._restore_base(layer, name, run), idx, y_kept)
        return x
