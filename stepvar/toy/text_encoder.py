"""A small learned text encoder over the toy grammar's vocabulary.

The toy world's prompts use about twenty words in three fixed forms, so a T5 encoder is
unnecessary: word embeddings plus learned positions and one or two pre-LN transformer
encoder layers give each word a context-dependent feature (which colour goes with which
shape, which object stands on which side of the relation). It is trained jointly with the
transformer (stepvar.training.train_gpt) and implements the TextEncoder protocol of
stepvar.text, so the pipeline uses it like any other encoder.

Prompts are parsed with the grammar first: an unknown word raises the grammar's one-line
StepvarError naming the words the model knows, and synonyms ("one"/"a", "circle"/"circles")
map to the same tokens because the canonical text is what gets tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stepvar.text import check_prompts
from stepvar.toy.grammar import MAX_TOKENS, PAD, VOCAB_SIZE, tokenize

LN_EPS = 1e-6


@dataclass(frozen=True)
class ToyTextConfig:
    channels: int = 128  # Ct: width of the output features (the transformer's text_channels)
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    # Tokenize "A right of B" as "B left of A" and "A below B" as "B above A" (grammar.mirror_relation).
    # Why: the first-named object is then always the left or upper one, so which object goes where
    # follows from word order alone instead of from the relation word. Exports made before this
    # field existed were trained without it (load_embedded reads a missing field as False).
    mirror_relations: bool = True


class _EncoderLayer(nn.Module):
    """Pre-LN self-attention + GELU MLP; padded keys are masked out."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x_BTC: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x_BTC)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BT[:, None, None, :])  # (B, H, T, hd)
        x_BTC = x_BTC + self.proj(a.transpose(1, 2).flatten(2))
        return x_BTC + self.fc2(F.gelu(self.fc1(self.norm2(x_BTC)), approximate="tanh"))


class ToyTextEncoder(nn.Module):
    """Grammar tokens -> features (B, MAX_TOKENS, Ct) and a mask of the real tokens.

    `trained` is False for a fresh module; loaders set it True after loading trained weights,
    so the pipeline can label outputs honestly.
    """

    name = "toy-grammar"

    def __init__(self, cfg: ToyTextConfig = ToyTextConfig()):
        super().__init__()
        self.cfg = cfg
        self.trained = False
        C = cfg.channels
        self.tok_embed = nn.Embedding(VOCAB_SIZE, C, padding_idx=PAD)
        self.pos_embed = nn.Parameter(torch.randn(MAX_TOKENS, C) * 0.02)
        hidden = int(round(C * cfg.mlp_ratio))
        self.layers = nn.ModuleList(_EncoderLayer(C, cfg.heads, hidden) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(C, eps=LN_EPS)

    @property
    def channels(self) -> int:
        return self.cfg.channels

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, MAX_TOKENS) int64 of the canonical texts; StepvarError for a bad prompt."""
        mirror = self.cfg.mirror_relations
        return torch.tensor([tokenize(p, mirror) for p in check_prompts(list(prompts))], dtype=torch.long)

    def forward(self, ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> features (B, T, Ct) fp32 and mask (B, T) bool (True = real token)."""
        mask_BT = ids_BT != PAD
        x = self.tok_embed(ids_BT) + self.pos_embed[: ids_BT.shape[1]]
        for layer in self.layers:
            x = layer(x, mask_BT)
        return self.norm_out(x).float(), mask_BT

    def encode(self, prompts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The TextEncoder protocol: parse, tokenize, encode; results on `device`."""
        ids = self.tokenize(prompts).to(self.pos_embed.device)
        feats, mask = self(ids)
        return feats.to(device), mask.to(device)
