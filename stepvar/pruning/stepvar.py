"""StepVAR: keep tokens by structure (PCA) + texture (local high-pass), propagate by nearest neighbour.

Every open choice of the method is a field of StepVARConfig. The ablations (texture-only,
structure-only, random) are the same engine with another score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .base import BRANCHES, Pruner, ScaleRun, gather_rows, run_block_dense, run_branch_counted, run_dense_stack, \
    run_layers
from .plan import PruningPlan, dense_layer_split, resolve_keep, resolve_scales
from .propagation import METRICS, propagate
from .restoration import Restoration, fill_pruned_kv, pruned_positions, run_dense_recording
from .scores import BORDERS, INITS, NORMS, ORDERS, ROUNDINGS, dc_score, joint_score, keep_count, select_topk, \
    structure_score
from .spacetime import WINDOWS, check_time_weight, nearest_kept_grid, shared_rows, texture_score_grid

SCORES = ("joint", "texture", "structure", "random", "dc")
SELECTIONS = ("scale", "block", "sublayer")
CFG_ROWS = ("separate", "shared")
PROPAGATE = ("hidden", "residual")


@dataclass
class StepVARConfig:
    keep: float | list | dict = 0.4  # keep ratio of every pruned scale, or per scale
    scales: list[int] | None = None  # pruned scale indices; None = grids >= half the final side
    first_scale: int | None = None  # alternative to scales: prune this scale and all later ones
    score: str = "joint"  # joint | texture | structure | random | dc (ablations)
    w_str: float = 1.0  # weight of the structure term in the joint score
    norm: str = "minmax"  # normalisation of each term before mixing: raw | max | minmax | zscore | rank
    structure_power: int = 1  # 2 makes the structure term quadratic like the texture term
    power_iters: int = 3  # power-iteration steps of the principal component
    power_init: str = "ones"  # power-iteration start vector: ones | variance | random
    border: str = "exclude_pad"  # texture filter at the grid border: exclude_pad | zero_pad | replicate | reflect
    selection: str = "scale"  # when tokens are selected: scale (once, before the pruned layers) | block | sublayer
    cfg_rows: str = "separate"  # CFG rows: separate per row | shared (sum of both rows' normalised scores)
    # with selection "scale": "hidden" gives a pruned position the nearest kept token's final
    # hidden state; "residual" gives it its own scale input plus the nearest kept token's update
    # (h - x). The latter equals propagating every block's update with a fixed selection (the
    # sum of copied updates is the copied sum), so it costs one propagation per scale.
    propagate: str = "residual"  # chosen by measurement: docs/pruning.md
    dense_prefix: int | None = 0  # layers before selection that run on all tokens
    dense_suffix: int | None = 0  # layers after propagation that run on all tokens
    rounding: str = "round"  # kept-count rounding: round -> round(L*keep); fastvar -> L - int(L*(1-keep))
    order: str = "spatial"  # kept-token order, spatial | score
    metric: str = "euclidean"  # nearest-neighbour distance: euclidean | chebyshev | manhattan (ties -> lowest row-major index)
    seed: int = 0  # for score = random
    # How pruned positions get their update, with propagate "residual" and selection "scale"
    # (restoration.py): nearest | cached | cached_nearest | idw | cached_idw.
    restore: str = "nearest"
    restore_wide: str | None = None  # a second rule for grids at least wide_from tokens a side (None: restore everywhere)
    wide_from: int = 20
    neighbours: int = 4  # idw rules: kept neighbours mixed
    idw_power: float = 2.0  # idw rules: weight = distance ** -idw_power
    cache_from: str = "previous"  # cached rules: previous (every scale's update) | dense (the last unpruned scale's)
    kv: str = "kept"  # kept | restored: pruned positions also enter the KV cache, in their restored state
    # Video scales (t > 1; images ignore both): the texture filter's neighbourhood, per frame
    # (3 x 3) or over the volume (3 x 3 x 3); and how far a latent frame is for propagation, in
    # grid steps (unset: the nearest kept token of the same frame, else of the nearest frame).
    texture_window: str = "frame"  # frame | volume
    time_weight: float | None = None

    def check(self) -> None:
        for name, value, allowed in (("score", self.score, SCORES), ("selection", self.selection, SELECTIONS),
                                     ("cfg_rows", self.cfg_rows, CFG_ROWS), ("propagate", self.propagate, PROPAGATE),
                                     ("norm", self.norm, NORMS), ("power_init", self.power_init, INITS),
                                     ("border", self.border, BORDERS), ("order", self.order, ORDERS),
                                     ("rounding", self.rounding, ROUNDINGS), ("metric", self.metric, METRICS),
                                     ("texture_window", self.texture_window, WINDOWS)):
            if value not in allowed:
                raise ConfigError(f"stepvar {name} must be one of {', '.join(allowed)}, got {value!r}")
        check_time_weight(self.time_weight)
        if self.power_iters < 1:
            raise ConfigError(f"power_iters must be >= 1, got {self.power_iters}")
        if (self.restore != "nearest" or self.restore_wide not in (None, "nearest") or self.kv != "kept") and (self.selection != "scale" or self.propagate != "residual"):
            raise ConfigError("restore and kv options other than nearest/kept need selection scale and propagate residual")


class StepVAR(Pruner):
    name = "stepvar"
    config_class = StepVARConfig

    def __init__(self, config: StepVARConfig | None = None, name: str | None = None):
        super().__init__(config, name)
        self.config.check()
        c = self.config
        self.restoration = Restoration(c.restore, c.neighbours, c.idw_power, c.cache_from, c.kv, c.metric, c.time_weight,
                                       c.restore_wide, c.wide_from)

    # ---- planning --------------------------------------------------------------------
    def plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        c = self.config
        scales = resolve_scales(c.scales, c.first_scale, schedule)
        keep = resolve_keep(c.keep, scales, len(schedule))
        self.restoration.check_plan({si: (schedule.scales[si].h, schedule.scales[si].w) for si in keep})
        kept = {si: keep_count(schedule.scales[si].n, k, rounding=c.rounding) for si, k in keep.items()}
        layers = dense_layer_split(depth, c.dense_prefix, c.dense_suffix)
        filled = {si: schedule.scales[si].n - k for si, k in kept.items()} if self.restoration.fills_kv else {}
        return PruningPlan(tuple(s.n for s in schedule.scales), depth, keep, kept, layers, kv_filled=filled)

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        super().begin(schedule, depth)
        self._rng = torch.Generator().manual_seed(self.config.seed)
        self.restoration.begin()

    # ---- selection -------------------------------------------------------------------
    def score(self, x_BLC: torch.Tensor, h: int, w: int, t: int = 1) -> torch.Tensor:
        c = self.config
        if c.score == "joint":
            return joint_score(x_BLC, h, w, w_str=c.w_str, norm=c.norm, iters=c.power_iters, init=c.power_init,
                               border=c.border, structure_power=c.structure_power, t=t, window=c.texture_window)
        if c.score == "texture":
            return texture_score_grid(x_BLC, (t, h, w), border=c.border, window=c.texture_window)
        if c.score == "structure":
            return structure_score(x_BLC, iters=c.power_iters, init=c.power_init)
        if c.score == "dc":
            return dc_score(x_BLC)
        rand = torch.rand(x_BLC.shape[:2], generator=self._rng)
        return rand.to(x_BLC.device)

    def select(self, x_BLC: torch.Tensor, h: int, w: int, k: int, cfg_pairs: bool = False, t: int = 1,
               share: bool = False) -> torch.Tensor:
        """Kept positions (B, l), per row, or shared by the cond/uncond rows of each prompt
        (cfg_rows shared, or `share`: the video runner always shares them)."""
        s_BL = self.score(x_BLC, h, w, t)
        if (self.config.cfg_rows == "shared" or share) and cfg_pairs:
            s_BL = shared_rows(s_BL)
        return select_topk(s_BL, k, order=self.config.order)

    def _nearest(self, idx_Bl: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return nearest_kept_grid(idx_Bl, grid, metric=self.config.metric, time_weight=self.config.time_weight)

    # ---- execution -------------------------------------------------------------------
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        plan = self.active_plan
        if not plan.prunes(run.si):
            if self.restoration.wants_record(pruned=False):  # the same dense calls, keeping the update map
                x, maps = run_dense_recording(run, *plan.layers, self.restoration.fills_kv)
                self.restoration.record(run.grid if run.grid3[0] == 1 else run.grid3, maps)
                return x
            return run_dense_stack(run)  # nothing to prune: exactly the dense computation
        if self.config.selection == "scale":
            return self._run_once_per_scale(run)
        return self._run_reselecting(run)

    def _run_once_per_scale(self, run: ScaleRun) -> torch.Tensor:
        """Selection once per scale: one subset through all pruned layers, one propagation at the end."""
        t, h, w = grid = run.grid3
        first, end = self.active_plan.layers
        cos, sin = run.rope(run.pos_L2)
        x = run.x_BLC
        for layer in range(first):
            x = run_block_dense(run, layer, x, cos, sin)
        idx_Bl = run.mask(lambda: self.select(x, h, w, self.active_plan.kept[run.si], run.cfg_pairs, t, run.share_rows))
        x_BlC = start_BlC = gather_rows(x, idx_Bl)
        cos_k, sin_k = run.rope(run.pos_L2[idx_Bl])  # kept tokens keep their own RoPE positions
        rest = self.restoration
        restorer = rest.for_scale(idx_Bl, h, w, t) if self.config.propagate == "residual" else None
        pruned_Bp = pruned_positions(idx_Bl, run.scale.n) if rest.fills_kv else None
        maps = []
        for layer in range(first, end):
            if rest.fills_kv:
                maps.append(restorer.update(x_BlC - start_BlC, layer - first))
                fill_pruned_kv(run, layer, x, maps[-1], pruned_Bp)
            x_BlC = run_block_dense(run, layer, x_BlC, cos_k, sin_k)
        if restorer is not None:
            maps.append(restorer.update(x_BlC - start_BlC))
            x = x + maps[-1]
            if rest.wants_record(pruned=True):
                rest.record(run.grid if t == 1 else grid, maps)
        else:
            x = propagate(x_BlC, self._nearest(idx_Bl, grid))
        for layer in range(end, len(run.model.blocks)):
            x = run_block_dense(run, layer, x, cos, sin)
        return x

    def _run_reselecting(self, run: ScaleRun) -> torch.Tensor:
        """Selection per block or per sub-layer: re-score the full-length state, NN-propagate each update."""
        t, h, w = grid = run.grid3
        k = self.active_plan.kept[run.si]

        def per_block(layer: int, x: torch.Tensor) -> torch.Tensor:
            idx = self.select(x, h, w, k, run.cfg_pairs, t, run.share_rows)
            nn_BL = self._nearest(idx, grid)
            cos_k, sin_k = run.rope(run.pos_L2[idx])
            xk = start = gather_rows(x, idx)
            for name in BRANCHES:
                xk = xk + run_branch_counted(run, layer, name, xk, cos_k, sin_k)
            return x + propagate(xk - start, nn_BL)

        def per_sublayer(layer: int, x: torch.Tensor) -> torch.Tensor:
            for name in BRANCHES:
                idx = self.select(x, h, w, k, run.cfg_pairs, t, run.share_rows)
                cos_k, sin_k = run.rope(run.pos_L2[idx])
                delta = run_branch_counted(run, layer, name, gather_rows(x, idx), cos_k, sin_k)
                x = x + propagate(delta, self._nearest(idx, grid))
            return x

        return run_layers(run, run.x_BLC, self.active_plan.layers,
                          per_block if self.config.selection == "block" else per_sublayer)
