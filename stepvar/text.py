"""Text encoders: turn prompts into padded features plus a validity mask.

The model never sees padding as content: the mask drives the pooling and cross-attention,
which equals the official varlen computation with per-sample masks.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Protocol

import torch

from .errors import StepvarError


class TextEncoder(Protocol):
    channels: int
    trained: bool
    name: str

    def encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, T, Ct) fp32 and mask (B, T) bool."""


def check_prompts(prompts: list[str]) -> list[str]:
    if not prompts:
        raise StepvarError("no prompt given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise StepvarError("the prompt is empty; pass --prompt with some text")
    return [p.strip() for p in prompts]


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (T_i, Ct) features to (B, T, Ct) with a mask."""
    T = max(f.shape[0] for f in feats)
    out = feats[0].new_zeros(len(feats), T, feats[0].shape[1])
    mask = torch.zeros(len(feats), T, dtype=torch.bool, device=feats[0].device)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


class HashTextEncoder:
    """An untrained stand-in: each word maps to a fixed pseudo-random vector.

    It makes the prompt matter (different words give different conditioning) without any
    downloaded model, for tests and random-weight architecture benchmarks. It carries no
    meaning; images from it are labelled untrained.
    """

    trained = False
    name = "hash (untrained)"

    def __init__(self, channels: int, max_tokens: int = 64):
        self.channels, self.max_tokens = channels, max_tokens

    def _word_vector(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
        return torch.randn(self.channels, generator=g)

    def encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for p in check_prompts(prompts):
            words = (re.findall(r"\w+|[^\w\s]", p.lower()) + ["</s>"])[: self.max_tokens]
            feats.append(torch.stack([self._word_vector(w) for w in words]))
        x, mask = pad_features(feats)
        return x.to(device), mask.to(device)


class T5TextEncoder:
    """flan-t5-xl's encoder from a local directory, through transformers.

    Tokenised to at most 512 tokens; only real tokens are kept (masked), as in the
    official compact varlen layout.
    """

    trained = True
    name = "flan-t5-xl"

    def __init__(self, directory: str | Path, device: torch.device, max_length: int = 512):
        directory = Path(directory)
        if not directory.is_dir():
            raise StepvarError(f"text encoder directory not found: {directory}")
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError:
            raise StepvarError("the T5 text encoder needs transformers: pip install 'stepvar[t5]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), legacy=True, local_files_only=True)
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            self.model = T5EncoderModel.from_pretrained(str(directory), torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StepvarError(f"cannot load a T5 encoder from {directory}: {str(exc).splitlines()[0]}") from None
        self.model.to(device).eval()
        self.channels = self.model.config.d_model
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(check_prompts(prompts), max_length=self.max_length, padding="longest",
                             truncation=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        feats = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return feats, mask.bool()
