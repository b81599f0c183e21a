"""2-D rotary position embedding with star-style normalisation.

The table is indexed by integer grid coordinates on a 128 x 128 grid. Tokens carry
their own (row, col) coordinates, so a pruned subset keeps its true positions simply
by gathering the table with the kept tokens' coordinates.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedules import ROPE_GRID


class Rope2D(nn.Module):
    """cos/sin table of shape (ROPE_GRID*ROPE_GRID, hd/2): pairs 0..hd/4-1 rotate by row, the rest by column."""

    def __init__(self, head_dim: int, grid: int = ROPE_GRID, base: float = 10000.0):
        super().__init__()
        half = head_dim // 2
        inv_freq = base ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)  # (hd/4,)
        coords = torch.arange(grid, dtype=torch.float64)
        ang_y = coords[:, None, None] * inv_freq  # (G, 1, hd/4)
        ang_x = coords[None, :, None] * inv_freq  # (1, G, hd/4)
        ang = torch.cat(torch.broadcast_tensors(ang_y, ang_x), dim=-1).reshape(grid * grid, half)
        self.grid = grid
        # Non-persistent: the official files hold no RoPE buffers.
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def gather(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (..., l, 2) integer (row, col) -> cos, sin of shape (..., 1, l, hd/2) ready for (B, H, l, hd)."""
        flat = pos[..., 0] * self.grid + pos[..., 1]
        cos = self.cos[flat].unsqueeze(-3)
        sin = self.sin[flat].unsqueeze(-3)
        return cos, sin


def apply_rope(x_BHlk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2p, 2p+1) by angle p, in fp32, and return in x's dtype."""
    dtype = x_BHlk.dtype
    x = x_BHlk.float().unflatten(-1, (-1, 2))  # (B, H, l, hd/2, 2)
    a, b = x[..., 0], x[..., 1]
    out = torch.stack((cos * a - sin * b, sin * a + cos * b), dim=-1)
    return out.flatten(-2).to(dtype)
