"""Every pruning method on InfinityStar's (t, h, w) scales, through the image pruners' own contract.

The methods are the registered ones (stepvar.pruning.registry), unchanged: this module only
presents InfinityStar to them the way Infinity is presented (a ScaleRun whose model has blocks
with residual branches, a RoPE gather and a dense forward_scale), and presents the video
schedule the way a ScaleSchedule is presented to their plans. The methods' grid code works on
(t, h, w) grids (stepvar.pruning.spacetime), so scores, propagation and cached restoration are
the images' ones extended by a time axis.

What is specific to video, and decided here:
- the default pruned scales are the video clips' scales whose grid is at least half the final
  side (the images' rule); the image clip stays dense (about 5% of the compute, and its largest
  scale is the reference of every scale of the first video clip); explicit scales may include it;
- both guidance rows keep the same positions (their inputs are identical: the accumulated codes
  are shared), and a scale run several times (repeats) keeps the positions its first run chose,
  for the methods that select once per scale; methods that re-select per layer (FastVAR,
  StepVAR's block / sublayer selection) re-select on every run, with one score for both rows;
- a scale whose keys and values a later clip reads runs dense, so that clip reads dense keys and
  values (the plan's notes say so); a skipped scale cannot be one of them;
- FastVAR's released scale rule is keyed to Infinity's image grid widths and no video release
  exists, so on video it takes its position rule (fastvar-pos: the scales above, the layers 3/32
  and 4/32 of the depth dense, restoring from the scale before the first pruned one, area-resized
  in (t, h, w)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .models.infinitystar import InfinityStar, StarBlock, rope_4d
from .pruning.base import Dense, Pruner
from .pruning.fastvar import FastVAR
from .pruning.plan import PruningPlan
from .pruning.stepvar import StepVAR
from .video_schedules import StarSchedule


@dataclass(frozen=True)
class StarLayerCache:
    """What one block's attention reads and writes during one pass: the layer's slots, the slot this
    pass writes (None: it writes nothing) and the slots it reads besides its own tokens."""

    layer: dict
    write: object
    reads: tuple


class StarBlockView:
    """An InfinityStar block seen through the pruner contract: SA and FFN branches, CA the identity."""

    def __init__(self, block: StarBlock):
        self.block = block

    def sa_branch(self, x_BlC, mod, cos, sin, cache: StarLayerCache) -> torch.Tensor:
        return self.block.attn_branch(x_BlC, cos, sin, cache.layer, cache.write, cache.reads)

    def ca_branch(self, x_BlC, text, layer) -> torch.Tensor:
        return torch.zeros_like(x_BlC)  # no cross-attention: the text is a cached prefix

    def ffn_branch(self, x_BlC, mod) -> torch.Tensor:
        return self.block.mlp_branch(x_BlC)

    def __call__(self, x_BLC, mod, cos, sin, cache: StarLayerCache, text, layer) -> torch.Tensor:
        return self.block(x_BLC, cos, sin, cache.layer, cache.write, cache.reads)


class StarRope:
    """cos, sin of 4-D positions: (L, 4) shared by the rows, or (B, l, 4) per row."""

    def __init__(self, head_dim: int, base: float):
        self.head_dim, self.base = head_dim, base

    def gather(self, pos: torch.Tensor):
        if pos.dim() == 2:
            return rope_4d(pos, self.head_dim, self.base)
        cos, sin = rope_4d(pos.reshape(-1, 4), self.head_dim, self.base)
        shape = (*pos.shape[:-1], -1)
        return cos.reshape(shape).unsqueeze(-3), sin.reshape(shape).unsqueeze(-3)


class StarModelView:
    """The model a pruner sees: blocks with branches, the RoPE gather, and the dense pass of a scale."""

    numerics = "exact"

    def __init__(self, model: InfinityStar):
        self.model = model
        self.blocks = [StarBlockView(b) for b in model.blocks]
        self.rope = StarRope(model.cfg.head_dim, model.cfg.rope_base)

    def forward_scale(self, x_BLC, cond, pos_LP, caches: list[StarLayerCache]) -> torch.Tensor:
        """Every block on every token: the same calls as InfinityStar.run_blocks, so dense is bit-exact."""
        cos, sin = rope_4d(pos_LP, self.model.cfg.head_dim, self.model.cfg.rope_base)
        for block, cache in zip(self.model.blocks, caches):
            x_BLC = block(x_BLC, cos, sin, cache.layer, cache.write, cache.reads)
        return x_BLC


@dataclass(frozen=True)
class StarConditioning:
    """InfinityStar has no per-block modulation and no cross-attention text: empty slots."""

    mods: tuple
    text: object = None
    cond_BD: object = None


class VideoScheduleView:
    """A StarSchedule in the shape a method's plan reads (scales with t, h, w and n; len; last; describe)."""

    def __init__(self, schedule: StarSchedule):
        self.star = schedule
        self.scales = schedule.scales

    def __len__(self) -> int:
        return len(self.scales)

    @property
    def last(self):
        return self.scales[-1]

    def describe(self) -> str:
        k = self.star.scales_per_clip
        clips = [f"clip {c}: {', '.join(f'{s.t}x{s.h}x{s.w}' for s in self.star.clip_scales(c))}"
                 for c in range(self.star.n_clips)]
        return f"{k} scales per clip, indices 0..{len(self) - 1}; " + "; ".join(clips)

    def default_pruned_scales(self) -> list[int]:
        H, W = self.star.grid
        return [s.index for s in self.scales if s.clip > 0 and 2 * s.h >= H and 2 * s.w >= W and s.n > 1]


