"""Which scales and layers a method prunes, resolved against a concrete schedule and depth.

Scales are keyed by index (negative counts from the end). The default rule prunes the
scales whose grid is at least half the final grid's side: at 1024 1:1 that is 32, 40,
48 and 64 (the four scales that hold 86% of the tokens), at 256 it is 8, 12 and 16.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .base import check_keep


def default_pruned_scales(schedule: ScaleSchedule) -> list[int]:
    last = schedule.last
    return [i for i, s in enumerate(schedule.scales) if 2 * s.h >= last.h and 2 * s.w >= last.w and s.n > 1]


def resolve_scales(spec: list[int] | None, first_scale: int | None, schedule: ScaleSchedule) -> list[int]:
    """Explicit indices, or everything from first_scale on, or the default rule."""
    n = len(schedule)
    if spec is not None and first_scale is not None:
        raise ConfigError("give either scales or first_scale, not both")
    if first_scale is not None:
        fs = first_scale + n if first_scale < 0 else first_scale
        if not 0 <= fs < n:
            raise ConfigError(f"first pruned scale {first_scale} is outside this schedule's scales 0..{n - 1}")
        return list(range(fs, n))
    if spec is None:
        return default_pruned_scales(schedule)
    out = []
    for si in spec:
        idx = si + n if si < 0 else si
        if not 0 <= idx < n:
            raise ConfigError(f"cannot prune scale {si}: this schedule has scales 0..{n - 1} ({schedule.describe()})")
        out.append(idx)
    return sorted(set(out))


def resolve_keep(keep: float | dict | list, scales: list[int]) -> dict[int, float]:
    """One keep ratio for all pruned scales, a list aligned with them, or {scale: keep}."""
    if isinstance(keep, (int, float)):
        return {si: check_keep(float(keep)) for si in scales}
    if isinstance(keep, (list, tuple)):
        if len(keep) != len(scales):
            raise ConfigError(f"{len(keep)} keep ratios given for {len(scales)} pruned scales {scales}")
        return {si: check_keep(float(k)) for si, k in zip(scales, keep)}
    if isinstance(keep, dict):
        table = {int(k): check_keep(float(v)) for k, v in keep.items()}
        missing = [si for si in scales if si not in table]
        if missing:
            raise ConfigError(f"no keep ratio for pruned scales {missing}")
        return {si: table[si] for si in scales}
    raise ConfigError(f"keep must be a number, a list or a mapping, got {keep!r}")


def dense_layer_split(depth: int, prefix: int | None, suffix: int | None) -> tuple[int, int]:
    """(first pruned layer, first dense-suffix layer). None means FastVAR's 3 of 32 / 4 of 32, scaled to depth."""
    p = round(depth * 3 / 32) if prefix is None else prefix
    s = round(depth * 4 / 32) if suffix is None else suffix
    if p < 0 or s < 0 or p + s >= depth:
        raise ConfigError(f"dense layers ({p} first, {s} last) leave no layer to prune in a {depth}-layer model")
    return p, depth - s


@dataclass
class ResolvedPlan:
    keep: dict[int, float]  # pruned scale index -> keep ratio
    first_layer: int  # layers [first_layer, end_layer) run pruned
    end_layer: int

    def prunes(self, si: int) -> bool:
        return si in self.keep
