"""The pruning engine inside real generations (tiny random model, CPU)."""

import numpy as np
import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.pruning.registry import list_methods, make_pruner
from stepvar.sampling import SamplingConfig
from stepvar.schedules import get_schedule

KEEP_METHODS = ["stepvar", "stepvar-plus", "fastvar", "random", "texture-only", "structure-only"]


@pytest.fixture(scope="module")
def dense_512(tiny_pipe):
    return tiny_pipe.generate("a red circle", tiny_pipe.schedule("0.25M"), sampling=SamplingConfig(seed=5))


@pytest.mark.parametrize("method", KEEP_METHODS + ["dense"])
def test_keep_one_reproduces_dense_exactly(tiny_pipe, dense_512, method):
    r = tiny_pipe.generate("a red circle", tiny_pipe.schedule("0.25M"), make_pruner(method, keep=1.0), SamplingConfig(seed=5))
    assert np.array_equal(r.images, dense_512.images)
    assert torch.equal(r.sample.latent_BdHW, dense_512.sample.latent_BdHW)


@pytest.mark.parametrize("selection", ["block", "sublayer"])
def test_keep_one_reproduces_dense_for_reselecting_variants(tiny_pipe, dense_512, selection):
    pr = make_pruner("stepvar", keep=1.0, selection=selection)
    r = tiny_pipe.generate("a red circle", tiny_pipe.schedule("0.25M"), pr, SamplingConfig(seed=5))
    assert np.array_equal(r.images, dense_512.images)


def test_token_counts_equal_the_budget(tiny_pipe):
    sched = tiny_pipe.schedule("0.25M")  # grids 1..32; pruned by default: 16, 20, 24, 32
    pr = make_pruner("stepvar", keep=0.4)
    r = tiny_pipe.generate("x", sched, pr, SamplingConfig(seed=1))
    assert pr.pruned_scales(sched) == [6, 7, 8, 9]
    depth = len(tiny_pipe.model.blocks)
    for si, s in enumerate(sched.scales):
        want = round(s.n * 0.4) if si >= 6 else s.n
        for branch in ("sa", "ca", "ffn"):
            assert r.sample.counter.per_scale(si, branch) == [want] * depth, (si, branch)
    # the KV cache holds exactly the processed tokens of every scale (2 CFG rows)
    kept_total = sum(round(s.n * 0.4) if si >= 6 else s.n for si, s in enumerate(sched.scales))
    m = tiny_pipe.model.cfg
    assert r.sample.kv_cache_bytes == depth * 2 * 2 * kept_total * m.width * 4


def test_fastvar_release_counts_at_1024():
    """The release rule at 1024 1:1: 32x32 keeps 615, 40x40 keeps 800, layers 3-27 of 32."""
    from stepvar.pruning.fastvar import FastVAR

    sched = get_schedule("1M", 1.0)
    fv = make_pruner("fastvar")
    fv.begin(sched, 32)
    assert fv.active_plan.keep == {9: 0.6, 10: 0.5}
    assert fv.active_plan.layers == (3, 28)
    assert fv.cache_si == 8 and not fv.skips(11)
    from stepvar.pruning.scores import keep_count

    assert keep_count(1024, 0.6, rounding="fastvar") == 615
    assert keep_count(1600, 0.5, rounding="fastvar") == 800
    for name in ("fastvar-skip", "fastvar-release-skip"):  # at 1024 1:1 skipping by width = skipping the last two
        skip = make_pruner(name)
        skip.begin(sched, 32)
        assert skip.skips(11) and skip.skips(12) and not skip.skips(10)
        assert skip.active_plan.keep == fv.active_plan.keep and skip.cache_si == 8
        assert isinstance(skip, FastVAR)


