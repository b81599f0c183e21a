"""The BSQ VAE of Infinity: a FLUX-style conv autoencoder plus a binary quantizer.

Read top to bottom: config and presets, the small blocks (conv/norm wrappers, ResBlock, resamplers),
encoder and decoder, the quantizer math (pure functions), patchify helpers, the checkpoint key mapping,
and the assembled `BSQVAE` last.

Module names reproduce the official state_dict layout exactly (`<name>.conv.weight`, `<name>.norm.weight`,
`encoder.down.{i}.block.{j}...`, `quantizer.lfq.mask`) so that official files load strictly after one pass
through `canonicalize_vae_keys`.

Extra shape letters used here (see the package legend for the rest):
    H,W  the full VAE latent grid (image / stride)     Hi,Wi  image pixels
    d    VAE channels (codebook dim; 14 for the 8B VAE, whose transformer sees 4*d per token)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stepvar.errors import CheckpointError, ConfigError, StepvarError
from stepvar.preset_registry import load_preset, preset_names

# The official model uses eps 1e-6 in every GroupNorm, not PyTorch's default 1e-5.
_NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    codebook_dim: int                       # d: z channels == bits per VAE latent position
    base_ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # one entry per resolution level
    num_res_blocks: int = 2                 # encoder blocks per level; the decoder has one more
    groups: int = 32                        # GroupNorm groups; tiny test models need fewer
    patchify: bool = False                  # 8B variant: transformer tokens are 2x2-unshuffled latents

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if self.codebook_dim < 1:
            raise ConfigError(f"VAEConfig.codebook_dim must be >= 1, got {self.codebook_dim}")
        if not self.ch_mult:
            raise ConfigError("VAEConfig.ch_mult must name at least one level")
        for ch in {self.base_ch * m for m in self.ch_mult}:
            if ch % self.groups:
                raise ConfigError(
                    f"VAEConfig.groups={self.groups} must divide every level width; {ch} is not divisible")

    @property
    def stride(self) -> int:
        """Pixels per VAE latent position (one Downsample between consecutive levels)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def transformer_bits(self) -> int:
        """Bits per transformer token: d, or 4*d when 2x2 latents form one token."""
        return 4 * self.codebook_dim if self.patchify else self.codebook_dim

    @property
    def token_stride(self) -> int:
        """Pixels per transformer token along each axis."""
        return 2 * self.stride if self.patchify else self.stride


def load_vae_preset(name: str) -> VAEConfig:
    """A VAE preset (presets/vaes/<name>.yaml) as a VAEConfig."""
    data = load_preset("vaes", name)
    data.pop("description", None)
    try:
        return VAEConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"VAE preset {name}: {exc}") from None


# Every VAE preset by name, read once: the official VAEs and the project's small stride-16 ones.
VAE_PRESETS: dict[str, VAEConfig] = {name: load_vae_preset(name) for name in preset_names("vaes")}

# Official file stems -> preset. The scripts spell the 2B VAE "d32_reg", the release "d32reg".
_VAE_FILE_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"infinity_vae_d32_?reg"), "d32reg"),
    (re.compile(r"infinity_vae_d56_f8_14_patchify"), "d56_patchify"),
    (re.compile(r"infinity_vae_d(16|24|32|64)"), "d{0}"),
)


