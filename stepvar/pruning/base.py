"""The pruning interface: the generator hands each scale to a Pruner, which returns dense hidden states.

The contract a method fulfils (docs/adding_a_method.md walks through a complete one):
  - `config_class`: the dataclass of its settings (presets and command-line variants set
    its fields; unknown names are refused);
  - `plan(schedule, depth)`: a PruningPlan saying which scales it skips and, per pruned
    scale, which layers run on how many tokens. It must not depend on the images, only on
    the settings, the schedule and the depth: the FLOP counter, bench and records read it
    without running anything;
  - `run_scale(run)`: the block stack of one scale, returning (B, L, C) for every position
    so that every token gets logits and codes and the next scale's input is complete.
    It processes exactly the tokens the plan announces (tested for every registered method),
    counting them through the helpers below (run_block_dense, run_branch_counted).
Register the class in stepvar.pruning.registry (one call of register_method).

A Pruner owns how the block stack runs at a scale: on all tokens (dense), on a subset
chosen once (StepVAR), or with re-selection per sub-layer (FastVAR).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..models.blocks import KVCache
from ..models.infinity import Conditioning, Infinity
from ..schedules import Scale, ScaleSchedule
from .accelerations import Accelerations, apply as apply_accelerations
from .plan import BRANCHES, PruningPlan, check_keep  # noqa: F401  (check_keep: re-exported for callers)


@dataclass
class TokenCounter:
    """Tokens processed per (scale, layer, branch), per batch row."""

    counts: dict[tuple[int, int, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, si: int, layer: int, branch: str, n: int) -> None:
        self.counts[(si, layer, branch)] += n

    def per_scale(self, si: int, branch: str = "sa") -> list[int]:
        """Tokens each layer's given branch processed at scale si (0 for a skipped scale)."""
        layers = sorted({k[1] for k in self.counts if k[0] == si})
        return [self.counts[(si, layer, branch)] for layer in layers]

    def total(self, branch: str = "sa") -> int:
        return sum(v for k, v in self.counts.items() if k[2] == branch)


@dataclass
class ScaleRun:
    """What a pruner needs to run the blocks of one scale."""

    model: Infinity
    cond: Conditioning
    x_BLC: torch.Tensor  # scale input, level embedding added, fp32
    si: int
    scale: Scale
    pos_L2: torch.Tensor  # RoPE (row, col) of every position, row-major
    caches: list[KVCache]
    counter: TokenCounter
    cfg_pairs: bool = False  # rows are [cond; uncond] halves of the same prompts
    # Video: both guidance rows keep the same positions, and a scale run several times (repeats)
    # reuses the positions its first run chose (kept in `masks`, one per generation, by scale).
    share_rows: bool = False
    masks: dict | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.scale.h, self.scale.w

    @property
    def grid3(self) -> tuple[int, int, int]:
        """(t, h, w) of the scale: t = 1 on images."""
        return getattr(self.scale, "t", 1), self.scale.h, self.scale.w

    def mask(self, choose) -> torch.Tensor:
        """The kept positions of this scale: choose() now, or what it chose on the scale's first run."""
        if self.masks is None:
            return choose()
        if self.si not in self.masks:
            self.masks[self.si] = choose()
        return self.masks[self.si]

    def rope(self, pos: torch.Tensor):
        """cos, sin for positions (L, 2) shared by all rows, or (B, l, 2) per row."""
        return self.model.rope.gather(pos)

    def count(self, layer: int, branch: str, n: int) -> None:
        self.counter.add(self.si, layer, branch, n)


def run_block_dense(run: ScaleRun, layer: int, x_BLC: torch.Tensor, cos, sin) -> torch.Tensor:
    """One block on every token it is given, counting them."""
    blk = run.model.blocks[layer]
    n = x_BLC.shape[1]
    for branch in BRANCHES:
        run.count(layer, branch, n)
    return blk(x_BLC, run.cond.mods[layer], cos, sin, run.caches[layer], run.cond.text, layer)


def run_branch(blk, name: str, x_BlC, mod, cos, sin, run: ScaleRun, layer: int) -> torch.Tensor:
    """One residual branch of a block on the tokens given; SA appends exactly their K/V to the cache."""
    if name == "sa":
        return blk.sa_branch(x_BlC, mod, cos, sin, run.caches[layer])
    if name == "ca":
        return blk.ca_branch(x_BlC, run.cond.text, layer)
    return blk.ffn_branch(x_BlC, mod)