@pytest.mark.parametrize("budget, pruned, skipped, cache", [
    ("0.06M", {}, [], None),                      # widths up to 16: the release prunes nothing
    ("0.25M", {9: 0.6}, [], 8),                   # 32x32 is the last scale: pruned, not skipped
    ("0.60M", {9: 0.6, 10: 0.5}, [11], 8),        # 48x48 is the last scale: skipped
    ("1M", {9: 0.6, 10: 0.5}, [11, 12], 8),
])
def test_fastvar_follows_the_release_width_rule_at_every_budget(budget, pruned, skipped, cache):
    sched = get_schedule(budget, 1.0)
    for name, skips in (("fastvar", []), ("fastvar-release-skip", skipped)):
        fv = make_pruner(name)
        fv.begin(sched, 32)
        assert fv.active_plan.keep == pruned and sorted(fv.active_plan.skipped) == skips and fv.cache_si == cache, name


@pytest.mark.parametrize("depth, layers", [(4, (3, 4)), (12, (3, 12)), (16, (3, 16)), (32, (3, 28)), (40, (3, 28)),
                                           (3, (3, 3))])
def test_fastvar_pruned_layers_are_the_release_absolute_indices(depth, layers):
    """The release tests `layer_idx in range(3, 28)` whatever the depth: a 12-layer model prunes 3-11."""
    fv = make_pruner("fastvar")
    fv.begin(get_schedule("1M", 1.0), depth)
    assert fv.active_plan.layers == layers


def test_fastvar_on_a_schedule_the_release_does_not_prune(tiny_pipe):
    """At 256 px no grid is 32 or 40 wide: fastvar is dense bit for bit; a keep ratio for it is refused."""
    sched = tiny_pipe.schedule("0.06M")
    dense = tiny_pipe.generate("a", sched, make_pruner("dense"), SamplingConfig(seed=3))
    fv = make_pruner("fastvar")
    r = tiny_pipe.generate("a", sched, fv, SamplingConfig(seed=3))
    assert np.array_equal(r.images, dense.images)
    assert "selects no scale" in fv.config_dict()["resolved"]["notes"][0]
    with pytest.raises(ConfigError, match="fastvar-pos"):
        make_pruner("fastvar", keep=0.4).validate(sched, 4)
    pos = make_pruner("fastvar-pos")  # the position rule: scales 4-6 at keep 0.6
    pos.begin(sched, 6)
    assert pos.active_plan.keep == {4: 0.6, 5: 0.6, 6: 0.6} and pos.cache_si == 3
    assert pos.active_plan.layers == (1, 5)


def test_fastvar_release_skip_leaves_the_48_wide_scale_empty(tiny_pipe):
    sched = tiny_pipe.schedule("0.60M")
    r = tiny_pipe.generate("x", sched, make_pruner("fastvar-release-skip"), SamplingConfig(seed=1), decode=False)
    assert r.sample.bits[-1] is None and r.sample.bits[-2] is not None
    assert r.sample.counter.per_scale(11) == [] and r.sample.counter.per_scale(10) == [1600, 1600, 1600, 800]


@pytest.mark.parametrize("template", [0.75, 2.0, 0.333])
def test_non_square_templates_batch_and_cfg(tiny_pipe, template):
    sched = get_schedule("0.25M", template)
    for cfg in (1.0, 3.0):
        for method in ("stepvar", "fastvar-pos", "random"):  # the release rule prunes nothing at 0.25M here
            r = tiny_pipe.generate(["a", "b"], sched, make_pruner(method, keep=0.5), SamplingConfig(seed=2, cfg=cfg),
                                   decode=False)
            assert r.sample.latent_BdHW.shape == (2, 8, sched.last.h, sched.last.w)
            assert all(b is not None and b.shape[:3] == (2, s.h, s.w) for b, s in zip(r.sample.bits, sched.scales))


def test_2048_extension_runs_pruned(tiny_pipe):
    sched = get_schedule("2K", 1.0)
    pr = make_pruner("stepvar", keep=0.3)
    r = tiny_pipe.generate("x", sched, pr, SamplingConfig(seed=0, cfg=1.0), decode=False)
    assert r.sample.bits[-1].shape == (1, 84, 84, 8)
    assert r.sample.counter.per_scale(13)[0] == round(84 * 84 * 0.3)


