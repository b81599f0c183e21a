"""What a method computes on a concrete schedule and model: the PruningPlan, and the rules that resolve it.

A method's plan is the contract between the method and everything that accounts for it:
the FLOP counter, bench, the records saved with every output and the token-count tests all
read the plan, never the method's class. It says, per scale, which layers run pruned and
how many tokens per row each of their branches (SA, CA, FFN) processes; which scales are
skipped outright; everything else runs dense.

Scales are keyed by index (negative counts from the end). The default rule prunes the
scales whose grid is at least half the final grid's side: at 1024 1:1 that is 32, 40,
48 and 64 (the four scales that hold 86% of the tokens), at 256 it is 8, 12 and 16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..schedules import ScaleSchedule

BRANCHES = ("sa", "ca", "ffn")


def check_keep(keep: float, what: str = "keep") -> float:
    if not (0.0 < keep <= 1.0):
        raise ConfigError(f"{what} must be in (0, 1], got {keep}")
    return float(keep)


@dataclass(frozen=True)
class PruningPlan:
    """Tokens per row that each (scale, layer, branch) will process, resolved before anything runs.

    keep:      pruned scale -> keep ratio (as configured; recorded with every output)
    kept:      pruned scale -> tokens kept per row in every branch of the pruned layers
    layers:    (first, end): the layers [first, end) run pruned at a pruned scale, the rest dense
    skipped:   scales that run no blocks and no head at all
    kv_filled: pruned scale -> positions per row that, in every pruned layer, only add their keys and
               values to the self-attention cache (StepVAR's kv: restored); counted as branch "kv"
    extra:     method-specific resolved settings worth recording (e.g. FastVAR's cache scale)
    cfg_drop_from: the first scale run without the unconditional guidance row (None: guidance rows run
               wherever guidance is on); skip_last: how many of `skipped` are the last scales, skipped
               by the skip_last acceleration (stepvar.pruning.accelerations)
    """

    scale_tokens: tuple[int, ...]  # dense tokens of every scale of the schedule
    depth: int
    keep: dict[int, float] = field(default_factory=dict)
    kept: dict[int, int] = field(default_factory=dict)
    layers: tuple[int, int] = (0, 0)
    skipped: frozenset[int] = frozenset()
    extra: dict = field(default_factory=dict)
    kv_filled: dict[int, int] = field(default_factory=dict)
    cfg_drop_from: int | None = None
    skip_last: int = 0

    @classmethod
    def dense(cls, schedule: ScaleSchedule, depth: int) -> "PruningPlan":
        return cls(tuple(s.n for s in schedule.scales), depth, layers=(0, depth))

    @property
    def pruned_scales(self) -> list[int]:
        return sorted(self.keep)

    def prunes(self, si: int) -> bool:
        """True if scale si runs some layers on fewer tokens than it has."""
        return si in self.kept and self.kept[si] < self.scale_tokens[si]

    def pruned_layer(self, layer: int) -> bool:
        return self.layers[0] <= layer < self.layers[1]

    def tokens(self, si: int, layer: int, branch: str = "sa") -> int:
        """Tokens per row that this branch of this layer processes at scale si."""
        if si in self.skipped:
            return 0
        if self.prunes(si) and self.pruned_layer(layer):
            return self.kept[si]
        return self.scale_tokens[si]

    def counts(self) -> dict[tuple[int, int, str], int]:
        """{(scale, layer, branch): tokens per row} for every scale that runs, as a TokenCounter would record."""
        out = {(si, layer, b): self.tokens(si, layer, b) for si in range(len(self.scale_tokens))
               if si not in self.skipped for layer in range(self.depth) for b in BRANCHES}
        for si, n in self.kv_filled.items():
            if self.prunes(si) and n:
                out.update({(si, layer, "kv"): n for layer in range(*self.layers)})
        return out

    def to_dict(self) -> dict:
        out = {"keep": self.keep, "kept_tokens": self.kept, "skip": sorted(self.skipped),
               "pruned_layers": [self.layers[0], self.layers[1] - 1]}
        if self.cfg_drop_from is not None:
            out["cfg_drop_from"] = self.cfg_drop_from
        if self.skip_last:
            out["skip_last"] = self.skip_last
        return {**out, **self.extra}


def default_pruned_scales(schedule: ScaleSchedule) -> list[int]:
    own_rule = getattr(schedule, "default_pruned_scales", None)  # a video schedule keeps its image clip dense
    if own_rule is not None:
        return own_rule()
    last = schedule.last
    return [i for i, s in enumerate(schedule.scales) if 2 * s.h >= last.h and 2 * s.w >= last.w and s.n > 1]


def resolve_scales(spec: list[int] | None, first_scale: int | None, schedule: ScaleSchedule) -> list[int]:
    """Explicit indices, or everything from first_scale on, or the default rule."""
    n = len(schedule)
    return resolve_indices(spec, first_scale, n, lambda: default_pruned_scales(schedule), 0,
                           f"this schedule's scales 0..{n - 1}",
                           f"this schedule has scales 0..{n - 1} ({schedule.describe()})")


def resolve_indices(spec: list[int] | None, first_scale: int | None, n: int, default, lowest: int,
                    range_text: str, has_text: str) -> list[int]:
    """Scale indices lowest..n-1 from explicit (possibly negative) indices, a first scale, or default()."""
    if spec is not None and first_scale is not None:
        raise ConfigError("give either scales or first_scale, not both")
    if first_scale is not None:
        fs = first_scale + n if first_scale < 0 else first_scale
        if not lowest <= fs < n:
            raise ConfigError(f"first pruned scale {first_scale} is outside {range_text}")
        return list(range(fs, n))
    if spec is None:
        return default()
    out = []
    for si in spec:
        idx = si + n if si < 0 else si
        if not lowest <= idx < n:
            raise ConfigError(f"cannot prune scale {si}: {has_text}")
        out.append(idx)
    return sorted(set(out))


def resolve_keep(keep: float | dict | list, scales: list[int], n: int | None = None) -> dict[int, float]:
    """One keep ratio for all pruned scales, a list aligned with them, or {scale: keep}; with the
    schedule's length n, a mapping's negative scales count from the end, as `scales` do."""
    if isinstance(keep, (int, float)):
        return {si: check_keep(float(keep)) for si in scales}
    if isinstance(keep, (list, tuple)):
        if len(keep) != len(scales):
            raise ConfigError(f"{len(keep)} keep ratios given for {len(scales)} pruned scales {scales}")
        return {si: check_keep(float(k)) for si, k in zip(scales, keep)}
    if isinstance(keep, dict):
        table = {}
        for k, v in keep.items():
            si = int(k) + (n if n is not None and int(k) < 0 else 0)
            if si in table:
                raise ConfigError(f"keep names scale {si} twice ({k} and another index of the same scale)")
            table[si] = check_keep(float(v))
        missing = [si for si in scales if si not in table]
        if missing:
            raise ConfigError(f"no keep ratio for pruned scales {missing}")
        return {si: table[si] for si in scales}
    raise ConfigError(f"keep must be a number, a list or a mapping, got {keep!r}")


# FastVAR's Infinity release keys everything to the token grid, not to scale positions: it prunes
# the scales whose grid is 32 or 40 wide (prune ratios 0.4 and 0.5), never runs those 48 or 64
# wide, restores from the branch outputs of the scale with 576 tokens (24 x 24), and prunes the
# layers with absolute indices 3-27, whatever the model's depth.
RELEASE_PRUNE_BY_WIDTH = {32: 0.4, 40: 0.5}
RELEASE_SKIP_WIDTHS = (48, 64)
RELEASE_CACHE_TOKENS = 576
RELEASE_LAYERS = (3, 28)  # [first, end)


@dataclass(frozen=True)
class ReleaseScales:
    """What the release's width rule does on one schedule."""

    prune: dict[int, float]  # scale index -> prune ratio (fraction removed)
    skip: list[int]  # scales that run no blocks (only when the skip widths are asked for)
    cache: int | None  # the scale whose branch outputs are restored from; None if nothing is pruned
    notes: list[str]  # where this schedule takes the release somewhere it cannot go, and what runs instead


def release_scales(schedule: ScaleSchedule, skip_widths=()) -> ReleaseScales:
    """The release's scale rule on any schedule: widths decide, positions do not.

    Two situations the release cannot run get a defined behaviour here, written into `notes`:
    a pruned scale with no 576-token scale before it (the release restores from a cache it never
    wrote and fails) restores from the last scale run before it; a skipped scale that is not the
    last (the release then feeds the next scale the skipped scale's input and fails) is skipped,
    and the next scale is fed from the codes accumulated so far, as after any scale.
    """
    scales = schedule.scales
    skip = [i for i, s in enumerate(scales) if s.w in tuple(skip_widths)]
    prune = {i: RELEASE_PRUNE_BY_WIDTH[s.w] for i, s in enumerate(scales)
             if s.w in RELEASE_PRUNE_BY_WIDTH and i not in skip}
    notes = []
    cache = None
    if prune:
        first = min(prune)
        cached = [i for i in range(first) if scales[i].n == RELEASE_CACHE_TOKENS and i not in skip]
        if cached:
            cache = cached[-1]
        else:
            run = [i for i in range(first) if i not in skip]
            cache = run[-1]
            notes.append(f"no {RELEASE_CACHE_TOKENS}-token scale before the first pruned scale {first}: "
                         f"restoring from scale {cache} ({scales[cache].h}x{scales[cache].w}) instead (the release fails here)")
    for i in skip:
        if any(j not in skip for j in range(i + 1, len(scales))):
            notes.append(f"scale {i} ({scales[i].h}x{scales[i].w}) is skipped before the end: the next scale is fed "
                         "from the codes accumulated so far (the release feeds it the skipped scale's input and fails)")
    if not prune and not skip:
        widths = sorted({s.w for s in scales})
        notes.append(f"the release's width rule selects no scale here (grid widths {widths[0]}-{widths[-1]}): runs dense")
    return ReleaseScales(prune, skip, cache, notes)


def release_layers(depth: int, prefix: int | None = None, suffix: int | None = None) -> tuple[int, int]:
    """[first, end) of the pruned layers: absolute indices 3-27 as released, clipped to the depth.

    A 12-layer model therefore prunes layers 3-11 and keeps no dense tail, exactly as the
    release's `layer_idx in range(3, 28)` does. Explicit prefix/suffix counts override either end.
    """
    first = min(RELEASE_LAYERS[0], depth) if prefix is None else prefix
    end = min(RELEASE_LAYERS[1], depth) if suffix is None else depth - suffix
    if first < 0 or end > depth or (prefix is not None or suffix is not None) and first >= end:
        raise ConfigError(f"dense layers ({first} first, {depth - end} last) leave no layer to prune in a {depth}-layer model")
    return first, max(first, end)


def dense_layer_split(depth: int, prefix: int | None, suffix: int | None) -> tuple[int, int]:
    """(first pruned layer, first dense-suffix layer). None means 3 of 32 / 4 of 32 scaled to depth (StepVAR's rule)."""
    p = round(depth * 3 / 32) if prefix is None else prefix
    s = round(depth * 4 / 32) if suffix is None else suffix
    if p < 0 or s < 0 or p + s >= depth:
        raise ConfigError(f"dense layers ({p} first, {s} last) leave no layer to prune in a {depth}-layer model")
    return p, depth - s
