"""Token importance scores and top-k selection (StepVAR: structure, texture, joint; FastVAR: distance to the mean token).

Every score takes hidden states x_BLC (B rows, L = h*w tokens in row-major order, C
channels) and returns s_BL in fp32 whatever the input dtype: selection must not depend
on whether the model runs in bf16. Rows are independent (per-row selection);
callers that share a subset across CFG rows combine the rows' scores themselves.

Choices the spec leaves open, and what is done here:
    normalisation before mixing: normalize_score modes; joint_score(structure_power=2) makes both terms quadratic.
    power iteration: fixed count `iters`, deterministic init ("ones", "variance",
        "random" with a fixed seed), fp32. An init orthogonal to every token (e.g. "ones"
        on features whose channel-mean is zero per token, as after a LayerNorm) falls back
        to the fixed-seed random vector so the iteration never starts from nothing.
    texture border: `border` in texture_score.
    rounding of the kept count: keep_count.
    kept-token order: select_topk(order=...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

INITS = ("ones", "variance", "random")
BORDERS = ("exclude_pad", "zero_pad", "replicate", "reflect")
NORMS = ("raw", "max", "minmax", "zscore", "rank")
ORDERS = ("spatial", "score")
ROUNDINGS = ("fastvar", "round")

_RANDOM_SEED = 20260302  # fixed: "random" init must give the same subset on every run and device
_DEGENERATE_REL = 1e-4  # |Xc v0| / (|Xc|_F |v0|) below this: v0 is (numerically) orthogonal to the data
_TINY = 1e-30  # division guard; a zero vector stays zero instead of becoming NaN


def _check_choice(value: str, options: tuple[str, ...], what: str) -> None:
    if value not in options:
        raise ConfigError(f"{what} must be one of {', '.join(options)}; got {value!r}")


def _rows_fp32(x_BLC: torch.Tensor) -> torch.Tensor:
    if x_BLC.dim() != 3:
        raise ValueError(f"expected hidden states (B, L, C), got shape {tuple(x_BLC.shape)}")
    return x_BLC.float()


# --------------------------------------------------------------------------------------------
# structure: |projection on the first principal component|


def _random_vec(C: int, device) -> torch.Tensor:
    # Drawn on the CPU so that every device gets the very same vector.
    gen = torch.Generator(device="cpu").manual_seed(_RANDOM_SEED)
    return torch.randn(C, generator=gen).to(device)


def _init_vec_BC1(xc_BLC: torch.Tensor, init: str) -> torch.Tensor:
    B, _, C = xc_BLC.shape
    if init == "ones":
        v = torch.ones(B, C, device=xc_BLC.device)
    elif init == "variance":
        # per-channel variance (leans towards the big directions); vector_norm avoids a squared copy
        v = torch.linalg.vector_norm(xc_BLC, dim=1).square() / xc_BLC.shape[1]
    else:
        v = _random_vec(C, xc_BLC.device).expand(B, C).clone()
    return v.unsqueeze(-1)


def _unit(v: torch.Tensor, dim: int) -> torch.Tensor:
    return v / v.norm(dim=dim, keepdim=True).clamp_min(_TINY)


def _fix_degenerate_init(xc_BLC: torch.Tensor, v_BC1: torch.Tensor) -> torch.Tensor:
    """Replace, per row, an init that X_c maps to ~0 by the fixed random vector."""
    proj = torch.linalg.vector_norm(torch.bmm(xc_BLC, v_BC1), dim=(1, 2))
    scale = torch.linalg.vector_norm(xc_BLC, dim=(1, 2)) * torch.linalg.vector_norm(v_BC1, dim=(1, 2))
    bad_B = proj <= _DEGENERATE_REL * scale
    # A constant map (scale == 0) is "bad" too; the fallback then also maps to 0 -> zero scores.
    if not bool(bad_B.any()):
        return v_BC1
    rnd = _random_vec(xc_BLC.shape[2], xc_BLC.device).view(1, -1, 1)
    return torch.where(bad_B.view(-1, 1, 1), rnd, v_BC1)


def structure_score(x_BLC: torch.Tensor, iters: int = 3, init: str = "ones") -> torch.Tensor:
    """|X_c v| with v the power-iteration estimate of the first principal direction, (B, L) fp32.

    X_c is each row centred over its tokens. The C x C covariance is never formed: one
    step is v <- X_c^T (X_c v), normalised, i.e. two (L x C) mat-vecs, batched with bmm.
    iters=0 scores the projection on the (normalised) init itself.
    """
    _check_choice(init, INITS, "power-iteration init")
    if iters < 0:
        raise ConfigError(f"power-iteration count must be >= 0, got {iters}")
    x = _rows_fp32(x_BLC)
    xc = x - x.mean(dim=1, keepdim=True)  # formed explicitly: X v - (mu.v) would cancel badly in fp32
    v = _fix_degenerate_init(xc, _init_vec_BC1(xc, init))
    v = _unit(v, dim=1)
    for _ in range(iters):
        # u is normalised too so tiny-magnitude inputs do not underflow in X^T X v.
        u = _unit(torch.bmm(xc, v), dim=1)
        # (u^T X_c)^T rather than X_c^T u: reads X_c row by row, ~3x faster on CPU.
        v = _unit(torch.bmm(u.transpose(1, 2), xc).transpose(1, 2), dim=1)
    return torch.bmm(xc, v).squeeze(-1).abs()


# --------------------------------------------------------------------------------------------
# texture: energy of the local 3x3 high-pass residual


def _pad_dim(x: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """Pad one spatial dim of a (B, h, w, C) map by 1 on both sides (channels stay innermost)."""
    n = x.shape[dim]
    if mode == "reflect" and n >= 2:
        lo, hi = x.narrow(dim, 1, 1), x.narrow(dim, n - 2, 1)
    else:  # replicate; also reflect on a length-1 dim, where reflection is undefined
        lo, hi = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    return torch.cat([lo, x, hi], dim=dim)


def _sq_norm(d_BLC: torch.Tensor) -> torch.Tensor:
    # vector_norm reduces without a squared (B, L, C) temporary: ~2x faster than square().sum()
    # on CPU; the sqrt-then-square round trip costs a few ulp, far below score differences.
    return torch.linalg.vector_norm(d_BLC, dim=-1).square()


def local_mean(x_BLC: torch.Tensor, h: int, w: int, border: str = "exclude_pad") -> torch.Tensor:
    """3x3 mean (stride 1, same size) of each token's neighbourhood, (B, L, C) fp32.

    border: "exclude_pad" averages only the real neighbours (count_include_pad=False);
    "zero_pad" counts zero padding in the 9 (pulls border means towards 0); "replicate" and
    "reflect" pad with edge / mirrored tokens. "reflect" on a grid dimension of length 1
    falls back to replicate on that dimension (there is nothing to mirror).
    """
    _check_choice(border, BORDERS, "texture border")
    x = _rows_fp32(x_BLC)
    B, L, C = x.shape
    if h * w != L:
        raise ValueError(f"grid {h}x{w} does not hold {L} tokens")
    m = x.reshape(B, h, w, C)
    if border in ("replicate", "reflect"):
        m = _pad_dim(_pad_dim(m, 1, border), 2, border)
        pad, include = 0, True
    else:
        pad, include = 1, border == "zero_pad"
    # (B, C, h, w) with channels_last strides: pooling runs without a transpose copy.
    low = F.avg_pool2d(m.permute(0, 3, 1, 2), 3, stride=1, padding=pad, count_include_pad=include)
    return low.permute(0, 2, 3, 1).reshape(B, L, C)


def texture_score(x_BLC: torch.Tensor, h: int, w: int, border: str = "exclude_pad") -> torch.Tensor:
    """sum_c (x - mean3x3(x))^2 per token, (B, L) fp32."""
    x = _rows_fp32(x_BLC)
    return _sq_norm(x - local_mean(x, h, w, border))


def dc_score(x_BLC: torch.Tensor, official: bool = False) -> torch.Tensor:
    """FastVAR's score: squared L2 distance of each token to the row's mean token, (B, L) fp32.

    official: sum the squares as the release does, rather than squaring a norm; the two differ in
    the last bits, enough to swap the order of near-equal scores (not which tokens are kept).
    """
    x = _rows_fp32(x_BLC)
    d = x - x.mean(dim=1, keepdim=True)
    return torch.sum(d ** 2, dim=-1) if official else _sq_norm(d)


# --------------------------------------------------------------------------------------------
# normalisation and mixing


def _average_rank(s_BL: torch.Tensor) -> torch.Tensor:
    """0-based ascending ranks, tied values sharing the mean of their ranks."""
    B, L = s_BL.shape
    srt, order = torch.sort(s_BL, dim=1, stable=True)
    pos = torch.arange(L, device=s_BL.device).expand(B, L)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]  # first element of each tie group
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]  # last element of each tie group
    start = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values
    end = torch.where(last, pos, torch.full_like(pos, L)).flip(1).cummin(dim=1).values.flip(1)
    avg = (start + end).to(s_BL.dtype) / 2
    return torch.empty_like(avg).scatter_(1, order, avg)


def normalize_score(s_BL: torch.Tensor, mode: str) -> torch.Tensor:
    """Row-wise normalisation of a score, (B, L) fp32; a constant row never gives NaN.

    raw     unchanged.
    max     s / max|s| (scores are >= 0, so the row max lands on 1); all-zero row -> 0.
    minmax  (s - min) / (max - min) in [0, 1]; constant row -> 0.
    zscore  (s - mean) / std (population std); constant row -> 0.
    rank    percentile rank in [0, 1]: 0-based ascending rank / (L - 1). Ties get the
            average of their ranks, so the result does not depend on token order and a
            constant row is all 0.5 (a single-token row is 0).
    """
    _check_choice(mode, NORMS, "score normalisation")
    s = s_BL.float()
    if mode == "raw":
        return s
    if mode == "max":
        return s / s.abs().amax(dim=1, keepdim=True).clamp_min(_TINY)
    if mode == "minmax":
        lo, hi = s.amin(dim=1, keepdim=True), s.amax(dim=1, keepdim=True)
        return (s - lo) / (hi - lo).clamp_min(_TINY)
    if mode == "zscore":
        mu = s.mean(dim=1, keepdim=True)
        sd = s.std(dim=1, keepdim=True, correction=0)
        return (s - mu) / sd.clamp_min(_TINY)
    return _average_rank(s) / max(s.shape[1] - 1, 1)


def joint_score(
    x_BLC: torch.Tensor,
    h: int,
    w: int,
    w_str: float = 1.0,
    norm: str = "minmax",
    iters: int = 3,
    init: str = "ones",
    border: str = "exclude_pad",
    structure_power: int = 1,
    t: int = 1,
    window: str = "frame",
) -> torch.Tensor:
    """StepVAR's S = w_str * norm(S_str ** p) + norm(S_txt), (B, L) fp32.

    structure_power=2 squares the projection so both terms are quadratic in the features.
    t > 1: a (t, h, w) video grid, its texture filtered per frame or over the volume (`window`).
    """
    from .spacetime import texture_score_grid

    s_str = structure_score(x_BLC, iters=iters, init=init)
    if structure_power != 1:
        s_str = s_str.pow(structure_power)
    s_txt = texture_score_grid(x_BLC, (t, h, w), border=border, window=window)
    return w_str * normalize_score(s_str, norm) + normalize_score(s_txt, norm)


# --------------------------------------------------------------------------------------------
# how many tokens, and which


def keep_count(
    L: int,
    keep_ratio: float | None = None,
    rounding: str = "fastvar",
    *,
    prune_ratio: float | None = None,
) -> int:
    """Number of tokens kept out of L, clamped to [1, L].

    Give exactly one of keep_ratio (fraction kept) or prune_ratio (fraction pruned, as
    FastVAR configs state it).

    "fastvar": FastVAR prunes r = int(L * prune_ratio) and keeps L - r. From a keep ratio
        the prune ratio is 1 - keep rounded to 12 decimals: 1 - 0.6 is 0.4000000000000001
        and 1 - 0.9 is 0.09999999999999998 in binary floating point; rounding gives back
        the double nearest the decimal a FastVAR config would write (0.4, 0.1), so
        int(L * r) truncates exactly as FastVAR does (1024 @ keep 0.6 -> 615; 10 @ keep 0.9 -> 9).
    "round": round-half-up of L * keep (L * keep first rounded to 9 decimals, so that
        e.g. 0.5-boundaries hit by float error round the way the decimal says).
    """
    _check_choice(rounding, ROUNDINGS, "keep-count rounding")
    if L < 1:
        raise ValueError(f"a scale has at least one token, got L={L}")
    if (keep_ratio is None) == (prune_ratio is None):
        raise ConfigError("give exactly one of keep_ratio and prune_ratio")
    if prune_ratio is not None:
        if not 0.0 <= prune_ratio < 1.0:
            raise ConfigError(f"prune ratio must be in [0, 1), got {prune_ratio}")
        prune, keep = float(prune_ratio), round(1.0 - prune_ratio, 12)
    else:
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"keep ratio must be in (0, 1], got {keep_ratio}")
        prune, keep = round(1.0 - keep_ratio, 12), float(keep_ratio)
    if rounding == "fastvar":
        k = L - int(L * prune)
    else:
        k = math.floor(round(L * keep, 9) + 0.5)
    return min(max(k, 1), L)


def select_topk(score_BL: torch.Tensor, k: int, order: str = "spatial") -> torch.Tensor:
    """Indices of the k highest scores per row, (B, k) long.

    Ties are broken deterministically: equal scores -> lower position first (a stable
    descending sort; torch.topk leaves tie order unspecified). NaN scores rank last.
    order "spatial": ascending positions; "score": descending score, ties by lower position.
    """
    _check_choice(order, ORDERS, "kept-token order")
    if score_BL.dim() != 2:
        raise ValueError(f"expected scores (B, L), got shape {tuple(score_BL.shape)}")
    L = score_BL.shape[1]
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, {L}], got {k}")
    s = score_BL.float()
    s = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
    idx = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    if order == "spatial":
        idx = torch.sort(idx, dim=1).values
    return idx
