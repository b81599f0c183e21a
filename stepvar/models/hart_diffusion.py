"""HART's residual diffusion head: an MLP with AdaLN sampled by IDDPM in 8 respaced steps.

For every last-scale token it draws the continuous residual the discrete code missed,
conditioned on z (the transformer's hidden state plus the sampled code's embedding). Cosine
schedule over 1000 steps, respaced to `steps`, epsilon prediction with learned-range
variance, x0 clipped to [-1, 1], output scaled by 0.6. CFG acts on epsilon only.

The release draws this noise from the global RNG; here it comes from the generator passed
in (or from explicit tensors), so a dense and a pruned run see the same noise.

Legend: N tokens (rows), Cv latent channels, W the MLP width, Cz the condition width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VAE_SCALE = 0.6  # the head works on residual / 0.6
DIFFUSION_STEPS = 1000


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def sinusoid(t_N: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t_N.device)
        args = t_N[:, None].float() * freqs[None]
        return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t_N, self.freq_dim))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y_NW).chunk(3, dim=-1)
        return x_NW + gate * self.mlp(modulate(self.in_ln(x_NW), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.width = width
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y_NW).chunk(2, dim=-1)
        return self.linear(modulate(F.layer_norm(x_NW, (self.width,), eps=1e-6), shift, scale))


class MLPAdaLN(nn.Module):
    """Predicts [epsilon; variance values] (2 Cv) from a noisy residual, a timestep and z."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int):
        super().__init__()
        self.channels = channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_width, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels)

    def forward(self, x_NCv: torch.Tensor, t_N: torch.Tensor, z_NCz: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x_NCv)
        y = self.time_embed(t_N) + self.cond_embed(z_NCz)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


# ----------------------------------------------------------------------------- the schedule


def cosine_betas(n: int = DIFFUSION_STEPS, max_beta: float = 0.999) -> list[float]:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]


def respaced_timesteps(n: int, count: int) -> list[int]:
    """`count` timesteps spread evenly over 0..n-1 by a fractional stride, rounded (IDDPM spacing)."""
    if count > n:
        raise ValueError(f"cannot take {count} steps out of {n}")
    stride = 1 if count <= 1 else (n - 1) / (count - 1)
    taken, cur = [], 0.0
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


@dataclass
class Schedule:
    """Per-step coefficients of the respaced process, float64 like the reference, cast on use."""

    timesteps: list[int]  # the original timestep of each respaced step, given to the MLP
    betas: torch.Tensor
    log_betas: torch.Tensor
    post_log_var: torch.Tensor  # clipped posterior log-variance
    recip_ac: torch.Tensor  # sqrt(1 / alpha_cumprod)
    recipm1_ac: torch.Tensor  # sqrt(1 / alpha_cumprod - 1)
    coef1: torch.Tensor  # posterior mean coefficient of x0
    coef2: torch.Tensor  # posterior mean coefficient of x_t

    @classmethod
    def respaced(cls, steps: int, n: int = DIFFUSION_STEPS) -> "Schedule":
        with torch.device("cpu"):  # plain numbers, even when the model is built on the meta device
            return cls._respaced(steps, n)

    @classmethod
    def _respaced(cls, steps: int, n: int) -> "Schedule":
        base = torch.tensor(cosine_betas(n), dtype=torch.float64)
        base_ac = torch.cumprod(1 - base, 0)
        kept = respaced_timesteps(n, steps)
        betas, last = [], 1.0
        for i in kept:
            betas.append(1 - base_ac[i].item() / last)
            last = base_ac[i].item()
        b = torch.tensor(betas, dtype=torch.float64)
        ac = torch.cumprod(1 - b, 0)
        ac_prev = torch.cat((torch.ones(1, dtype=torch.float64), ac[:-1]))
        post_var = b * (1 - ac_prev) / (1 - ac)
        post_log = torch.log(torch.cat((post_var[1:2], post_var[1:]))) if len(b) > 1 else torch.zeros(0, dtype=torch.float64)
        return cls(
            timesteps=kept,
            betas=b,
            log_betas=torch.log(b),
            post_log_var=post_log,
            recip_ac=torch.sqrt(1 / ac),
            recipm1_ac=torch.sqrt(1 / ac - 1),
            coef1=b * torch.sqrt(ac_prev) / (1 - ac),
            coef2=(1 - ac_prev) * torch.sqrt(1 - b) / (1 - ac),
        )

    def at(self, name: str, i: int) -> float:
        """A coefficient of respaced step i as an fp32 scalar tensor value."""
        return float(torch.tensor(getattr(self, name)[i].item(), dtype=torch.float32))


class DiffusionHead(nn.Module):
    """`diffloss` in the release: holds `net` (the MLP) and samples with the respaced schedule."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int, steps: int):
        super().__init__()
        self.channels = channels
        self.net = MLPAdaLN(channels, cond_width, width, depth)
        self.schedule = Schedule.respaced(steps)

    @property
    def steps(self) -> int:
        return len(self.schedule.timesteps)

    def draw_noise(self, rows: int, generator: torch.Generator | None, device) -> list[torch.Tensor]:
        """Initial noise then one tensor per step: (steps + 1) x (rows, Cv), from the generator."""
        return [torch.randn(rows, self.channels, generator=generator, device=device) for _ in range(self.steps + 1)]

    def _eps_and_var(self, x_NCv, i, z_B2Cz, guidance: float):
        """Model output for the cond rows, with CFG on epsilon: (1+g) eps_cond - g eps_uncond."""
        N = x_NCv.shape[0]
        t = torch.full((2 * N,), self.schedule.timesteps[i], dtype=torch.long, device=x_NCv.device)
        out = self.net(torch.cat((x_NCv, x_NCv), dim=0), t, z_B2Cz)
        eps, var = out[:, : self.channels], out[:, self.channels :]
        eps_c, eps_u = eps[:N], eps[N:]
        return eps_c * (1 + guidance) - guidance * eps_u, var[:N]

    @torch.no_grad()
    def sample(self, z_B2Cz: torch.Tensor, guidance: float, generator: torch.Generator | None = None,
               noise: list[torch.Tensor] | None = None, temperature: float = 1.0) -> torch.Tensor:
        """z: (2N, Cz), rows [cond; uncond] -> residuals (N, Cv) for the cond rows."""
        N = z_B2Cz.shape[0] // 2
        if noise is None:
            noise = self.draw_noise(N, generator, z_B2Cz.device)
        # The release skips CFG when the ratio is exactly 1.0 and samples the cond rows with
        # their own epsilon: the same as guidance 0.
        g = 0.0 if guidance == 1.0 else float(guidance)
        s = self.schedule
        x = noise[0].to(z_B2Cz.dtype)
        for step, i in enumerate(reversed(range(self.steps))):
            eps, var = self._eps_and_var(x, i, z_B2Cz, g)
            frac = (var + 1) / 2  # variance values in [-1, 1] span [posterior, beta]
            log_var = frac * s.at("log_betas", i) + (1 - frac) * s.at("post_log_var", i)
            x0 = (s.at("recip_ac", i) * x - s.at("recipm1_ac", i) * eps).clamp(-1, 1)
            mean = s.at("coef1", i) * x0 + s.at("coef2", i) * x
            if i > 0:
                x = mean + torch.exp(0.5 * log_var) * noise[step + 1].to(x.dtype) * temperature
            else:
                x = mean
        return x * VAE_SCALE
