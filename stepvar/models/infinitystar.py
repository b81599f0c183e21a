"""The InfinityStar transformer (bitwise next-scale text-to-video), weight-compatible with the release.

Read top to bottom: configuration and presets, RMSNorm, the 4-D rotary embedding, the
per-layer KV cache, the Qwen3-style block (GQA attention with q/k RMSNorm, SwiGLU MLP, no AdaLN),
and the model. The text prefix (T5 features through one Linear) runs through the blocks once;
its keys and values stay cached for every scale. A scale attends to the text, to itself
(bidirectionally) and to the scales its schedule entry names (the previous clip's largest);
see `stepvar.video_schedules`. The semantic head predicts a clip's first scales (16 bits per
token), the detail head the rest (64 bits); both output two logits per bit.

Legend: B batch (2 with guidance: [cond; uncond]), L tokens of a scale (l when pruned), C width,
H query heads, Hk key/value heads, k head dim, Ct text-feature width, P positions (step, frame, row, col).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .rope import apply_rope

TEXT_SLOT = "t0"  # cache slot of the text prefix


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfinityStarConfig:
    name: str
    depth: int
    width: int  # C
    heads: int  # query heads
    kv_heads: int  # key/value heads (GQA when fewer than heads)
    mlp_ratio: float  # SwiGLU hidden = round(C * ratio / 256) * 256
    block_chunks: int  # the official layout groups blocks as block_chunks.{k}.module.{j}
    text_channels: int = 2048  # flan-t5-xl features
    text_maxlen: int = 512  # rows of cfg_uncond; also the RoPE step where visual passes begin
    code_channels: int = 64  # VAE latent channels fed to word_embed
    detail_bits: int = 64
    semantic_bits: int = 16
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    resolutions: tuple[str, ...] = ()  # keys of stepvar.video_schedules.RESOLUTIONS, default first
    untrained: bool = False  # random weights: every output says so
    weights_file: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.width % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"{self.name}: width {self.width}, heads {self.heads}, kv heads {self.kv_heads} do not divide")
        if self.depth % self.block_chunks:
            raise ConfigError(f"{self.name}: depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.head_dim % 8:
            raise ConfigError(f"{self.name}: head dim {self.head_dim} must split into 4 RoPE axes of pairs")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks


STAR_PRESETS: dict[str, InfinityStarConfig] = {
    "infinitystar-8b": InfinityStarConfig(
        "infinitystar-8b", depth=36, width=4096, heads=32, kv_heads=8, mlp_ratio=4.0, block_chunks=6,
        resolutions=("720p", "480p"), weights_file="infinitystar_8b_720p_weights/ (or _480p_weights/)",
        description="InfinityStar 8B text-to-video (official release: 720p 5 s, 480p 5/10 s)"),
    "infinitystar-tiny": InfinityStarConfig(
        "infinitystar-tiny", depth=4, width=512, heads=4, kv_heads=4, mlp_ratio=3.55, block_chunks=2,
        resolutions=("256",), untrained=True,
        description="The official infinity_qwen0b architecture with random weights (untrained), for tests and timing"),
}


def star_preset(name: str) -> InfinityStarConfig:
    if name not in STAR_PRESETS:
        raise ConfigError(f"unknown InfinityStar preset {name!r}; known: {', '.join(STAR_PRESETS)}")
    return STAR_PRESETS[name]


def is_star_preset(name: str | None) -> bool:
    return name in STAR_PRESETS


def star_preset_rows() -> list[dict]:
    """The video presets in the shape of `stepvar models` rows."""
    from ..video_schedules import RESOLUTIONS

    rows = []
    for name, c in STAR_PRESETS.items():
        rows.append({"name": name, "depth": c.depth, "width": c.width, "heads": c.heads,
                     "resolution_budget": "/".join(f"{r} {RESOLUTIONS[r].budget}" for r in c.resolutions),
                     "vae": "infinitystar-videovae", "text_encoder": "hash" if c.untrained else "t5",
                     "needs": [] if c.untrained else ["weights", "vae", "text-encoder"], "weights_file": c.weights_file,
                     "vae_file": None if c.untrained else "infinitystar_videovae.pth", "embedded": False,
                     "default": False, "description": c.description})
    return rows


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back to the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


def rope_4d(pos_LP: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (L, k/2) for integer positions (L, 4) = (step, frame, row, col).

    The k/2 rotated pairs split into four equal groups, one per axis, each with the same
    frequencies base^(-i/n), i < n = k/8. Angles are fp32 products, as the official table's.
    """
    n = head_dim // 8
    inv_freq = 1.0 / (base ** (torch.arange(n, dtype=torch.int64).float() / n))  # (n,)
    ang = (pos_LP.to(torch.float32)[:, :, None] * inv_freq.to(pos_LP.device)).flatten(1)  # (L, 4n)
    return ang.cos(), ang.sin()