def run_branch_counted(run: ScaleRun, layer: int, name: str, x_BlC: torch.Tensor, cos, sin) -> torch.Tensor:
    """run_branch on the given tokens, recording how many it processed: the branch's residual update."""
    y = run_branch(run.model.blocks[layer], name, x_BlC, run.cond.mods[layer], cos, sin, run, layer)
    run.count(layer, name, x_BlC.shape[1])
    return y


def run_layers(run: ScaleRun, x_BLC: torch.Tensor, layers: tuple[int, int], pruned_layer) -> torch.Tensor:
    """The shared layer loop of a pruned scale: layers outside [first, end) run dense on every token,
    the others are handed to pruned_layer(layer, x_BLC) -> x_BLC, which runs the block its own way."""
    cos, sin = run.rope(run.pos_L2)
    x = x_BLC
    for layer in range(len(run.model.blocks)):
        if layers[0] <= layer < layers[1]:
            x = pruned_layer(layer, x)
        else:
            x = run_block_dense(run, layer, x, cos, sin)
    return x


def gather_rows(x_BLC: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    """Per-row gather of token features: (B, L, C), (B, l) -> (B, l, C)."""
    return torch.gather(x_BLC, 1, idx_Bl.unsqueeze(-1).expand(-1, -1, x_BLC.shape[-1]))


def run_dense_stack(run: ScaleRun) -> torch.Tensor:
    """Every block on every token: the model's own dense pass of the scale, counted."""
    n = run.x_BLC.shape[1]
    for layer in range(len(run.model.blocks)):
        for branch in BRANCHES:
            run.count(layer, branch, n)
    return run.model.forward_scale(run.x_BLC, run.cond, run.pos_L2, run.caches)


@dataclass
class NoSettings:
    """The settings of a method that has none (dense)."""


class Pruner(ABC):
    """A token-pruning method. Stateless across generations except for per-generation caches.

    `config` holds the method's settings (an instance of config_class); `name` is what
    outputs and reports call it (the preset name, or the variant as written, e.g.
    "stepvar:norm=rank"). `accelerations` (a late guidance drop, a skip of the last scales)
    compose with any method: `resolved_plan` writes them into the method's own plan, and
    everything that runs or accounts for a generation reads that.
    """

    name: str = "base"
    config_class: type = NoSettings

    def __init__(self, config=None, name: str | None = None, accelerations: Accelerations | None = None):
        self.config = config if config is not None else self.config_class()
        if name:
            self.name = name
        self.accelerations = accelerations or Accelerations()
        self.active_plan: PruningPlan | None = None

    @abstractmethod
    def plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        """What this method will compute on the schedule and a model of this depth; raise
        ConfigError if this configuration cannot run there."""

    @abstractmethod
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        """Run the block stack on scale si and return dense hidden states (B, L, C)."""

    def resolved_plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        """The method's plan with the accelerations applied: what a generation runs and is accounted by."""
        return apply_accelerations(self.plan(schedule, depth), self.accelerations, schedule, self.name)

    def validate(self, schedule: ScaleSchedule, depth: int) -> list[str]:
        """Raise ConfigError if this configuration cannot run on the schedule/model; return the notes
        worth showing a user about what it will run (e.g. that an acceleration removed all its pruning)."""
        note = self.resolved_plan(schedule, depth).extra.get("note")
        return [note] if note else []

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        """Called once before a generation; a method with per-generation state extends it."""
        self.active_plan = self.resolved_plan(schedule, depth)

    def skips(self, si: int) -> bool:
        """True if scale si runs no blocks at all (FastVAR's released last-scale skip)."""
        return self.active_plan is not None and si in self.active_plan.skipped

    def config_dict(self) -> dict:
        body = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        out = {"method": self.name, **body, **self.accelerations.to_dict()}
        plan = self.active_plan
        if plan is not None and (plan.keep or plan.skipped or plan.cfg_drop_from is not None):
            out["resolved"] = self.active_plan.to_dict()
        return out

    def pruned_scales(self, schedule: ScaleSchedule) -> list[int]:
        """Scales this method prunes on the schedule (the layer split does not change them)."""
        return self.resolved_plan(schedule, 10**6).pruned_scales


class Dense(Pruner):
    """No pruning: the reference every other method is measured against."""

    name = "dense"

    def plan(self, schedule: ScaleSchedule, depth: int) -> PruningPlan:
        return PruningPlan.dense(schedule, depth)

    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        return run_dense_stack(run)