def test_shared_cfg_rows_select_the_same_tokens(tiny_pipe):
    pr = make_pruner("stepvar", keep=0.5, cfg_rows="shared")
    x = torch.randn(4, 64, 16)
    idx = pr.select(x, 8, 8, 32, cfg_pairs=True)
    assert torch.equal(idx[:2], idx[2:])


@pytest.mark.parametrize("bad", [
    dict(keep=0.0), dict(keep=1.5), dict(keep=-0.1), dict(keep=0.4, scales=[99]), dict(keep=0.4, first_scale=42),
])
def test_bad_configuration(tiny_pipe, bad):
    sched = tiny_pipe.schedule("0.25M")
    with pytest.raises(ConfigError):
        pr = make_pruner("stepvar", **bad)
        pr.validate(sched, 4)


def test_unknown_method_and_setting():
    with pytest.raises(ConfigError):
        make_pruner("nope")
    with pytest.raises(ConfigError):
        make_pruner("stepvar", banana=1)
    with pytest.raises(ConfigError):
        make_pruner("stepvar", selection="everywhere")


def test_every_method_preset_builds():
    assert {"dense", "stepvar", "fastvar", "fastvar-skip", "random", "texture-only", "structure-only"} <= set(list_methods())
    for m in list_methods():
        make_pruner(m)


def test_method_variant_specs():
    from stepvar.pruning.registry import make_pruner_from_spec, split_method_list

    assert split_method_list("dense, stepvar:scales=[5,6]:norm=rank,fastvar") == [
        "dense", "stepvar:scales=[5,6]:norm=rank", "fastvar"]
    assert split_method_list("dense,stepvar:keep={-2: 0.6, -1: 0.4},fastvar") == [
        "dense", "stepvar:keep={-2: 0.6, -1: 0.4}", "fastvar"]
    p = make_pruner_from_spec("stepvar:norm=rank:w_str=2", keep=0.3)
    assert (p.config.norm, p.config.w_str, p.config.keep) == ("rank", 2, 0.3)
    assert make_pruner_from_spec("stepvar:keep=0.5", keep=0.3).config.keep == 0.5
    for bad in ("stepvar:norm", "nope:x=1", "stepvar:colour=red"):
        with pytest.raises(ConfigError):
            make_pruner_from_spec(bad)


@pytest.mark.parametrize("method", ["fastvar", "stepvar", "fastvar-skip"])
def test_methods_survive_dropping_the_unconditional_rows(tiny_pipe, method):
    sched = tiny_pipe.schedule("0.25M")
    n = len(sched)
    sampling = SamplingConfig(seed=1, cfg=[3.0] * (n - 2) + [1.0, 1.0])
    r = tiny_pipe.generate(["a", "b"], sched, make_pruner(method, keep=0.5), sampling, decode=False)
    assert r.sample.latent_BdHW.shape[0] == 2


def test_fastvar_dense_layers_path(tiny_pipe, dense_512):
    sched = tiny_pipe.schedule("0.25M")
    exact = make_pruner("fastvar", keep=1.0, dense_prefix=1, dense_suffix=1)
    r = tiny_pipe.generate("a red circle", sched, exact, SamplingConfig(seed=5))
    assert np.array_equal(r.images, dense_512.images)
    pr = make_pruner("fastvar", keep=0.5, dense_prefix=1, dense_suffix=1)
    r = tiny_pipe.generate("a red circle", sched, pr, SamplingConfig(seed=5))
    counts = r.sample.counter.per_scale(9)
    assert counts == [1024, 512, 512, 1024]


def test_shared_selection_only_pairs_cfg_rows():
    pr = make_pruner("stepvar", keep=0.5, cfg_rows="shared")
    x = torch.randn(4, 64, 16)
    assert torch.equal(pr.select(x, 8, 8, 32, cfg_pairs=True)[:2], pr.select(x, 8, 8, 32, cfg_pairs=True)[2:])
    assert not torch.equal(pr.select(x, 8, 8, 32, cfg_pairs=False)[:2], pr.select(x, 8, 8, 32, cfg_pairs=False)[2:])


