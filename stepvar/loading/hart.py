"""Loading HART from the released folder layout, strictly, and checking it without loading (`inspect`).

    hart-0.7b-1024px/
      llm/        config.json + ema_model.bin (used when present, as the release samples with EMA)
                  or model.safetensors / pytorch_model.bin / a sharded safetensors index
      tokenizer/  config.json + weights whose keys start with `vae.` (used) or `disc.` (the
                  training discriminator, ignored)

The architecture comes from the two config.json files where they state it (over the preset's
defaults); the FFN kind and the L2-normalised attention are read from the weights' keys.
Ignored on load: the training-only masking buffers (`lvl_1L`, `attn_bias_for_masking`, about
380 MB), the quantiser's codebook-usage statistics and a training-only second decoder.
Anything else missing, unexpected or mis-shaped is a one-line CheckpointError naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.hart import HartConfig, HartTransformer
from ..models.hart_presets import HartPreset, hart_preset
from ..models.hart_tokenizer import HartTokenizer, HartTokenizerConfig
from .checkpoints import KeyProblem
from .containers import INDEX_NAME, read_checkpoint

RELEASE = "mit-han-lab/hart-0.7b-1024px"
LLM_WEIGHTS = ("ema_model.bin", "model.safetensors", INDEX_NAME, "pytorch_model.bin")
TOKENIZER_WEIGHTS = ("model.safetensors", INDEX_NAME, "pytorch_model.bin")
LLM_IGNORED = frozenset({"lvl_1L", "attn_bias_for_masking"})
TOKENIZER_IGNORED_PREFIXES = ("disc.",)
TOKENIZER_IGNORED = frozenset({"quantize.ema_vocab_hit_SV"})
TOKENIZER_IGNORED_TRAINING = ("decoder2.", "post_quant_conv2.")


@dataclass
class HartFolder:
    root: Path
    llm: Path
    tokenizer: Path


def resolve_folder(path: str | os.PathLike) -> HartFolder:
    """Accept the release folder or its llm/ subfolder (the tokenizer is then its sibling)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such folder; download {RELEASE} (llm/ and tokenizer/) and pass its path")
    if not p.is_dir():
        raise CheckpointError(f"{p}: HART weights are a folder with llm/ and tokenizer/, not a single file")
    llm = p / "llm" if (p / "llm").is_dir() else p
    if not (llm / "config.json").is_file() and not any((llm / f).is_file() for f in LLM_WEIGHTS):
        raise CheckpointError(f"{p}: no llm/ folder with config.json and weights; download {RELEASE}")
    tok = llm.parent / "tokenizer"
    if not tok.is_dir():
        raise CheckpointError(f"{tok}: tokenizer folder not found; download tokenizer/ of {RELEASE} next to llm/")
    return HartFolder(root=llm.parent, llm=llm, tokenizer=tok)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _refuse(path: Path, data: dict, key: str, supported, label: str) -> None:
    if key in data and data[key] not in supported:
        raise ConfigError(f"{path}: {key}={data[key]!r} is not supported ({label})")


