"""HART's transformer (hybrid autoregressive transformer, text-to-image), weights-compatible.

Tensor-name legend: B prompts, B2 = 2B rows (CFG: [cond; uncond]), T context tokens,
L dense tokens of a scale, l a subset of them, C width, H heads, k head dim, V vocabulary,
Cv latent channels of the tokenizer.

What differs from Infinity, and matters for loading the released weights:
- the blocks have no AdaLN: x + Attn(N(x)), then x + FFN(N(x)), with ONE RMSNorm (with a
  weight, despite its key name ``ln_wo_grad``) used at both positions;
- the prompt is a 300-token prefix of the sequence (no cross-attention); step 0 runs the
  context alone and its last position predicts the 1x1 token;
- RoPE: 1-D on the context, a 2-D layout on image tokens whose row angles fill the first half
  of the head and column angles the second half, applied with rotate-half over the whole
  head. An element therefore pairs with the one hd/2 away and its two halves use different
  angles: not a rotation when row != col, and reproduced as such (the weights expect it);
- only the head has AdaLN, conditioned on the max over all context tokens (padding included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .blocks import FFN, KVCache  # Infinity's GELU FFN (same fc1/fc2 keys) and per-layer K/V cache

HART_1024_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
_MAX_LOG_SCALE = math.log(100.0)


@dataclass
class HartConfig:
    """Shapes of a HART transformer plus its diffusion head (the `llm/` folder's config.json)."""

    name: str = "custom"
    depth: int = 24
    width: int = 1536  # C; the condition width D equals C
    heads: int = 24
    context_tokens: int = 300  # the text prefix, padded to this length
    context_dim: int = 1536  # width of the text encoder's hidden states (Qwen2-1.5B)
    mlp_type: str = "gpt2"  # "gpt2": GELU-tanh fc1/fc2 with biases; "llama": SwiGLU without biases
    mlp_ratio: float = 4.0
    attn_l2_norm: bool = False  # q/k L2-normalised with a learned per-head scale (scale_mul_1H11)
    use_context_norm: bool = False  # an RMSNorm on the text features before context_embed
    patch_nums: tuple[int, ...] = HART_1024_PATCH_NUMS
    norm_eps: float = 1e-6
    vocab: int = 4096  # V: the tokenizer's codebook size
    latent_channels: int = 32  # Cv: the tokenizer's latent width
    diff_width: int = 1024
    diff_depth: int = 6
    diff_steps: int = 8  # the respaced IDDPM steps of the residual diffusion head
    description: str = ""

    def __post_init__(self) -> None:
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.width % self.heads:
            raise ConfigError(f"{self.name}: width {self.width} is not divisible by {self.heads} heads")
        if self.head_dim % 4:
            raise ConfigError(f"{self.name}: head dim {self.head_dim} must be a multiple of 4 for HART's 2-D RoPE")
        if self.mlp_type not in ("gpt2", "llama"):
            raise ConfigError(f"{self.name}: mlp_type {self.mlp_type!r} is not 'gpt2' or 'llama'")
        if len(self.patch_nums) < 2 or self.patch_nums[0] != 1:
            raise ConfigError(f"{self.name}: patch_nums must start at 1 and have at least two scales")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_type == "gpt2":
            return round(self.width * self.mlp_ratio)
        # SwiGLU keeps the FLOPs of a 4x MLP: 2/3 of it, rounded up to a multiple of 256.
        return int(self.width * self.mlp_ratio * 2 / 3 + 255) // 256 * 256

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def image_tokens(self) -> int:
        """Input tokens after the prefix: every scale but the 1x1 one, which the context predicts."""
        return sum(p * p for p in self.patch_nums[1:])


# ----------------------------------------------------------------------------- norms, RoPE


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the variance in fp32, cast back before the weight (as HART's fused kernel)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def _inv_freq(head_dim: int, stride: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, stride, dtype=torch.int64).float() / head_dim))


def context_rope(pos_BT: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Llama RoPE at the given (float) positions -> cos, sin of shape (B, T, k)."""
    freqs = pos_BT.float()[..., None] * _inv_freq(head_dim, 2).to(pos_BT.device)  # (B, T, k/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def image_rope(pos_Bl2: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HART's 2-D table at (row, col) float positions -> cos, sin (B, l, k).

    Per token the k angles are [row*f, row*f, col*f, col*f] with k/4 frequencies f.
    """
    f = _inv_freq(head_dim, 4).to(pos_Bl2.device)  # (k/4,)
    row = pos_Bl2[..., 0:1].float() * f
    col = pos_Bl2[..., 1:2].float() * f
    emb = torch.cat((row, row, col, col), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x_BHlk: torch.Tensor, cos_Blk: torch.Tensor, sin_Blk: torch.Tensor) -> torch.Tensor:
    cos, sin = cos_Blk.unsqueeze(1).to(x_BHlk.dtype), sin_Blk.unsqueeze(1).to(x_BHlk.dtype)
    return x_BHlk * cos + rotate_half(x_BHlk) * sin


def scale_positions(pn: int, last_pn: int, offset_B: torch.Tensor) -> torch.Tensor:
    """(B, pn*pn, 2) float (row, col) of a pn x pn scale on the last scale's grid, plus the
    per-row offset (the last context position), on both coordinates. Not rounded."""
    ar = torch.arange(pn, device=offset_B.device)
    grid = torch.stack(torch.meshgrid(ar, ar, indexing="ij"), dim=-1)  # (pn, pn, 2) int
    coords = (grid / pn * last_pn).reshape(-1, 2)  # (L, 2) float
    return coords.unsqueeze(0) + offset_B.reshape(-1, 1, 1)


# ----------------------------------------------------------------------------- attention, FFN, block


class HartAttention(nn.Module):
    def __init__(self, cfg: HartConfig):
        super().__init__()
        C = cfg.width
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv_proj = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        # Persistent in the release (it is in the state dict), always zero.
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, cfg.heads, 1, 1), math.log(4.0)))
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(C, C)

    def forward(self, x_BlC, cos_Blk, sin_Blk, cache: KVCache | None) -> torch.Tensor:
        B, l, C = x_BlC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BlC, self.qkv_proj.weight, bias).view(B, l, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, l, k)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(_MAX_LOG_SCALE).exp())
            k = F.normalize(k, dim=-1)
        q, k = apply_rope(q, cos_Blk, sin_Blk), apply_rope(k, cos_Blk, sin_Blk)
        if cache is not None:
            k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, l, k); no mask: causal by cache
        return self.proj(out.transpose(1, 2).reshape(B, l, C))


class SwiGLUFFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HartBlock(nn.Module):
    """One block, split into its two residual branches so a pruner can run either on a subset."""

    def __init__(self, cfg: HartConfig):
        super().__init__()
        self.attn = HartAttention(cfg)
        self.ffn = FFN(cfg.width, cfg.ffn_hidden) if cfg.mlp_type == "gpt2" else SwiGLUFFN(cfg.width, cfg.ffn_hidden)
        self.ln_wo_grad = RMSNorm(cfg.width, cfg.norm_eps)  # shared by both branches

    def attn_branch(self, x_BlC, cos_Blk, sin_Blk, cache: KVCache | None) -> torch.Tensor:
        return self.attn(self.ln_wo_grad(x_BlC), cos_Blk, sin_Blk, cache)

    def ffn_branch(self, x_BlC) -> torch.Tensor:
        return self.ffn(self.ln_wo_grad(x_BlC))

    def forward(self, x_BlC, cos_Blk, sin_Blk, cache: KVCache | None) -> torch.Tensor:
        x_BlC = x_BlC + self.attn_branch(x_BlC, cos_Blk, sin_Blk, cache)
        return x_BlC + self.ffn_branch(x_BlC)


class HeadNorm(nn.Module):
    """RMSNorm, then (1 + scale) and + shift from SiLU -> Linear(C, 2C) of the condition."""

    def __init__(self, cfg: HartConfig):
        super().__init__()
        self.width = cfg.width
        self.ln_wo_grad = RMSNorm(cfg.width, cfg.norm_eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))

    def forward(self, h_BlC: torch.Tensor, cond_B1C: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_B1C).view(-1, 1, 2, self.width).unbind(2)
        return self.ln_wo_grad(h_BlC).mul(scale.add(1)).add(shift)


# ----------------------------------------------------------------------------- the model


@dataclass
class HartContext:
    """The prompt side of one generation, both CFG halves stacked: [cond; uncond]."""

    x_B2TC: torch.Tensor  # step-0 input: context_embed(text) + level 0
    head_cond_B21C: torch.Tensor  # the head's AdaLN condition: max over every context token
    pos_B2T: torch.Tensor  # 1-D RoPE positions of the context tokens
    offset_B2: torch.Tensor  # added to both image coordinates: the last context position

    @property
    def rows(self) -> int:
        return self.x_B2TC.shape[0]


