"""FastVAR (ICCV 2025) as released, and its variants.

Per pruned layer and scale, each of SA, CA and FFN re-scores the current full-length
state by squared distance to the row's mean token, runs on the kept tokens (score order),
and fills the other positions from that branch's output cached at the last dense scale,
area-resized to the current grid. The residual stream stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .base import BRANCHES, Pruner, ScaleRun, gather_rows, run_branch_counted, run_dense_stack, run_layers
from .plan import (RELEASE_LAYERS, RELEASE_PRUNE_BY_WIDTH, PruningPlan, dense_layer_split, release_layers,
                   release_scales, resolve_keep, resolve_scales)
from .propagation import scatter_kept
from .spacetime import area_resize_grid, shared_rows
from .scores import ROUNDINGS, dc_score, keep_count, select_topk

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
    skip_widths: list[int] | None = None  # grid widths that run no blocks (fastvar-skip: the release's 48, 64)
    dense_prefix: int | None = None  # None = the rule's layers
    dense_suffix: int | None = None
    rounding: str = "fastvar"  # keep L - int(L * prune_ratio), as released
    cache_scale: int | None = None  # None = the rule's cache scale
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"fastvar rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")


class FastVAR(Pruner):
    name = "fastvar"
    config_class = FastVARConfig

    # ---- planning --------------------------------------------------------------------
    def plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        """The release's rules (or the position rule), resolved; extra holds the cache scale and
        notes on where the release rule had to be completed because the release cannot run there."""
        c = self.config
        if c.rule not in RULES:
            raise ConfigError(f"fastvar rule must be one of {', '.join(RULES)}, got {c.rule!r}")
        n = len(schedule)
        skip = set(resolve_scales(c.skip, None, schedule)) if c.skip else set()
        explicit = c.scales is not None or c.first_scale is not None
        rule_cache = None
        rel = release_scales(schedule, c.skip_widths or ())
        skip |= set(rel.skip)  # skip widths apply whichever scales are pruned
        if c.rule == "release" and not explicit:
            if c.keep is None:
                keep = {si: round(1.0 - r, 10) for si, r in rel.prune.items()}
            elif rel.prune:
                keep = resolve_keep(c.keep, sorted(rel.prune))
            elif isinstance(c.keep, (int, float)) and c.keep == 1.0:
                keep = {}  # keep everything where nothing is pruned: nothing to refuse
            else:
                raise ConfigError(
                    f"{self.name}: a keep ratio was given, but the release's width rule prunes no scale of this schedule "
                    f"(it prunes grids {'/'.join(map(str, RELEASE_PRUNE_BY_WIDTH))} wide); "
                    "use fastvar-pos to choose scales by position, or give scales=[...]")
            rule_cache, notes = rel.cache, list(rel.notes)
            layers = release_layers(depth, c.dense_prefix, c.dense_suffix)
            if layers[0] >= layers[1]:
                notes.append(f"the release prunes layers {RELEASE_LAYERS[0]}-{RELEASE_LAYERS[1] - 1}; "
                             f"a {depth}-layer model has none of them: runs dense")
        else:
            notes = [note for note in rel.notes if "skipped before the end" in note]
            scales = resolve_scales(c.scales, c.first_scale, schedule)
            keep = resolve_keep(0.6 if c.keep is None else c.keep, scales, len(schedule))
            layers = (release_layers(depth, c.dense_prefix, c.dense_suffix) if c.rule == "release"
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
        kept = {si: keep_count(schedule.scales[si].n, k, rounding=c.rounding) for si, k in keep.items()}
        return PruningPlan(tuple(s.n for s in schedule.scales), depth, keep, kept, layers, frozenset(skip),
                           {"cache_scale": cache, "notes": notes})

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        super().begin(schedule, depth)
        self.cache_si = self.active_plan.extra["cache_scale"]
        if self.cache_si is not None:
            cache_scale = schedule.scales[self.cache_si]
            self.cache_grid = (getattr(cache_scale, "t", 1), cache_scale.h, cache_scale.w)
        self.branch_cache: dict[tuple[int, str], torch.Tensor] = {}

    # ---- execution -------------------------------------------------------------------
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        if run.si == self.cache_si:
            return self._run_dense_caching(run)
        if not self.active_plan.prunes(run.si):
            return run_dense_stack(run)
        return self._run_pruned(run, self.active_plan.kept[run.si])

    def _run_dense_caching(self, run: ScaleRun) -> torch.Tensor:
        """The cache scale: dense, recording each pruned layer's three gated branch outputs."""
        cos, sin = run.rope(run.pos_L2)

        def caching(layer: int, x: torch.Tensor) -> torch.Tensor:
            for name in BRANCHES:
                y = run_branch_counted(run, layer, name, x, cos, sin)
                self.branch_cache[(layer, name)] = y
                x = x + y
            return x

        return run_layers(run, run.x_BLC, self.active_plan.layers, caching)

    def _restore_base(self, layer: int, name: str, run: ScaleRun) -> torch.Tensor:
        """The cached branch output, area-resized from the cache grid to the current grid: (B, L, C)."""
        # The sampler may have dropped the unconditional rows since the cache scale; the
        # conditional rows come first, so the first rows of the cache are the live ones.
        y = self.branch_cache[(layer, name)][: run.x_BLC.shape[0]]
        return area_resize_grid(y, self.cache_grid, run.grid3)

    def _run_pruned(self, run: ScaleRun, k: int) -> torch.Tensor:
        official = getattr(run.model, "numerics", "exact") == "official"

        def pruned(layer: int, x: torch.Tensor) -> torch.Tensor:
            for name in BRANCHES:
                score = dc_score(x, official)  # re-scored per sub-layer, per row (video: one score for both rows)
                idx = select_topk(shared_rows(score) if run.share_rows and run.cfg_pairs else score, k, order="score")
                cos_k, sin_k = run.rope(run.pos_L2[idx])
                y_kept = run_branch_counted(run, layer, name, gather_rows(x, idx), cos_k, sin_k)
                x = x + scatter_kept(self._restore_base(layer, name, run), idx, y_kept)
            return x

        return run_layers(run, run.x_BLC, self.active_plan.layers, pruned)

    def config_dict(self) -> dict:
        out = super().config_dict()
        if self.active_plan is not None and "resolved" not in out:  # e.g. nothing pruned: the notes say why
            out["resolved"] = self.active_plan.to_dict()
        return out
