"""StepVAR: keep tokens by structure (PCA) + texture (local high-pass), propagate by nearest neighbour.

Every open choice of the method (spec stepvar.md §13) is a field of StepVARConfig. The
ablations (texture-only, structure-only, random) are the same engine with another score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .base import BRANCHES, Pruner, ScaleRun, gather_rows, run_block_dense, run_branch, run_dense_stack
from .plan import ResolvedPlan, dense_layer_split, resolve_keep, resolve_scales
from .propagation import nearest_kept, propagate
from .restoration import Restoration, fill_pruned_kv, pruned_positions, run_dense_recording
from .scores import dc_score, joint_score, keep_count, normalize_score, select_topk, structure_score, texture_score

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
    w_str: float = 1.0  # O1: weight of the structure term
    norm: str = "minmax"  # O1: raw | max | minmax | zscore | rank
    structure_power: int = 1  # O1(f): 2 makes the structure term quadratic like the texture term
    power_iters: int = 3  # O2
    power_init: str = "ones"  # O2: ones | variance | random
    border: str = "exclude_pad"  # O9: exclude_pad | zero_pad | replicate | reflect
    selection: str = "scale"  # O3: scale (once, before the pruned layers) | block | sublayer
    cfg_rows: str = "separate"  # O5: separate per row | shared (sum of both rows' normalised scores)
    # O7, with selection "scale": "hidden" gives a pruned position the nearest kept token's final
    # hidden state; "residual" gives it its own scale input plus the nearest kept token's update
    # (h - x). The latter equals propagating every block's update with a fixed selection (the
    # sum of copied updates is the copied sum), so it costs one propagation per scale.
    propagate: str = "residual"  # chosen by measurement: docs/pruning.md
    dense_prefix: int | None = 0  # O12: layers before selection that run on all tokens
    dense_suffix: int | None = 0  # O12: layers after propagation that run on all tokens
    rounding: str = "round"  # O11: round -> round(L*keep); fastvar -> L - int(L*(1-keep))
    order: str = "spatial"  # O13: kept-token order, spatial | score
    metric: str = "euclidean"  # O8: euclidean | chebyshev | manhattan (ties -> lowest row-major index)
    seed: int = 0  # for score = random
    # How pruned positions get their update, with propagate "residual" and selection "scale"
    # (restoration.py): nearest | cached | cached_nearest | idw | cached_idw.
    restore: str = "nearest"
    neighbours: int = 4  # idw rules: kept neighbours mixed
    idw_power: float = 2.0  # idw rules: weight = distance ** -idw_power
    cache_from: str = "previous"  # cached rules: previous (every scale's update) | dense (the last unpruned scale's)
    kv: str = "kept"  # kept | restored: pruned positions also enter the KV cache, in their restored state

    def check(self) -> None:
        for name, value, allowed in (("score", self.score, SCORES), ("selection", self.selection, SELECTIONS),
                                     ("cfg_rows", self.cfg_rows, CFG_ROWS), ("propagate", self.propagate, PROPAGATE)):
            if value not in allowed:
                raise ConfigError(f"stepvar {name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.power_iters < 1:
            raise ConfigError(f"power_iters must be >= 1, got {self.power_iters}")
        if (self.restore != "nearest" or self.kv != "kept") and (self.selection != "scale" or self.propagate != "residual"):
            raise ConfigError("restore and kv options other than nearest/kept need selection scale and propagate residual")


class StepVAR(Pruner):
    name = "stepvar"

    def __init__(self, cfg: StepVARConfig | None = None, name: str | None = None):
        self.cfg = cfg or StepVARConfig()
        self.cfg.check()
        c = self.cfg
        self.restoration = Restoration(c.restore, c.neighbours, c.idw_power, c.cache_from, c.kv, c.metric)
        if name:
            self.name = name
        self.plan: ResolvedPlan | None = None

    # ---- planning --------------------------------------------------------------------
    def resolve(self, schedule: ScaleSchedule, depth: int) -> ResolvedPlan:
        scales = resolve_scales(self.cfg.scales, self.cfg.first_scale, schedule)
        keep = resolve_keep(self.cfg.keep, scales)
        first, end = dense_layer_split(depth, self.cfg.dense_prefix, self.cfg.dense_suffix)
        self.restoration.check_plan(sorted(keep))
        return ResolvedPlan(keep, first, end)

    def validate(self, schedule: ScaleSchedule, depth: int) -> None:
        self.resolve(schedule, depth)

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        self.plan = self.resolve(schedule, depth)
        self._rng = torch.Generator().manual_seed(self.cfg.seed)
        self.restoration.begin()

    def pruned_scales(self, schedule: ScaleSchedule) -> list[int]:
        return sorted(self.resolve(schedule, 10**6).keep)

    # ---- selection -------------------------------------------------------------------
    def score(self, x_BLC: torch.Tensor, h: int, w: int) -> torch.Tensor:
        c = self.cfg
        if c.score == "joint":
            return joint_score(x_BLC, h, w, w_str=c.w_str, norm=c.norm, iters=c.power_iters, init=c.power_init,
                               border=c.border, structure_power=c.structure_power)
        if c.score == "texture":
            return texture_score(x_BLC, h, w, border=c.border)
        if c.score == "structure":
            return structure_score(x_BLC, iters=c.power_iters, init=c.power_init)
        if c.score == "dc":
            return dc_score(x_BLC)
        rand = torch.rand(x_BLC.shape[:2], generator=self._rng)
        return rand.to(x_BLC.device)

    def select(self, x_BLC: torch.Tensor, h: int, w: int, k: int, cfg_pairs: bool = False) -> torch.Tensor:
        """Kept positions (B, l), per row, or shared by the cond/uncond rows of each prompt."""
        s_BL = self.score(x_BLC, h, w)
        if self.cfg.cfg_rows == "shared" and cfg_pairs:
            half = x_BLC.shape[0] // 2
            s = normalize_score(s_BL, "minmax")
            s_BL = (s[:half] + s[half:]).repeat(2, 1)
        return select_topk(s_BL, k, order=self.cfg.order)

    def keep_tokens(self, si: int, L: int) -> int:
        return keep_count(L, self.plan.keep[si], rounding=self.cfg.rounding)

    # ---- execution -------------------------------------------------------------------
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        plan = self.plan
        L = run.scale.n
        if not plan.prunes(run.si) or self.keep_tokens(run.si, L) >= L:
            if self.restoration.wants_record(pruned=False):  # the same dense calls, keeping the update map
                x, maps = run_dense_recording(run, plan.first_layer, plan.end_layer, self.restoration.fills_kv)
                self.restoration.record(run.grid, maps)
                return x
            return run_dense_stack(run)  # nothing to prune: exactly the dense computation
        if self.cfg.selection == "scale":
            return self._run_once_per_scale(run)
        return self._run_reselecting(run)

    def _run_once_per_scale(self, run: ScaleRun) -> torch.Tensor:
        """O3 (a)/(b): one subset through all pruned layers, one propagation at the end."""
        h, w = run.grid
        depth = len(run.model.blocks)
        cos, sin = run.rope(run.pos_L2)
        x = run.x_BLC
        for layer in range(self.plan.first_layer):
            x = run_block_dense(run, layer, x, cos, sin)
        idx_Bl = self.select(x, h, w, self.keep_tokens(run.si, run.scale.n), run.cfg_pairs)
        x_BlC = start_BlC = gather_rows(x, idx_Bl)
        cos_k, sin_k = run.rope(run.pos_L2[idx_Bl])  # kept tokens keep their own RoPE positions
        rest = self.restoration
        restorer = rest.for_scale(idx_Bl, h, w) if self.cfg.propagate == "residual" else None
        pruned_Bp = pruned_positions(idx_Bl, run.scale.n) if rest.fills_kv else None
        maps = []
        for layer in range(self.plan.first_layer, self.plan.end_layer):
            if rest.fills_kv:
                maps.append(restorer.update(x_BlC - start_BlC, layer - self.plan.first_layer))
                fill_pruned_kv(run, layer, x, maps[-1], pruned_Bp)
            x_BlC = run_block_dense(run, layer, x_BlC, cos_k, sin_k)
        if restorer is not None:
            maps.append(restorer.update(x_BlC - start_BlC))
            x = x + maps[-1]
            if rest.wants_record(pruned=True):
                rest.record(run.grid, maps)
        else:
            x = propagate(x_BlC, nearest_kept(idx_Bl, h, w, metric=self.cfg.metric))
        for layer in range(self.plan.end_layer, depth):
            x = run_block_dense(run, layer, x, cos, sin)
        return x

    def _run_reselecting(self, run: ScaleRun) -> torch.Tensor:
        """O3 (c)/(d): re-score the full-length state per block or per sub-layer; NN-propagate each update."""
        h, w = run.grid
        k = self.keep_tokens(run.si, run.scale.n)
        cos, sin = run.rope(run.pos_L2)
        x = run.x_BLC
        for layer, blk in enumerate(run.model.blocks):
            if not (self.plan.first_layer <= layer < self.plan.end_layer):
                x = run_block_dense(run, layer, x, cos, sin)
                continue
            mod = run.cond.mods[layer]
            if self.cfg.selection == "block":
                idx = self.select(x, h, w, k, run.cfg_pairs)
                nn_BL = nearest_kept(idx, h, w, metric=self.cfg.metric)
                cos_k, sin_k = run.rope(run.pos_L2[idx])
                xk = gather_rows(x, idx)
                start = xk
                for name in BRANCHES:
                    xk = xk + run_branch(blk, name, xk, mod, cos_k, sin_k, run, layer)
                    run.count(layer, name, k)
                x = x + propagate(xk - start, nn_BL)
            else:
                for name in BRANCHES:
                    idx = self.select(x, h, w, k, run.cfg_pairs)
                    cos_k, sin_k = run.rope(run.pos_L2[idx])
                    delta = run_branch(blk, name, gather_rows(x, idx), mod, cos_k, sin_k, run, layer)
                    run.count(layer, name, k)
                    x = x + propagate(delta, nearest_kept(idx, h, w, metric=self.cfg.metric))
        return x
