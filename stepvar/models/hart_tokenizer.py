"""HART's hybrid tokenizer: a VQ-VAE with multi-scale residual quantisation plus a continuous residual.

Key names follow the released `tokenizer/` folder with its `vae.` prefix removed.

Quantisation (VAR style): at each scale the remaining residual is area-downsampled to the
scale's grid, each position takes its nearest code (Euclidean), and the code map is
bicubic-upsampled to the latent grid and passed through one of a few partly shared 3x3
convolutions Phi(h) = (1 - r) h + r conv(h) before it is added to f_hat. At the last scale
the discrete code is added WITHOUT Phi, and the continuous residual (the diffusion head's
output at generation time) is added on top.

Legend: B images, Cv latent channels, V codebook size, h x w a scale's grid, H x W the latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class HartTokenizerConfig:
    """The `tokenizer/` folder's config.json fields that shape the weights."""

    vocab: int = 4096
    latent_channels: int = 32  # z_channels
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # the decoder has one more per level
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # r in Phi
    share_quant_resi: int = 4  # number of Phi convolutions shared over the scales
    double_decoder: bool = False  # a second decoder used only in training (its keys are ignored)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.share_quant_resi < 2:
            raise ConfigError(f"share_quant_resi {self.share_quant_resi} is not supported (HART uses 4 partly shared Phi)")
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ConfigError(f"tokenizer width {self.ch} x {self.ch_mult} must be a multiple of 32 (GroupNorm)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ----------------------------------------------------------------------------- conv building blocks


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # 3 x (B, C, HW)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, HW, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(B, C, H, W))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Level(nn.Module):
    """One resolution level; attribute names give the official keys (block.i, attn.i, up/downsample)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The level's residual blocks, each followed by its attention where the level has one."""
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: HartTokenizerConfig):
        super().__init__()
        mult = cfg.ch_mult
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, m in enumerate(mult):
            cout, blocks, attns = cfg.ch * m, [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
                if i == len(mult) - 1:  # self-attention only at the lowest resolution
                    attns.append(AttnBlock(cout))
            level = _Level(blocks, attns)
            if i != len(mult) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = _Mid(cin)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: HartTokenizerConfig):
        super().__init__()
        mult = cfg.ch_mult
        cin = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        levels: list[_Level] = []
        for i in reversed(range(len(mult))):  # built lowest resolution first, stored by level index
            cout, blocks, attns = cfg.ch * mult[i], [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
                if i == len(mult) - 1:
                    attns.append(AttnBlock(cout))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- quantiser


class Phi(nn.Conv2d):
    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul(self.ratio)


class SharedPhi(nn.Module):
    """K convolutions; scale si of SN uses the one whose tick is nearest to si / (SN - 1)."""

    def __init__(self, channels: int, ratio: float, count: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))
        margin = 1 / 3 / count if count == 4 else 1 / 2 / count
        self.ticks = np.linspace(margin, 1 - margin, count)

    def index(self, si: int, num_scales: int) -> int:
        return int(np.argmin(np.abs(self.ticks - si / (num_scales - 1))))

    def forward(self, h: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        return self.qresi_ls[self.index(si, num_scales)](h)


class MultiScaleQuantizer(nn.Module):
    def __init__(self, cfg: HartTokenizerConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab, cfg.latent_channels)
        self.quant_resi = SharedPhi(cfg.latent_channels, cfg.quant_resi, cfg.share_quant_resi)

    def codes(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, Cv, h, w) code map."""
        return self.embedding(idx_Bhw).permute(0, 3, 1, 2)

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        w = self.embedding.weight
        d = z_NC.square().sum(1, keepdim=True) + w.square().sum(1) - 2 * z_NC @ w.T  # (N, V)
        return d.argmin(dim=1)

    def add_scale(self, f_hat: torch.Tensor, h_BCvhw: torch.Tensor, si: int, patch_nums) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale si's code map (hard codes or a soft mix) to f_hat.

        Before the last scale: bicubic-upsample, Phi, add; returns (f_hat, the next scale's input
        = f_hat area-downsampled to its grid). At the last scale the map is added as is and the
        second value is None.
        """
        SN, H = len(patch_nums), patch_nums[-1]
        if si == SN - 1:
            return f_hat + h_BCvhw, None
        up = F.interpolate(h_BCvhw, size=(H, H), mode="bicubic")
        f_hat = f_hat + self.quant_resi(up, si, SN)
        nxt = patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")

    def quantize(self, f_BCvHW: torch.Tensor, patch_nums) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encode side: per-scale indices (B, h*w) for every scale, and the continuous residual
        left after the last scale's discrete code, (B, Cv, H, W)."""
        B, C, H, W = f_BCvHW.shape
        if patch_nums[-1] != H or H != W:
            raise ConfigError(f"the last scale {patch_nums[-1]} must equal the latent grid {H}x{W}")
        rest, idx_list, SN = f_BCvHW.clone(), [], len(patch_nums)
        for si, pn in enumerate(patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if si != SN - 1 else rest
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn, pn)
            h = F.interpolate(self.codes(idx), size=(H, W), mode="bicubic")
            if si != SN - 1:
                h = self.quant_resi(h, si, SN)
            rest = rest - h
            idx_list.append(idx.reshape(B, pn * pn))
        return idx_list, rest


class HartTokenizer(nn.Module):
    def __init__(self, cfg: HartTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, ks, padding=ks // 2)
        self.quantize = MultiScaleQuantizer(cfg)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(img_B3HW))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cv, H, W) -> image in [-1, 1], (B, 3, 16H, 16W)."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)
