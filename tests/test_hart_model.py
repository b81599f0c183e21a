"""HART: transformer, RoPE layout, tokenizer quantiser, diffusion head, generation loop (tiny random configs)."""

import math

import pytest
import torch

from stepvar.hart_sampling import HartSamplingConfig, generate, mask_top_k_top_p_
from stepvar.models.hart import HART_1024_PATCH_NUMS, HartConfig, HartTransformer, image_rope, scale_positions
from stepvar.models.hart_diffusion import DiffusionHead, respaced_timesteps
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig

PNS = (1, 2, 3, 4, 6, 8)


def tiny(mlp_type="gpt2", l2=False, **kw):
    cfg = HartConfig(depth=2, width=64, heads=2, context_tokens=6, context_dim=24, patch_nums=PNS, vocab=32,
                     latent_channels=4, diff_width=32, diff_depth=2, mlp_type=mlp_type, attn_l2_norm=l2, **kw)
    torch.manual_seed(0)
    model = HartTransformer(cfg).eval()
    tok = HartTokenizer(HartTokenizerConfig(vocab=32, latent_channels=4, ch=32, ch_mult=(1, 1, 2))).eval()
    return model, tok


def text(B=2, T=6, D=24):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 4:] = False
    return torch.randn(B, T, D, generator=g), mask


