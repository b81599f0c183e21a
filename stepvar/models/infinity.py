"""The Infinity transformer (bitwise next-scale prediction), weights-compatible with the release.

Infinity is the first implementation of the model-family contract (stepvar.models.family,
docs/architecture.md). Parameter names and shapes follow the official checkpoints exactly,
so an official state dict loads with strict key checking. The generation loop lives in
stepvar.sampling; this module offers the pieces it composes: text conditioning, per-block
modulation, the scale input, the dense pass of one scale (forward_scale), the guidance rule
and the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .blocks import NUMERICS, CrossAttention, CrossAttnBlock, KVCache, Modulation, TextContext, text_attention
from .config import InfinityConfig
from .rope import Rope2D

LN_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class PoolingAttention(nn.Module):
    """Learned-query attention pooling of the text into one vector per prompt (cond_BD)."""

    def __init__(self, text_channels: int, cond_width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, cond_width // heads
        self.mat_q = nn.Parameter(torch.randn(1, heads, self.head_dim) * 0.02)
        self.mat_kv = nn.Linear(text_channels, 2 * cond_width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(cond_width))
        self.register_buffer("zero_k_bias", torch.zeros(cond_width), persistent=False)
        self.proj = nn.Linear(cond_width, cond_width)
        self.official_numerics = False  # Infinity.set_numerics; not part of the weights

    def forward(self, text_BTCt: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = F.linear(text_BTCt, self.mat_kv.weight, bias)
        k, v = kv.unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # 2 x (B, P, T, hd)
        q = self.mat_q.unsqueeze(2).expand(text_BTCt.shape[0], -1, -1, -1)  # (B, P, 1, hd)
        out = text_attention(q, k, v, mask_BT[:, None, None, :], self.official_numerics)  # (B, P, 1, hd)
        return self.proj(out.flatten(1))  # (B, D)


class TextPooler(nn.Module):
    """Wrapper so the key names read text_proj_for_sos.ca.* as in the official file."""

    def __init__(self, text_channels: int, cond_width: int, heads: int):
        super().__init__()
        self.ca = PoolingAttention(text_channels, cond_width, heads)

    def forward(self, text_BTCt, mask_BT):
        return self.ca(text_BTCt, mask_BT)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, width: int, cond_width: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 2 * width))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD.float()).unflatten(-1, (2, -1)).unsqueeze(1).unbind(2)  # (B, 1, C) each
        return F.layer_norm(x_BLC.float(), (x_BLC.shape[-1],), eps=LN_EPS) * (1 + scale) + shift


class BlockChunk(nn.Module):
    """A group of blocks; exists only so keys read block_chunks.{k}.module.{j}."""

    def __init__(self, blocks: list[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


@dataclass
class Conditioning:
    """Everything the blocks need from the text, computed once per generation."""

    cond_BD: torch.Tensor  # pooled text, fp32; start token and head condition
    mods: list[Modulation]  # per-block AdaLN vectors
    text: TextContext


class Infinity(nn.Module):
    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.cfg = cfg
        self.numerics = "exact"
        C, D, Ct = cfg.width, cfg.cond_width, cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.randn(cfg.text_maxlen, Ct) * 0.02)
        self.text_norm = RMSNorm(Ct)
        self.text_proj_for_sos = TextPooler(Ct, D, cfg.text_pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * 0.02)
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        if cfg.abs_pos_grid:  # zero at init: adding it to a trained model changes nothing until it learns
            self.abs_pos = nn.Parameter(torch.zeros(1, C, cfg.abs_pos_grid, cfg.abs_pos_grid))
        if cfg.budget_embed:  # zero at init, like abs_pos: the model it is added to is unchanged until it learns
            self.budget_embed = nn.Parameter(torch.zeros(cfg.budget_embed, D))
        self.word_embed = nn.Linear(cfg.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * C))
        self.head_nm = AdaLNBeforeHead(C, D)
        self.head = nn.Linear(C, 2 * cfg.bits)
        per = cfg.blocks_per_chunk
        self.block_chunks = nn.ModuleList(
            BlockChunk([CrossAttnBlock(C, D, cfg.heads, cfg.ffn_hidden) for _ in range(per)])
            for _ in range(cfg.block_chunks)
        )
        self.rope = Rope2D(cfg.head_dim)
        # Flat execution order, built once: the per-layer loops index it on the hot path.
        # A plain tuple (not registered): the modules stay owned by block_chunks.
        self._blocks = tuple(blk for chunk in self.block_chunks for blk in chunk.module)

    def init_buffers(self, device: torch.device | str = "cpu") -> None:
        """(Re)create the non-persistent buffers, e.g. after building on the meta device.

        Checkpoints hold no RoPE table and may or may not hold zero_k_bias, so these are
        always computed here rather than loaded.
        """
        self.rope = Rope2D(self.cfg.head_dim, official=self.numerics == "official").to(device)
        for module in self.modules():
            if "zero_k_bias" in module._buffers:
                buf = module._buffers["zero_k_bias"]
                module._buffers["zero_k_bias"] = torch.zeros(buf.shape, device=device)

    def cast_blocks(self, dtype: torch.dtype) -> None:
        """bf16 inference casts only the blocks; embeddings, text projections and head stay fp32."""
        for blk in self.blocks:
            blk.to(dtype)
            for module in blk.modules():
                if "zero_k_bias" in module._buffers:
                    module._buffers["zero_k_bias"] = module._buffers["zero_k_bias"].float()

    def set_numerics(self, numerics: str) -> None:
        """"exact": every fp32 computation stays fp32 (the default). "official": the text attentions
        (cross-attention in every block, text pooling) round their inputs and output to bf16 even in
        an fp32 run, and the RoPE angles are computed in fp32, as the official code does, so outputs
        can be checked against it."""
        if numerics not in NUMERICS:
            raise ConfigError(f"numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        self.numerics = numerics
        official = numerics == "official"
        if self.rope.official != official and not self.rope.cos.is_meta:
            self.rope = Rope2D(self.cfg.head_dim, self.rope.grid, official=official).to(self.rope.cos.device)
        for module in self.modules():
            if isinstance(module, (CrossAttention, PoolingAttention)):
                module.official_numerics = numerics == "official"

    @property
    def blocks(self) -> tuple[CrossAttnBlock, ...]:
        """All blocks in execution order (chunk order, then module order)."""
        return self._blocks

    # ---- text conditioning -------------------------------------------------------------
    def uncond_text(self, mask_BT: torch.Tensor) -> torch.Tensor:
        """The learned null text, as long as each prompt: cfg_uncond[:T] per row."""
        T = mask_BT.shape[1]
        if T > self.cfg.text_maxlen:
            raise ValueError(f"text of {T} tokens exceeds text_maxlen {self.cfg.text_maxlen}")
        return self.cfg_uncond[:T].unsqueeze(0).expand(mask_BT.shape[0], -1, -1)

    def condition(self, text_BTCt: torch.Tensor, mask_BT: torch.Tensor, budget: str | None = None) -> Conditioning:
        """Text features (already encoded, padded, with mask) -> pooled vector, modulation, CA input.

        budget: the schedule's budget name; a model with a budget embedding needs it (others ignore it).
        """
        feats = self.text_norm(text_BTCt)
        cond_BD = self.text_proj_for_sos(feats, mask_BT).float()
        if self.cfg.budget_embed:
            cond_BD = cond_BD + self.budget_embed[self.budget_index(budget)].float()
        ca_BTD = self.text_proj_for_ca(feats)
        with torch.autocast(device_type=cond_BD.device.type, enabled=False):
            gss = self.shared_ada_lin(cond_BD).unflatten(-1, (1, 6, -1))  # (B, 1, 6, C)
        mods = [blk.modulation(gss) for blk in self.blocks]
        return Conditioning(cond_BD=cond_BD, mods=mods, text=TextContext(ca_BTD, mask_BT))

    def budget_index(self, budget: str | None) -> int:
        """Row of budget_embed for a schedule's budget, or a one-line error for one it has no row for."""
        from ..errors import ConfigError
        from ..schedules import BUDGETS

        names = [*BUDGETS, "2K"]
        if budget not in names or names.index(budget) >= self.cfg.budget_embed:
            known = ", ".join(names[: self.cfg.budget_embed])
            raise ConfigError(f"this model has budget embeddings for {known} only, not {budget!r}")
        return names.index(budget)

    # ---- per-scale pieces --------------------------------------------------------------
    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Scale-0 input: the pooled text plus pos_start, one token per row: (B, 1, C)."""
        return cond_BD[:, None, :] + self.pos_start.float()

    def embed_tokens(self, codes_BLd: torch.Tensor) -> torch.Tensor:
        return self.word_embed(codes_BLd.float())

    def add_level(self, x_BLC: torch.Tensor, si: int, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Level embedding of scale si, plus the position table on its (h, w) grid where the model has one."""
        x_BLC = x_BLC + self.lvl_embed.weight[si].float()
        if self.cfg.abs_pos_grid:
            x_BLC = x_BLC + self.position_table(*hw)
        return x_BLC

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """(h*w, C) fp32: abs_pos average-pooled (or, above its size, bilinearly resized) to h x w."""
        table = self.abs_pos.float()
        if h <= table.shape[-2] and w <= table.shape[-1]:
            table = F.adaptive_avg_pool2d(table, (h, w))
        else:
            table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
        return table[0].flatten(1).transpose(0, 1)

    def forward_scale(self, x_BLC: torch.Tensor, cond: Conditioning, pos_L2: torch.Tensor,
                      caches: list[KVCache]) -> torch.Tensor:
        """The dense pass of one scale: every block, every token, in order.

        x_BLC is the scale input with its level embedding added (add_level); pos_L2 the RoPE
        (row, col) of its positions. Each block appends this scale's keys and values to its
        KV cache, which holds every earlier scale's, so attention spans the whole prefix.
        Returns the hidden states (B, L, C) the head reads. A pruner replaces this pass at
        the scales it prunes, calling the blocks' residual branches one by one instead.
        """
        cos, sin = self.rope.gather(pos_L2)
        x = x_BLC
        for layer, blk in enumerate(self.blocks):
            x = blk(x, cond.mods[layer], cos, sin, caches[layer], cond.text, layer)
        return x

    @staticmethod
    def guide(logits_cond: torch.Tensor, logits_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance on the logits: uncond + scale * (cond - uncond), in Infinity's form."""
        return scale * logits_cond + (1 - scale) * logits_uncond

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Bit logits (B, L, 2d) in fp32; the head condition is the pooled text, not gss."""
        with torch.autocast(device_type=h_BLC.device.type, enabled=False):
            return self.head(self.head_nm(h_BLC.float(), cond_BD.float()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
