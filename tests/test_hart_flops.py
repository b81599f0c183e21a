"""HART FLOP counting: equal to torch's FLOP counter on a real tiny run; the 0.7B figures."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from stepvar.eval.hart_flops import count_hart_flops, dense_counts
from stepvar.hart_sampling import HartSamplingConfig, generate
from stepvar.models.hart import HartConfig, HartTransformer
from stepvar.models.hart_presets import hart_preset
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig


def test_dense_count_matches_torch_flop_counter():
    cfg = HartConfig(depth=2, width=64, heads=2, context_tokens=6, context_dim=24, patch_nums=(1, 2, 3, 4, 6, 8),
                     vocab=32, latent_channels=4, diff_width=32, diff_depth=2)
    tc = HartTokenizerConfig(vocab=32, latent_channels=4, ch=32, ch_mult=(1, 1, 2))
    model, tok = HartTransformer(cfg).eval(), HartTokenizer(tc).eval()
    text, mask = torch.randn(1, 6, 24), torch.ones(1, 6, dtype=torch.bool)
    with FlopCounterMode(display=False) as fc:
        generate(model, tok, text, mask, HartSamplingConfig(more_smooth=False, top_k_coarse=5, top_k_fine=5))
    ours = count_hart_flops(cfg, tc, dense_counts(cfg))
    # torch's counter does not see the transformer's fused attention on CPU: compare without it.
    assert fc.get_total_flops() == ours.total - ours.by_part["attn_scores"]


def test_hart_0p7b_dense_flops_match_the_arithmetic():
    p = hart_preset("hart-0.7b")
    r = count_hart_flops(p.model, p.tokenizer, dense_counts(p.model))
    transformer = sum(r.by_part[k] for k in ("attn", "attn_scores", "ffn", "head"))
    assert 22.0e12 < transformer / 2 < 22.5e12  # per CFG branch
    assert 4.7e12 < r.by_part["diffusion"] < 4.9e12  # 8 steps x 8,192 rows
    assert 6.3e12 < r.by_part["decoder"] < 6.6e12
    assert abs(r.per_scale[-1] / sum(r.per_scale) - 0.518) < 0.005  # the 64x64 step
