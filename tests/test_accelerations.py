"""The accelerations that compose with any method (cfg_drop_from, skip_last) against brute-force references."""

import numpy as np
import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.eval.flops import plan_flops, result_flops, rows_per_scale
from stepvar.models.blocks import KVCache
from stepvar.pruning.accelerations import guided_cfgs
from stepvar.pruning.registry import make_pruner, make_pruner_from_spec, with_accelerations
from stepvar.sampling import SamplingConfig, make_generators, resize_codes, sample_bits
from stepvar.schedules import get_schedule


@pytest.fixture(scope="module")
def sched(tiny_pipe):
    return tiny_pipe.schedule("0.06M")


def _truncated_codes(pipe, bits, n_run, sched):
    """What the VAE should decode when only the first n_run scales run: their codes, each upsampled to the final grid."""
    H, W = sched.last.h, sched.last.w
    total = torch.zeros(bits[0].shape[0], pipe.codec.codebook_dim, H, W)
    for b in bits[:n_run]:
        codes = pipe.codec.bits_to_latent(b)
        total += codes if codes.shape[-2:] == (H, W) else resize_codes(codes, (H, W))
    return total


@pytest.mark.parametrize("method", ["dense", "stepvar", "fastvar-pos"])
@pytest.mark.parametrize("n_skip", [1, 2, 3])
def test_skip_last_decodes_the_full_runs_codes_truncated_and_upsampled(tiny_pipe, sched, method, n_skip):
    sampling = SamplingConfig(seed=4, cfg=3.0)
    full = tiny_pipe.generate("a red circle", sched, make_pruner(method), sampling)
    skipped = tiny_pipe.generate("a red circle", sched, make_pruner(method, skip_last=n_skip), sampling)
    n = len(sched)
    expected = _truncated_codes(tiny_pipe, full.sample.bits, n - n_skip, sched)
    assert torch.equal(skipped.sample.latent_BdHW, expected)
    assert all(b is None for b in skipped.sample.bits[n - n_skip:])
    assert all(torch.equal(a, b) for a, b in zip(skipped.sample.bits[:n - n_skip], full.sample.bits))
    decoded = tiny_pipe.vae.decode(expected)
    assert np.array_equal(skipped.images, ((decoded.clamp(-1, 1) + 1) / 2 * 255).permute(0, 2, 3, 1).to(torch.uint8).numpy())
    assert skipped.sample.counter.per_scale(n - 1) == []


def _cond_row_only_from(pipe, prompt, sched, cfg, seed, k):
    """Brute force: the dense sampling loop written out, with [cond; uncond] rows before scale k and a
    fresh conditional-only computation from k on (its caches sliced to the conditional row by hand)."""
    model, codec = pipe.model, pipe.codec
    text, mask = pipe.text_encoder.encode([prompt], pipe.device)
    text2, mask2 = torch.cat((text, model.uncond_text(mask).to(text)), 0), torch.cat((mask, mask), 0)
    both, alone = model.condition(text2, mask2, sched.budget), model.condition(text, mask, sched.budget)
    gens = make_generators(seed, 1, pipe.device)
    H, W = sched.last.h, sched.last.w
    summed = torch.zeros(1, codec.codebook_dim, H, W)
    caches = [KVCache() for _ in model.blocks]
    x = model.start_tokens(both.cond_BD)
    for si, s in enumerate(sched.scales):
        if si == k:
            for c in (c for c in caches if c.k is not None):
                c.k, c.v = c.k[:1].clone(), c.v[:1].clone()
            x = x[:1]
        cond = both if si < k else alone
        h = model.forward_scale(model.add_level(x, si, (s.h, s.w)), cond, sched.positions(si), caches)
        logits = model.logits(h, cond.cond_BD) / 1.0
        if si < k:
            logits = model.guide(logits[:1], logits[1:], cfg)
        bits = sample_bits(logits, 0.97, gens).view(1, s.h, s.w, -1)
        codes = codec.bits_to_latent(bits)
        summed += codes if codes.shape[-2:] == (H, W) else resize_codes(codes, (H, W))
        if si + 1 < len(sched):
            nxt = sched.scales[si + 1]
            x = model.embed_tokens(codec.latent_to_tokens(resize_codes(summed, (nxt.h, nxt.w))))
            if si + 1 < k:
                x = torch.cat((x, x), 0)
    return summed


@pytest.mark.parametrize("k", [0, 3, 6, -2])
def test_cfg_drop_from_equals_a_loop_that_runs_the_conditional_row_alone(tiny_pipe, sched, k):
    n = len(sched)
    got = tiny_pipe.generate("a red circle", sched, make_pruner("dense", cfg_drop_from=k),
                             SamplingConfig(seed=2, cfg=3.0, tau=1.0), decode=False)
    ref = _cond_row_only_from(tiny_pipe, "a red circle", sched, 3.0, 2, k % n)
    torch.testing.assert_close(got.sample.latent_BdHW, ref, rtol=0, atol=1e-6)
    assert torch.equal(got.sample.latent_BdHW, ref)


def test_cfg_drop_from_is_guidance_one_from_that_scale_on(tiny_pipe, sched):
    """The per-scale guidance list with 1 from K on is the same generation, for a pruned method too."""
    n = len(sched)
    for name in ("stepvar", "stepvar-plus", "fastvar-pos"):
        a = tiny_pipe.generate(["a red circle", "a blue square"], sched, make_pruner(name, cfg_drop_from=4),
                               SamplingConfig(seed=1, cfg=3.0))
        b = tiny_pipe.generate(["a red circle", "a blue square"], sched, make_pruner(name),
                               SamplingConfig(seed=1, cfg=[3.0] * 4 + [1.0] * (n - 4)))
        assert torch.equal(a.sample.latent_BdHW, b.sample.latent_BdHW) and np.array_equal(a.images, b.images), name


