"""StepVAR's restoration rules against brute-force references written out per token, and inside generations."""

import math

import numpy as np
import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.models.blocks import ada_ln
from stepvar.pruning import restoration as R
from stepvar.pruning.registry import make_pruner
from stepvar.sampling import SamplingConfig

RULES = list(R.RESTORES)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _kept(B, h, w, l, seed):
    g = _gen(seed)
    return torch.stack([torch.randperm(h * w, generator=g)[:l] for _ in range(B)])  # score order, not spatial


# ------------------------------------------------------------------ brute-force references


def ref_area_resize(y_BLC, src, dst):
    """Each output cell averages the input cells in [floor(i*H/h), ceil((i+1)*H/h)) on both axes."""
    (H, W), (h, w) = src, dst
    y = y_BLC.double().view(y_BLC.shape[0], H, W, -1)
    out = torch.zeros(y.shape[0], h, w, y.shape[-1], dtype=torch.float64)
    for i in range(h):
        r0, r1 = math.floor(i * H / h), math.ceil((i + 1) * H / h)
        for j in range(w):
            c0, c1 = math.floor(j * W / w), math.ceil((j + 1) * W / w)
            out[:, i, j] = y[:, r0:r1, c0:c1].mean(dim=(1, 2))
    return out.view(y.shape[0], h * w, -1)


def ref_neighbours(idx_row, h, w, p):
    """Kept positions of one row sorted by (squared distance to p, row-major position): [(d2, slot)]."""
    pr, pc = divmod(p, w)
    cand = []
    for slot, q in enumerate(idx_row.tolist()):
        qr, qc = divmod(q, w)
        cand.append(((pr - qr) ** 2 + (pc - qc) ** 2, q, slot))
    return [(d2, slot) for d2, _q, slot in sorted(cand)]


def ref_update(rule, delta_BlC, idx_Bl, h, w, base_BLC=None, k=4, power=2.0):
    """The restored dense update, one position at a time."""
    B, l, C = delta_BlC.shape
    d = delta_BlC.double()
    out = torch.zeros(B, h * w, C, dtype=torch.float64)
    for b in range(B):
        kept = {q: s for s, q in enumerate(idx_Bl[b].tolist())}
        for p in range(h * w):
            if p in kept:
                out[b, p] = d[b, kept[p]]
                continue
            nbrs = ref_neighbours(idx_Bl[b], h, w, p)
            if rule.startswith("cached"):
                base = base_BLC[b].double()
                corr = {s: d[b, s] - base[idx_Bl[b, s]] for _d2, s in nbrs}
                src, value = corr, base[p].clone()
            else:
                src, value = {s: d[b, s] for _d2, s in nbrs}, torch.zeros(C, dtype=torch.float64)
            if rule == "cached":
                out[b, p] = value
            elif rule.endswith("nearest"):
                out[b, p] = value + src[nbrs[0][1]]
            else:
                near = nbrs[:k]
                wts = [d2 ** (-power / 2) for d2, _s in near]
                out[b, p] = value + sum(wt * src[s] for wt, (_d2, s) in zip(wts, near)) / sum(wts)
    return out.float()


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("src,dst", [((6, 6), (8, 8)), ((8, 8), (12, 12)), ((12, 12), (16, 16)), ((4, 6), (9, 7)),
                                     ((12, 16), (8, 10))])
