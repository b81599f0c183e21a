"""The decoder of InfinityStar's causal 3-D video VAE, weight-compatible with `infinitystar_videovae.pth`.

Latent (1, 64, T, H, W) -> divide by the learned scale, a 64 x 64 Linear on channels, pixel-shuffle
x2 per frame to (1, 16, T, 2H, 2W) -> a causal 3-D convolutional decoder (x8 in space, x4 in time,
RMS-type spatially conditioned norms, no attention) -> (1, 3, 4(T - 1) + 1, 16H, 16W) in [-1, 1].

Causality: every 3-D convolution pads time on the left only, with copies of the first frame, or with
the last two input frames of the previous chunk (the conv cache). So the latent is decoded in chunks
of two latent frames (the first chunk takes three when T is odd), with memory bounded by a chunk.
A temporal upsampler doubles frames; on a chunk that holds the video's first frame it averages the
first pair back into one frame, which makes 1 + 4k pixel frames out of 1 + k latent frames.

Legend: B batch, C channels, T frames, H x W spatial; Z = the 16-channel latent that conditions every norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LATENT_CHANNELS = 64


@dataclass(frozen=True)
class VideoVAEConfig:
    block_out_channels: tuple[int, ...] = (96, 192, 384, 384, 384)
    layers_per_block: int = 2  # resnets per up block: this + 1
    z_channels: int = 16  # after un-patchifying the 64-channel latent
    spatial_up: tuple[bool, ...] = (False, True, True, True)  # per up block (deepest first)
    temporal_up: tuple[bool, ...] = (False, False, True, True)
    chunk_frames: int = 2  # latent frames per decoded chunk


class CausalConv3d(nn.Module):
    """k x k x k convolution padded causally in time (first-frame copies or the previous chunk's frames)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(c_in, c_out, kernel)

    def forward(self, x_BCThw: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.kernel
        if k > 1:
            left = cache if cache is not None else x_BCThw[:, :, :1].expand(-1, -1, k - 1, -1, -1)
            x_BCThw = torch.cat((left, x_BCThw), dim=2)
            cache = x_BCThw[:, :, -(k - 1):].clone()
        x_BCThw = F.pad(x_BCThw, (k // 2, k // 2, k // 2, k // 2))
        return self.conv(x_BCThw), cache


class ChannelRMSNorm(nn.Module):
    """x / ||x|| over channels * sqrt(C) * gamma (the VAE's "rms" norm; no mean, no bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = channels ** 0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class SpatialNorm3D(nn.Module):
    """norm(f) * conv_y(z) + conv_b(z), z resized (nearest) to f; a first frame of an odd-length f gets z's first frame."""

    def __init__(self, channels: int, z_channels: int):
        super().__init__()
        self.norm_layer = ChannelRMSNorm(channels)
        self.conv_y = CausalConv3d(z_channels, channels, kernel=1)
        self.conv_b = CausalConv3d(z_channels, channels, kernel=1)

    def forward(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            z = torch.cat((F.interpolate(z[:, :, :1], size=(1, *f.shape[-2:])),
                           F.interpolate(z[:, :, 1:], size=(f.shape[2] - 1, *f.shape[-2:]))), dim=2)
        else:
            z = F.interpolate(z, size=f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(z, None)[0] + self.conv_b(z, None)[0]


class ResnetBlock3D(nn.Module):
    def __init__(self, channels: int, z_channels: int):
        super().__init__()
        self.norm1 = SpatialNorm3D(channels, z_channels)
        self.norm2 = SpatialNorm3D(channels, z_channels)
        self.conv1 = CausalConv3d(channels, channels)
        self.conv2 = CausalConv3d(channels, channels)

    def forward(self, x, z, cache: dict) -> torch.Tensor:
        h, cache["conv1"] = self.conv1(F.silu(self.norm1(x, z)), cache.get("conv1"))
        h, cache["conv2"] = self.conv2(F.silu(self.norm2(h, z)), cache.get("conv2"))
        return x + h


class Upsample3D(nn.Module):
    """Depth-to-space upsampler: conv to C_out * 4 * pt channels, shuffled into x2 space (x pt time),
    plus the input tiled the same way as a shortcut."""

    def __init__(self, c_in: int, c_out: int, temporal: bool):
        super().__init__()
        self.pt = 2 if temporal else 1
        self.norm = ChannelRMSNorm(c_in)
        self.conv = CausalConv3d(c_in, c_out * 4 * self.pt)
        self.repeats = c_out * 4 * self.pt // c_in

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        B, _, T, H, W = x.shape  # channels ordered (pt, ph, pw, c)
        x = x.view(B, self.pt, 2, 2, -1, T, H, W).permute(0, 4, 5, 1, 6, 2, 7, 3)
        return x.reshape(B, -1, T * self.pt, H * 2, W * 2)

    def forward(self, x: torch.Tensor, cache: dict, first_chunk: bool) -> torch.Tensor:
        h, cache["conv"] = self.conv(F.silu(self.norm(x)), cache.get("conv"))
        h, y = self._shuffle(h), self._shuffle(x.repeat(1, self.repeats, 1, 1, 1))
        if self.pt > 1 and (x.shape[2] % 2 == 1 or first_chunk):
            h = torch.cat((h[:, :, :self.pt].mean(dim=2, keepdim=True), h[:, :, self.pt:]), dim=2)
            y = torch.cat((y[:, :, :self.pt].mean(dim=2, keepdim=True), y[:, :, self.pt:]), dim=2)
        return h + y


class UpBlock3D(nn.Module):
    def __init__(self, c_in: int, c_out: int, layers: int, z_channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock3D(c_in, z_channels) for _ in range(layers))
        self.upsamplers = nn.ModuleList([_UpsamplerSlot(c_in, c_out, temporal)]) if spatial or temporal else None

    def forward(self, x, z, cache: dict, first_chunk: bool) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, z, cache.setdefault(f"resnet_{i}", {}))
        if self.upsamplers is not None:
            x = self.upsamplers[0].conv(x, cache.setdefault("upsampler", {}), first_chunk)
        return x


class _UpsamplerSlot(nn.Module):
    """Only for the key layout: the official file nests the upsampler as upsamplers.0.conv.*."""

    def __init__(self, c_in: int, c_out: int, temporal: bool):
        super().__init__()
        self.conv = Upsample3D(c_in, c_out, temporal)


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, z_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock3D(channels, z_channels) for _ in range(2))

    def forward(self, x, z, cache: dict) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, z, cache.setdefault(f"resnet_{i}", {}))
        return x


class Decoder3D(nn.Module):
    def __init__(self, cfg: VideoVAEConfig):
        super().__init__()
        chans = list(reversed(cfg.block_out_channels))
        zc = cfg.z_channels
        self.conv_in = CausalConv3d(zc, chans[0])
        self.mid_block = MidBlock3D(chans[0], zc)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(chans[i], chans[i + 1], cfg.layers_per_block + 1, zc, cfg.spatial_up[i], cfg.temporal_up[i])
            for i in range(len(chans) - 1))
        self.norm_out = SpatialNorm3D(chans[-1], zc)
        self.conv_out = CausalConv3d(chans[-1], 3)

    def forward(self, z: torch.Tensor, cache: dict, first_chunk: bool) -> torch.Tensor:
        x, cache["conv_in"] = self.conv_in(z, cache.get("conv_in"))
        x = self.mid_block(x, z, cache.setdefault("mid", {}))
        for i, block in enumerate(self.up_blocks):
            x = block(x, z, cache.setdefault(f"up_{i}", {}), first_chunk)
        x, cache["conv_out"] = self.conv_out(F.silu(self.norm_out(x, z)), cache.get("conv_out"))
        return x


def decode_chunks(T: int, n: int = 2) -> list[tuple[int, int]]:
    """Latent frame ranges decoded together: pairs, the first a triple when T is odd, a quadruple when
    T is even (its first frame then split off in the temporal upsamplers, as for an odd length)."""
    first = min(n + T % n if T % n or T < 2 * n else 2 * n, T)
    return [(0, first)] + [(s, s + n) for s in range(first, T, n)]


class VideoVAEDecoder(nn.Module):
    """The decode path of the official video VAE; its keys are the file's decoder keys plus proj_up and the scale."""

    def __init__(self, cfg: VideoVAEConfig = VideoVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.scale_learnable_parameters = nn.Parameter(torch.ones(4))
        self.decoder = Decoder3D(cfg)
        self.proj_up = nn.Linear(LATENT_CHANNELS, LATENT_CHANNELS)

    @torch.no_grad()
    def decode(self, latent_BDThw: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """(1, 64, T, H, W) -> (1, 3, 4(T - 1) + 1, 16H, 16W), clamped to [-1, 1] unless asked not to."""
        z = latent_BDThw / self.scale_learnable_parameters[0]
        z = self.proj_up(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # Linear over channels
        z = F.pixel_shuffle(z.permute(0, 2, 1, 3, 4), 2).permute(0, 2, 1, 3, 4)  # (B, 16, T, 2H, 2W)
        cache: dict = {}
        T = z.shape[2]
        out = []
        for i, (a, b) in enumerate(decode_chunks(T, self.cfg.chunk_frames)):
            split_first = i == 0 and T % self.cfg.chunk_frames == 0
            out.append(self.decoder(z[:, :, a:b], cache, first_chunk=split_first))
        video = torch.cat(out, dim=2)
        return video.clamp(-1, 1) if clamp else video


def frames_to_uint8(video_B3Thw: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> (T, H, W, 3) uint8 RGB, truncating as the official writer does; frame 0 shows frame 1's
    pixels (the first latent frame is an image anchor whose own pixels the official pipeline never shows)."""
    frames = ((video_B3Thw[0] + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).permute(1, 2, 3, 0)  # (T, H, W, 3)
    if frames.shape[0] > 1:
        frames[0] = frames[1]
    return frames.contiguous()
