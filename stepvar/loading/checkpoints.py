"""Checking, identifying and loading Infinity and VAE weights.

Read top to bottom: the strict key/shape check with the few tolerances the official loader implies,
preset guessing (for error messages and `inspect`), and loading into a model. Loading assigns the
file's memory-mapped tensors to the model (load_state_dict(assign=True)), so a model built on the
meta device is filled without a second copy in RAM. The containers themselves live in
`containers.py`; their public names are re-exported here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.bsq_vae import BSQVAE, VAE_PRESETS, bit_weights, canonicalize_vae_keys, vae_preset_for_file
from ..models.config import list_model_presets, load_model_preset
from ..models.infinity import Infinity
from ..models.rope import Rope2D
from .containers import CONTAINERS, INDEX_NAME, LoadedCheckpoint, _one_line, read_checkpoint, save_checkpoint

__all__ = [
    "CONTAINERS", "INDEX_NAME", "KeyProblem", "LoadReport", "LoadedCheckpoint", "check_against",
    "check_vae_against", "guess_preset", "guess_vae_preset", "likely_cause", "load_model_weights",
    "load_vae_weights", "preset_shapes", "read_checkpoint", "save_checkpoint", "vae_shapes",
]

VAE_MASK_KEY = "quantizer.lfq.mask"

# Buffers the official loader deletes before loading: never part of the architecture.
OFFICIAL_DROPPED = frozenset({"lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"})
# Persistent (always-zero) buffers in the official model, non-persistent here: a file may or may not hold them.
OPTIONAL_BUFFERS = frozenset({"zero_k_bias"})
_TOLERATED = OFFICIAL_DROPPED | OPTIONAL_BUFFERS

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def _fmt(shape: Shape | None) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")" if shape is not None else "?"


@dataclass(frozen=True)
class KeyProblem:
    """One way a file's tensors differ from what the model expects."""

    key: str
    kind: str  # "missing" | "unexpected" | "shape" | "nonzero"
    expected: Shape | None = None
    found: Shape | None = None

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"missing key '{self.key}' (expected shape {_fmt(self.expected)})"
        if self.kind == "unexpected":
            return f"unexpected key '{self.key}' (shape {_fmt(self.found)})"
        if self.kind == "shape":
            return f"key '{self.key}' has shape {_fmt(self.found)}, expected {_fmt(self.expected)}"
        return f"buffer '{self.key}' must be all zeros"

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind,
                "expected": list(self.expected) if self.expected is not None else None,
                "found": list(self.found) if self.found is not None else None}


@dataclass
class LoadReport:
    path: str
    container: str
    preset: str | None
    n_tensors: int
    n_params: int
    dtypes: dict[str, int]
    dropped: list[str] = field(default_factory=list)  # file keys deliberately not loaded
    notes: list[str] = field(default_factory=list)  # tolerated differences (reshape, truncation, ...)
    converted: int = 0  # tensors copied to the model's dtype or device


def _as_loaded(source: str | os.PathLike | LoadedCheckpoint, use_ema: bool = False) -> LoadedCheckpoint:
    return source if isinstance(source, LoadedCheckpoint) else read_checkpoint(source, use_ema=use_ema)


# --------------------------------------------------------------------------------------------------
# Strict checking, with the official loader's tolerances
# --------------------------------------------------------------------------------------------------


@dataclass
class _Normalized:
    tensors: dict[str, torch.Tensor]
    dropped: list[str]
    notes: list[str]
    problems: list[KeyProblem]


def _normalize(expected: Mapping[str, Shape], tensors: Mapping[str, torch.Tensor]) -> _Normalized:
    """Apply the tolerated differences; everything else is left for the strict comparison."""
    out, dropped, notes, problems = {}, [], [], []
    n_reshaped = 0
    for key, t in tensors.items():
        leaf = key.rpartition(".")[2]
        if key not in expected and leaf in _TOLERATED:
            # A non-zero key bias would change the math (it is added before qk-norm): refuse it.
            if leaf in OPTIONAL_BUFFERS and not t.is_meta and torch.count_nonzero(t):
                problems.append(KeyProblem(key, "nonzero", found=tuple(t.shape)))
            dropped.append(key)
            continue
        want = expected.get(key)
        if want is not None and tuple(t.shape) != tuple(want):
            H = want[1] if len(want) == 4 else -1
            if leaf == "scale_mul_1H11" and tuple(want) == (1, H, 1, 1) and tuple(t.shape) == (1, 1, H, 1):
                t = t.reshape(want)  # the same H values, stored in the (1, 1, H, 1) layout
                n_reshaped += 1
            elif key == "cfg_uncond" and t.ndim == 2 and t.shape[1] == want[1] and t.shape[0] > want[0]:
                notes.append(f"cfg_uncond truncated from {t.shape[0]} to {want[0]} rows (as the official loader does)")
                t = t[: want[0]]
        out[key] = t
    if n_reshaped:
        notes.append(f"{n_reshaped} scale_mul_1H11 tensors reshaped from (1, 1, H, 1) to (1, H, 1, 1)")
    return _Normalized(out, dropped, notes, problems)


