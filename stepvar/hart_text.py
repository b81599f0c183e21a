"""HART's text side: Qwen2 hidden states of the prompt padded to a fixed length, or an untrained stand-in.

The release pads every prompt to 300 tokens (truncating longer ones), runs the LLM on an
optional system prompt followed by the padded prompt (system tokens all attended), and keeps
the last hidden state of the 300 prompt positions only, padding included: the transformer
sees padding as tokens (they sit at the last real position) and its head pools over them.

The system prompt is the release's own text. It is not shipped here: put it in a file
`system_prompt.txt` in the text-encoder directory (or pass it), else prompts are encoded
without it and the result says so.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import StepvarError
from .text import check_prompts

QWEN_RELEASE = "mit-han-lab/Qwen2-VL-1.5B-Instruct"
SYSTEM_PROMPT_FILE = "system_prompt.txt"


@dataclass
class HartText:
    features_BTD: torch.Tensor  # (B, T, D) fp32, padding rows included
    mask_BT: torch.Tensor  # (B, T) True at real tokens
    system_prompt: bool  # whether the system prompt was prepended


def encode_with_llm(prompts: list[str], tokenizer, model, max_length: int, system_prompt: str | None,
                    device) -> HartText:
    """Tokenise to exactly `max_length` (pad/truncate), prepend the system prompt's tokens, run the
    LLM, keep the prompt positions of its last hidden state. `tokenizer` and `model` follow the
    transformers interfaces (callable tokenizer with pad_token_id; model(..., output_hidden_states))."""
    ids = torch.stack([
        tokenizer(p, return_tensors="pt", padding="max_length", max_length=max_length, truncation=True).input_ids[0]
        for p in check_prompts(prompts)
    ]).to(device)
    mask = ids != tokenizer.pad_token_id
    if system_prompt:
        sys_ids = tokenizer(system_prompt, return_tensors="pt", padding="longest", max_length=max_length,
                            truncation=True).input_ids[0].to(device)
        sys_ids = sys_ids.unsqueeze(0).repeat(ids.shape[0], 1)
        full_ids = torch.cat((sys_ids, ids), dim=1)
        full_mask = torch.cat((torch.ones_like(sys_ids, dtype=torch.bool), mask), dim=1)
        hidden = model(full_ids, attention_mask=full_mask, output_hidden_states=True).hidden_states[-1]
        hidden = hidden[:, sys_ids.shape[1]:]
    else:
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    return HartText(hidden.float(), mask, system_prompt=bool(system_prompt))


class QwenTextEncoder:
    """Qwen2(-VL)-1.5B from a local directory through transformers (the `hart` extra)."""

    trained = True
    name = "Qwen2-VL-1.5B-Instruct"

    def __init__(self, directory: str | Path, device, max_length: int = 300, system_prompt: str | None = None):
        directory = Path(directory)
        if not directory.is_dir():
            raise StepvarError(f"text encoder directory not found: {directory}; download {QWEN_RELEASE} and pass --text-encoder")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise StepvarError("the HART text encoder needs transformers: pip install 'stepvar[hart]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(directory), torch_dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StepvarError(f"cannot load a Qwen2 text encoder from {directory}: {str(exc).splitlines()[0]}") from None
        self.model.to(device).eval()
        self.max_length = max_length
        sp_file = directory / SYSTEM_PROMPT_FILE
        self.system_prompt = system_prompt if system_prompt is not None else (
            sp_file.read_text(encoding="utf-8") if sp_file.is_file() else None)

    @torch.no_grad()
    def encode(self, prompts: list[str], device) -> HartText:
        return encode_with_llm(prompts, self.tokenizer, self.model, self.max_length, self.system_prompt, device)


class StandInTextEncoder:
    """Untrained: each word a fixed pseudo-random vector, padded to `max_length` like the release.

    Padding rows repeat one fixed vector. For random-weight runs and tests only."""

    trained = False
    name = "stand-in (untrained)"

    def __init__(self, channels: int, max_length: int = 300):
        self.channels, self.max_length = channels, max_length

    def _vector(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
        return torch.randn(self.channels, generator=g)

    def encode(self, prompts: list[str], device) -> HartText:
        feats, masks = [], []
        pad = self._vector("<pad>")
        for p in check_prompts(prompts):
            words = re.findall(r"\w+|[^\w\s]", p.lower())[: self.max_length]
            rows = [self._vector(w) for w in words] + [pad] * (self.max_length - len(words))
            feats.append(torch.stack(rows))
            masks.append(torch.arange(self.max_length) < len(words))
        return HartText(torch.stack(feats).to(device), torch.stack(masks).to(device), system_prompt=False)