class StarKVCache:
    """Per layer: cache slot -> (keys after q/k-norm and RoPE, values), each (B, Hk, L, k)."""

    def __init__(self, depth: int):
        self.layers: list[dict] = [{} for _ in range(depth)]

    def free(self, slot) -> None:
        for layer in self.layers:
            layer.pop(slot, None)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for layer in self.layers for k, v in layer.values())


class StarAttention(nn.Module):
    def __init__(self, cfg: InfinityStarConfig):
        super().__init__()
        C, k = cfg.width, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, k
        self.q_proj = nn.Linear(C, cfg.heads * k, bias=False)
        self.k_proj = nn.Linear(C, cfg.kv_heads * k, bias=False)
        self.v_proj = nn.Linear(C, cfg.kv_heads * k, bias=False)
        self.o_proj = nn.Linear(cfg.heads * k, C, bias=False)
        self.q_norm = RMSNorm(k, cfg.norm_eps)
        self.k_norm = RMSNorm(k, cfg.norm_eps)

    def forward(self, x_BLC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer_cache: dict | None,
                write_slot=None, read_slots: tuple = ()) -> torch.Tensor:
        B, L, _ = x_BLC.shape
        q = self.q_norm(self.q_proj(x_BLC).view(B, L, -1, self.head_dim)).transpose(1, 2)  # (B, H, L, k)
        k = self.k_norm(self.k_proj(x_BLC).view(B, L, -1, self.head_dim)).transpose(1, 2)  # (B, Hk, L, k)
        v = self.v_proj(x_BLC).view(B, L, -1, self.head_dim).transpose(1, 2)  # (B, Hk, L, k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if write_slot is not None:
            layer_cache[write_slot] = (k, v)
        if read_slots:
            k = torch.cat([layer_cache[s][0] for s in read_slots] + [k], dim=2)
            v = torch.cat([layer_cache[s][1] for s in read_slots] + [v], dim=2)
        rep = self.heads // self.kv_heads
        if rep > 1:  # GQA: each key/value head serves `rep` consecutive query heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=self.head_dim ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))  # (B, L, C)


class SwiGLU(nn.Module):
    def __init__(self, cfg: InfinityStarConfig):
        super().__init__()
        C, F_ = cfg.width, cfg.ffn_hidden
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class StarBlock(nn.Module):
    """x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(x)); each branch is a method a pruner can run on a subset."""

    def __init__(self, cfg: InfinityStarConfig):
        super().__init__()
        self.attn = StarAttention(cfg)
        self.mlp = SwiGLU(cfg)
        self.input_layernorm = RMSNorm(cfg.width, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.width, cfg.norm_eps)

    def attn_branch(self, x_BLC, cos, sin, layer_cache, write_slot=None, read_slots=()) -> torch.Tensor:
        return self.attn(self.input_layernorm(x_BLC), cos, sin, layer_cache, write_slot, read_slots)

    def mlp_branch(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x_BLC))

    def forward(self, x_BLC, cos, sin, layer_cache, write_slot=None, read_slots=()) -> torch.Tensor:
        x_BLC = x_BLC + self.attn_branch(x_BLC, cos, sin, layer_cache, write_slot, read_slots)
        return x_BLC + self.mlp_branch(x_BLC)


