"""Scores, propagation and resizing on (t, h, w) token grids: the video scales of InfinityStar.

Tokens are flattened (t, h, w) row-major. Every function here falls back to the 2-D code of
scores.py / propagation.py / restoration.py when t == 1, so an image scale computes exactly
what it computed before video existed (keep-1 and image regressions stay bit-exact).

- Texture: the 3 x 3 high-pass per frame ("frame": each frame is its own 2-D grid), or the
  3 x 3 x 3 high-pass over the spatio-temporal neighbourhood ("volume"), with the same border
  rules as the 2-D filter.
- Propagation: every position takes its nearest kept position in (t, h, w). `time_weight`
  stretches the time axis: a latent frame counts as `time_weight` grid steps (euclidean
  (w dt)^2 + dr^2 + dc^2, manhattan w|dt| + |dr| + |dc|, chebyshev max(w|dt|, |dr|, |dc|)).
  None means "same frame first": the nearest kept position of the position's own frame, and
  for a frame with nothing kept, of the nearest frame that has one. Ties go to the lowest
  row-major position, whatever the order of the kept indices.

The 3-D search is exact without an L x l distance matrix: for every candidate frame f' the
existing 2-D search gives each (row, col) its nearest kept position inside f' and that
distance; the best over f' of the combined distance is the 3-D answer, because the combined
distance is increasing in the in-frame distance at fixed |dt|. Work is B * t * t * h * w.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .propagation import METRICS, _chunk_keys, _row_nearest, kept_mask, nearest_kept
from .scores import BORDERS, _check_choice, _pad_dim, _rows_fp32, _sq_norm, texture_score

WINDOWS = ("frame", "volume")
_CHUNK_ELEMS = 1 << 21


def check_time_weight(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"time_weight must be a finite number >= 0 (or left unset: same frame first), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# texture


def local_mean_3d(x_BLC: torch.Tensor, t: int, h: int, w: int, border: str = "exclude_pad") -> torch.Tensor:
    """3 x 3 x 3 mean (stride 1, same size) of each token's spatio-temporal neighbourhood, (B, L, C) fp32.

    Border rules as local_mean's, applied to all three axes (reflect on a length-1 axis replicates).
    """
    _check_choice(border, BORDERS, "texture border")
    x = _rows_fp32(x_BLC)
    B, L, C = x.shape
    if t * h * w != L:
        raise ValueError(f"grid {t}x{h}x{w} does not hold {L} tokens")
    m = x.reshape(B, t, h, w, C)
    if border in ("replicate", "reflect"):
        m = _pad_dim(_pad_dim(_pad_dim(m, 1, border), 2, border), 3, border)
        pad, include = 0, True
    else:
        pad, include = 1, border == "zero_pad"
    low = F.avg_pool3d(m.permute(0, 4, 1, 2, 3), 3, stride=1, padding=pad, count_include_pad=include)
    return low.permute(0, 2, 3, 4, 1).reshape(B, L, C)


def texture_score_grid(x_BLC: torch.Tensor, grid: tuple[int, int, int], border: str = "exclude_pad",
                       window: str = "frame") -> torch.Tensor:
    """sum_c (x - local mean)^2 per token of a (t, h, w) grid, (B, L) fp32; window "frame" or "volume"."""
    _check_choice(window, WINDOWS, "texture window")
    t, h, w = grid
    if t == 1:
        return texture_score(x_BLC, h, w, border=border)
    x = _rows_fp32(x_BLC)
    B, L, C = x.shape
    if t * h * w != L:
        raise ValueError(f"grid {t}x{h}x{w} does not hold {L} tokens")
    if window == "frame":  # every frame its own 2-D grid: frames become rows
        return texture_score(x.reshape(B * t, h * w, C), h, w, border=border).reshape(B, L)
    return _sq_norm(x - local_mean_3d(x, t, h, w, border))


# --------------------------------------------------------------------------------------------
# propagation


def _in_frame_nearest(mask_Bthw: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate frame f': (distance, in-frame position) of every (row, col)'s nearest kept position
    of f' (lowest position on ties), (B, t, h*w) each; distance is -1 where f' keeps nothing."""
    B, t, h, w = mask_Bthw.shape
    hw = h * w
    m = mask_Bthw.reshape(B * t, h, w)
    ncol, dmin, right = _row_nearest(m, big=h + w + 1)
    rows_per_chunk = max(1, _CHUNK_ELEMS // (B * t * h * w))
    keys = [_chunk_keys(ncol, dmin, right, torch.arange(r0, min(h, r0 + rows_per_chunk), device=m.device), metric, hw)
            for r0 in range(0, h, rows_per_chunk)]
    key = torch.cat(keys, dim=1).reshape(B, t, hw)
    dist, pos = key // hw, key % hw
    empty = ~mask_Bthw.reshape(B, t, hw).any(dim=2, keepdim=True)
    return torch.where(empty, torch.full_like(dist, -1), dist), pos


def _combine(dt: torch.Tensor, d_in: torch.Tensor, metric: str, time_weight: float | None, h: int, w: int) -> torch.Tensor:
    """Combined distance of a time offset and an in-frame distance (squared for euclidean), float64."""
    d = d_in.double()
    if time_weight is None:  # lexicographic (|dt|, in-frame distance): exact in float64 for these sizes
        span = (h - 1) ** 2 + (w - 1) ** 2 + 1 if metric == "euclidean" else h + w
        return dt.double() * span + d
    s = dt.double() * time_weight
    if metric == "euclidean":
        return s * s + d
    if metric == "manhattan":
        return s + d
    return torch.maximum(s, d)


def _first_in_window(mask_Bthw: torch.Tensor, radius: int) -> torch.Tensor:
    """Per frame, the lowest in-frame position of a kept token within Chebyshev distance `radius` of
    every (row, col), (B, t, h*w); -1 where there is none."""
    B, t, h, w = mask_Bthw.shape
    m = mask_Bthw.reshape(B * t, h, w)
    big = h + w + 1
    _, _, right = _row_nearest(m, big)  # first kept column >= c in each row (>= w when none)
    col = torch.arange(w, device=m.device)
    lo = (col - radius).clamp_min(0).expand(B * t, h, w)
    first = torch.gather(right, 2, lo)  # (Bt, r', c): first kept column >= c - radius in row r'
    ok = first <= col + radius
    rows = torch.arange(h, device=m.device)
    near = (rows[:, None] - rows[None, :]).abs() <= radius  # (r, r')
    key = torch.where(ok, rows[:, None] * w + first, torch.full_like(first, h * w))  # (Bt, r', c)
    key = torch.where(near[None, :, :, None], key[:, None], torch.full_like(key[:, None], h * w))  # (Bt, r, r', c)
    out = key.amin(dim=2)
    return torch.where(out >= h * w, torch.full_like(out, -1), out).reshape(B, t, h * w)


def _chebyshev_ties(mask_Bthw, dt_tt, time_weight, dist_Btp, pos_Bffp):
    """With Chebyshev, max(w|dt|, d) ties every kept token of frame f' within w|dt| of (row, col): the
    lowest of them wins, not necessarily the in-frame nearest. Where d <= w|dt|, take that one."""
    s_tt = dt_tt.double() * time_weight
    out = pos_Bffp.clone()
    for radius in sorted({int(math.floor(v)) for v in s_tt.flatten().tolist()}):
        first = _first_in_window(mask_Bthw, radius)  # (B, f', hw)
        pairs = (s_tt.floor() == radius)[None, :, :, None]  # (1, f, f', 1): frame pairs with this radius
        use = pairs & (dist_Btp[:, None] >= 0) & (dist_Btp[:, None] <= radius)
        out = torch.where(use, first[:, None].expand_as(out), out)
    return out


def nearest_kept_3d(idx_Bl: torch.Tensor, t: int, h: int, w: int, metric: str = "euclidean",
                    time_weight: float | None = None) -> torch.Tensor:
    """For every position of a (t, h, w) grid, the index j into idx_Bl's row of its nearest kept position, (B, L) long."""
    if metric not in METRICS:
        raise ConfigError(f"nearest-neighbour metric must be one of {', '.join(METRICS)}; got {metric!r}")
    time_weight = check_time_weight(time_weight)
    hw, L = h * w, t * h * w
    mask = kept_mask(idx_Bl, L)
    B, l = idx_Bl.shape
    slot_BL = torch.full((B, L), -1, dtype=torch.long, device=idx_Bl.device)
    slot_BL.scatter_(1, idx_Bl, torch.arange(l, device=idx_Bl.device).expand(B, l))
    dist_Btp, pos_Btp = _in_frame_nearest(mask.view(B, t, h, w), metric)  # candidate frame f' first
    frames = torch.arange(t, device=idx_Bl.device)
    dt_tt = (frames[:, None] - frames[None, :]).abs()  # (target f, candidate f')
    comb = _combine(dt_tt[None, :, :, None], dist_Btp[:, None], metric, time_weight, h, w)  # (B, f, f', hw)
    comb = torch.where(dist_Btp[:, None] < 0, torch.full_like(comb, math.inf), comb)
    pos_Bffp = pos_Btp[:, None].expand(B, t, t, hw)
    if metric == "chebyshev" and time_weight is not None and time_weight > 0:
        pos_Bffp = _chebyshev_ties(mask.view(B, t, h, w), dt_tt, time_weight, dist_Btp, pos_Bffp)
    best = comb.amin(dim=2, keepdim=True)
    frame_Bfp = (comb == best).to(torch.uint8).argmax(dim=2)  # first (lowest) candidate frame at the minimum
    in_frame = torch.gather(pos_Bffp, 2, frame_Bfp[:, :, None]).squeeze(2)  # (B, f, hw)
    pos_BL = (frame_Bfp * hw + in_frame).reshape(B, L)
    return torch.gather(slot_BL, 1, pos_BL)


def nearest_kept_grid(idx_Bl: torch.Tensor, grid: tuple[int, int, int], metric: str = "euclidean",
                      time_weight: float | None = None) -> torch.Tensor:
    """nearest_kept on a (t, h, w) grid: the 2-D search itself when t == 1."""
    t, h, w = grid
    if t == 1:
        return nearest_kept(idx_Bl, h, w, metric=metric)
    return nearest_kept_3d(idx_Bl, t, h, w, metric, time_weight)


# --------------------------------------------------------------------------------------------
# resizing (cached restoration)


def area_resize_grid(y_BLC: torch.Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> torch.Tensor:
    """A token map resized by area interpolation between (t, h, w) grids (or (h, w) grids), (B, L_src, C) -> (B, L_dst, C)."""
    src3 = (1, *src) if len(src) == 2 else tuple(src)
    dst3 = (1, *dst) if len(dst) == 2 else tuple(dst)
    if src3[0] == 1 and dst3[0] == 1:
        y_BChw = y_BLC.transpose(1, 2).unflatten(2, src3[1:])
        return F.interpolate(y_BChw, size=dst3[1:], mode="area").flatten(2).transpose(1, 2)
    y_BCthw = y_BLC.transpose(1, 2).unflatten(2, src3)
    return F.interpolate(y_BCthw, size=dst3, mode="area").flatten(2).transpose(1, 2)


def shared_rows(score_BL: torch.Tensor) -> torch.Tensor:
    """One score for both guidance rows of each prompt (rows [cond; uncond]): the sum of their
    min-max normalised scores, repeated, so both rows keep the same positions."""
    from .scores import normalize_score

    half = score_BL.shape[0] // 2
    s = normalize_score(score_BL, "minmax")
    return (s[:half] + s[half:]).repeat(2, 1)
