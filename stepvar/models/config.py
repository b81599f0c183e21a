"""Architecture configurations of the Infinity family, and the YAML presets that name them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..preset_registry import load_preset, preset_names, preset_path


@dataclass
class InfinityConfig:
    """Shapes of an Infinity transformer. Every released model fixes the same behaviour flags.

    Only the shape fields vary between presets; the behaviour flags (cos-attention,
    shared AdaLN, head AdaLN, bitwise head, level embedding before block 0, star RoPE)
    are hard-coded in the model because every released checkpoint uses them.
    """

    name: str = "custom"
    depth: int = 32
    width: int = 2048  # C; the conditioning width D equals C in every released model
    heads: int = 16
    bits: int = 32  # d: bits per token on the transformer side (4*14 = 56 with 8B's patchify)
    text_channels: int = 2048  # Ct: width of the text encoder's features (flan-t5-xl: 2048)
    text_maxlen: int = 512  # rows of cfg_uncond
    block_chunks: int = 8
    num_levels: int = 15  # rows of lvl_embed; schedules use a prefix
    pool_heads: int | None = None  # text pooling heads; None = the official rule (Ct / 128 or 64)
    mlp_ratio: float = 4.0
    vae: str = "d32"  # name of the paired VAE preset (stepvar.models.bsq_vae.VAE_PRESETS)
    patchify: bool = False  # 8B: tokens are 2x2 pixel-unshuffled VAE latents
    default_budget: str = "1M"  # the resolution the released weights were trained for
    # Not in any released model (0 = off, the official layout): a learned G x G position table,
    # average-pooled to each scale's grid and added with the level embedding. RoPE alone gives
    # coarse scales only relative positions, and at 2x2 every input token is the same upsampled
    # 1x1 code, so a small model learns "left/right/above/below" slowly; the toy model uses it.
    abs_pos_grid: int = 0
    # Not in any released model (0 = off): a learned vector per budget (schedules.BUDGETS order,
    # 0.06M first; this many rows) added to the pooled text, so a model trained at several
    # resolutions knows which one it is drawing. Their shared coarse grids do not carry the same
    # codes: a toy scene's 16 x 16 bits agree only ~71 % between its 256 and 512 px renders.
    budget_embed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"{self.name}: width {self.width} is not divisible by {self.heads} heads")
        if self.depth % self.block_chunks:
            raise ConfigError(f"{self.name}: depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.head_dim % 4:
            raise ConfigError(f"{self.name}: head dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.cond_width % self.text_pool_heads:
            raise ConfigError(f"{self.name}: width {self.width} is not divisible by {self.text_pool_heads} pooling heads")

    @property
    def cond_width(self) -> int:
        return self.width

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_hidden(self) -> int:
        # Python's round is half-to-even, as in the official code: 32.5 -> 32 for layer32.
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def text_pool_heads(self) -> int:
        if self.pool_heads is not None:
            return self.pool_heads
        pool_head_dim = 128 if self.cond_width <= 4096 else 64
        return max(1, self.text_channels // pool_head_dim)

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_MODEL = "toy"  # the embedded model trained by the project (docs/model_card.md)


@dataclass
class ModelPreset:
    """A named model: architecture, paired VAE, text encoder kind, and where weights come from."""

    name: str
    arch: InfinityConfig
    text_encoder: str  # "t5" (flan-t5-xl from a local dir), "hash" (untrained stand-in), "toy"
    needs: list[str] = field(default_factory=list)  # what the user must supply
    weights_file: str | None = None  # the official file name, for messages
    vae_file: str | None = None
    embedded: bool = False  # weights ship inside the package
    description: str = ""
    example_prompt: str = "a lighthouse on a cliff at dawn"  # what bench uses when given no prompt
    sampling: dict = field(default_factory=dict)  # cfg / tau / top_p this model is sampled with by default


def list_model_presets() -> list[str]:
    return preset_names("models")


def load_model_preset(name: str | None = None) -> ModelPreset:
    """A model preset by name; None is the default model."""
    name = name or DEFAULT_MODEL
    return _preset_from(name, load_preset("models", name), preset_path("models", name))


def load_model_preset_file(path: str | Path) -> ModelPreset:
    """A model preset from a YAML file the user names on purpose (read safely, checked like a shipped one)."""
    from ..user_files import read_yaml_mapping

    path = Path(path)
    return _preset_from(path.stem, read_yaml_mapping(path, "model preset"), path)


def _preset_from(name: str, data: dict, path: Path) -> ModelPreset:
    from ..validate import shown

    arch = data.pop("arch", {})
    if not isinstance(arch, dict):
        raise ConfigError(f"{shown(path)}: 'arch' must be a mapping of settings")
    try:
        cfg = InfinityConfig(name=name, **arch)
        return ModelPreset(name=name, arch=cfg, **data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{shown(path)}: {shown(exc, 200)}") from None