def test_area_resize_matches_per_cell_average(src, dst):
    y = torch.randn(2, src[0] * src[1], 5, generator=_gen(1))
    torch.testing.assert_close(R.area_resize(y, src, dst), ref_area_resize(y, src, dst).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h,w,l,k", [(8, 8, 20, 4), (12, 12, 58, 1), (5, 9, 7, 3), (6, 6, 2, 4), (16, 16, 102, 6)])
def test_k_nearest_kept_matches_sorted_distances(h, w, l, k):
    idx = _kept(2, h, w, l, seed=h * w + l)
    slot, d2 = R.k_nearest_kept(idx, h, w, k)
    kk = min(k, l)
    assert slot.shape == d2.shape == (2, h * w, kk)
    for b in range(2):
        for p in range(h * w):
            want = ref_neighbours(idx[b], h, w, p)[:kk]
            assert slot[b, p].tolist() == [s for _d, s in want]
            assert d2[b, p].tolist() == [d for d, _s in want]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("h,w,l", [(8, 8, 26), (12, 12, 58), (6, 10, 13)])
def test_every_rule_matches_its_per_token_reference(rule, h, w, l):
    B, C = 2, 6
    idx = _kept(B, h, w, l, seed=l)
    delta = torch.randn(B, l, C, generator=_gen(2))
    prev_grid = (max(1, h * 2 // 3), max(1, w * 2 // 3))
    prev = torch.randn(B + 1, prev_grid[0] * prev_grid[1], C, generator=_gen(3))  # one extra row: dropped CFG rows
    rest = R.Restoration(rule, neighbours=3, power=1.5)
    rest.record(prev_grid, [prev])
    got = rest.for_scale(idx, h, w).update(delta)
    base = ref_area_resize(prev[:B], prev_grid, (h, w)).float()
    want = ref_update(rule, delta, idx, h, w, base, k=3, power=1.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(R.gather_rows(got, idx), delta, rtol=0, atol=0)  # kept positions: exactly their own


@pytest.mark.parametrize("narrow,wide", [("cached", "nearest"), ("nearest", "cached_idw"), ("idw", "cached_nearest")])
def test_rule_by_grid_width_is_restore_below_wide_from_and_restore_wide_from_it(narrow, wide):
    """Each grid gets exactly one rule's per-token reference: restore below wide_from tokens a side, restore_wide from it."""
    B, C = 2, 5
    prev_grid = (8, 8)
    prev = torch.randn(B, 64, C, generator=_gen(6))
    rest = R.Restoration(narrow, neighbours=3, power=1.5, restore_wide=wide, wide_from=12)
    for (h, w), rule in (((10, 10), narrow), ((11, 12), wide), ((12, 9), wide), ((6, 11), narrow)):
        idx = _kept(B, h, w, (h * w) // 3, seed=h * w)
        delta = torch.randn(B, idx.shape[1], C, generator=_gen(h + w))
        rest.record(prev_grid, [prev])
        got = rest.for_scale(idx, h, w).update(delta)
        assert rest.rule_for(h, w) == rule
        want = ref_update(rule, delta, idx, h, w, ref_area_resize(prev, prev_grid, (h, w)).float(), k=3, power=1.5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rule_by_width_equals_the_single_rule_its_grids_use_and_records_only_when_read(tiny_pipe):
    """On the 0.25M schedule (pruned grids 24 and 32 a side) cached-below-20/nearest-from-20 is plain nearest,
    bit for bit, and records no update map; with wide_from 40 it is plain cached."""
    sched, sampling = tiny_pipe.schedule("0.25M"), SamplingConfig(seed=5)

    def run(**kw):
        pr = make_pruner("stepvar", keep=0.4, scales=[-2, -1], **kw)
        return pr, tiny_pipe.generate("a red circle", sched, pr, sampling).sample.latent_BdHW

    _, nearest = run(restore="nearest")
    _, cached = run(restore="cached")
    pr, both = run(restore="cached", restore_wide="nearest", wide_from=20)
    assert torch.equal(both, nearest) and pr.restoration.record_maps is None
    pr, both = run(restore="cached", restore_wide="nearest", wide_from=40)
    assert torch.equal(both, cached) and pr.restoration.record_maps is not None
    pr, mixed = run(restore="cached", restore_wide="nearest", wide_from=32)  # 24: cached, 32: nearest
    assert not torch.equal(mixed, nearest) and not torch.equal(mixed, cached)


def test_nearest_rule_is_the_existing_propagation():
    from stepvar.pruning.propagation import nearest_kept, propagate

    idx = _kept(2, 12, 12, 40, seed=9)
    delta = torch.randn(2, 40, 8, generator=_gen(4))
    got = R.Restoration("nearest").for_scale(idx, 12, 12).update(delta)
    assert torch.equal(got, propagate(delta, nearest_kept(idx, 12, 12)))


def test_pruned_positions_are_the_complement():
    idx = _kept(3, 7, 5, 11, seed=3)
    pr = R.pruned_positions(idx, 35)
    for b in range(3):
        assert pr[b].tolist() == sorted(set(range(35)) - set(idx[b].tolist()))


def test_kv_projection_equals_the_keys_and_values_of_qkv(tiny_pipe):
    sa = tiny_pipe.model.blocks[0].sa
    x = torch.randn(2, 9, tiny_pipe.model.cfg.width, generator=_gen(5))
    cos, sin = tiny_pipe.model.rope.gather(torch.tensor([[r, c] for r in range(3) for c in range(3)]))
    _q, k_ref, v_ref = sa.qkv(x, cos, sin)
    k, v = sa.kv(x, cos, sin)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ inside generations


@pytest.fixture(scope="module")
def dense_run(tiny_pipe):
    return tiny_pipe.generate("a red circle", tiny_pipe.schedule("0.25M"), sampling=SamplingConfig(seed=5))


@pytest.mark.parametrize("kv", ["kept", "restored"])
@pytest.mark.parametrize("rule", RULES)
def test_keep_one_reproduces_dense_exactly_for_every_rule(tiny_pipe, dense_run, rule, kv):
    for wide in (None, "cached" if rule == "nearest" else "nearest"):
        pr = make_pruner("stepvar", keep=1.0, restore=rule, kv=kv, restore_wide=wide, wide_from=20)
        r = tiny_pipe.generate("a red circle", tiny_pipe.schedule("0.25M"), pr, SamplingConfig(seed=5))
        assert np.array_equal(r.images, dense_run.images)
        assert torch.equal(r.sample.latent_BdHW, dense_run.sample.latent_BdHW)


@pytest.mark.parametrize("rule,kv,cache_from,prefix,wide", [
    ("nearest", "restored", "previous", 0, None), ("cached", "kept", "previous", 0, None), ("cached", "kept", "dense", 0, None),
    ("cached_nearest", "restored", "previous", 0, None), ("idw", "kept", "previous", 0, None),
    ("cached_idw", "restored", "dense", 1, None), ("cached_nearest", "kept", "previous", 1, None),
    ("cached", "kept", "previous", 0, "nearest"), ("nearest", "restored", "previous", 0, "cached_idw")])
def test_generation_with_per_token_restoration_matches_the_engine(tiny_pipe, monkeypatch, rule, kv, cache_from, prefix, wide):
    """The whole pruned generation again, with every restored update and every filled key/value computed per token."""
    sched = tiny_pipe.schedule("0.06M")
    sampling = SamplingConfig(seed=3)

    def make():
        return make_pruner("stepvar", keep=0.4, restore=rule, kv=kv, cache_from=cache_from, neighbours=3,
                           dense_prefix=prefix, dense_suffix=prefix, restore_wide=wide, wide_from=12)

    fast = tiny_pipe.generate("x", sched, make(), sampling, decode=False, keep_hidden=True)

    def slow_update(self, delta_BlC, step=None):
        maps = self.owner.record_maps
        base = None
        if self.rule.startswith("cached"):
            src = maps[-1] if step is None else maps[step]
            base = ref_area_resize(src[: delta_BlC.shape[0]], self.owner.record_grid, (self.h, self.w)).float()
        assert self.rule == self.owner.rule_for(self.h, self.w)
        return ref_update(self.rule, delta_BlC, self.idx_Bl, self.h, self.w, base, k=3)

    def slow_fill(run, layer, x_start_BLC, update_BLC, pruned_Bp):
        blk, mod = run.model.blocks[layer], run.cond.mods[layer]
        ks, vs = [], []
        for b in range(pruned_Bp.shape[0]):
            kb, vb = [], []
            for p in pruned_Bp[b].tolist():
                state = (x_start_BLC[b, p] + update_BLC[b, p])[None, None]
                cos, sin = run.rope(run.pos_L2[p:p + 1])
                row = torch.tensor([b])
                _q, k1, v1 = blk.sa.qkv(ada_ln(state, mod.scale1[row], mod.shift1[row]), cos, sin)
                kb.append(k1)
                vb.append(v1)
            ks.append(torch.cat(kb, 2))
            vs.append(torch.cat(vb, 2))
        run.caches[layer].extend(torch.cat(ks, 0), torch.cat(vs, 0))
        run.count(layer, "kv", pruned_Bp.shape[1])

    monkeypatch.setattr(R.ScaleRestorer, "update", slow_update)
    monkeypatch.setattr("stepvar.pruning.stepvar.fill_pruned_kv", slow_fill)
    slow = tiny_pipe.generate("x", sched, make(), sampling, decode=False, keep_hidden=True)
    for a, b in zip(fast.sample.hidden, slow.sample.hidden):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)
    assert fast.sample.kv_cache_bytes == slow.sample.kv_cache_bytes


def test_rules_change_the_output_and_kv_fill_completes_the_cache(tiny_pipe, dense_run):
    sched = tiny_pipe.schedule("0.25M")
    outs = {}
    for rule in RULES:
        r = tiny_pipe.generate("a red circle", sched, make_pruner("stepvar", keep=0.4, restore=rule), SamplingConfig(seed=5))
        outs[rule] = r.sample.latent_BdHW
    assert all(not torch.equal(outs[a], outs[b]) for a in RULES for b in RULES if a < b)
    r = tiny_pipe.generate("a red circle", sched, make_pruner("stepvar", keep=0.4, kv="restored"), SamplingConfig(seed=5))
    assert r.sample.kv_cache_bytes == dense_run.sample.kv_cache_bytes  # every position's keys, as dense
    assert r.sample.counter.per_scale(9, "kv") == [1024 - round(1024 * 0.4)] * len(tiny_pipe.model.blocks)


@pytest.mark.parametrize("bad", [dict(restore="bogus"), dict(kv="all"), dict(cache_from="later"), dict(neighbours=0),
                                 dict(restore="cached", selection="block"), dict(kv="restored", propagate="hidden"),
                                 dict(restore="cached", first_scale=0), dict(restore_wide="bogus"), dict(wide_from=0),
                                 dict(restore_wide="cached", selection="block"), dict(restore_wide="cached", wide_from=1, first_scale=0)])
def test_bad_restoration_settings_are_config_errors(tiny_pipe, bad):
    with pytest.raises(ConfigError):
        make_pruner("stepvar", keep=0.5, **bad).validate(tiny_pipe.schedule("0.06M"), len(tiny_pipe.model.blocks))


def test_kv_fill_flops_are_counted_planned_and_match_torch(tiny_pipe):
    """Filled keys/values cost 2nC*2C each and lengthen the attention: planned == counted, and the extra
    FLOPs over plain StepVAR equal torch's (whose totals also hold the selection score's matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from stepvar.eval.flops import plan_flops, result_flops, rows_per_scale

    sched, prompts = tiny_pipe.schedule("0.06M"), ["a red circle"]
    sampling = SamplingConfig(seed=0)
    text_len = tiny_pipe.text_encoder.encode(prompts, tiny_pipe.device)[0].shape[1]
    cfg_scales = sampling.per_scale("cfg", len(sched))
    ours, torch_total = {}, {}
    for kv in ("kept", "restored"):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            result = tiny_pipe.generate(prompts, sched, make_pruner("stepvar", keep=0.4, kv=kv), sampling, decode=False)
        torch_total[kv] = counter.get_total_flops()
        ours[kv] = result_flops(tiny_pipe.model.cfg, result.sample, sched, cfg_scales, 1, text_len)
        planned = plan_flops(tiny_pipe.model.cfg, sched, make_pruner("stepvar", keep=0.4, kv=kv),
                             rows_per_scale(cfg_scales, 1), text_len, 1)
        assert planned == ours[kv]
    assert ours["restored"].total - ours["kept"].total == torch_total["restored"] - torch_total["kept"] > 0
    assert ours["restored"].by_part["ffn"] == ours["kept"].by_part["ffn"]


def test_a_scale_choice_given_replaces_the_presets(tiny_pipe):
    sched = tiny_pipe.schedule("0.25M")  # 10 scales
    assert make_pruner("stepvar-plus").pruned_scales(sched) == [9]
    assert make_pruner("stepvar-plus", scales=[-2, -1]).pruned_scales(sched) == [8, 9]
    assert make_pruner("stepvar-plus", first_scale=6).pruned_scales(sched) == [6, 7, 8, 9]
    assert make_pruner("stepvar-plus", scales=[-3, -1]).pruned_scales(sched) == [7, 9]
    with pytest.raises(ConfigError):
        make_pruner("stepvar-plus", scales=[9], first_scale=6).pruned_scales(sched)


@pytest.mark.parametrize("rule", ["nearest", "cached_idw"])
def test_kv_fill_tokens_equal_the_plan(tiny_pipe, rule):
    sched = tiny_pipe.schedule("0.06M")
    pruner = make_pruner("stepvar", keep=0.4, restore=rule, kv="restored", dense_prefix=1)
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=1))
    plan = pruner.plan(sched, len(tiny_pipe.model.blocks))
    assert dict(r.sample.counter.counts) == plan.counts()
    assert any(branch == "kv" for (_si, _layer, branch) in plan.counts())
