"""The official checkpoint containers: reading them lazily, writing them atomically.

| container | on disk |
|---|---|
| pth-flat | torch pickle of a flat dict of tensors (`infinity_2b_reg.pth`) |
| pth-training | torch pickle; the model under `trainer` -> `gpt_fsdp` (`ar-ckpt-*.pth`, also our training) |
| vae | torch pickle; the state dict under `vae`, EMA weights optionally under `ema` |
| safetensors | one safetensors file |
| safetensors-sharded | `model-0000k-of-0000N.safetensors` + `model.safetensors.index.json` (the 8B release) |

Everything is local and lazy: pickles are memory-mapped by torch.load, safetensors files by safetensors.
Every failure is a CheckpointError whose message is one line naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..io import atomic_path
from ..user_files import UserFileError, check_regular_file, read_json
from ..validate import shown

CONTAINERS = ("pth-flat", "pth-training", "vae", "safetensors", "safetensors-sharded")
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class LoadedCheckpoint:
    """The tensors of one checkpoint (memory-mapped where the format allows) and where they came from."""

    tensors: dict[str, torch.Tensor]
    container: str  # one of CONTAINERS
    path: Path
    metadata: dict = field(default_factory=dict)  # safetensors header / index metadata, for reports

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def n_params(self) -> int:
        """Elements of all tensors in the file (buffers included, when the file holds any)."""
        return sum(t.numel() for t in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        """Tensor count per dtype, e.g. {'float32': 629}."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            name = str(t.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + 1
        return counts



# --------------------------------------------------------------------------------------------------
# Reading the official containers
# --------------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception message: torch's errors run to several paragraphs of advice."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].split(". ")[0].strip().rstrip(".") if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> LoadedCheckpoint:
    """Open a checkpoint in any official container; `use_ema` picks a VAE file's `ema` weights."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{shown(p)}: no such file or directory")
    if not p.is_dir():
        try:
            check_regular_file(p, "checkpoint")  # by stat: a FIFO or a device is never opened
        except UserFileError as exc:
            raise CheckpointError(str(exc)) from None
    if p.is_dir():
        if not (p / INDEX_NAME).is_file():
            raise CheckpointError(f"{p}: directory holds no {INDEX_NAME} (expected a sharded safetensors checkpoint)")
        return _read_sharded(p / INDEX_NAME)
    if p.suffix == ".json":
        return _read_sharded(p)
    kind = _sniff(p)
    if kind == "safetensors":
        tensors, meta = _read_safetensors(p)
        return LoadedCheckpoint(tensors, "safetensors", p, meta)
    if kind in ("torch-zip", "torch-legacy"):
        obj = _torch_load(p, mmap=kind == "torch-zip")
        tensors, container = _unpack_pickle(obj, p, use_ema)
        return LoadedCheckpoint(tensors, container, p)
    raise CheckpointError(f"{p}: unknown checkpoint container (not a torch file, a safetensors file or {INDEX_NAME})")


def _sniff(p: Path) -> str | None:
    """Container by magic bytes, so a file's extension never decides how it is parsed."""
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read file ({_one_line(exc)})") from None
    if not head:
        raise CheckpointError(f"{p}: file is empty")
    if head.startswith(b"PK"):
        return "torch-zip"
    if head[0] == 0x80:  # a bare pickle: torch.save's pre-1.6 format
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "safetensors"
    return None


def _stub_global(name: str) -> tuple[type, str]:
    """An inert stand-in for a pickled class (e.g. the training `args`), so weights_only loading can proceed.

    It accepts any constructor arguments and state and runs no code from the file.
    """
    module, _, qualname = name.rpartition(".")
    stub = type(qualname or name, (), {
        "__init__": lambda self, *args, **kwargs: None,
        "__setstate__": lambda self, state: None,
        "__module__": module,
    })
    return stub, name