def test_flops_count_the_halved_batch_and_the_skipped_scales(tiny_pipe, sched):
    """The planned FLOPs equal the FLOPs counted from the run, and each acceleration lowers them as it should."""
    arch = tiny_pipe.model.cfg
    n = len(sched)
    cfgs = [3.0] * n
    base = plan_flops(arch, sched, make_pruner("stepvar"), rows_per_scale(cfgs, 1), 8, 1)
    for spec in ("stepvar:cfg_drop_from=4", "stepvar:skip_last=1", "stepvar-plus:cfg_drop_from=-3:skip_last=1"):
        pruner = make_pruner_from_spec(spec)
        plan = pruner.resolved_plan(sched, arch.depth)
        planned = plan_flops(arch, sched, pruner, rows_per_scale(guided_cfgs(cfgs, plan), 1), 8, 1)
        r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=0, cfg=3.0), decode=False)
        text_len = tiny_pipe.text_encoder.encode(["a red circle"], tiny_pipe.device)[0].shape[1]
        counted = result_flops(arch, r.sample, sched, guided_cfgs(cfgs, pruner.active_plan), 1, text_len)
        assert counted.per_scale == plan_flops(arch, sched, pruner, rows_per_scale(guided_cfgs(cfgs, plan), 1),
                                               text_len, 1).per_scale
        assert planned.total < base.total, spec
    dropped = make_pruner("dense", cfg_drop_from=4)
    full = plan_flops(arch, sched, make_pruner("dense"), rows_per_scale(cfgs, 1), 8, 1)
    half = plan_flops(arch, sched, dropped, rows_per_scale(guided_cfgs(cfgs, dropped.resolved_plan(sched, 4)), 1), 8, 1)
    assert half.per_scale[:4] == full.per_scale[:4]
    blocks = [full.per_scale[si] - half.per_scale[si] for si in range(4, n)]
    assert all(b > 0 for b in blocks)


def test_release_skip_and_skip_last_two_agree_at_1024_only():
    """fastvar-skip is fastvar with skip_last=2: the release's width skip at 1024 1:1, not elsewhere."""
    for budget, same in (("1M", True), ("0.60M", False), ("0.25M", False)):
        s = get_schedule(budget, 1.0)
        a = make_pruner("fastvar-skip").resolved_plan(s, 32)
        b = make_pruner("fastvar-release-skip").resolved_plan(s, 32)
        assert (a.counts() == b.counts() and a.skipped == b.skipped) is same, budget
        assert a.skipped == frozenset({len(s) - 2, len(s) - 1})


@pytest.mark.parametrize("spec, message", [
    ("dense:skip_last=7", "leaves no scale to run"),
    ("stepvar:skip_last=-1", "non-negative"),
    ("stepvar:cfg_drop_from=7", "past the last scale"),
    ("stepvar:cfg_drop_from=6:skip_last=1", "past the last scale that runs, 5"),
    ("fastvar:cfg_drop_from=-8", "before the first scale"),
    ("fastvar:cfg_drop_from=1.5", "scale index"),
    ("stepvar:skip_last=true", "non-negative"),
])
def test_bad_settings_are_refused_before_anything_runs(sched, spec, message):
    with pytest.raises(ConfigError, match=message):
        make_pruner_from_spec(spec).validate(sched, 4)


def test_records_and_labels_say_what_ran(tiny_pipe, sched):
    pruner = make_pruner_from_spec("stepvar-plus:cfg_drop_from=-3:skip_last=1")
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=0), decode=False)
    rec = r.record["pruning"]
    assert rec["method"] == "stepvar-plus:cfg_drop_from=-3:skip_last=1"
    assert rec["cfg_drop_from"] == -3 and rec["skip_last"] == 1
    assert rec["resolved"]["cfg_drop_from"] == 4 and rec["resolved"]["skip"] == [6] and rec["resolved"]["skip_last"] == 1
    plain = tiny_pipe.generate("a red circle", sched, make_pruner("stepvar-plus"), SamplingConfig(seed=0), decode=False)
    assert "cfg_drop_from" not in str(plain.record) and "skip_last" not in str(plain.record)  # defaults record as before
    assert with_accelerations("fastvar@0.4", 10, 1) == "fastvar:cfg_drop_from=10:skip_last=1@0.4"
    assert with_accelerations("stepvar:skip_last=2", None, 1) == "stepvar:skip_last=2"  # the variant's own setting wins
    assert with_accelerations("dense", None, 0) == "dense"


def test_a_skip_that_removes_every_pruned_scale_is_said_not_hidden(tiny_pipe, sched):
    # stepvar-plus prunes only the last grid: skip_last=1 removes it, and the method runs as dense with the skip
    pruner = make_pruner_from_spec("stepvar-plus:skip_last=1")
    notes = pruner.validate(sched, 4)
    assert len(notes) == 1 and "prunes nothing here" in notes[0] and "(6)" in notes[0]
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=0), decode=False)
    assert r.record["pruning"]["resolved"]["note"] == notes[0]
    dense = tiny_pipe.generate("a red circle", sched, make_pruner_from_spec("dense:skip_last=1"), SamplingConfig(seed=0),
                               decode=False)
    assert torch.equal(r.sample.latent_BdHW, dense.sample.latent_BdHW)
    # a method that still prunes a scale that runs says nothing; neither does a plain skip of dense
    assert make_pruner_from_spec("stepvar:skip_last=1").validate(sched, 4) == []
    assert make_pruner_from_spec("dense:skip_last=2").validate(sched, 4) == []
    assert make_pruner_from_spec("stepvar-plus").validate(sched, 4) == []
