"""The model-family contract: what the sampler, the pruners, the FLOP counter, bench and the
loaders need from a next-scale generator. Infinity (stepvar.models.infinity) is the first
implementation; docs/architecture.md maps InfinityStar and HART onto the same contract.

A family provides, as a typing.Protocol the sampler and pruners are written against:
  - blocks:             the transformer blocks in execution order; each exposes its residual
                        branches separately (sa_branch, ca_branch, ffn_branch; a family without
                        cross-attention has an identity CA branch), which is what lets a method
                        run each branch on a subset of tokens;
  - condition(...):     text features -> everything the blocks need, computed once per generation;
  - start_tokens, add_level, embed_tokens: the input of each scale;
  - forward_scale(...): the readable dense pass of one scale (what the `dense` method runs);
  - guide(...):         the family's guidance rule on the logits (Infinity: classifier-free);
  - logits(...):        the head;
and, outside the module: a schedule of scales (stepvar.schedules), a tokenizer that decodes
accumulated codes (stepvar.models.bsq_vae), and a checkpoint key layout (stepvar.loading).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class ResidualBlock(Protocol):
    """One block whose residual branches can be called one by one on any subset of tokens."""

    def sa_branch(self, x_BlC: torch.Tensor, mod: Any, cos: torch.Tensor, sin: torch.Tensor, cache: Any) -> torch.Tensor: ...

    def ca_branch(self, x_BlC: torch.Tensor, text: Any, layer: int) -> torch.Tensor: ...

    def ffn_branch(self, x_BlC: torch.Tensor, mod: Any) -> torch.Tensor: ...


@runtime_checkable
class ModelFamily(Protocol):
    """What a next-scale generator offers the sampler, the pruners and the accounting."""

    @property
    def blocks(self) -> Sequence[ResidualBlock]: ...

    def condition(self, text_BTCt: torch.Tensor, mask_BT: torch.Tensor) -> Any: ...

    def uncond_text(self, mask_BT: torch.Tensor) -> torch.Tensor: ...

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor: ...

    def add_level(self, x_BLC: torch.Tensor, si: int, hw: tuple[int, int] | None = None) -> torch.Tensor: ...

    def embed_tokens(self, codes_BLd: torch.Tensor) -> torch.Tensor: ...

    def forward_scale(self, x_BLC: torch.Tensor, cond: Any, pos_L2: torch.Tensor, caches: list) -> torch.Tensor: ...

    def guide(self, logits_cond: torch.Tensor, logits_uncond: torch.Tensor, scale: float) -> torch.Tensor: ...

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor: ...