class _Chunk(nn.Module):
    """Only for the key layout: the official file stores block 6k + j as block_chunks.{k}.module.{j}."""

    def __init__(self, blocks: list[StarBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class InfinityStar(nn.Module):
    def __init__(self, cfg: InfinityStarConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        # Registration order = the official state-dict order.
        self.cfg_uncond = nn.Parameter(torch.empty(cfg.text_maxlen, cfg.text_channels))  # learned null text
        self.text_proj = nn.Linear(cfg.text_channels, C)
        self.sos_token = nn.Parameter(torch.empty(1, 1, C))  # in the files; inference starts from zero codes
        self.word_embed = nn.Linear(cfg.code_channels, C)
        self.norm_hidden_sates = RMSNorm(C, cfg.norm_eps)  # (sic): the official key name
        self.head = nn.Linear(C, 2 * cfg.detail_bits)
        self.semantic_head2 = nn.Linear(C, 2 * cfg.semantic_bits)
        per = cfg.blocks_per_chunk
        self.block_chunks = nn.ModuleList(
            _Chunk([StarBlock(cfg) for _ in range(per)]) for _ in range(cfg.block_chunks))

    @property
    def blocks(self) -> list[StarBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    def new_cache(self) -> StarKVCache:
        return StarKVCache(self.cfg.depth)

    # ---- text prefix -------------------------------------------------------------------------

    def text_prefix(self, text_LCt: torch.Tensor, guidance: bool = True) -> torch.Tensor:
        """(B, L, C): the prompt's features [and the learned null text of the same length] projected."""
        L = text_LCt.shape[0]
        if L > self.cfg.text_maxlen:
            raise ConfigError(f"the prompt has {L} text tokens; at most {self.cfg.text_maxlen} fit")
        rows = [text_LCt.float()]
        if guidance:
            rows.append(self.cfg_uncond[:L].float())
        return self.text_proj(torch.stack(rows))  # (B, L, C)

    def run_text(self, prefix_BLC: torch.Tensor, cache: StarKVCache) -> None:
        """Run the prefix through every block once; its K/V go to the text slot."""
        L = prefix_BLC.shape[1]
        pos = torch.zeros(L, 4, dtype=torch.long, device=prefix_BLC.device)
        pos[:, 0] = torch.arange(L, device=prefix_BLC.device)  # text token j: step j, frame/row/col 0
        cos, sin = rope_4d(pos, self.cfg.head_dim, self.cfg.rope_base)
        x = prefix_BLC
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache.layers[i], write_slot=TEXT_SLOT)

    # ---- visual passes -------------------------------------------------------------------------

    def embed_codes(self, codes_BdThw: torch.Tensor, batch: int) -> torch.Tensor:
        """(1, d, t, h, w) accumulated codes -> (batch, t*h*w, C) block input, same for every guidance row."""
        x = codes_BdThw.flatten(2).transpose(1, 2)  # (1, thw, d), (t, h, w) row-major
        return self.word_embed(x).expand(batch, -1, -1)

    def run_blocks(self, x_BLC: torch.Tensor, pos_LP: torch.Tensor, cache: StarKVCache,
                   write_slot=None, read_slots: tuple = ()) -> torch.Tensor:
        cos, sin = rope_4d(pos_LP, self.cfg.head_dim, self.cfg.rope_base)
        for i, block in enumerate(self.blocks):
            x_BLC = block(x_BLC, cos, sin, cache.layers[i], write_slot, read_slots)
        return x_BLC

    def logits(self, h_BLC: torch.Tensor, semantic: bool) -> torch.Tensor:
        """(B, L, 2 * bits) in fp32: two logits per bit, from the semantic or the detail head."""
        h = self.norm_hidden_sates(h_BLC).float()
        head = self.semantic_head2 if semantic else self.head
        return F.linear(h, head.weight.float(), head.bias.float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(cfg: InfinityStarConfig) -> InfinityStar:
    with torch.device("meta"):
        return InfinityStar(cfg)


def init_random_(model: InfinityStar, seed: int = 0) -> InfinityStar:
    """Seeded random weights for the untrained presets: every tensor non-trivial, so tests see every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "norm_hidden" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "cfg_uncond":
                p.copy_(torch.randn(p.shape, generator=g) * (1.2 / p.shape[1] ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model
