"""Every pruning method on HART: keep 1.0 is dense bit for bit, fewer token passes, brute-force references."""

import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.hart_pruning import HartRunner, hart_plan, simulated_counts
from stepvar.hart_sampling import HartSamplingConfig, generate
from stepvar.models.hart import HartConfig, HartTransformer
from stepvar.models.hart_presets import hart_preset
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig
from stepvar.pruning.registry import make_pruner

PNS = (1, 2, 3, 4, 6, 8)
METHODS = ["dense", "stepvar", "fastvar", "random", "texture-only", "structure-only"]


@pytest.fixture(scope="module")
def tiny():
    cfg = HartConfig(depth=3, width=64, heads=2, context_tokens=6, context_dim=24, patch_nums=PNS, vocab=32,
                     latent_channels=4, diff_width=32, diff_depth=1)
    torch.manual_seed(0)
    model = HartTransformer(cfg).eval()
    tok = HartTokenizer(HartTokenizerConfig(vocab=32, latent_channels=4, ch=32, ch_mult=(1, 1, 2))).eval()
    g = torch.Generator().manual_seed(1)
    text, mask = torch.randn(2, 6, 24, generator=g), torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    return model, tok, text, mask


SAMPLING = HartSamplingConfig(seed=2, top_k_coarse=8, top_k_fine=8)


def _run(tiny, pruner):
    model, tok, text, mask = tiny
    runner = HartRunner(model, pruner)
    return generate(model, tok, text, mask, SAMPLING, runner=runner), runner


@pytest.mark.parametrize("method", METHODS)
def test_keep_one_is_dense_bit_exact(tiny, method):
    dense, _ = _run(tiny, make_pruner("dense"))
    kw = dict(keep=1.0) if method != "fastvar" else dict(keep=1.0, scales=[-2, -1])
    out, _ = _run(tiny, make_pruner(method, **kw))
    assert torch.equal(out.images, dense.images)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, dense.indices))


def test_stepvar_runs_fewer_token_passes_and_keeps_kv_of_kept_only(tiny):
    _, dense = _run(tiny, make_pruner("dense"))
    out, pruned = _run(tiny, make_pruner("stepvar", keep=0.4))
    assert pruned.plan.keep == {3: 0.4, 4: 0.4, 5: 0.4}  # grids 4, 6 and 8: at least half the last side
    assert pruned.counter.total() < dense.counter.total()
    assert pruned.counter.counts[(5, 0, "attn")] == round(64 * 0.4)
    assert out.hidden_last.shape == (4, 64, 64)  # the heads see a dense, restored map


def test_fastvar_runs_fewer_token_passes(tiny):
    _, dense = _run(tiny, make_pruner("dense"))
    _, fv = _run(tiny, make_pruner("fastvar", keep=0.5, scales=[-2, -1]))
    assert fv.plan.cache_step == 3 and fv.counter.total() < dense.counter.total()


def test_fastvar_hart_release_settings():
    cfg = hart_preset("hart-0.7b").model
    plan = hart_plan(make_pruner("fastvar"), cfg.patch_nums, cfg.depth)
    assert plan.keep == {12: 0.5, 13: 0.25} and plan.cache_step == 11
    assert (plan.first_layer, plan.end_layer) == (0, 24)  # all 24 layers
    counts = simulated_counts(make_pruner("fastvar"), cfg)
    assert counts[(12, 0, "attn")] == 1152 and counts[(13, 23, "ffn")] == 1024
    with pytest.raises(ConfigError, match="HART"):
        hart_plan(make_pruner("fastvar-skip"), cfg.patch_nums, cfg.depth)


def test_stepvar_once_matches_brute_force(tiny):
    """Kept tokens run the blocks at their own positions; each pruned position = own input +
    the update of its nearest kept token (brute-force distances, ties to the lower index)."""
    model, tok, text, mask = tiny
    pruner = make_pruner("random", keep=0.5, scales=[-1])
    runner = HartRunner(model, pruner)
    ctx = model.prepare_context(text, mask)
    caches, caches_ref = model.new_caches(), model.new_caches()
    cos, sin = model.rope_context(ctx)
    with torch.no_grad():
        model.run_blocks(ctx.x_B2TC, cos, sin, caches)
        model.run_blocks(ctx.x_B2TC, cos, sin, caches_ref)
        si, side = 5, 8
        x = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(3))
        pos = model.positions(si, ctx)
        c, s = model.rope_image(pos)
        out = runner(si, x, pos, c, s, caches)
        idx = torch.sort(torch.rand(4, 64, generator=torch.Generator().manual_seed(0)), dim=1,
                         descending=True, stable=True).indices[:, :32].sort(dim=1).values
        ref = torch.empty_like(x)
        for b in range(4):
            kept = idx[b]
            xk = x[b:b + 1, kept]
            ck, sk = model.rope_image(pos[b:b + 1, kept])
            hk = xk
            for layer, blk in enumerate(model.blocks):
                # the cache of row b only
                one = type(caches_ref[layer])()
                one.k, one.v = caches_ref[layer].k[b:b + 1], caches_ref[layer].v[b:b + 1]
                hk = blk(hk, ck, sk, one)
            upd = (hk - xk)[0]
            for p in range(64):
                r, q = divmod(p, side)
                d = [((r - int(j) // side) ** 2 + (q - int(j) % side) ** 2, int(j), n) for n, j in enumerate(kept)]
                ref[b, p] = x[b, p] + upd[min(d)[2]]
    assert torch.allclose(out, ref, atol=1e-5)
    assert caches[0].length == 6 + 32  # only the kept keys entered the cache
