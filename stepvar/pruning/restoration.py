"""How a position that StepVAR pruned at a scale gets its value back.

With the selection fixed for the whole block stack, a kept token leaves the pruned layers
as its input plus an update Δ (the sum of what every layer added to it). A pruned position
keeps its own input and is given a restored update, by one of these rules:

- ``nearest``: the update of its nearest kept token (the paper's propagation);
- ``cached``: the previous scale's update map, area-resized to this grid (what FastVAR does
  per branch: with a fixed selection, adding every layer's resized cached branch output is
  the resized sum, because area resizing is linear);
- ``cached_nearest``: that cached update plus the nearest kept token's correction
  (its actual update minus the cached update at its own position);
- ``idw``: the inverse-distance-weighted mean of the updates of its k nearest kept tokens;
- ``cached_idw``: the cached update plus the inverse-distance-weighted corrections.

``restore_wide`` names a second rule for grids at least ``wide_from`` tokens a side: which
rule keeps the picture depends on how large a token is against the objects it draws (a grid
where one token is a large share of an object takes the previous scale's smoothed update; a
finer grid takes its own kept tokens'), so one preset can serve several resolutions.

Kept positions always keep their own update. The update map that the cached rules read is
recorded by the engine at every scale (``cache_from: previous``) or only at unpruned scales
(``cache_from: dense``, FastVAR's choice of a dense cache scale).

``kv: restored`` also gives pruned positions keys and values: before each pruned layer, a
pruned position's state is its input plus its restored update so far, and its key/value
enter the self-attention cache, so the kept tokens of this scale and every later scale
attend to all positions instead of the kept ones only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.blocks import ada_ln, compute_dtype
from .base import ScaleRun, gather_rows, run_block_dense
from .propagation import kept_mask, propagate, scatter_kept
from .spacetime import area_resize_grid, nearest_kept_grid

RESTORES = ("nearest", "cached", "cached_nearest", "idw", "cached_idw")
CACHE_FROM = ("previous", "dense")
KV_FILL = ("kept", "restored")
_CHUNK_ELEMS = 1 << 21  # int64 elements per (B, positions, kept) distance block


def area_resize(y_BLC: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """A token map resized from grid src_hw to dst_hw by area interpolation: (B, L_src, C) -> (B, L_dst, C)."""
    y_BChw = y_BLC.transpose(1, 2).unflatten(2, tuple(src_hw))
    return F.interpolate(y_BChw, size=tuple(dst_hw), mode="area").flatten(2).transpose(1, 2)


def k_nearest_kept(idx_Bl: torch.Tensor, h: int, w: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest kept positions of every grid position, nearest first: (slot, squared distance), (B, L, k) each.

    slot indexes idx_Bl's row. Distances are exact integer squared Euclidean distances;
    equidistant kept positions are ordered by row-major position, whatever idx_Bl's order.
    """
    L = h * w
    kept_mask(idx_Bl, L)  # range and uniqueness checks
    B, l = idx_Bl.shape
    k = min(k, l)
    kr, kc = (idx_Bl // w)[:, None, :], (idx_Bl % w)[:, None, :]  # (B, 1, l)
    tie = idx_Bl[:, None, :]
    chunk = max(1, _CHUNK_ELEMS // max(1, B * l))
    slots, dists = [], []
    for p0 in range(0, L, chunk):
        pos = torch.arange(p0, min(L, p0 + chunk), device=idx_Bl.device)
        d2 = ((pos // w)[None, :, None] - kr).square() + ((pos % w)[None, :, None] - kc).square()  # (B, P, l)
        key, slot = (d2 * L + tie).topk(k, dim=2, largest=False, sorted=True)
        slots.append(slot)
        dists.append(key // L)
    return torch.cat(slots, 1), torch.cat(dists, 1)


def idw_mix(y_BlC: torch.Tensor, slot_BLk: torch.Tensor, d2_BLk: torch.Tensor, power: float) -> torch.Tensor:
    """Σ_j w_j y[slot_j] / Σ_j w_j with w_j = distance_j ** -power, (B, L, C).

    A kept position (distance 0 to itself) is left to the caller, which writes its own value.
    """
    wgt = d2_BLk.clamp_min(1).to(y_BlC.dtype).pow(-power / 2)
    wgt = wgt / wgt.sum(-1, keepdim=True)
    out = None
    for j in range(slot_BLk.shape[2]):  # k row copies: no (B, L, k, C) temporary
        term = propagate(y_BlC, slot_BLk[:, :, j]) * wgt[:, :, j, None]
        out = term if out is None else out + term
    return out


def pruned_positions(idx_Bl: torch.Tensor, L: int) -> torch.Tensor:
    """The positions not in idx_Bl, ascending, (B, L - l)."""
    mask = kept_mask(idx_Bl, L)
    B = idx_Bl.shape[0]
    return torch.arange(L, device=idx_Bl.device).expand(B, L)[~mask].view(B, -1)


class ScaleRestorer:
    """The restoration of one pruned scale: its neighbours are found once, used for every update."""

    def __init__(self, owner: "Restoration", idx_Bl: torch.Tensor, h: int, w: int, cached: list | None, t: int = 1):
        self.owner, self.idx_Bl, self.h, self.w = owner, idx_Bl, h, w
        self.cached = cached  # area-resized cached update maps: [final] or one per pruned layer + final
        self.rule = rule = owner.rule_for(h, w)
        self.nn_BL = (nearest_kept_grid(idx_Bl, (t, h, w), metric=owner.metric, time_weight=owner.time_weight)
                      if rule in ("nearest", "cached_nearest") else None)
        if rule in ("idw", "cached_idw") and t > 1:
            raise ConfigError(f"restore {rule} works on image grids only; on video scales use nearest, cached or cached_nearest")
        self.knn = k_nearest_kept(idx_Bl, h, w, owner.neighbours) if rule in ("idw", "cached_idw") else None

    def _cached(self, step: int | None) -> torch.Tensor:
        return self.cached[-1] if step is None else self.cached[step]

    def update(self, delta_BlC: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The dense (B, L, C) update from the kept tokens' updates; step = pruned layers run so far (None: all)."""
        rule = self.rule
        if rule == "nearest":
            return propagate(delta_BlC, self.nn_BL)
        if rule == "idw":
            return scatter_kept(idw_mix(delta_BlC, *self.knn, self.owner.power), self.idx_Bl, delta_BlC)
        base = self._cached(step)
        if rule == "cached":
            return scatter_kept(base, self.idx_Bl, delta_BlC)
        corr = delta_BlC - gather_rows(base, self.idx_Bl)
        spread = propagate(corr, self.nn_BL) if rule == "cached_nearest" else idw_mix(corr, *self.knn, self.owner.power)
        return scatter_kept(base + spread, self.idx_Bl, delta_BlC)


class Restoration:
    """A restoration rule plus the per-generation record of update maps that the cached rules read."""

    def __init__(self, restore: str = "nearest", neighbours: int = 4, power: float = 2.0, cache_from: str = "previous",
                 kv: str = "kept", metric: str = "euclidean", time_weight: float | None = None,
                 restore_wide: str | None = None, wide_from: int = 20):
        for name, value, allowed in (("restore", restore, RESTORES), ("cache_from", cache_from, CACHE_FROM),
                                     ("kv", kv, KV_FILL), ("restore_wide", restore_wide, RESTORES + (None,))):
            if value not in allowed:
                raise ConfigError(f"stepvar {name} must be one of {', '.join(a for a in allowed if a)}, got {value!r}")
        if neighbours < 1:
            raise ConfigError(f"neighbours must be >= 1, got {neighbours}")
        if power < 0:
            raise ConfigError(f"idw_power must be >= 0, got {power}")
        if isinstance(wide_from, bool) or not isinstance(wide_from, int) or wide_from < 1:
            raise ConfigError(f"wide_from must be a grid side >= 1 (tokens), got {wide_from!r}")
        self.restore, self.neighbours, self.power = restore, int(neighbours), float(power)
        self.cache_from, self.kv, self.metric, self.time_weight = cache_from, kv, metric, time_weight
        self.restore_wide, self.wide_from = restore_wide, wide_from
        self.cache_live = self.uses_cache  # narrowed by check_plan to the rules the plan's grids use
        self.begin()

    def rule_for(self, h: int, w: int) -> str:
        """The rule for a pruned h x w grid: restore_wide from wide_from tokens a side on, else restore."""
        return self.restore_wide if self.restore_wide is not None and max(h, w) >= self.wide_from else self.restore

    @property
    def uses_cache(self) -> bool:
        """Some grid may read the recorded update maps (for a given plan: cache_live)."""
        return any(r is not None and r.startswith("cached") for r in (self.restore, self.restore_wide))

    @property
    def fills_kv(self) -> bool:
        return self.kv == "restored"

    def begin(self) -> None:
        self.record_grid: tuple[int, ...] | None = None
        self.record_maps: list[torch.Tensor] | None = None

    def check_plan(self, pruned: dict[int, tuple[int, int]]) -> None:
        """pruned: scale index -> (h, w) of every pruned scale. Decides whether any update map must be recorded."""
        rules = {si: self.rule_for(*hw) for si, hw in pruned.items()}
        if 0 in rules and rules[0].startswith("cached"):
            raise ConfigError(f"restore {rules[0]} reads the previous scale's update: scale 0 cannot be pruned with it")
        self.cache_live = any(r.startswith("cached") for r in rules.values())

    def wants_record(self, pruned: bool) -> bool:
        return self.cache_live and (self.cache_from == "previous" or not pruned)

    def record(self, grid: tuple[int, ...], maps: list[torch.Tensor]) -> None:
        """Keep a scale's update maps: the cumulative update before each pruned layer (if kv fill needs them), then the total."""
        self.record_grid, self.record_maps = tuple(grid), maps

    def for_scale(self, idx_Bl: torch.Tensor, h: int, w: int, t: int = 1) -> ScaleRestorer:
        cached = None
        if self.rule_for(h, w).startswith("cached"):
            if self.record_maps is None:
                raise ConfigError(f"restore {self.restore}: no earlier scale's update was recorded")
            # The sampler may have dropped the unconditional rows since the recorded scale; the
            # conditional rows come first, so the first rows are the live ones.
            rows = idx_Bl.shape[0]
            maps = self.record_maps if self.fills_kv else self.record_maps[-1:]
            cached = [area_resize_grid(m[:rows], self.record_grid, (t, h, w)) for m in maps]
        return ScaleRestorer(self, idx_Bl, h, w, cached, t)


def run_dense_recording(run: ScaleRun, first: int, end: int, per_layer: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The dense block stack (the same calls as run_dense_stack), also returning the update of layers [first, end).

    With per_layer, the list holds the cumulative update before each of those layers (the
    first is zero) and then the total; otherwise only the total.
    """
    cos, sin = run.rope(run.pos_L2)
    x = run.x_BLC
    start = None
    maps: list[torch.Tensor] = []
    for layer in range(len(run.model.blocks)):
        if layer == first:
            start = x
        if per_layer and first <= layer < end:
            maps.append(x - start)
        x = run_block_dense(run, layer, x, cos, sin)
        if layer == end - 1:
            maps.append(x - start)
    return x, maps


def fill_pruned_kv(run: ScaleRun, layer: int, x_start_BLC: torch.Tensor, update_BLC: torch.Tensor,
                   pruned_Bp: torch.Tensor) -> None:
    """Append the keys/values of the pruned positions, in their restored state entering `layer`, to its cache."""
    blk = run.model.blocks[layer]
    mod = run.cond.mods[layer]
    state = gather_rows(x_start_BLC + update_BLC, pruned_Bp)
    cos, sin = run.rope(run.pos_L2[pruned_Bp])
    h = ada_ln(state, mod.scale1, mod.shift1).to(compute_dtype(blk.sa.proj.weight))
    k, v = blk.sa.kv(h, cos, sin)
    run.caches[layer].extend(k, v)
    run.count(layer, "kv", pruned_Bp.shape[1])
