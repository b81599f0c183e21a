"""HART end to end: preset -> weights and text encoder -> generation with a pruning method -> images and a record.

Phases of `generate`: check the prompts, encode them (300 tokens), run the scale loop with
the method's runner, decode, and return uint8 images with every setting recorded.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .errors import ConfigError
from .hart_pruning import HartRunner, hart_plan
from .hart_sampling import HartSamplingConfig, generate
from .hart_text import QwenTextEncoder, QWEN_RELEASE, StandInTextEncoder
from .loading.hart import RELEASE, load_hart, random_hart
from .models.hart_presets import HART_PRESETS, HartPreset, hart_preset
from .pruning.base import Pruner
from .text import check_prompts


def is_hart_model(name: str | None) -> bool:
    return name in HART_PRESETS


def check_hart_options(resolution=None, aspect=None, size=None, tau=None, top_p=None, vae=None, cfg=None) -> float | None:
    """Refuse, in one line, the options that select something HART does not have; -> the CFG scale.

    HART runs one schedule (1024 px, 14 scales), samples with top-k and a Gumbel soft mix, and
    takes its tokenizer from the weights folder; its CFG is one number ramped over the scales.
    """
    if isinstance(resolution, str):
        resolution = None if resolution.strip() == "1024" else resolution
    if resolution not in (None, 1024):
        raise ConfigError(f"HART runs at 1024 px only (its 14-scale schedule); got --resolution {resolution}")
    if aspect not in (None, "1:1") or size is not None:
        raise ConfigError("HART has one square schedule: --aspect and --size do not apply")
    if tau is not None or top_p is not None:
        raise ConfigError("HART samples with top-k (600, then 300) and a Gumbel soft mix: --tau and --top-p do not apply")
    if vae is not None:
        raise ConfigError("HART's tokenizer is the tokenizer/ folder of --weights: --vae does not apply")
    if cfg is None:
        return None
    try:
        return float(cfg)
    except ValueError:
        raise ConfigError(f"--cfg for HART is one number (ramped over the scales as released), got {cfg!r}") from None


@dataclass
class HartRun:
    images: torch.Tensor  # (B, H, W, 3) uint8
    record: dict
    token_passes: int  # per row: tokens through every layer and branch
    timings: dict = field(default_factory=dict)


class HartPipeline:
    def __init__(self, preset: str | HartPreset, model, tokenizer, text_encoder, device, weights: str | None):
        self.preset = preset if isinstance(preset, HartPreset) else hart_preset(preset)
        self.model, self.tokenizer, self.text_encoder = model, tokenizer, text_encoder
        self.device = device
        self.weights = weights

    @property
    def trained(self) -> bool:
        return self.weights is not None and self.text_encoder.trained

    @property
    def status(self) -> str:
        return "trained" if self.trained else "untrained (random weights)" if self.weights is None else "untrained text encoder"

    def sampling(self, seed: int | None = None, cfg: float | None = None, **overrides) -> HartSamplingConfig:
        base = dict(self.preset.sampling)
        if seed is not None:
            base["seed"] = seed
        if cfg is not None:
            base["cfg"] = cfg
        base.update(overrides)
        return HartSamplingConfig(**base)

    def check_method(self, pruner: Pruner) -> None:
        """A method HART cannot run fails here, before anything is computed."""
        hart_plan(pruner, self.model.cfg.patch_nums, self.model.cfg.depth)

    @torch.no_grad()
    def generate(self, prompts: list[str], pruner: Pruner, sampling: HartSamplingConfig) -> HartRun:
        prompts = check_prompts(prompts)
        text = self.text_encoder.encode(prompts, self.device)
        runner = HartRunner(self.model, pruner)
        out = generate(self.model, self.tokenizer, text.features_BTD, text.mask_BT, sampling, runner=runner)
        images = (out.images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()  # truncation, as released
        record = {
            "model": self.preset.name, "status": self.status, "weights": self.weights,
            "text_encoder": self.text_encoder.name, "system_prompt": text.system_prompt,
            "prompts": prompts, "sampling": dataclasses.asdict(sampling), "method": pruner.config_dict(),
            "pruned_steps": sorted(runner.plan.keep) if runner.plan else [],
            "token_passes": runner.counter.total(), "timings": out.timings,
            "resolution": list(images.shape[1:3]), "versions": {"stepvar": __version__, "torch": torch.__version__,
                                                             "python": platform.python_version()},
        }
        return HartRun(images=images, record=record, token_passes=runner.counter.total(), timings=out.timings)


def load_hart_pipeline(preset: str, weights: str | Path | None = None, text_encoder: str | Path | None = None,
                       device: str = "cpu", seed: int = 0) -> HartPipeline:
    p = hart_preset(preset)
    if weights is None and p.trained:
        raise ConfigError(f"{preset} needs --weights: the folder of {RELEASE} (llm/ and tokenizer/)")
    if text_encoder is None and p.trained:
        raise ConfigError(f"{preset} needs --text-encoder: a local {QWEN_RELEASE} directory")
    if weights is not None:
        model, tok = load_hart(weights, preset, device)
    else:
        model, tok = random_hart(preset, seed=seed, device=device)
    if text_encoder is not None:
        enc = QwenTextEncoder(text_encoder, device, max_length=model.cfg.context_tokens)
    else:
        enc = StandInTextEncoder(model.cfg.context_dim, model.cfg.context_tokens)
    return HartPipeline(preset, model, tok, enc, device, None if weights is None else str(weights))