class HartTransformer(nn.Module):
    """Key names and shapes follow the released `llm/` state dict, so it loads strictly.

    The diffusion head (``diffloss``) is a child so that its keys live where the release has them.
    """

    def __init__(self, cfg: HartConfig):
        super().__init__()
        from .hart_diffusion import DiffusionHead

        self.cfg = cfg
        C = cfg.width
        self.word_embed = nn.Linear(cfg.latent_channels, C)
        self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps) if cfg.use_context_norm else nn.Identity()
        self.context_embed = nn.Linear(cfg.context_dim, C)
        self.lvl_embed = nn.Embedding(cfg.num_scales, C)
        self.blocks = nn.ModuleList(HartBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = HeadNorm(cfg)
        self.head = nn.Linear(C, cfg.vocab)
        self.decoder_norm = RMSNorm(C, cfg.norm_eps)
        self.diffloss = DiffusionHead(cfg.latent_channels, C, cfg.diff_width, cfg.diff_depth, cfg.diff_steps)

    # --- phase 1: the prompt
    def prepare_context(self, text_BTD: torch.Tensor, mask_BT: torch.Tensor) -> HartContext:
        """Embed the text (cond half) and an all-zero context (uncond half).

        Positions: real tokens 0..n-1 and padding all at n-1 (cumsum of the mask - 1); the
        uncond half sits entirely at 0 (its mask is 1 at index 0 only).
        """
        B, T, _ = text_BTD.shape
        if T != self.cfg.context_tokens:
            raise ConfigError(f"the text has {T} tokens; this model takes exactly {self.cfg.context_tokens}")
        if text_BTD.shape[-1] != self.cfg.context_dim:
            raise ConfigError(f"the text encoder gives {text_BTD.shape[-1]} channels; this model takes {self.cfg.context_dim}")
        both = torch.cat((text_BTD, torch.zeros_like(text_BTD)), dim=0)
        sos_B2TC = self.context_embed(self.context_norm(both))
        pos_cond = torch.cumsum(mask_BT.long(), dim=1) - 1
        pos_B2T = torch.cat((pos_cond, torch.zeros_like(pos_cond)), dim=0)
        return HartContext(
            x_B2TC=sos_B2TC + self.lvl_embed.weight[0],
            head_cond_B21C=sos_B2TC.max(dim=1, keepdim=True).values,
            pos_B2T=pos_B2T,
            offset_B2=pos_B2T[:, -1],
        )

    # --- per scale
    def rope_context(self, ctx: HartContext) -> tuple[torch.Tensor, torch.Tensor]:
        return context_rope(ctx.pos_B2T, self.cfg.head_dim)

    def positions(self, si: int, ctx: HartContext) -> torch.Tensor:
        """(B2, L, 2) positions of step si's input tokens (si >= 1: the grid patch_nums[si])."""
        return scale_positions(self.cfg.patch_nums[si], self.cfg.patch_nums[-1], ctx.offset_B2)

    def rope_image(self, pos_Bl2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_rope(pos_Bl2, self.cfg.head_dim)

    def embed_scale(self, h_BLCv: torch.Tensor, si: int) -> torch.Tensor:
        """Input tokens of step si from the tokenizer's downsampled f_hat, (B, L, Cv) -> (B, L, C)."""
        return self.word_embed(h_BLCv) + self.lvl_embed.weight[si]

    def run_blocks(self, x_BlC, cos, sin, caches: list[KVCache]) -> torch.Tensor:
        for block, cache in zip(self.blocks, caches):
            x_BlC = block(x_BlC, cos, sin, cache)
        return x_BlC

    def logits(self, h_BlC: torch.Tensor, ctx: HartContext) -> torch.Tensor:
        """(B2, l, V) fp32 logits of both CFG halves."""
        return self.head(self.head_nm(h_BlC.float(), ctx.head_cond_B21C.float())).float()

    def diffusion_condition(self, h_last_BLC: torch.Tensor, idx_BL: torch.Tensor, codebook_VCv: torch.Tensor) -> torch.Tensor:
        """z of the residual diffusion head: decoder_norm(h + word_embed(code of the sampled token))."""
        discrete = self.word_embed(F.embedding(idx_BL, codebook_VCv))
        return self.decoder_norm(h_last_BLC + torch.cat((discrete, discrete), dim=0))

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]