def test_image_rope_is_hart_layout_brute_force():
    """Element i < k/2 pairs with i + k/2; the first half turns by the row angle, the second by the column."""
    k = 16
    pos = torch.tensor([[[3.5, 1.25]]])
    cos, sin = image_rope(pos, k)
    x = torch.randn(k, dtype=torch.float64)
    from stepvar.models.hart import apply_rope

    out = apply_rope(x.view(1, 1, 1, k).float(), cos, sin).view(k).double()
    f = [1.0 / 10000 ** (4 * j / k) for j in range(k // 4)]
    ref = torch.empty(k, dtype=torch.float64)
    for i in range(k // 2):
        row_angle = 3.5 * f[i % (k // 4)]
        col_angle = 1.25 * f[i % (k // 4)]
        ref[i] = x[i] * math.cos(row_angle) - x[i + k // 2] * math.sin(row_angle)
        ref[i + k // 2] = x[i + k // 2] * math.cos(col_angle) + x[i] * math.sin(col_angle)
    assert torch.allclose(out, ref, atol=1e-5)
    # Not a rotation when row != col: the norm changes.
    assert abs(out.norm().item() - x.norm().item()) > 1e-3


def test_scale_positions_float_grid_plus_offset():
    pos = scale_positions(3, 64, torch.tensor([4, 0]))
    assert pos.shape == (2, 9, 2)
    assert torch.allclose(pos[1, :, 0], torch.tensor([0, 0, 0, 64 / 3, 64 / 3, 64 / 3, 128 / 3, 128 / 3, 128 / 3]))
    assert torch.equal(pos[0] - 4, pos[1])


def test_config_rules():
    c = HartConfig()
    assert c.image_tokens == 9450 and c.context_tokens == 300 and c.num_scales == 14
    assert HartConfig(mlp_type="llama").ffn_hidden == 4096 and c.ffn_hidden == 6144
    assert sum(p * p for p in HART_1024_PATCH_NUMS) - 1 + 300 == 9750


def test_hart_0p7b_shapes_on_meta():
    with torch.device("meta"):
        model = HartTransformer(HartConfig())
    sd = model.state_dict()
    assert sd["blocks.23.attn.qkv_proj.weight"].shape == (4608, 1536)
    assert sd["blocks.0.ffn.fc1.weight"].shape == (6144, 1536)
    assert sd["head_nm.ada_lin.1.weight"].shape == (3072, 1536)
    assert sd["lvl_embed.weight"].shape == (14, 1536)
    assert sd["diffloss.net.final_layer.linear.weight"].shape == (64, 1024)
    assert sd["diffloss.net.res_blocks.5.adaLN_modulation.1.weight"].shape == (3072, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert 720e6 < n < 740e6  # "0.7B" with a 37M diffusion head


def test_respaced_timesteps_and_phi_ticks():
    assert respaced_timesteps(1000, 8) == [0, 143, 285, 428, 571, 714, 856, 999]
    tok = HartTokenizer(HartTokenizerConfig(vocab=8, latent_channels=4, ch=32, ch_mult=(1, 2)))
    idx = [tok.quantize.quant_resi.index(si, 14) for si in range(13)]
    assert idx == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]


def test_quantizer_round_trip_is_exact():
    """Sum of the per-scale (Phi'd) code maps, the last code and the continuous rest rebuilds f."""
    _, tok = tiny()
    f = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        idx, rest = tok.quantize.quantize(f, PNS)
        f_hat = torch.zeros_like(f)
        for si, pn in enumerate(PNS):
            f_hat, _ = tok.quantize.add_scale(f_hat, tok.quantize.codes(idx[si].view(2, pn, pn)), si, PNS)
    assert torch.allclose(f_hat + rest, f, atol=1e-5)


def test_diffusion_head_uses_the_generator_only():
    head = DiffusionHead(4, 16, 32, 2, 8).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.1)
    z = torch.randn(10, 16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = head.sample(z, 2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    b = head.sample(z, 2.0, generator=torch.Generator().manual_seed(5))
    c = head.sample(z, 2.0, generator=torch.Generator().manual_seed(6))
    assert a.shape == (5, 4) and torch.equal(a, b) and not torch.equal(a, c)


def test_diffusion_cfg_acts_on_epsilon_of_cond_rows():
    head = DiffusionHead(4, 16, 32, 1, 8).eval()
    z = torch.randn(6, 16)
    noise = head.draw_noise(3, torch.Generator().manual_seed(0), "cpu")
    same_uncond = torch.cat((z[:3], z[:3]))
    with torch.no_grad():
        # With identical cond and uncond conditions, the guidance scale cannot matter.
        assert torch.allclose(head.sample(same_uncond, 4.0, noise=noise), head.sample(same_uncond, 0.0, noise=noise), atol=1e-6)


def test_top_k_mask_keeps_k():
    logits = torch.randn(2, 3, 50)
    masked = mask_top_k_top_p_(logits.clone(), 7, 0.0)
    assert (masked.isfinite().sum(-1) == 7).all()


@pytest.mark.parametrize("mlp_type,l2", [("gpt2", False), ("llama", True)])
def test_generate_deterministic_and_seeded(mlp_type, l2):
    model, tok = tiny(mlp_type, l2)
    t, m = text()
    a = generate(model, tok, t, m, HartSamplingConfig(seed=3, top_k_coarse=10, top_k_fine=5))
    b = generate(model, tok, t, m, HartSamplingConfig(seed=3, top_k_coarse=10, top_k_fine=5))
    c = generate(model, tok, t, m, HartSamplingConfig(seed=4, top_k_coarse=10, top_k_fine=5))
    assert a.images.shape == (2, 3, 32, 32)
    assert [i.shape[1] for i in a.indices] == [p * p for p in PNS]
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_kv_cache_equals_full_causal_pass():
    """The cached scale-by-scale pass equals one block-causal pass over the whole sequence."""
    model, tok = tiny()
    t, m = text()
    B = 2
    ctx = model.prepare_context(t, m)
    g = torch.Generator().manual_seed(0)
    xs = [ctx.x_B2TC] + [torch.randn(2 * B, p * p, 64, generator=g) for p in PNS[1:]]
    cs = [model.rope_context(ctx)] + [model.rope_image(model.positions(si, ctx)) for si in range(1, len(PNS))]
    caches = model.new_caches()
    with torch.no_grad():
        cached = [model.run_blocks(x, c, s, caches) for x, (c, s) in zip(xs, cs)]
        # Full pass: one sequence with a block-causal mask, run layer by layer by hand.
        x = torch.cat(xs, 1)
        cos = torch.cat([c for c, _ in cs], 1)
        sin = torch.cat([s for _, s in cs], 1)
        lens = [x_.shape[1] for x_ in xs]
        stage = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
        allowed = stage[:, None] >= stage[None, :]
        import torch.nn.functional as F
        from stepvar.models.hart import apply_rope

        for blk in model.blocks:
            a = blk.attn
            h = blk.ln_wo_grad(x)
            bias = torch.cat((a.q_bias, a.zero_k_bias, a.v_bias))
            q, k, v = F.linear(h, a.qkv_proj.weight, bias).view(2 * B, -1, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=a.scale)
            x = x + a.proj(o.transpose(1, 2).reshape(2 * B, -1, 64))
            x = x + blk.ffn_branch(x)
    assert torch.allclose(torch.cat(cached, 1), x, atol=1e-5)
