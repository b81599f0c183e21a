"""Every pruning method on HART's late scales, as a scale runner for stepvar.hart_sampling.

The methods are the project's own (their settings come from the same presets, built by
stepvar.pruning.registry.make_pruner); this module runs them on HART's blocks, which have
two residual branches (attention, FFN) and per-row RoPE positions (the CFG halves sit at
different offsets). Whatever a method does, the runner returns dense hidden states for
every position, so the head and the diffusion head see a complete, restored map; only the
kept tokens' keys and values enter the KV cache.

- dense: every block on every token.
- StepVAR and its ablations (random, texture-only, structure-only): select once per step on
  the scale input (or per block / per branch), run the kept tokens, give each pruned position
  its own input plus its nearest kept token's update. Default scales: grids at least half the
  last grid's side (36, 48 and 64 at 1024).
- FastVAR, HART settings as released: 48x48 and 64x64 pruned (keep 1,152 and 1,024 tokens),
  the DC-distance score re-selected before attention and again before the FFN in all 24
  layers, pruned positions filled from the branch outputs cached at 36x36, area-resized.

Step index si: 0 is the text prefix (never pruned), si >= 1 the grid patch_nums[si].
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models.hart import HartTransformer, KVCache
from .pruning.base import Dense, Pruner, gather_rows
from .pruning.fastvar import FastVAR
from .pruning.plan import dense_layer_split, resolve_indices, resolve_keep
from .pruning.propagation import nearest_kept, propagate, scatter_kept
from .pruning.scores import (dc_score, joint_score, keep_count, normalize_score, select_topk, structure_score,
                             texture_score)
from .pruning.stepvar import StepVAR

BRANCHES = ("attn", "ffn")
# FastVAR's HART release prunes by grid side: the share of tokens it drops.
FASTVAR_HART_PRUNE_BY_SIDE = {48: 0.5, 64: 0.75}
FASTVAR_HART_CACHE_SIDE = 36


@dataclass
class HartPlan:
    keep: dict[int, float]  # pruned step -> keep ratio
    first_layer: int  # layers [first_layer, end_layer) run pruned
    end_layer: int
    rounding: str
    cache_step: int | None = None  # FastVAR: the dense step whose branch outputs fill pruned positions


def _resolve_steps(spec, first_scale, patch_nums) -> list[int]:
    """Pruned steps 1..n-1: HART's step 0 is the text, never pruned."""
    n = len(patch_nums)
    return resolve_indices(spec, first_scale, n,
                           lambda: [i for i, p in enumerate(patch_nums) if i >= 1 and 2 * p >= patch_nums[-1]], 1,
                           f"HART's image steps 1..{n - 1}", f"HART's image steps are 1..{n - 1} (step 0 is the text)")


def hart_plan(pruner: Pruner, patch_nums, depth: int) -> HartPlan | None:
    """The pruned steps, keep ratios and layers of a method on HART; None for dense."""
    if pruner.accelerations.active:
        raise ConfigError(f"{pruner.name}: cfg_drop_from and skip_last have no HART configuration "
                          "(its guidance ramps over the scales and its last scale feeds the diffusion head)")
    if isinstance(pruner, Dense):
        return None
    c = pruner.config
    if isinstance(pruner, FastVAR):
        if c.skip or c.skip_widths:
            raise ConfigError(f"{pruner.name}: skipping scales has no HART configuration (the last scale feeds the diffusion head)")
        if c.scales is None and c.first_scale is None and c.keep is None:
            keep = {i: round(1.0 - FASTVAR_HART_PRUNE_BY_SIDE[p], 10) for i, p in enumerate(patch_nums)
                    if p in FASTVAR_HART_PRUNE_BY_SIDE}
            if not keep:
                raise ConfigError("fastvar: HART's release widths (48, 64) are not in this schedule; set scales and keep")
        else:
            steps = _resolve_steps(c.scales, c.first_scale, patch_nums)
            keep = resolve_keep(0.6 if c.keep is None else c.keep, steps)
        sides = [p for p in patch_nums]
        if c.cache_scale is not None:
            cache = c.cache_scale + len(patch_nums) if c.cache_scale < 0 else c.cache_scale
        elif FASTVAR_HART_CACHE_SIDE in sides and sides.index(FASTVAR_HART_CACHE_SIDE) < min(keep):
            cache = sides.index(FASTVAR_HART_CACHE_SIDE)
        else:
            cache = min(keep) - 1
        if not 1 <= cache < min(keep):
            raise ConfigError(f"fastvar cache scale {cache} must be a dense image step before the first pruned one {min(keep)}")
        # The HART release prunes every layer: no dense prefix or suffix unless asked for.
        first, end = dense_layer_split(depth, c.dense_prefix or 0, c.dense_suffix or 0)
        return HartPlan(keep, first, end, c.rounding, cache_step=cache)
    if isinstance(pruner, StepVAR):
        steps = _resolve_steps(c.scales, c.first_scale, patch_nums)
        first, end = dense_layer_split(depth, c.dense_prefix, c.dense_suffix)
        return HartPlan(resolve_keep(c.keep, steps), first, end, c.rounding)
    raise ConfigError(f"method {pruner.name!r} has no HART implementation")