def model_config_from_json(path: Path, base: HartConfig, tok: HartTokenizerConfig) -> HartConfig:
    data = _read_json(path)
    _refuse(path, data, "model_type", ("hart_transformer_t2i",), "only the text-to-image HART")
    _refuse(path, data, "attn_type", ("llama",), "HART-0.7B uses llama attention")
    _refuse(path, data, "disable_aln", (True,), "blocks without AdaLN")
    _refuse(path, data, "shared_aln", (False,), "no shared AdaLN")
    _refuse(path, data, "use_cross_attn", (False,), "no cross-attention")
    _refuse(path, data, "use_timestep_embed", (False,), "a level embedding table")
    names = dict(embed_dim="width", depth="depth", num_heads="heads", context_token="context_tokens",
                 context_dim="context_dim", mlp_type="mlp_type", mlp_ratio="mlp_ratio", attn_l2_norm="attn_l2_norm",
                 use_context_norm="use_context_norm", patch_nums="patch_nums", norm_eps="norm_eps",
                 diff_width="diff_width", diff_depth="diff_depth", num_sampling_steps="diff_steps")
    changes = {ours: data[theirs] for theirs, ours in names.items() if theirs in data}
    if "diff_steps" in changes:
        try:
            changes["diff_steps"] = int(changes["diff_steps"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: num_sampling_steps={data['num_sampling_steps']!r} is not a step count") from None
    changes.update(vocab=tok.vocab, latent_channels=tok.latent_channels)
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def tokenizer_config_from_json(path: Path, base: HartTokenizerConfig) -> HartTokenizerConfig:
    data = _read_json(path)
    _refuse(path, data, "quantizer_type", ("var_hybrid",), "the hybrid tokenizer")
    _refuse(path, data, "using_znorm", (False,), "Euclidean nearest codes")
    names = dict(vocab_size="vocab", z_channels="latent_channels", ch="ch", ch_mult="ch_mult",
                 quant_conv_ks="quant_conv_ks", quant_resi="quant_resi", share_quant_resi="share_quant_resi",
                 double_decoder="double_decoder")
    changes = {ours: data[theirs] for theirs, ours in names.items() if theirs in data}
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _weights_file(folder: Path, candidates: tuple[str, ...], what: str) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no {what} weights ({' / '.join(candidates)}); download them from {RELEASE}")


def _detect_from_keys(cfg: HartConfig, tensors) -> HartConfig:
    """The weights decide the FFN kind and whether attention is L2-normalised."""
    changes = {}
    if "blocks.0.ffn.gate_proj.weight" in tensors:
        changes["mlp_type"] = "llama"
    elif "blocks.0.ffn.fc1.weight" in tensors:
        changes["mlp_type"] = "gpt2"
    if any(k.startswith("blocks.0.attn.") for k in tensors):
        changes["attn_l2_norm"] = "blocks.0.attn.scale_mul_1H11" in tensors
    return dataclasses.replace(cfg, **changes) if changes else cfg


def read_llm(folder: HartFolder) -> tuple[dict[str, torch.Tensor], Path]:
    path = _weights_file(folder.llm, LLM_WEIGHTS, "transformer")
    ckpt = read_checkpoint(path)
    return {k: v for k, v in ckpt.tensors.items() if k not in LLM_IGNORED}, path


def read_tokenizer(folder: HartFolder, cfg: HartTokenizerConfig) -> tuple[dict[str, torch.Tensor], Path]:
    path = _weights_file(folder.tokenizer, TOKENIZER_WEIGHTS, "tokenizer")
    ckpt = read_checkpoint(path)
    out = {}
    for k, v in ckpt.tensors.items():
        if k.startswith(TOKENIZER_IGNORED_PREFIXES):
            continue
        if not k.startswith("vae."):
            out[k] = v  # reported as unexpected by the strict check
            continue
        k = k[len("vae."):]
        if k in TOKENIZER_IGNORED or (cfg.double_decoder and k.startswith(TOKENIZER_IGNORED_TRAINING)):
            continue
        out[k] = v
    return out, path


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_tensors(expected: dict, tensors, optional: tuple[str, ...] = ()) -> list[KeyProblem]:
    problems = []
    for k, shape in expected.items():
        if k not in tensors:
            if not k.endswith(optional):
                problems.append(KeyProblem(k, "missing", expected=shape))
        elif tuple(tensors[k].shape) != shape:
            problems.append(KeyProblem(k, "shape", expected=shape, found=tuple(tensors[k].shape)))
    problems += [KeyProblem(k, "unexpected", found=tuple(tensors[k].shape)) for k in tensors if k not in expected]
    return problems


def _one_line(path: Path, problems: list[KeyProblem]) -> str:
    missing = [p for p in problems if p.kind == "missing"]
    unexpected = [p for p in problems if p.kind == "unexpected"]
    for m in missing:  # a key missing beside an unexpected one of its shape reads as a rename
        for u in unexpected:
            if u.found == m.expected:
                more = f" (and {len(problems) - 2} more problems)" if len(problems) > 2 else ""
                return f"{path}: missing key '{m.key}', found '{u.key}' of its shape instead (renamed?){more}"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{path}: {problems[0]}{more}"


@dataclass
class HartModelFiles:
    """What a folder holds, read and checked, before anything is built."""

    folder: HartFolder
    model_cfg: HartConfig
    tokenizer_cfg: HartTokenizerConfig
    llm_path: Path
    tokenizer_path: Path
    llm_tensors: dict
    tokenizer_tensors: dict
    llm_problems: list[KeyProblem] = field(default_factory=list)
    tokenizer_problems: list[KeyProblem] = field(default_factory=list)


def read_folder(path: str | os.PathLike, preset: HartPreset) -> HartModelFiles:
    folder = resolve_folder(path)
    tok_cfg = tokenizer_config_from_json(folder.tokenizer / "config.json", preset.tokenizer)
    llm_tensors, llm_path = read_llm(folder)
    cfg = model_config_from_json(folder.llm / "config.json", preset.model, tok_cfg)
    cfg = _detect_from_keys(cfg, llm_tensors)
    tok_tensors, tok_path = read_tokenizer(folder, tok_cfg)
    with torch.device("meta"):
        llm_expected = expected_shapes(HartTransformer(cfg))
        tok_expected = expected_shapes(HartTokenizer(tok_cfg))
    return HartModelFiles(
        folder=folder, model_cfg=cfg, tokenizer_cfg=tok_cfg, llm_path=llm_path, tokenizer_path=tok_path,
        llm_tensors=llm_tensors, tokenizer_tensors=tok_tensors,
        llm_problems=check_tensors(llm_expected, llm_tensors, optional=("zero_k_bias",)),
        tokenizer_problems=check_tensors(tok_expected, tok_tensors),
    )


def _fill(module: nn.Module, tensors: dict, device) -> nn.Module:
    sd = {k: (v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)) for k, v in tensors.items()}
    for name, buf in module.state_dict().items():  # the always-zero bias some files leave out
        if name not in sd:
            sd[name] = torch.zeros(buf.shape, dtype=torch.float32, device=device)
    module.load_state_dict(sd, strict=True, assign=True)
    return module.eval()


def load_hart(path: str | os.PathLike, preset: str = "hart-0.7b", device: str | torch.device = "cpu"):
    """-> (HartTransformer, HartTokenizer) with the folder's weights, in fp32 on `device`."""
    files = read_folder(path, hart_preset(preset))
    if files.llm_problems:
        raise CheckpointError(_one_line(files.llm_path, files.llm_problems))
    if files.tokenizer_problems:
        raise CheckpointError(_one_line(files.tokenizer_path, files.tokenizer_problems))
    with torch.device("meta"):
        model, tok = HartTransformer(files.model_cfg), HartTokenizer(files.tokenizer_cfg)
    return _fill(model, files.llm_tensors, device), _fill(tok, files.tokenizer_tensors, device)


def random_hart(preset: str = "hart-tiny", seed: int = 0, device: str | torch.device = "cpu"):
    """Seeded random weights of a preset (untrained), scaled so sampling stays finite."""
    p = hart_preset(preset)
    g = torch.Generator().manual_seed(seed)
    model, tok = HartTransformer(p.model), HartTokenizer(p.tokenizer)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(tok.named_parameters()):
            if t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=g) / max(1.0, t[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                t.fill_(1.0)
            else:
                t.zero_()
        # The diffusion head's outputs stay small, as a trained head's are.
        model.diffloss.net.final_layer.linear.weight.mul_(0.05)
    return model.to(device).eval(), tok.to(device).eval()


@dataclass
class HartInspectReport:
    path: str
    preset: str
    llm_file: str
    tokenizer_file: str
    model_config: dict
    tokenizer_config: dict
    n_params: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def inspect_hart(path: str | os.PathLike, preset: str = "hart-0.7b") -> HartInspectReport:
    files = read_folder(path, hart_preset(preset))
    problems = [f"llm: {p}" for p in files.llm_problems] + [f"tokenizer: {p}" for p in files.tokenizer_problems]
    return HartInspectReport(
        path=str(files.folder.root), preset=preset, llm_file=str(files.llm_path), tokenizer_file=str(files.tokenizer_path),
        model_config=dataclasses.asdict(files.model_cfg),
        tokenizer_config=dataclasses.asdict(files.tokenizer_cfg),
        n_params=sum(t.numel() for t in files.llm_tensors.values()) + sum(t.numel() for t in files.tokenizer_tensors.values()),
        problems=problems,
    )
