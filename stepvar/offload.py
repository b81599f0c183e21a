"""Memory for small GPUs: the transformer's blocks streamed to the compute device one at a time.

`stream_blocks(model, device)` keeps every block's weights (parameters and buffers) in host
memory and leaves 'meta' placeholders in the modules. Every way into a block (its forward, its
residual branches, its modulation, and the attention / FFN methods pruners call directly) first
asks the streamer for that block: the block that was on the device is released (its tensors
become placeholders again, so the device copies are freed) and the requested one is copied in.
So at most one block's weights are on the compute device at any moment, and each block is
copied once per scale, in layer order.

The placeholders are what makes this checkable on any machine: a block that were used without
being streamed in would compute on meta tensors and fail, so a generation that completes with
the right image has used every block only while it was loaded (tests/test_prompt_sets.py). On
a CPU the "copy" is the host tensor itself (no memory is saved there; the mechanism is the
same). There is no prefetch of the next block: a copy and the block's compute do not overlap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

# Methods by which code outside a block reaches into it (the sampler, the pruners, conditioning).
_BLOCK_ENTRIES = ("forward", "sa_branch", "ca_branch", "ffn_branch", "modulation")
_CHILD_ENTRIES = {"sa": ("forward", "qkv", "kv"), "ca": ("forward", "text_kv"), "ffn": ("forward",), "ca_norm": ("forward",)}


@dataclass
class _Slot:
    module: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor


@dataclass
class BlockStreamer:
    blocks: tuple[nn.Module, ...]
    device: torch.device
    slots: list[list[_Slot]] = field(default_factory=list)
    resident: int | None = None
    loads: int = 0
    # Called after every load with the streamer: tests watch placement as the loop runs.
    on_load: Callable[["BlockStreamer"], None] | None = None

    def use(self, j: int) -> None:
        if self.resident == j:
            return
        self.release()
        for s in self.slots[j]:
            t = s.host.to(self.device, non_blocking=True)
            _put(s, t)
        self.resident = j
        self.loads += 1
        if self.on_load is not None:
            self.on_load(self)

    def release(self) -> None:
        """Put the resident block back to placeholders (its device copies are dropped)."""
        if self.resident is None:
            return
        for s in self.slots[self.resident]:
            _put(s, torch.empty(s.host.shape, dtype=s.host.dtype, device="meta"))
        self.resident = None

    def on_device(self) -> list[int]:
        """Blocks whose weights are materialised right now (what the placement test checks)."""
        return [j for j, blk in enumerate(self.blocks)
                if any(not t.is_meta for t in (*blk.parameters(), *blk.buffers()))]

    def host_bytes(self) -> int:
        return sum(s.host.nbytes for slots in self.slots for s in slots)


def _put(slot: _Slot, tensor: torch.Tensor) -> None:
    if slot.is_param:
        slot.module._parameters[slot.name] = nn.Parameter(tensor, requires_grad=False)
    else:
        slot.module._buffers[slot.name] = tensor


def stream_blocks(model, device: torch.device) -> BlockStreamer:
    """Move `model`'s blocks to host memory and stream them to `device` on use (see the module doc).

    The model's other parts (embeddings, text projections, head) are left where they are."""
    streamer = BlockStreamer(tuple(model.blocks), torch.device(device))
    pin = streamer.device.type == "cuda"
    for j, blk in enumerate(streamer.blocks):
        slots = []
        for module in blk.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    host = p.detach().to("cpu")
                    slots.append(_Slot(module, name, True, host.pin_memory() if pin else host))
            for name, b in list(module._buffers.items()):
                if b is not None:
                    host = b.to("cpu")
                    slots.append(_Slot(module, name, False, host.pin_memory() if pin else host))
        streamer.slots.append(slots)
        for s in slots:
            _put(s, torch.empty(s.host.shape, dtype=s.host.dtype, device="meta"))
        _wrap(blk, blk, j, streamer)
        for child, names in _CHILD_ENTRIES.items():
            sub = getattr(blk, child, None)
            if sub is not None:
                _wrap(sub, sub, j, streamer, names)
    return streamer


def _wrap(owner: nn.Module, target: nn.Module, j: int, streamer: BlockStreamer, names=_BLOCK_ENTRIES) -> None:
    for name in names:
        original = getattr(target, name)

        @functools.wraps(original)
        def entry(*args, __original=original, **kwargs):
            streamer.use(j)
            return __original(*args, **kwargs)

        object.__setattr__(target, name, entry)


def move_except_blocks(model: nn.Module, device: torch.device) -> None:
    """Move every part of an Infinity model but its (streamed) blocks to `device`."""
    for name, child in model.named_children():
        if name != "block_chunks":
            child.to(device)
    for name, p in list(model._parameters.items()):
        if p is not None:
            model._parameters[name] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
    for name, b in list(model._buffers.items()):
        if b is not None:
            model._buffers[name] = b.to(device)


OFFLOAD_CHOICES = ("none", "text-encoder", "model")


def check_offload(offload: str | None) -> str | None:
    from .errors import ConfigError

    if offload in (None, "none"):
        return None
    if offload not in OFFLOAD_CHOICES:
        raise ConfigError(f"--offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    return offload