def vae_preset_for_file(path: str | os.PathLike) -> str | None:
    """Preset name for an official VAE file name (directory and extension ignored), else None."""
    stem = os.path.basename(os.fspath(path)).split(".", 1)[0].lower()
    for pattern, preset in _VAE_FILE_PATTERNS:
        match = pattern.fullmatch(stem)
        if match:
            return preset.format(*match.groups())
    return None


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class _Conv(nn.Module):
    """A Conv2d one level down, so its parameters are named `<name>.conv.weight` as in the release."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Norm(nn.Module):
    """A GroupNorm one level down, named `<name>.norm.weight` as in the release."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=_NORM_EPS, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = _Norm(c_in, groups)
        self.conv1 = _Conv(c_in, c_out, 3, padding=1)
        self.norm2 = _Norm(c_out, groups)
        self.conv2 = _Conv(c_out, c_out, 3, padding=1)
        # Only created when widths differ, so the key set matches the release exactly.
        self.nin_shortcut = _Conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Right/bottom-only padding makes an even input halve exactly with the official alignment.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _MidBlocks(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, groups)
        self.block_2 = ResBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _Level(nn.Module):
    """One resolution level: ResBlocks, then an optional resampler named `downsample` or `upsample`."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, groups: int,
                 resample: str | None):
        super().__init__()
        widths = [c_in] + [c_out] * n_blocks
        self.block = nn.ModuleList(
            ResBlock(widths[j], widths[j + 1], groups) for j in range(n_blocks))
        if resample == "downsample":
            self.downsample = Downsample(c_out)
        elif resample == "upsample":
            self.upsample = Upsample(c_out)
        self._resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self._resample is not None:
            x = getattr(self, self._resample)(x)
        return x


# --------------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        base, mult, n_levels = cfg.base_ch, cfg.ch_mult, len(cfg.ch_mult)
        in_mult = (1,) + mult[:-1]
        self.conv_in = _Conv(3, base, 3, padding=1)
        self.down = nn.ModuleList(
            _Level(base * in_mult[i], base * mult[i], cfg.num_res_blocks, cfg.groups,
                   "downsample" if i < n_levels - 1 else None)
            for i in range(n_levels))
        top = base * mult[-1]
        self.mid = _MidBlocks(top, cfg.groups)
        self.norm_out = _Norm(top, cfg.groups)
        self.conv_out = _Conv(top, cfg.codebook_dim, 3, padding=1)

    def forward(self, img_B3HiWi: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HiWi)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, d, H, W)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        base, mult, n_levels = cfg.base_ch, cfg.ch_mult, len(cfg.ch_mult)
        top = base * mult[-1]
        self.conv_in = _Conv(cfg.codebook_dim, top, 3, padding=1)
        self.mid = _MidBlocks(top, cfg.groups)
        # Built coarse-to-fine (the order they run in) but stored by level, so `up.0` is full resolution.
        levels: list[nn.Module] = [nn.Identity()] * n_levels
        ch = top
        for i in reversed(range(n_levels)):
            levels[i] = _Level(ch, base * mult[i], cfg.num_res_blocks + 1, cfg.groups,
                               "upsample" if i > 0 else None)
            ch = base * mult[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _Norm(ch, cfg.groups)
        self.conv_out = _Conv(ch, 3, 3, padding=1)

    def forward(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BdHW))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, Hi, Wi)


# --------------------------------------------------------------------------------------------------
# Quantizer math (pure functions; `dim` is the channel axis: 1 for BdHW maps, -1 for BhwD tokens)
# --------------------------------------------------------------------------------------------------


def bit_weights(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """2^(d-1) ... 1, int64, most significant first (the values of `quantizer.lfq.mask`).

    For d = 64 the first weight wraps to -2^63; since indices are built and split with bitwise ops,
    they still round-trip (read them as two's-complement uint64).
    """
    return 2 ** torch.arange(d - 1, -1, -1, device=device, dtype=torch.int64)


def bits_to_codes(bits: torch.Tensor, dim: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """bit -> (2*bit - 1)/sqrt(d); the official follow-up L2-normalisation is a no-op on these."""
    d = bits.shape[dim]
    return (bits.to(dtype) * 2 - 1) / math.sqrt(d)


def codes_to_bits(codes: torch.Tensor) -> torch.Tensor:
    return codes > 0


def quantize(z: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """BSQ: L2-normalise each latent vector, take the sign. Returns (bits bool, codes in z's dtype).

    The normalisation cannot change a sign, so bits are taken from z directly; a zero entry gives bit 0
    (bit = 1 only for a positive value, as in the release).
    """
    bits = z > 0
    return bits, bits_to_codes(bits, dim=dim, dtype=z.dtype)


def bits_to_indices(bits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Integer codebook index (int64) per latent vector; `dim` is removed."""
    bits_last = bits.movedim(dim, -1).to(torch.int64)
    weights = bit_weights(bits_last.shape[-1], bits.device)
    # Bits occupy disjoint positions, so OR-reduction == sum without relying on overflow behaviour.
    idx = torch.zeros(bits_last.shape[:-1], dtype=torch.int64, device=bits.device)
    for k in range(weights.numel()):
        idx |= bits_last[..., k] * weights[k]
    return idx


def indices_to_bits(indices: torch.Tensor, d: int, dim: int = 1) -> torch.Tensor:
    """Inverse of `bits_to_indices`: a new bool axis of size d inserted at `dim`."""
    weights = bit_weights(d, indices.device)
    bits_last = (indices.to(torch.int64).unsqueeze(-1) & weights) != 0
    return bits_last.movedim(-1, dim)


class _LFQ(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", bit_weights(d))


class BSQuantizer(nn.Module):
    """Holds only the `quantizer.lfq.mask` buffer of the release; the math lives in the functions above."""

    def __init__(self, d: int):
        super().__init__()
        self.lfq = _LFQ(d)


# --------------------------------------------------------------------------------------------------
# Multi-scale residual encoding and the transformer's next-scale inputs
# --------------------------------------------------------------------------------------------------


class MultiScaleCodes(NamedTuple):
    """Result of `multiscale_encode` for a schedule of n scales on the VAE latent grid (H, W)."""

    bits: list[torch.Tensor]             # n x (B, h, w, d) bool: the targets of each scale
    residual_inputs: list[torch.Tensor]  # n x (B, d, h, w): the residual quantized at each scale
    summed_BdHW: torch.Tensor            # (B, d, H, W): sum of all upsampled per-scale codes
    next_inputs: list[torch.Tensor]      # n-1 x (B, d, h', w'): accumulation after scale s, on grid s+1


def _grid_hw(scale: Sequence[int]) -> tuple[int, int]:
    """Accept (h, w) or a schedule entry (1, h, w)."""
    if len(scale) == 3 and scale[0] == 1:
        scale = scale[1:]
    if len(scale) != 2:
        raise ConfigError(f"a scale must be (h, w) or (1, h, w), got {tuple(scale)}")
    return int(scale[0]), int(scale[1])


def resize_latent(x_BdHW: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Area or bilinear (the release's 'trilinear' on t = 1) resize; a no-op at the same size."""
    if tuple(x_BdHW.shape[-2:]) == hw:
        return x_BdHW
    if mode == "area":
        return F.interpolate(x_BdHW, size=hw, mode="area")
    # The release's 'trilinear' on a (1, h, w) volume is exactly bilinear in 2-D.
    return F.interpolate(x_BdHW, size=hw, mode="bilinear", align_corners=False)


def multiscale_encode(z_BdHW: torch.Tensor, scales: Sequence[Sequence[int]]) -> MultiScaleCodes:
    """Residual-quantize z over `scales` (token grids on the VAE latent grid, coarse to fine).

    Per scale: area-downsample the residual, quantize, bilinearly upsample the codes back to (H, W),
    subtract them from the residual and add them to the accumulation. The next-scale input is the
    accumulation so far, bilinearly resized to the next grid (not area, as the official sampler does).
    """
    H, W = z_BdHW.shape[-2:]
    grids = [_grid_hw(s) for s in scales]
    for h, w in grids:
        if h > H or w > W:
            raise ConfigError(f"scale {(h, w)} is larger than the latent grid {(H, W)}")
    residual = z_BdHW.float()
    summed = torch.zeros_like(residual)
    bits_out, residual_inputs, next_inputs = [], [], []
    for si, hw in enumerate(grids):
        residual_in_Bdhw = resize_latent(residual, hw, "area")
        bits_Bdhw, codes_Bdhw = quantize(residual_in_Bdhw)
        codes_up_BdHW = resize_latent(codes_Bdhw, (H, W), "bilinear")
        residual = residual - codes_up_BdHW
        summed = summed + codes_up_BdHW
        bits_out.append(bits_Bdhw.permute(0, 2, 3, 1))  # (B, h, w, d)
        residual_inputs.append(residual_in_Bdhw)
        if si + 1 < len(grids):
            next_inputs.append(resize_latent(summed, grids[si + 1], "bilinear"))
    return MultiScaleCodes(bits_out, residual_inputs, summed, next_inputs)


# --------------------------------------------------------------------------------------------------
# 8B patchify helpers: token channel = c*4 + 2*dy + dx, PyTorch's pixel_(un)shuffle order
# --------------------------------------------------------------------------------------------------


def patchify_tokens(codes_BdHW: torch.Tensor) -> torch.Tensor:
    """(B, d, 2h, 2w) -> (B, 4d, h, w)."""
    if codes_BdHW.shape[-2] % 2 or codes_BdHW.shape[-1] % 2:
        raise ConfigError(f"patchify needs an even latent grid, got {tuple(codes_BdHW.shape[-2:])}")
    return F.pixel_unshuffle(codes_BdHW, 2)


def unpatchify(tokens_B4dhw: torch.Tensor) -> torch.Tensor:
    """(B, 4d, h, w) -> (B, d, 2h, 2w)."""
    if tokens_B4dhw.shape[1] % 4:
        raise ConfigError(f"unpatchify needs channels divisible by 4, got {tokens_B4dhw.shape[1]}")
    return F.pixel_shuffle(tokens_B4dhw, 2)


# --------------------------------------------------------------------------------------------------
# Checkpoint key mapping
# --------------------------------------------------------------------------------------------------

_NORM_LEAVES = frozenset({"norm1", "norm2", "norm_out"})
_CONV_LEAVES = frozenset({"conv_in", "conv1", "conv2", "conv_out", "nin_shortcut"})


def _wrapper_kind(name: str) -> str | None:
    """'conv' / 'norm' if `name` is a module the release wraps, judged from its position."""
    parts = name.split(".")
    if parts[-1] in _NORM_LEAVES:
        return "norm"
    if parts[-1] in _CONV_LEAVES:
        return "conv"
    if len(parts) >= 2 and parts[-2] in ("downsample", "upsample") and parts[-1] == "conv":
        return "conv"
    return None


def _canonical_key(key: str) -> str:
    if not key.startswith(("encoder.", "decoder.")):
        return key
    name, _, param = key.rpartition(".")
    if param not in ("weight", "bias"):
        return key
    for kind in ("conv", "norm"):
        # Already wrapped: strip the wrapper and the rest must be a module of that kind.
        if name.endswith("." + kind) and _wrapper_kind(name[: -len(kind) - 1]) == kind:
            return key
    kind = _wrapper_kind(name)
    return f"{name}.{kind}.{param}" if kind else key


def canonicalize_vae_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map plain (`x.conv1.weight`) or wrapped (`x.conv1.conv.weight`) VAE keys to the wrapped form.

    Keys this function does not recognise, and `quantizer.lfq.mask`, pass through unchanged so the strict
    loader can report them. Order is preserved.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = _canonical_key(key)
        if new_key in out:
            raise CheckpointError(
                f"VAE checkpoint has '{key}' and another key that both map to '{new_key}'")
        out[new_key] = value
    return out


# --------------------------------------------------------------------------------------------------
# The assembled VAE
# --------------------------------------------------------------------------------------------------


class BSQVAE(nn.Module):
    """Encoder + decoder + quantizer buffer. `encode`/`decode` work on the VAE grid (d channels)."""

    quantize = staticmethod(quantize)
    bits_to_codes = staticmethod(bits_to_codes)
    codes_to_bits = staticmethod(codes_to_bits)
    bits_to_indices = staticmethod(bits_to_indices)
    indices_to_bits = staticmethod(indices_to_bits)
    multiscale_encode = staticmethod(multiscale_encode)
    patchify_tokens = staticmethod(patchify_tokens)
    unpatchify = staticmethod(unpatchify)

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = BSQuantizer(cfg.codebook_dim)

    def _param_dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    def encode(self, img_B3HiWi: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> z (B, d, Hi/stride, Wi/stride), always fp32."""
        s = self.cfg.stride
        if img_B3HiWi.ndim != 4 or img_B3HiWi.shape[1] != 3:
            raise StepvarError(f"encode expects images (B, 3, H, W), got {tuple(img_B3HiWi.shape)}")
        if img_B3HiWi.shape[-2] % s or img_B3HiWi.shape[-1] % s:
            raise StepvarError(
                f"encode needs image sides divisible by {s}, got {tuple(img_B3HiWi.shape[-2:])}")
        return self.encoder(img_B3HiWi.to(self._param_dtype())).float()

    def decode(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        """z (B, d, H, W) -> image (B, 3, H*stride, W*stride) clamped to [-1, 1]."""
        if z_BdHW.ndim != 4 or z_BdHW.shape[1] != self.cfg.codebook_dim:
            raise StepvarError(
                f"decode expects (B, {self.cfg.codebook_dim}, H, W), got {tuple(z_BdHW.shape)}")
        return self.decoder(z_BdHW.to(self._param_dtype())).clamp(-1.0, 1.0)
