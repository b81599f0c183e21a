"""The HART presets: the released 0.7B model and a tiny random-weight one for tests and timing."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .hart import HartConfig
from .hart_tokenizer import HartTokenizerConfig


@dataclass
class HartPreset:
    name: str
    model: HartConfig
    tokenizer: HartTokenizerConfig
    trained: bool  # False: seeded random weights, labelled untrained in every output
    description: str
    needs: list[str] = field(default_factory=list)
    sampling: dict = field(default_factory=dict)


HART_PRESETS: dict[str, HartPreset] = {
    "hart-0.7b": HartPreset(
        name="hart-0.7b",
        model=HartConfig(name="hart-0.7b"),
        tokenizer=HartTokenizerConfig(),
        trained=True,
        description="HART-0.7B, 1024 px, 14 scales + residual diffusion (mit-han-lab/hart-0.7b-1024px)",
        needs=["the hart-0.7b-1024px folder (llm/ and tokenizer/)", "Qwen2-VL-1.5B-Instruct (--text-encoder)"],
        sampling=dict(cfg=4.5, seed=1, more_smooth=True),
    ),
    "hart-tiny": HartPreset(
        name="hart-tiny",
        # The real schedule and prefix (9,450 image tokens after 300 text tokens), tiny widths.
        model=HartConfig(name="hart-tiny", depth=2, width=128, heads=2, context_dim=64, vocab=4096,
                         latent_channels=32, diff_width=64, diff_depth=2,
                         description="random weights (untrained)"),
        tokenizer=HartTokenizerConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1),
        trained=False,
        description="HART architecture with tiny widths and seeded random weights (untrained), for tests and timing",
        sampling=dict(cfg=4.5, seed=1, more_smooth=True),
    ),
}


def hart_preset(name: str) -> HartPreset:
    if name not in HART_PRESETS:
        raise ConfigError(f"unknown HART preset {name!r}; known: {', '.join(HART_PRESETS)}")
    return HART_PRESETS[name]
