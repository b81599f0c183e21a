"""Dense maps from kept tokens: nearest-kept propagation (StepVAR) and index writes (FastVAR).

nearest_kept is exact and integer-only. Instead of all (position, kept) pairs (L x l per
row) it splits the search by grid row: for every grid row r' and column c it first finds
the nearest kept column of r' (a 1-D cummax/cummin scan), then every position takes the
best of its h row candidates. Work is B*h*h*w instead of B*L*l, and memory is bounded by
chunking over position rows. Because every distance used here grows with |dc| at fixed
|dr| this is exact; the tie rule (lowest row-major kept position) is enforced by
minimising the integer key  dist * L + position, which orders by distance first and then
by position, so nothing depends on argmin's tie behaviour or on the order of idx_Bl.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

METRICS = ("euclidean", "chebyshev", "manhattan")
_CHUNK_ELEMS = 1 << 21  # int64 elements per (B, rows, h, w) temporary: 16 MB, a few alive at once


def kept_mask(idx_Bl: torch.Tensor, L: int) -> torch.Tensor:
    """(B, L) bool, True at kept positions; raises on out-of-range or repeated indices."""
    if idx_Bl.dim() != 2 or idx_Bl.dtype != torch.long:
        raise ValueError(f"kept indices must be a (B, l) long tensor, got {idx_Bl.dtype} {tuple(idx_Bl.shape)}")
    B, l = idx_Bl.shape
    if l < 1 or l > L:
        raise ValueError(f"need 1 <= kept tokens <= {L}, got {l}")
    if int(idx_Bl.min()) < 0 or int(idx_Bl.max()) >= L:
        raise ValueError(f"kept indices must lie in [0, {L})")
    mask = torch.zeros(B, L, dtype=torch.bool, device=idx_Bl.device).scatter_(1, idx_Bl, True)
    if bool((mask.sum(1) != l).any()):
        raise ValueError("kept indices repeat a position within a row")
    return mask


def _row_nearest(mask_Bhw: torch.Tensor, big: int):
    """Per grid row: nearest kept column (left wins a tie), its |dc|, and the first kept column >= c.

    Rows with nothing kept get distances >= big, which no real candidate reaches.
    """
    B, h, w = mask_Bhw.shape
    col = torch.arange(w, device=mask_Bhw.device).expand(B, h, w)
    left = torch.where(mask_Bhw, col, torch.full_like(col, -big)).cummax(dim=2).values
    none_r = torch.full_like(col, w - 1 + big)
    right = torch.where(mask_Bhw, col, none_r).flip(2).cummin(dim=2).values.flip(2)
    dl, dr = col - left, right - col
    use_left = dl <= dr  # equal distance: the left one has the lower row-major index
    ncol = torch.where(use_left, left, right).clamp(0, w - 1)  # clamp keeps keys of empty rows decodable
    dmin = torch.minimum(dl, dr)
    return ncol, dmin, right


def _chunk_keys(ncol, dmin, right, rows: torch.Tensor, metric: str, L: int) -> torch.Tensor:
    """min over grid rows r' of  dist * L + (r' * w + col)  for the positions of `rows`, (B, P, w)."""
    B, h, w = ncol.shape
    rr = torch.arange(h, device=ncol.device)
    adr_Ph = (rows[:, None] - rr[None, :]).abs()  # |dr| between position rows and candidate rows
    adr = adr_Ph[None, :, :, None]  # (1, P, h, 1)
    col_B1hw = ncol[:, None]
    if metric == "euclidean":
        dist = adr.square() + dmin[:, None].square()
    elif metric == "manhattan":
        dist = adr + dmin[:, None]
    else:  # chebyshev: every kept column within |dr| of c ties at |dr|; take the leftmost
        P = rows.shape[0]
        pc = torch.arange(w, device=ncol.device)
        lo = (pc[None, None, :] - adr_Ph[:, :, None]).clamp_min(0).expand(B, P, h, w)
        cand = torch.gather(right[:, None].expand(B, P, h, w), 3, lo)
        in_band = cand - pc <= adr
        dist = torch.where(in_band, adr.expand(B, P, h, w), dmin[:, None].expand(B, P, h, w))
        col_B1hw = torch.where(in_band, cand, ncol[:, None])
    key = dist * L + (rr * w)[None, None, :, None] + col_B1hw
    return key.amin(dim=2)


def nearest_kept(idx_Bl: torch.Tensor, h: int, w: int, metric: str = "euclidean") -> torch.Tensor:
    """For every grid position, the index j into idx_Bl's row of its nearest kept position, (B, L) long.

    Positions are row-major (p = row * w + col); distances are exact on integer grid
    coordinates: squared Euclidean (default), Chebyshev or Manhattan.
    A kept position maps to itself. Ties between equidistant kept positions go to the one
    with the lowest row-major index, whatever the order of idx_Bl (spatial or score).
    """
    if metric not in METRICS:
        raise ConfigError(f"nearest-neighbour metric must be one of {', '.join(METRICS)}; got {metric!r}")
    L = h * w
    mask = kept_mask(idx_Bl, L)
    B, l = idx_Bl.shape
    slot_BL = torch.full((B, L), -1, dtype=torch.long, device=idx_Bl.device)
    slot_BL.scatter_(1, idx_Bl, torch.arange(l, device=idx_Bl.device).expand(B, l))
    ncol, dmin, right = _row_nearest(mask.view(B, h, w), big=h + w + 1)
    rows_per_chunk = max(1, _CHUNK_ELEMS // (B * h * w))
    keys = []
    for r0 in range(0, h, rows_per_chunk):
        rows = torch.arange(r0, min(h, r0 + rows_per_chunk), device=idx_Bl.device)
        keys.append(_chunk_keys(ncol, dmin, right, rows, metric, L))
    pos_BL = torch.cat(keys, dim=1).reshape(B, L) % L  # nearest kept position
    return torch.gather(slot_BL, 1, pos_BL)


def propagate(y_BlC: torch.Tensor, nn_BL: torch.Tensor) -> torch.Tensor:
    """Dense (B, L, C): every position takes the kept feature nn_BL points at."""
    if y_BlC.shape[0] != nn_BL.shape[0]:
        raise ValueError(f"batch mismatch: {tuple(y_BlC.shape)} vs {tuple(nn_BL.shape)}")
    B, l, C = y_BlC.shape
    # Row copies via index_select on the flattened kept rows: faster than gather over C.
    flat = (nn_BL + torch.arange(B, device=nn_BL.device).unsqueeze(1) * l).reshape(-1)
    return y_BlC.reshape(B * l, C).index_select(0, flat).view(B, -1, C)


def scatter_kept(dense_BLC: torch.Tensor, idx_Bl: torch.Tensor, y_BlC: torch.Tensor) -> torch.Tensor:
    """A copy of dense_BLC with the kept rows replaced by y_BlC (FastVAR's restoration write)."""
    C = dense_BLC.shape[2]
    index = idx_Bl.unsqueeze(-1).expand(-1, -1, C)
    return dense_BLC.scatter(1, index, y_BlC.to(dense_BLC.dtype))
