"""FastVAR (ICCV 2025) as released, and its variants.

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
from .base import BRANCHES, Pruner, ScaleRun, gather_rows, run_branch_counted, run_dense_stack, run_layers
from .plan import PruningPlan, dense_layer_split, resolve_keep, resolve_scales
from .propagation import scatter_kept
from .scores import dc_score, keep_count, select_topk

# The Infinity-2B release: prune ratios keyed by grid width, and the widths it skips.
RELEASE_PRUNE_BY_WIDTH = {32: 0.4, 40: 0.5}
RELEASE_SKIP_WIDTHS = (48, 64)


@dataclass
class FastVARConfig:
    keep: float | list | dict | None = None  # None = the release ratios (by width) where they apply
    scales: list[int] | None = None  # pruned scales; None = release widths, else the StepVAR default rule
    first_scale: int | None = None
    skip: list[int] | None = None  # scales that run no blocks at all (fastvar-skip: the last two)
    dense_prefix: int | None = None  # None = 3 of 32 layers, scaled to depth (release: layers 3-27 pruned)
    dense_suffix: int | None = None  # None = 4 of 32
    rounding: str = "fastvar"  # keep L - int(L * prune_ratio), as released
    cache_scale: int | None = None  # None = the last unpruned, unskipped scale before the first pruned one
    extra: dict = field(default_factory=dict)


def _release_keep(schedule: ScaleSchedule) -> dict[int, float]:
    """{scale: keep} of the width rule; empty when no scale has a release width."""
    return {i: round(1.0 - RELEASE_PRUNE_BY_WIDTH[s.w], 10)
            for i, s in enumerate(schedule.scales) if s.w in RELEASE_PRUNE_BY_WIDTH}


class FastVAR(Pruner):
    name = "fastvar"
    config_class = FastVARConfig

    # ---- planning --------------------------------------------------------------------
    def plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        c = self.config
        n = len(schedule)
        skip = set(resolve_scales(c.skip, None, schedule)) if c.skip else set()
        release = _release_keep(schedule) if schedule.template == 1.0 else {}
        if c.scales is None and c.first_scale is None and c.keep is None and release:
            keep = release
        else:
            scales = resolve_scales(c.scales, c.first_scale, schedule)
            keep = resolve_keep(0.6 if c.keep is None else c.keep, scales)
        keep = {si: k for si, k in keep.items() if si not in skip}
        if not keep and not skip:
            raise ConfigError("fastvar: no scale to prune or skip on this schedule; set scales and keep explicitly")
        layers = dense_layer_split(depth, c.dense_prefix, c.dense_suffix)
        active = sorted(set(keep) | skip)
        cache = c.cache_scale if c.cache_scale is not None else active[0] - 1
        cache = cache + n if cache < 0 else cache
        if keep and not (0 <= cache < min(keep)) or cache in keep or cache in skip:
            raise ConfigError(f"fastvar cache scale {cache} must be a dense scale before the first pruned scale {min(keep)}")
        kept = {si: keep_count(schedule.scales[si].n, k, rounding=c.rounding) for si, k in keep.items()}
        return PruningPlan(tuple(s.n for s in schedule.scales), depth, keep, kept, layers, frozenset(skip),
                           {"cache_scale": cache})

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        super().begin(schedule, depth)
        self.cache_si = self.active_plan.extra["cache_scale"]
        cache_scale = schedule.scales[self.cache_si]
        self.cache_grid = (cache_scale.h, cache_scale.w)
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
        ch, cw = self.cache_grid
        h, w = run.grid
        y_BChw = y.transpose(1, 2).unflatten(2, (ch, cw))
        return F.interpolate(y_BChw, size=(h, w), mode="area").flatten(2).transpose(1, 2)

    def _run_pruned(self, run: ScaleRun, k: int) -> torch.Tensor:
        def pruned(layer: int, x: torch.Tensor) -> torch.Tensor:
            for name in BRANCHES:
                idx = select_topk(dc_score(x), k, order="score")  # re-scored per sub-layer, per row
                cos_k, sin_k = run.rope(run.pos_L2[idx])
                y_kept = run_branch_counted(run, layer, name, gather_rows(x, idx), cos_k, sin_k)
                x = x + scatter_kept(self._restore_base(layer, name, run), idx, y_kept)
            return x

        return run_layers(run, run.x_BLC, self.active_plan.layers, pruned)