def _refuse_accelerations(pruner: Pruner) -> None:
    # The video sampler has no guidance drop, and which scales "the last N" are across clips is not settled.
    if pruner.accelerations.active:
        raise ConfigError(f"{pruner.name}: cfg_drop_from and skip_last work on image models only, not on video models")


def for_video(pruner: Pruner) -> Pruner:
    """The method as it runs on video: FastVAR's released (image-width) rule becomes its position rule."""
    _refuse_accelerations(pruner)
    if isinstance(pruner, FastVAR) and pruner.config.rule == "release":
        return FastVAR(dataclasses.replace(pruner.config, rule="position"), name=pruner.name)
    return pruner


def video_plan(pruner: Pruner, schedule: StarSchedule, depth: int) -> PruningPlan:
    """The method's plan on a video schedule, with the video rules applied; ConfigError if it cannot run there.

    Sets `pruner.active_plan` (it is the method's begin()), so call it once per generation.
    """
    _refuse_accelerations(pruner)
    if isinstance(pruner, StepVAR) and pruner.restoration.fills_kv:
        raise ConfigError(f"{pruner.name}: kv restored is not available on video models; use kv kept")
    pruner.begin(VideoScheduleView(schedule), depth)
    plan = pruner.active_plan
    referenced = set(schedule.last_use)
    if referenced & set(plan.skipped):
        raise ConfigError(f"{pruner.name}: cannot skip scale(s) {sorted(referenced & set(plan.skipped))}: "
                          "a later clip reads their keys and values")
    if isinstance(pruner, StepVAR):
        rule_of = {si: pruner.restoration.rule_for(schedule.scales[si].h, schedule.scales[si].w) for si in plan.kept
                   if plan.prunes(si) and schedule.scales[si].t > 1}
        video = [si for si, rule in rule_of.items() if rule in ("idw", "cached_idw")]
        if video:
            raise ConfigError(f"{pruner.name}: restore {rule_of[video[0]]} works on image grids only; "
                              f"scales {video} are video scales (use nearest, cached or cached_nearest)")
    dense_kv = sorted(si for si in plan.kept if si in referenced and plan.prunes(si))
    if dense_kv:
        notes = list(plan.extra.get("notes", [])) + [
            f"scale(s) {dense_kv} run dense: a later clip reads their keys and values"]
        plan = dataclasses.replace(
            plan, keep={si: k for si, k in plan.keep.items() if si not in dense_kv},
            kept={si: k for si, k in plan.kept.items() if si not in dense_kv},
            kv_filled={si: k for si, k in plan.kv_filled.items() if si not in dense_kv},
            extra={**plan.extra, "notes": notes})
        pruner.active_plan = plan
    return plan


def check_video_method(pruner: Pruner, schedule: StarSchedule, depth: int) -> Pruner:
    """The method as it will run on this video schedule, refused (ConfigError) before anything loads if it cannot."""
    pruner = for_video(pruner)
    video_plan(pruner, schedule, depth)
    return pruner


def video_pass_counts(plan: PruningPlan, schedule: StarSchedule) -> dict[tuple[int, int, str], int]:
    """{(scale, layer, branch): tokens per row} over every repeat: what a TokenCounter records on video."""
    return {key: n * schedule.scales[key[0]].repeats for key, n in plan.counts().items()}


def is_dense(pruner: Pruner | None) -> bool:
    return pruner is None or isinstance(pruner, Dense)