def _compare(expected: Mapping[str, Shape], norm: _Normalized) -> list[KeyProblem]:
    problems = []
    for key, want in expected.items():  # missing and mis-shaped keys, in model order
        t = norm.tensors.get(key)
        if t is None:
            problems.append(KeyProblem(key, "missing", expected=tuple(want)))
        elif tuple(t.shape) != tuple(want):
            problems.append(KeyProblem(key, "shape", expected=tuple(want), found=tuple(t.shape)))
    problems += [KeyProblem(k, "unexpected", found=tuple(t.shape)) for k, t in norm.tensors.items() if k not in expected]
    return problems + norm.problems


def check_against(expected: Mapping[str, Shape | torch.Size], tensors: Mapping[str, torch.Tensor]) -> list[KeyProblem]:
    """Missing / unexpected / mis-shaped keys of `tensors` against the expected shapes (empty: loadable)."""
    return _compare(expected, _normalize(expected, tensors))


def check_vae_against(expected: Mapping[str, Shape], tensors: Mapping[str, torch.Tensor]) -> list[KeyProblem]:
    """As check_against, for VAE keys in either spelling; the quantizer mask may be absent (it is derived)."""
    canon = canonicalize_vae_keys(dict(tensors))
    if VAE_MASK_KEY not in canon:
        expected = {k: v for k, v in expected.items() if k != VAE_MASK_KEY}
    return check_against(expected, canon)


# --------------------------------------------------------------------------------------------------
# Which preset does a file belong to? (for messages and `inspect`)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def preset_shapes(name: str) -> Mapping[str, Shape]:
    """Expected key -> shape of a model preset, from a model built on the meta device (no memory)."""
    cfg = load_model_preset(name).arch
    with torch.device("meta"):
        model = Infinity(cfg)
    return MappingProxyType({k: tuple(v.shape) for k, v in model.state_dict().items()})


@functools.lru_cache(maxsize=None)
def vae_shapes(name: str) -> Mapping[str, Shape]:
    with torch.device("meta"):
        vae = BSQVAE(VAE_PRESETS[name])
    return MappingProxyType({k: tuple(v.shape) for k, v in vae.state_dict().items()})


@functools.lru_cache(maxsize=None)
def _presets_in_guess_order() -> tuple[str, ...]:
    # Released presets first: infinity-125m and infinity-layer12 have identical shapes, and a file of
    # that shape is far more likely the released 125M model.
    return tuple(sorted(list_model_presets(), key=lambda n: (load_model_preset(n).weights_file is None, n)))


