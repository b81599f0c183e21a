"""Prompt sets: a file of prompts, read once, and the seed of every (prompt, sample) pair.

Two formats, told apart by the file's suffix:
  - `.jsonl` (GenEval's `evaluation_metadata.jsonl`): one JSON object per line with at least
    a string "prompt"; the whole object is kept as the prompt's metadata, so evaluators that
    read it back (GenEval's `OUT/00000/metadata.jsonl`) find every field they expect;
  - anything else: plain text, one prompt a line; blank lines and '#' comments are skipped.

A prompt's index is its position among the prompts of the file (0-based): it names its output
folder and enters its seeds, so it never depends on how the set is split or batched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .user_files import UserFileError, read_lines, read_text
from .validate import SEED_MAX, shown


@dataclass(frozen=True)
class PromptEntry:
    index: int
    prompt: str
    metadata: dict  # written as the folder's metadata.jsonl line


def read_prompt_set(path: str | Path) -> list[PromptEntry]:
    """Every prompt of the file, in order; a UserFileError (one line naming the file and line) otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    return [PromptEntry(i, text, {"prompt": text}) for i, (_, text) in enumerate(read_lines(path, "prompt file"))]


def _read_jsonl(path: Path) -> list[PromptEntry]:
    where = f"prompt file {shown(path, 200)}"
    entries = []
    for n, line in enumerate(read_text(path, "prompt file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserFileError(f"{where}: line {n} is not valid JSON ({shown(exc.msg, 80)} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise UserFileError(f"{where}: line {n} is not a JSON object")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserFileError(f"{where}: line {n} has no \"prompt\" string")
        entries.append(PromptEntry(len(entries), prompt.strip(), obj))
    if not entries:
        raise UserFileError(f"{where}: holds no prompt")
    return entries


def file_digest(path: str | Path) -> str:
    """sha256 of the prompt file: the manifest pins the set an output folder was made from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampler seed of sample s of prompt p, from the run's --seed.

    A hash of the three numbers rather than seed + a running count: it does not depend on
    --samples, the batch size, the number of ranks or which items a resumed run still has to
    make, so any subset of a set reproduces exactly, and one image is remade alone with
    `stepvar generate --prompt P --seed S` (the seed is recorded with every image).
    """
    digest = hashlib.blake2b(f"stepvar/prompt-set/{seed}/{prompt_index}/{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_MAX