@dataclass
class HartTokenCounter:
    """Tokens per row processed per (step, layer, branch)."""

    counts: dict[tuple[int, int, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, si: int, layer: int, branch: str, n: int) -> None:
        self.counts[(si, layer, branch)] += n

    def total(self) -> int:
        return sum(self.counts.values())


class HartRunner:
    """A ScaleRunner (see stepvar.hart_sampling) that applies one method."""

    def __init__(self, model: HartTransformer, pruner: Pruner):
        self.model, self.pruner = model, pruner
        self.plan = hart_plan(pruner, model.cfg.patch_nums, model.cfg.depth)
        self.counter = HartTokenCounter()
        self.branch_cache: dict[tuple[int, str], torch.Tensor] = {}
        seed = getattr(pruner.config, "seed", 0)
        self._rng = torch.Generator().manual_seed(seed)

    @property
    def name(self) -> str:
        return self.pruner.name

    # ---- the interface the sampler calls
    def __call__(self, si, x, pos, cos, sin, caches):
        plan = self.plan
        if plan is not None and si == plan.cache_step:
            return self._dense(si, x, cos, sin, caches, record=True)
        if plan is None or si not in plan.keep:
            return self._dense(si, x, cos, sin, caches)
        L = x.shape[1]
        k = keep_count(L, plan.keep[si], rounding=plan.rounding)
        if k >= L:
            return self._dense(si, x, cos, sin, caches)
        if isinstance(self.pruner, FastVAR):
            return self._fastvar(si, x, pos, cos, sin, caches, k)
        if self.pruner.config.selection == "scale":
            return self._stepvar_once(si, x, pos, cos, sin, caches, k)
        return self._stepvar_reselecting(si, x, pos, cos, sin, caches, k)

    # ---- pieces
    def _block(self, si, layer, x, cos, sin, caches):
        n = x.shape[1]
        self.counter.add(si, layer, "attn", n)
        self.counter.add(si, layer, "ffn", n)
        return self.model.blocks[layer](x, cos, sin, caches[layer])

    def _branch(self, si, layer, name, x, cos, sin, caches) -> torch.Tensor:
        blk = self.model.blocks[layer]
        self.counter.add(si, layer, name, x.shape[1])
        if name == "attn":
            return blk.attn_branch(x, cos, sin, caches[layer])
        return blk.ffn_branch(x)

    def _dense(self, si, x, cos, sin, caches: list[KVCache], record: bool = False):
        for layer in range(len(self.model.blocks)):
            if record and self.plan.first_layer <= layer < self.plan.end_layer:
                for name in BRANCHES:
                    y = self._branch(si, layer, name, x, cos, sin, caches)
                    self.branch_cache[(layer, name)] = y
                    x = x + y
            else:
                x = self._block(si, layer, x, cos, sin, caches)
        return x

    def _score(self, x, h, w) -> torch.Tensor:
        c = self.pruner.config
        if c.score == "joint":
            return joint_score(x, h, w, w_str=c.w_str, norm=c.norm, iters=c.power_iters, init=c.power_init,
                               border=c.border, structure_power=c.structure_power)
        if c.score == "texture":
            return texture_score(x, h, w, border=c.border)
        if c.score == "structure":
            return structure_score(x, iters=c.power_iters, init=c.power_init)
        if c.score == "dc":
            return dc_score(x)
        return torch.rand(x.shape[:2], generator=self._rng).to(x.device)

    def _select(self, x, side, k) -> torch.Tensor:
        s = self._score(x, side, side)
        if self.pruner.config.cfg_rows == "shared":
            half = x.shape[0] // 2
            s = normalize_score(s, "minmax")
            s = (s[:half] + s[half:]).repeat(2, 1)
        return select_topk(s, k, order=self.pruner.config.order)

    def _rope_kept(self, pos, idx):
        return self.model.rope_image(gather_rows(pos, idx))  # kept tokens keep their own positions

    def _stepvar_once(self, si, x, pos, cos, sin, caches, k):
        side, depth, plan = self.model.cfg.patch_nums[si], len(self.model.blocks), self.plan
        for layer in range(plan.first_layer):
            x = self._block(si, layer, x, cos, sin, caches)
        idx = self._select(x, side, k)
        xk = start = gather_rows(x, idx)
        cos_k, sin_k = self._rope_kept(pos, idx)
        for layer in range(plan.first_layer, plan.end_layer):
            xk = self._block(si, layer, xk, cos_k, sin_k, caches)
        nn_BL = nearest_kept(idx, side, side, metric=self.pruner.config.metric)
        x = x + propagate(xk - start, nn_BL) if self.pruner.config.propagate == "residual" else propagate(xk, nn_BL)
        for layer in range(plan.end_layer, depth):
            x = self._block(si, layer, x, cos, sin, caches)
        return x

    def _stepvar_reselecting(self, si, x, pos, cos, sin, caches, k):
        side, plan, metric = self.model.cfg.patch_nums[si], self.plan, self.pruner.config.metric
        for layer in range(len(self.model.blocks)):
            if not plan.first_layer <= layer < plan.end_layer:
                x = self._block(si, layer, x, cos, sin, caches)
                continue
            if self.pruner.config.selection == "block":
                idx = self._select(x, side, k)
                cos_k, sin_k = self._rope_kept(pos, idx)
                xk = start = gather_rows(x, idx)
                for name in BRANCHES:
                    xk = xk + self._branch(si, layer, name, xk, cos_k, sin_k, caches)
                x = x + propagate(xk - start, nearest_kept(idx, side, side, metric=metric))
            else:
                for name in BRANCHES:
                    idx = self._select(x, side, k)
                    cos_k, sin_k = self._rope_kept(pos, idx)
                    delta = self._branch(si, layer, name, gather_rows(x, idx), cos_k, sin_k, caches)
                    x = x + propagate(delta, nearest_kept(idx, side, side, metric=metric))
        return x

    def _restore_base(self, layer, name, side):
        y = self.branch_cache[(layer, name)]
        cs = self.model.cfg.patch_nums[self.plan.cache_step]
        y_BChw = y.transpose(1, 2).unflatten(2, (cs, cs))
        return F.interpolate(y_BChw, size=(side, side), mode="area").flatten(2).transpose(1, 2)

    def _fastvar(self, si, x, pos, cos, sin, caches, k):
        side, plan = self.model.cfg.patch_nums[si], self.plan
        for layer in range(len(self.model.blocks)):
            if not plan.first_layer <= layer < plan.end_layer:
                x = self._block(si, layer, x, cos, sin, caches)
                continue
            for name in BRANCHES:
                idx = select_topk(dc_score(x), k, order="score")  # re-scored before each branch, per row
                cos_k, sin_k = self._rope_kept(pos, idx)
                y = self._branch(si, layer, name, gather_rows(x, idx), cos_k, sin_k, caches)
                x = x + scatter_kept(self._restore_base(layer, name, side), idx, y)
        return x


def simulated_counts(pruner: Pruner, cfg) -> dict[tuple[int, int, str], int]:
    """Per-row token counts a method would process, from its plan alone (for FLOPs without weights)."""
    plan = hart_plan(pruner, cfg.patch_nums, cfg.depth)
    out = {}
    for si in range(cfg.num_scales):
        L = cfg.context_tokens if si == 0 else cfg.patch_nums[si] ** 2
        n = L
        if plan is not None and si in plan.keep:
            n = min(L, keep_count(L, plan.keep[si], rounding=plan.rounding))
        for layer in range(cfg.depth):
            pruned_layer = plan is not None and plan.first_layer <= layer < plan.end_layer
            for b in BRANCHES:
                out[(si, layer, b)] = n if pruned_layer else L
    return out