def guess_preset(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The model preset whose shapes the tensors match exactly (tolerances included), else None.

    Shapes alone decide, so meta tensors work as well as real ones.
    """
    for name in _presets_in_guess_order():
        if not check_against(preset_shapes(name), tensors):
            return name
    return None


def _closest_preset(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(preset, matching tensors, tensors compared) for the preset most tensors agree with, if most do."""
    best = None
    for name in _presets_in_guess_order():
        expected = preset_shapes(name)
        norm = _normalize(expected, tensors).tensors
        hits = sum(1 for k, t in norm.items() if expected.get(k) == tuple(t.shape))
        total = max(len(expected), len(norm))
        if hits * 2 > total and (best is None or hits / total > best[1] / best[2]):
            best = (name, hits, total)
    return best


def guess_vae_preset(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike | None = None) -> str | None:
    """VAE preset from decoder.conv_in / conv_out shapes; the file name breaks ties (d32 vs d32reg)."""
    try:
        canon = canonicalize_vae_keys(dict(tensors))
    except CheckpointError:
        return None
    probe = ("decoder.conv_in.conv.weight", "decoder.conv_out.conv.weight")
    if any(k not in canon for k in probe):
        return None
    found = tuple(tuple(canon[k].shape) for k in probe)
    candidates = [n for n in VAE_PRESETS if tuple(vae_shapes(n)[k] for k in probe) == found]
    from_name = vae_preset_for_file(path) if path is not None else None
    if from_name in candidates:
        return from_name
    return candidates[0] if candidates else None


def looks_like_vae(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.", "decoder.")) for k in tensors) and not any("block_chunks." in k for k in tensors)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def likely_cause(tensors: Mapping[str, torch.Tensor], preset: str | None) -> str:
    """A one-phrase explanation of why a transformer file does not fit the chosen preset."""
    chosen = f"the {preset} preset was chosen" if preset else "a different model was built"
    if looks_like_vae(tensors):
        return "this looks like a VAE file, not Infinity transformer weights"
    guess = guess_preset(tensors)
    if guess is not None and guess != preset:
        return f"this looks like {_article(guess)} {guess} file, but {chosen}"
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            return f"every key starts with '{prefix}' (saved from a wrapped model); strip that prefix"
    closest = _closest_preset(tensors)
    if closest is None:
        return "the file matches no known model preset"
    name, hits, total = closest
    if name == preset:
        return f"the file has the {name} layout apart from these keys ({hits} of {total} tensors match): damaged or modified"
    return f"the file is closest to the {name} preset ({hits} of {total} tensors match), but {chosen}"


def vae_likely_cause(tensors: Mapping[str, torch.Tensor], path, preset: str | None) -> str:
    """As likely_cause, for a VAE file checked against the VAE preset `preset`."""
    if not looks_like_vae(tensors):
        return "this does not look like a VAE file (no encoder./decoder. keys)"
    guess = guess_vae_preset(tensors, path)
    if guess is not None and guess != preset:
        return f"this looks like {_article(guess)} {guess} VAE, but the VAE was built as {preset or 'a custom config'}"
    return "the file has this VAE's layout apart from these keys: damaged or modified"


def _mismatch_message(ckpt: LoadedCheckpoint, what: str, problems: list[KeyProblem], cause: str) -> str:
    first, rest = problems[0], problems[1:]
    counts: dict[str, int] = {}
    for p in rest:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    more = ""
    if rest:
        kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        more = f"; {len(rest)} more problem{'s' if len(rest) > 1 else ''} ({kinds})"
    return f"{ckpt.path}: does not fit {what}: {first}{more}; likely cause: {cause}"


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def load_model_weights(
    model: Infinity,
    path_or_loaded: str | os.PathLike | LoadedCheckpoint,
    preset_name: str | None = None,
) -> LoadReport:
    """Strictly load an Infinity checkpoint into `model` (which may live on the meta device)."""
    ckpt = _as_loaded(path_or_loaded)
    preset = preset_name or getattr(getattr(model, "cfg", None), "name", None)
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    norm = _normalize(expected, ckpt.tensors)
    problems = _compare(expected, norm)
    if problems:
        what = f"the {preset} preset" if preset else "the model"
        raise CheckpointError(_mismatch_message(ckpt, what, problems, likely_cause(ckpt.tensors, preset)))
    converted = _assign(model, own, norm.tensors, ckpt.path)
    return LoadReport(str(ckpt.path), ckpt.container, preset, ckpt.n_tensors, ckpt.n_params, ckpt.dtypes,
                      norm.dropped, norm.notes, converted)


def load_vae_weights(
    vae: BSQVAE,
    path_or_loaded: str | os.PathLike | LoadedCheckpoint,
    use_ema: bool = False,
) -> LoadReport:
    """Strictly load a VAE checkpoint (plain or wrapped conv/norm keys) into `vae` (meta device allowed)."""
    ckpt = _as_loaded(path_or_loaded, use_ema=use_ema)
    tensors = canonicalize_vae_keys(ckpt.tensors)
    notes = []
    if VAE_MASK_KEY not in tensors:
        # The mask is a pure function of d (bit weights), so a file without it loses nothing.
        tensors[VAE_MASK_KEY] = bit_weights(vae.cfg.codebook_dim)
        notes.append(f"{VAE_MASK_KEY} computed (absent from the file)")
    own = vae.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    norm = _normalize(expected, tensors)
    problems = _compare(expected, norm)
    name = next((n for n, c in VAE_PRESETS.items() if c == vae.cfg), None)
    if problems:
        cause = vae_likely_cause(ckpt.tensors, ckpt.path, name)
        raise CheckpointError(_mismatch_message(ckpt, f"the {name or 'custom'} VAE", problems, cause))
    converted = _assign(vae, own, norm.tensors, ckpt.path)
    return LoadReport(str(ckpt.path), ckpt.container, name, ckpt.n_tensors, ckpt.n_params, ckpt.dtypes,
                      norm.dropped, norm.notes + notes, converted)


def _assign(model: nn.Module, own: Mapping[str, torch.Tensor], sd: dict[str, torch.Tensor], path: Path) -> int:
    """load_state_dict(assign=True): the model takes the file's (mmap'd) tensors, copied only when
    the model's dtype or (non-meta) device differs."""
    ready, converted = {}, 0
    for key, t in sd.items():
        target = own[key]
        device = t.device if target.is_meta else target.device
        if t.dtype != target.dtype or t.device != device:
            t = t.to(device=device, dtype=target.dtype)
            converted += 1
        ready[key] = t
    try:
        model.load_state_dict(ready, strict=True, assign=True)
    except RuntimeError as exc:  # already checked above; kept so no torch traceback can escape
        raise CheckpointError(f"{path}: {_one_line(exc)}") from None
    _materialize_buffers(model, next(iter(ready.values())).device)
    return converted


def _materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Give the non-persistent buffers of a meta-built model real values (files never hold them)."""
    for mod_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name in OPTIONAL_BUFFERS:
                setattr(module, name, torch.zeros(buf.shape, dtype=buf.dtype, device=device))
            elif isinstance(module, Rope2D) and name in ("cos", "sin"):
                with torch.device(device):
                    fresh = Rope2D(2 * buf.shape[-1], module.grid)
                module.cos, module.sin = fresh.cos, fresh.sin
            else:
                raise CheckpointError(
                    f"buffer '{mod_name}.{name}' is still on the meta device after loading; build the model on a real device")
