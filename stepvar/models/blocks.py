"""Infinity's transformer block, split into its three residual branches.

A block is x + SA(...) + CA(...) + FFN(...). Each branch is a public method
returning its gated residual update, so a pruning method can run any branch on a subset
of tokens: the tokens carry their own RoPE coordinates, and only the tokens a branch sees
enter the self-attention KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope

LN_EPS = 1e-6
_MAX_LOG_SCALE = math.log(100.0)


class KVCache:
    """Keys (after qk-norm and RoPE) and values of the earlier scales, for one layer."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (B, H, Lc, hd)
        self.v: torch.Tensor | None = None

    def extend(self, k_BHlk: torch.Tensor, v_BHlk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's keys/values and return the full history including them."""
        if self.k is None:
            self.k, self.v = k_BHlk, v_BHlk
        else:
            self.k = torch.cat((self.k, k_BHlk), dim=2)
            self.v = torch.cat((self.v, v_BHlk), dim=2)
        return self.k, self.v

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


@dataclass
class TextContext:
    """Projected text for cross-attention: padded rows plus a validity mask."""

    kv_BTD: torch.Tensor  # (B, T, D) output of text_proj_for_ca
    mask_BT: torch.Tensor  # (B, T) True where a real token is
    # Per-layer cross-attention K/V, computed once per generation (the text is fixed).
    ca_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def attn_mask(self) -> torch.Tensor | None:
        if bool(self.mask_BT.all()):
            return None  # no padding: let SDPA take its unmasked fast path
        return self.mask_BT[:, None, None, :]  # (B, 1, 1, T)


@dataclass
class Modulation:
    """The six AdaLN vectors of one block, (B, 1, C) each, in fp32."""

    gamma1: torch.Tensor
    gamma2: torch.Tensor
    scale1: torch.Tensor
    scale2: torch.Tensor
    shift1: torch.Tensor
    shift2: torch.Tensor

    def rows(self, idx: torch.Tensor) -> "Modulation":
        """The modulation of a subset of batch rows."""
        return Modulation(*(getattr(self, f.name)[idx] for f in self.__dataclass_fields__.values()))


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on for this device."""
    dev = weight.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def ada_ln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine, then (1 + scale) and + shift, in fp32 like the fused path."""
    h = F.layer_norm(x.float(), (x.shape[-1],), eps=LN_EPS)
    return h * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Cos-attention (qk-norm, learned per-head log-scale, softmax scale 1) with 2-D RoPE."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(width, width)

    def qkv(self, x_BlC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries (scaled) and keys after qk-norm and RoPE, values; each (B, H, l, hd)."""
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BlC, self.mat_qkv.weight, bias.to(x_BlC.dtype))
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, l, hd)
        q = F.normalize(q.float(), dim=-1, eps=1e-12)
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q = q * self.scale_mul_1H11.float().clamp(max=_MAX_LOG_SCALE).exp()
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x_BlC, cos, sin, cache: KVCache | None = None, attn_mask=None) -> torch.Tensor:
        q, k, v = self.qkv(x_BlC, cos, sin)
        if cache is not None:
            k, v = cache.extend(k, v)
        dtype = v.dtype
        out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v, attn_mask=attn_mask, scale=1.0)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, l, C)


class CrossAttention(nn.Module):
    """Plain softmax attention from image tokens to the projected text (no cache, no gate)."""

    def __init__(self, width: int, cond_width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(cond_width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        self.proj = nn.Linear(width, width)

    def text_kv(self, text_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = F.linear(text_BTD, self.mat_kv.weight, bias.to(text_BTD.dtype))
        k, v = kv.unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, hd)
        return k, v

    def forward(self, x_BlC: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None) -> torch.Tensor:
        q = self.mat_q(x_BlC).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, H, l, hd)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrossAttnBlock(nn.Module):
    """One Infinity block. Key names match the official state dict."""

    def __init__(self, width: int, cond_width: int, heads: int, ffn_hidden: int):
        super().__init__()
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)
        self.sa = SelfAttention(width, heads)
        self.ca = CrossAttention(width, cond_width, heads)
        self.ca_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.ffn = FFN(width, ffn_hidden)

    def modulation(self, gss_B16C: torch.Tensor) -> Modulation:
        # Order fixed by the official unbind: gamma1, gamma2, scale1, scale2, shift1, shift2.
        parts = (self.ada_gss.float() + gss_B16C.float()).unbind(2)
        return Modulation(*parts)

    def _compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.sa.proj.weight)

    def sa_branch(self, x_BlC, mod: Modulation, cos, sin, cache: KVCache | None, attn_mask=None) -> torch.Tensor:
        h = ada_ln(x_BlC, mod.scale1, mod.shift1).to(self._compute_dtype())
        return mod.gamma1 * self.sa(h, cos, sin, cache, attn_mask).float()

    def ca_branch(self, x_BlC, text: TextContext, layer: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        if layer not in text.ca_kv:
            text.ca_kv[layer] = self.ca.text_kv(text.kv_BTD.to(self._compute_dtype()))
        k, v = text.ca_kv[layer]
        mask = text.attn_mask
        if rows is not None:  # a subset of batch rows (e.g. pruned CFG halves processed apart)
            k, v = k[rows], v[rows]
            mask = None if mask is None else mask[rows]
        # LayerNorm in fp32 whatever the block dtype (bf16 weights would reject fp32 input).
        h = F.layer_norm(x_BlC.float(), (x_BlC.shape[-1],), self.ca_norm.weight.float(), self.ca_norm.bias.float(), LN_EPS)
        h = h.to(self._compute_dtype())
        return self.ca(h, k, v, mask).float()

    def ffn_branch(self, x_BlC, mod: Modulation) -> torch.Tensor:
        h = ada_ln(x_BlC, mod.scale2, mod.shift2).to(self._compute_dtype())
        return mod.gamma2 * self.ffn(h).float()

    def forward(self, x_BlC, mod: Modulation, cos, sin, cache, text: TextContext, layer: int, attn_mask=None):
        """Dense composition of the three branches; x stays fp32 (the residual stream)."""
        x_BlC = x_BlC + self.sa_branch(x_BlC, mod, cos, sin, cache, attn_mask)
        x_BlC = x_BlC + self.ca_branch(x_BlC, text, layer)
        return x_BlC + self.ffn_branch(x_BlC, mod)