def _torch_load(p: Path, mmap: bool):
    def load():
        return torch.load(p, map_location="cpu", mmap=mmap, weights_only=True)

    try:
        try:
            return load()
        except pickle.UnpicklingError:
            # Training checkpoints pickle their argument objects; stub them instead of trusting the file.
            names = torch.serialization.get_unsafe_globals_in_checkpoint(p) if mmap else []
            if not names:
                raise
            with torch.serialization.safe_globals([_stub_global(n) for n in names]):
                return load()
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise CheckpointError(f"{shown(p)}: cannot read torch checkpoint: {torch_load_problem(exc)}") from None


def torch_load_problem(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in stepvar's words: torch's own message goes on to
    advise loading with weights_only=False, which would run code from the file and is never done."""
    if isinstance(exc, pickle.UnpicklingError):
        return ("it pickles objects other than tensors and plain containers; refused, since no code "
                "from a checkpoint is ever run")
    hint = " (truncated or corrupt file?)" if isinstance(exc, (RuntimeError, EOFError)) else ""
    return _one_line(exc) + hint


def _unpack_pickle(obj, p: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a dict of tensors")
    trainer = obj.get("trainer")
    if isinstance(trainer, Mapping):
        if "gpt_fsdp" not in trainer:
            raise CheckpointError(f"{p}: training checkpoint without trainer.gpt_fsdp (the model weights)")
        return _as_tensors(trainer["gpt_fsdp"], p, "trainer.gpt_fsdp."), "pth-training"
    if isinstance(obj.get("vae"), Mapping):
        which = "ema" if use_ema else "vae"
        if not isinstance(obj.get(which), Mapping):
            raise CheckpointError(f"{p}: VAE file has no '{which}' weights (keys: {', '.join(map(str, obj))})")
        return _as_tensors(obj[which], p, f"{which}."), "vae"
    if use_ema:
        raise CheckpointError(f"{p}: EMA weights were requested, but this is not a VAE file with an 'ema' key")
    return _as_tensors(obj, p, ""), "pth-flat"


def _as_tensors(sd, p: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{shown(p)}: '{where.rstrip('.') or 'top level'}' holds no tensors")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{shown(p)}: a key of '{where.rstrip('.') or 'top level'}' is a "
                                  f"{type(key).__name__} ({shown(key, 40)}), not a parameter name")
        if not isinstance(value, torch.Tensor):
            keys = ", ".join(map(str, list(sd)[:5]))
            raise CheckpointError(
                f"{p}: '{where}{key}' is a {type(value).__name__}, not a tensor "
                f"(unrecognised container; first keys: {keys})")
    return dict(sd)


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(p, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # SafetensorError has no importable base class across versions
        raise CheckpointError(f"{p}: cannot read safetensors file: {_one_line(exc)}") from None


def _read_sharded(index: Path) -> LoadedCheckpoint:
    try:
        data = read_json(index, "shard index")
    except UserFileError as exc:
        raise CheckpointError(str(exc)) from None
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{shown(index)}: the shard index's 'weight_map' is not a mapping of keys to shard files")
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{shown(index)}: the shard of '{shown(key, 80)}' is not a file name")
        by_shard.setdefault(shard, []).append(key)
    for shard in by_shard:
        _shard_inside(index, shard)
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in by_shard.items():
        part, _ = _read_safetensors(_shard_inside(index, shard))
        absent = [k for k in keys if k not in part]
        if absent:
            raise CheckpointError(
                f"{index.parent / shard}: the index maps '{absent[0]}' ({len(absent)} keys in all) here, "
                "but the shard does not hold it")
        for key, t in part.items():
            if key in tensors:
                raise CheckpointError(f"{index.parent / shard}: key '{key}' is also stored in another shard")
            tensors[key] = t
    ordered = {k: tensors[k] for k in weight_map} | tensors  # index order first, unlisted extras last
    meta = data.get("metadata")
    return LoadedCheckpoint(ordered, "safetensors-sharded", index, dict(meta) if isinstance(meta, dict) else {})


def _shard_inside(index: Path, shard: str) -> Path:
    """The shard's path, which the index must name inside its own directory: never '../..' or an
    absolute path. A shard that is a symlink is the user's own doing (a Hugging Face cache links
    every file to a blob elsewhere), so it is followed wherever it leads."""
    rel = Path(shard)
    if not shard or rel.is_absolute() or ".." in rel.parts or "\x00" in shard:
        raise CheckpointError(f"{shown(index)}: shard '{shown(shard, 120)}' is not a file inside the checkpoint "
                              "directory; refused")
    path = index.parent / rel
    try:
        check_regular_file(path, "shard")
    except UserFileError:
        raise CheckpointError(f"{shown(index)}: shard '{shown(shard, 120)}' listed in the index is missing "
                              "or not a regular file") from None
    return path



# --------------------------------------------------------------------------------------------------
# Writing (atomic; also the format of our own training checkpoints)
# --------------------------------------------------------------------------------------------------


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """stepvar.io.atomic_path, with write failures reported as a checkpoint error."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint: {_one_line(exc)}") from None


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"cannot save '{key}': a {type(t).__name__}, not a tensor")
        if t.is_meta:
            raise CheckpointError(f"cannot save '{key}': it lives on the meta device (no data)")
        t = t.detach().cpu().contiguous()
        # safetensors refuses tensors that share a storage; such aliases are rare, so copy them.
        storage = t.untyped_storage().data_ptr()
        out[key] = t.clone() if storage in seen and t.numel() else t
        seen.add(storage)
    return out


