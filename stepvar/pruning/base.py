"""The pruning interface: the generator hands each scale to a Pruner, which returns dense hidden states.

A Pruner owns how the block stack runs at a scale: on all tokens (dense), on a subset
chosen once (StepVAR), or with re-selection per sub-layer (FastVAR). Whatever it does,
it returns (B, L, C) for every position so that every token gets logits and codes and
the next scale's input is complete. Token counts go through ScaleRun.count so that the
bench can report what each block really processed.
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

    @property
    def grid(self) -> tuple[int, int]:
        return self.scale.h, self.scale.w

    def rope(self, pos: torch.Tensor):
        """cos, sin for positions (L, 2) shared by all rows, or (B, l, 2) per row."""
        return self.model.rope.gather(pos)

    def count(self, layer: int, branch: str, n: int) -> None:
        self.counter.add(self.si, layer, branch, n)


def run_block_dense(run: ScaleRun, layer: int, x_BLC: torch.Tensor, cos, sin) -> torch.Tensor:
    """One block on every token it is given, counting them."""
    blk = run.model.blocks[layer]
    n = x_BLC.shape[1]
    for branch in ("sa", "ca", "ffn"):
        run.count(layer, branch, n)
    return blk(x_BLC, run.cond.mods[layer], cos, sin, run.caches[layer], run.cond.text, layer)


BRANCHES = ("sa", "ca", "ffn")


def run_branch(blk, name: str, x_BlC, mod, cos, sin, run: ScaleRun, layer: int) -> torch.Tensor:
    """One residual branch of a block on the tokens given; SA appends exactly their K/V to the cache."""
    if name == "sa":
        return blk.sa_branch(x_BlC, mod, cos, sin, run.caches[layer])
    if name == "ca":
        return blk.ca_branch(x_BlC, run.cond.text, layer)
    return blk.ffn_branch(x_BlC, mod)


def gather_rows(x_BLC: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    """Per-row gather of token features: (B, L, C), (B, l) -> (B, l, C)."""
    return torch.gather(x_BLC, 1, idx_Bl.unsqueeze(-1).expand(-1, -1, x_BLC.shape[-1]))


def run_dense_stack(run: ScaleRun) -> torch.Tensor:
    """Every block on every token: the dense reference computation of one scale."""
    cos, sin = run.rope(run.pos_L2)
    x = run.x_BLC
    for layer in range(len(run.model.blocks)):
        x = run_block_dense(run, layer, x, cos, sin)
    return x


class Pruner(ABC):
    """A token-pruning method. Stateless across generations except for per-generation caches."""

    name: str = "base"

    def validate(self, schedule: ScaleSchedule, depth: int) -> None:
        """Raise ConfigError if this configuration cannot run on the schedule/model."""

    def begin(self, schedule: ScaleSchedule, depth: int) -> None:
        """Called once before a generation; reset per-generation state here."""

    def skips(self, si: int) -> bool:
        """True if scale si runs no blocks at all (FastVAR's released last-scale skip)."""
        return False

    @abstractmethod
    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        """Run the block stack on scale si and return dense hidden states (B, L, C)."""

    def config_dict(self) -> dict:
        cfg = getattr(self, "cfg", None)
        body = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
        return {"method": self.name, **body}

    def pruned_scales(self, schedule: ScaleSchedule) -> list[int]:
        return []


class Dense(Pruner):
    """No pruning: the reference every other method is measured against."""

    name = "dense"

    def run_scale(self, run: ScaleRun) -> torch.Tensor:
        return run_dense_stack(run)


def check_keep(keep: float, what: str = "keep") -> float:
    if not (0.0 < keep <= 1.0):
        raise ConfigError(f"{what} must be in (0, 1], got {keep}")
    return float(keep)
