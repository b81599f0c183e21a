"""Pruning kernels against brute-force references written out with explicit loops."""

import itertools
import math

import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.pruning.propagation import kept_mask, nearest_kept, propagate, scatter_kept
from stepvar.pruning.scores import (
    BORDERS,
    NORMS,
    dc_score,
    joint_score,
    keep_count,
    normalize_score,
    select_topk,
    structure_score,
    texture_score,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spiked(B, L, C, spike=8.0, seed=0):
    """Rank-1 spike plus noise: a clear gap between the first and second singular values."""
    g = _gen(seed)
    u = torch.randn(B, L, 1, generator=g)
    v = torch.randn(B, 1, C, generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    return spike * u * v * math.sqrt(C) / 4 + torch.randn(B, L, C, generator=g) + 3.0  # offset: centring matters


def _svd_reference(x_BLC):
    out = []
    for x in x_BLC.double():
        xc = x - x.mean(0)
        v1 = torch.linalg.svd(xc, full_matrices=False).Vh[0]
        out.append((xc @ v1).abs())
    return torch.stack(out).float()


# ------------------------------------------------------------------ structure


@pytest.mark.parametrize("init", ["ones", "variance", "random"])
def test_structure_matches_svd(init):
    x = _spiked(3, 48, 32)
    ref = _svd_reference(x)
    got = structure_score(x, iters=30, init=init)
    assert got.shape == (3, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_structure_topk_agrees_with_svd_at_3_iters():
    x = _spiked(2, 256, 64, spike=16.0, seed=1)
    k = 100
    ref = select_topk(_svd_reference(x), k)
    for init in ("ones", "variance", "random"):
        got = select_topk(structure_score(x, iters=3, init=init), k)
        for b in range(2):
            assert set(got[b].tolist()) == set(ref[b].tolist())


def test_structure_sign_and_dtype_invariance():
    x = _spiked(2, 40, 16, seed=2)
    s = structure_score(x)
    torch.testing.assert_close(structure_score(-x), s, rtol=1e-5, atol=1e-5)
    assert structure_score(x.to(torch.bfloat16)).dtype == torch.float32


def test_structure_degenerate_inputs():
    const = torch.full((2, 12, 8), 3.5)
    assert torch.equal(structure_score(const), torch.zeros(2, 12))
    # Channel-mean zero per token (LayerNorm-like): "ones" is orthogonal to every token,
    # the fallback init must still find the principal direction.
    x = _spiked(1, 64, 16, seed=3)
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(structure_score(x, iters=40), _svd_reference(x), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(structure_score(torch.zeros(1, 5, 4), init="variance")).all()
    with pytest.raises(ConfigError):
        structure_score(x, init="warm")


# ------------------------------------------------------------------ texture / dc


def _texture_loop(x_BLC, h, w, border):
    B, L, C = x_BLC.shape
    m = x_BLC.double().reshape(B, h, w, C)
    out = torch.zeros(B, h, w, dtype=torch.float64)

    def src(i, n):  # index of the padded neighbour, or None for a zero pad
        if 0 <= i < n:
            return i
        if border == "replicate" or (border == "reflect" and n == 1):
            return min(max(i, 0), n - 1)
        if border == "reflect":
            return 1 if i < 0 else n - 2
        return None

    for b, r, c in itertools.product(range(B), range(h), range(w)):
        acc, cnt = torch.zeros(C, dtype=torch.float64), 0
        for dr, dc in itertools.product((-1, 0, 1), repeat=2):
            rr, cc = src(r + dr, h), src(c + dc, w)
            if rr is None or cc is None:
                cnt += border == "zero_pad"
                continue
            acc += m[b, rr, cc]
            cnt += 1
        out[b, r, c] = ((m[b, r, c] - acc / cnt) ** 2).sum()
    return out.reshape(B, L).float()


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("hw", [(3, 5), (7, 4), (1, 6), (5, 1), (2, 2)])
def test_texture_matches_loop(border, hw):
    h, w = hw
    x = torch.randn(2, h * w, 6, generator=_gen(h * 10 + w))
    got = texture_score(x, h, w, border)
    torch.testing.assert_close(got, _texture_loop(x, h, w, border), rtol=1e-5, atol=1e-5)


def test_texture_rejects_bad_grid_and_mode():
    x = torch.randn(1, 12, 3)
    with pytest.raises(ValueError):
        texture_score(x, 5, 3)
    with pytest.raises(ConfigError):
        texture_score(x, 3, 4, "circular")


def test_dc_score_matches_loop():
    x = torch.randn(3, 10, 5, generator=_gen(4))
    ref = torch.zeros(3, 10)
    for b in range(3):
        mean = sum(x[b, i] for i in range(10)) / 10
        for i in range(10):
            ref[b, i] = sum((x[b, i, c] - mean[c]) ** 2 for c in range(5))
    torch.testing.assert_close(dc_score(x), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ normalisation / joint


@pytest.mark.parametrize("mode", NORMS)
def test_normalize_constant_rows_no_nan(mode):
    s = torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 3.0, 2.0]])
    out = normalize_score(s, mode)
    assert torch.isfinite(out).all()
    if mode in ("minmax", "zscore", "max"):
        assert torch.equal(out[1], torch.zeros(3))
    assert torch.isfinite(normalize_score(torch.ones(1, 1), mode)).all()


def test_normalize_values():
    s = torch.tensor([[1.0, 3.0, 2.0, 3.0]])
    torch.testing.assert_close(normalize_score(s, "max"), s / 3)
    torch.testing.assert_close(normalize_score(s, "minmax"), torch.tensor([[0.0, 1.0, 0.5, 1.0]]))
    z = normalize_score(s, "zscore")
    torch.testing.assert_close(z.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(correction=0), torch.tensor(1.0))
    # ranks 0,2.5,1,2.5 over L-1=3; ties share their average rank
    torch.testing.assert_close(normalize_score(s, "rank"), torch.tensor([[0.0, 2.5 / 3, 1 / 3, 2.5 / 3]]))
    assert torch.equal(normalize_score(torch.full((1, 5), 7.0), "rank"), torch.full((1, 5), 0.5))


def test_joint_score_composition():
    x = torch.randn(2, 20, 8, generator=_gen(5))
    s_str, s_txt = structure_score(x), texture_score(x, 4, 5)
    ref = 2.0 * normalize_score(s_str.square(), "zscore") + normalize_score(s_txt, "zscore")
    got = joint_score(x, 4, 5, w_str=2.0, norm="zscore", structure_power=2)
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------ counts and top-k


def test_keep_count_fastvar_figures():
    assert keep_count(1024, 0.6) == 615  # FastVAR 32x32 at prune 0.4
    assert keep_count(1024, prune_ratio=0.4) == 615
    assert keep_count(1600, 0.5) == 800  # 40x40 at prune 0.5
    assert keep_count(1600, prune_ratio=0.5) == 800
    assert keep_count(10, 0.9) == 9  # 1 - 0.9 = 0.0999..98 must still prune int(10 * 0.1) = 1
    assert keep_count(10, prune_ratio=0.1) == 9
    for L, r in itertools.product((1, 7, 64, 576, 1024, 1600, 2304, 4096), (0.1, 0.25, 0.3, 0.4, 0.5, 0.7, 0.75)):
        assert keep_count(L, prune_ratio=r) == max(1, L - int(L * r))
        assert keep_count(L, round(1 - r, 10)) == max(1, L - int(L * r))


def test_keep_count_round_and_clamp():
    assert keep_count(1024, 0.6, "round") == 614  # 614.4
    assert keep_count(10, 0.45, "round") == 5  # half-up
    assert keep_count(4, 0.01) == 1 and keep_count(4, 0.01, "round") == 1
    assert keep_count(4, 1.0) == 4 and keep_count(4, prune_ratio=0.0) == 4
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError):
            keep_count(10, bad)
    with pytest.raises(ConfigError):
        keep_count(10, 0.5, prune_ratio=0.5)
    with pytest.raises(ConfigError):
        keep_count(10, 0.5, "ceil")


def test_select_topk_ties():
    s = torch.tensor([[1.0, 5.0, 3.0, 5.0, 3.0, 3.0, 0.0], [2.0] * 7])
    assert select_topk(s, 4, "score").tolist() == [[1, 3, 2, 4], [0, 1, 2, 3]]
    assert select_topk(s, 4, "spatial").tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]
    idx = select_topk(s, 3)
    assert idx.dtype == torch.long and torch.equal(idx, select_topk(s.clone(), 3))
    nan = torch.tensor([[float("nan"), 1.0, 2.0]])
    assert select_topk(nan, 2, "score").tolist() == [[2, 1]]
    with pytest.raises(ValueError):
        select_topk(s, 0)