def _shard_split(sizes: list[int], n: int) -> list[int]:
    """Contiguous split of sizes into n non-empty groups of about equal bytes; returns group lengths."""
    target, groups, acc = sum(sizes) / n, [0], 0
    for j, size in enumerate(sizes):
        keys_left, groups_left = len(sizes) - j, n - len(groups)
        if groups[-1] and groups_left and (acc + size / 2 > target * len(groups) or keys_left <= groups_left):
            groups.append(0)
        groups[-1] += 1
        acc += size
    return groups


def save_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    container: str,
    *,
    n_shards: int | None = None,
    max_shard_bytes: int = 5 * 2**30,
    extra: Mapping | None = None,
) -> Path:
    """Write tensors in one of the official containers; returns the path to pass to read_checkpoint.

    `extra`: top-level entries beside the weights for "pth-training" (e.g. args, step) and "vae"
    (e.g. ema); string metadata for "safetensors". "safetensors-sharded" writes into the directory
    `path` (or the index file's directory) shards `model-0000k-of-0000N.safetensors`, then the index.
    """
    if container not in CONTAINERS:
        raise CheckpointError(f"unknown container {container!r}; known: {', '.join(CONTAINERS)}")
    p = Path(path).expanduser()
    sd = _plain_tensors(tensors)
    if not sd:
        raise CheckpointError(f"{p}: nothing to save")
    extra = dict(extra or {})
    if extra and container in ("pth-flat", "safetensors-sharded"):
        raise CheckpointError(f"{p}: a {container} checkpoint holds only tensors; 'extra' is not allowed")
    if container == "safetensors-sharded":
        return _save_sharded(sd, p, n_shards, max_shard_bytes)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(p) as tmp:
        if container == "safetensors":
            save_file(sd, str(tmp), metadata={"format": "pt", **{str(k): str(v) for k, v in extra.items()}})
        else:
            obj = {"pth-flat": sd, "pth-training": {"trainer": {"gpt_fsdp": sd}}, "vae": {"vae": sd}}[container]
            torch.save(obj if container == "pth-flat" else {**obj, **extra}, tmp)
    return p


def _save_sharded(sd: dict[str, torch.Tensor], p: Path, n_shards: int | None, max_shard_bytes: int) -> Path:
    root, index_name = (p.parent, p.name) if p.suffix == ".json" else (p, INDEX_NAME)
    root.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    sizes = [t.numel() * t.element_size() for t in sd.values()]
    n = n_shards or max(1, math.ceil(sum(sizes) / max_shard_bytes))
    n = max(1, min(n, len(keys)))
    weight_map, start = {}, 0
    for k, count in enumerate(_shard_split(sizes, n), start=1):
        shard = f"model-{k:05d}-of-{n:05d}.safetensors"
        part = {key: sd[key] for key in keys[start: start + count]}
        with _atomic(root / shard) as tmp:
            save_file(part, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        start += count
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    with _atomic(root / index_name) as tmp:  # last: the index only ever names complete shards
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return root / index_name