def test_residual_propagation_equals_per_block_propagation_with_a_fixed_selection(tiny_pipe, monkeypatch):
    """propagate=residual (one propagation per scale) == per-block update propagation, same subset."""
    from stepvar.pruning.stepvar import StepVAR

    def every_other(self, x_BLC, h, w, k, cfg_pairs=False, *video_args):
        B, L, _ = x_BLC.shape
        return torch.arange(0, L, 2).repeat(B, 1)[:, :k]

    monkeypatch.setattr(StepVAR, "select", every_other)
    sched = tiny_pipe.schedule("0.25M")
    res = tiny_pipe.generate("x", sched, make_pruner("stepvar", keep=0.5, propagate="residual"), SamplingConfig(seed=2),
                             decode=False, keep_hidden=True)
    blk = tiny_pipe.generate("x", sched, make_pruner("stepvar", keep=0.5, selection="block"), SamplingConfig(seed=2),
                             decode=False, keep_hidden=True)
    for a, b in zip(res.sample.hidden, blk.sample.hidden):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("template", [1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333])
def test_every_aspect_template_prunes_to_budget(tiny_pipe, template):
    sched = get_schedule("0.06M", template)
    pr = make_pruner("stepvar", keep=0.5)
    r = tiny_pipe.generate("x", sched, pr, SamplingConfig(seed=0, cfg=1.0), decode=False)
    for si in pr.pruned_scales(sched):
        assert r.sample.counter.per_scale(si)[0] == round(sched.scales[si].n * 0.5)
    assert r.sample.bits[-1].shape[1:3] == (sched.last.h, sched.last.w)


def test_fastvar_release_rule_on_aspect_templates_is_completed_and_said():
    """Where the release cannot run, the plan is defined and the output says what ran instead."""
    skip = make_pruner("fastvar-release-skip")
    skip.begin(get_schedule("1M", 0.75), 32)  # the 36x48 scale 10 is 48 wide, and not the last
    assert skip.active_plan.keep == {} and sorted(skip.active_plan.skipped) == [10] and skip.cache_si is None
    assert "skipped before the end" in skip.config_dict()["resolved"]["notes"][0]
    fv = make_pruner("fastvar")
    fv.begin(get_schedule("1M", 1.5), 32)  # 48x32 is pruned, but no scale has 576 tokens
    assert fv.active_plan.keep == {10: 0.6} and fv.cache_si == 9
    assert "no 576-token scale" in fv.config_dict()["resolved"]["notes"][0]
    fv.begin(get_schedule("1M", 1.0), 32)
    assert fv.config_dict()["resolved"]["notes"] == []


def test_a_per_scale_keep_variant_counts_negative_scales_from_the_end(tiny_pipe):
    from stepvar.pruning.registry import make_pruner_from_spec

    sched = tiny_pipe.schedule("0.25M")  # 10 scales
    by_end = make_pruner_from_spec("stepvar-plus:keep={-3: 0.55, -2: 0.75}").resolved_plan(sched, 4)
    by_index = make_pruner_from_spec("stepvar-plus:scales=[7,8]:keep={7: 0.55, 8: 0.75}").resolved_plan(sched, 4)
    assert by_end.keep == by_index.keep == {7: 0.55, 8: 0.75} and by_end.kept == by_index.kept
    with pytest.raises(ConfigError, match="twice"):
        make_pruner_from_spec("stepvar:scales=[8]:keep={8: 0.5, -2: 0.4}").resolved_plan(sched, 4)
    with pytest.raises(ConfigError, match="no keep ratio"):
        make_pruner_from_spec("stepvar:scales=[7,8]:keep={-2: 0.4}").resolved_plan(sched, 4)