def test_select_topk_matches_sort_on_distinct():
    s = torch.randn(3, 50, generator=_gen(6))
    got = select_topk(s, 20, "score")
    assert torch.equal(got, torch.argsort(s, dim=1, descending=True)[:, :20])
    assert torch.equal(select_topk(s, 20), got.sort(1).values)


# ------------------------------------------------------------------ nearest kept


def _dist(p, q, w, metric):
    dr, dc = abs(p // w - q // w), abs(p % w - q % w)
    return {"euclidean": dr * dr + dc * dc, "chebyshev": max(dr, dc), "manhattan": dr + dc}[metric]


def _nearest_loop(idx_Bl, h, w, metric):
    out = []
    for row in idx_Bl.tolist():
        best = []
        for p in range(h * w):
            j = min(range(len(row)), key=lambda j: (_dist(p, row[j], w, metric), row[j]))
            best.append(j)
        out.append(best)
    return torch.tensor(out)


def _random_rows(B, L, l, seed, shuffle=False):
    g = _gen(seed)
    rows = [torch.randperm(L, generator=g)[:l] for _ in range(B)]
    rows = [r if shuffle else r.sort().values for r in rows]
    return torch.stack(rows)


METRICS = ["euclidean", "chebyshev", "manhattan"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("hw,l", [((5, 9), 7), ((12, 7), 30), ((1, 8), 3), ((9, 1), 2), ((6, 6), 1)])
def test_nearest_kept_matches_loop(metric, hw, l):
    h, w = hw
    for shuffle in (False, True):  # kept lists in spatial and in (arbitrary) score order
        idx = _random_rows(3, h * w, l, seed=h * 100 + w + l, shuffle=shuffle)
        got = nearest_kept(idx, h, w, metric)
        assert got.dtype == torch.long and got.shape == (3, h * w)
        assert torch.equal(got, _nearest_loop(idx, h, w, metric))


def test_nearest_kept_64x64_random_mask():
    h = w = 64
    idx = _random_rows(2, h * w, int(0.4 * h * w), seed=7, shuffle=True)
    got = nearest_kept(idx, h, w)
    # vectorised brute force over all pairs, ties -> lowest kept position
    p = torch.arange(h * w)
    for b in range(2):
        q = idx[b]
        d = (p[:, None] // w - q[None] // w) ** 2 + (p[:, None] % w - q[None] % w) ** 2
        key = d * (h * w) + q[None]
        assert torch.equal(got[b], key.argmin(1))


def test_nearest_kept_identity_and_single():
    h, w = 4, 6
    all_kept = torch.stack([torch.arange(24), torch.randperm(24, generator=_gen(8))])
    got = nearest_kept(all_kept, h, w)
    assert torch.equal(all_kept.gather(1, got), torch.arange(24).expand(2, 24))
    for metric in METRICS:
        single = torch.tensor([[5], [23]])
        assert torch.equal(nearest_kept(single, h, w, metric), torch.zeros(2, 24, dtype=torch.long))


@pytest.mark.parametrize("metric", METRICS)
def test_nearest_kept_adversarial_ties(metric):
    h, w = 5, 5
    # kept at the four neighbours and four diagonals of the centre (2,2), listed in reverse order
    ring = [(1, 2), (3, 2), (2, 1), (2, 3), (1, 1), (1, 3), (3, 1), (3, 3)]
    idx = torch.tensor([sorted((r * w + c for r, c in ring), reverse=True)])
    got = nearest_kept(idx, h, w, metric)
    assert idx[0, got[0, 12]] == 1 * w + (1 if metric == "chebyshev" else 2)
    assert torch.equal(got, _nearest_loop(idx, h, w, metric))
    # two kept tokens symmetric around every position of the middle column
    idx2 = torch.tensor([[4 * w + 4, 0 * w + 0], [2 * w + 4, 2 * w + 0]])
    assert torch.equal(nearest_kept(idx2, h, w, metric), _nearest_loop(idx2, h, w, metric))


def test_nearest_kept_rejects_bad_indices():
    with pytest.raises(ValueError):
        nearest_kept(torch.tensor([[0, 0]]), 2, 2)
    with pytest.raises(ValueError):
        nearest_kept(torch.tensor([[4]]), 2, 2)
    with pytest.raises(ConfigError):
        nearest_kept(torch.tensor([[0]]), 2, 2, "cosine")


def test_nearest_kept_large_grid_chunks():
    h = w = 84
    idx = _random_rows(3, h * w, 3000, seed=9, shuffle=True)
    got = nearest_kept(idx, h, w)
    mask = kept_mask(idx, h * w)
    pos = idx.gather(1, got)
    assert mask.gather(1, pos).all()
    assert torch.equal(pos[mask], torch.arange(h * w).expand(3, -1)[mask])  # kept -> itself
    b, p = 1, 4321  # spot-check one pruned position against all kept
    q = idx[b]
    d = (p // w - q // w) ** 2 + (p % w - q % w) ** 2
    assert pos[b, p] == q[d == d.min()].min()


# ------------------------------------------------------------------ propagate / scatter


def test_propagate_and_scatter():
    B, L, C, l = 2, 12, 3, 4
    idx = _random_rows(B, L, l, seed=10, shuffle=True)
    y = torch.randn(B, l, C, generator=_gen(11))
    nn_ = nearest_kept(idx, 3, 4)
    dense = propagate(y, nn_)
    assert dense.shape == (B, L, C)
    for b, p in itertools.product(range(B), range(L)):
        assert torch.equal(dense[b, p], y[b, nn_[b, p]])
    for b, j in itertools.product(range(B), range(l)):
        assert torch.equal(dense[b, idx[b, j]], y[b, j])  # kept positions keep their own output
    base = torch.zeros(B, L, C, dtype=torch.float64)
    out = scatter_kept(base, idx, y)
    assert out.dtype == torch.float64 and torch.equal(base, torch.zeros_like(base))  # out of place
    assert torch.equal(out.gather(1, idx[..., None].expand(-1, -1, C)), y.double())
    assert int((out.abs().sum(-1) > 0).sum()) == B * l


@pytest.mark.parametrize("metric", METRICS)
def test_nearest_kept_chunked_equals_loop(metric, monkeypatch):
    import stepvar.pruning.propagation as prop

    monkeypatch.setattr(prop, "_CHUNK_ELEMS", 1)  # one grid row per chunk
    idx = _random_rows(2, 12 * 7, 9, seed=12, shuffle=True)
    assert torch.equal(nearest_kept(idx, 12, 7, metric), _nearest_loop(idx, 12, 7, metric))
