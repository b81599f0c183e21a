"""InfinityStar transformer: the official key layout on the meta device, and small numeric checks."""

import math

import pytest
import torch

from stepvar.models.infinitystar import (
    STAR_PRESETS, InfinityStar, RMSNorm, build_on_meta, count_parameters, init_random_, rope_4d, star_preset,
)


def official_shapes(depth, C, Hq, Hkv, F, chunks, Ct=2048, maxlen=512, k=128):
    """The 8B key table written out from the official layout, independently of the model code."""
    out = {
        "cfg_uncond": (maxlen, Ct), "sos_token": (1, 1, C),
        "text_proj.weight": (C, Ct), "text_proj.bias": (C,),
        "word_embed.weight": (C, 64), "word_embed.bias": (C,),
        "norm_hidden_sates.weight": (C,),
        "head.weight": (128, C), "head.bias": (128,),
        "semantic_head2.weight": (32, C), "semantic_head2.bias": (32,),
    }
    per = depth // chunks
    for i in range(depth):
        p = f"block_chunks.{i // per}.module.{i % per}."
        out.update({
            p + "attn.q_proj.weight": (Hq * k, C), p + "attn.k_proj.weight": (Hkv * k, C),
            p + "attn.v_proj.weight": (Hkv * k, C), p + "attn.o_proj.weight": (C, Hq * k),
            p + "attn.q_norm.weight": (k,), p + "attn.k_norm.weight": (k,),
            p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C), p + "mlp.down_proj.weight": (C, F),
            p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
        })
    return out


@pytest.mark.parametrize("name,arch,n_keys,n_params", [
    ("infinitystar-8b", (36, 4096, 32, 8, 16384, 6), 407, 8_768_382_112),
    ("infinitystar-tiny", (4, 512, 4, 4, 1792, 2), 55, 17_423_520),
])
def test_official_layout_on_meta(name, arch, n_keys, n_params):
    model = build_on_meta(star_preset(name))
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_shapes(*arch)
    assert len(sd) == n_keys
    assert count_parameters(model) == n_params
    assert sum(t.numel() for t in sd.values()) == n_params  # no buffers in the files


def test_tiny_is_labelled_untrained():
    assert STAR_PRESETS["infinitystar-tiny"].untrained and not STAR_PRESETS["infinitystar-8b"].untrained


def test_rope_4d_axes_and_angles():
    pos = torch.tensor([[3, 1, 2, 5]])
    cos, sin = rope_4d(pos, 128)
    assert cos.shape == (1, 64)
    for axis, p in enumerate([3, 1, 2, 5]):
        for i in range(16):
            ang = p * 10000 ** (-i / 16)
            assert cos[0, axis * 16 + i].item() == pytest.approx(math.cos(ang), abs=1e-5)
            assert sin[0, axis * 16 + i].item() == pytest.approx(math.sin(ang), abs=1e-5)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 8)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)


def _brute_attention(attn, x, cos, sin, extra_k=None, extra_v=None):
    """Loop over heads with explicit softmax; GQA maps query head h to kv head h // (H / Hk)."""
    B, L, _ = x.shape
    k_ = attn.head_dim
    q = attn.q_norm(attn.q_proj(x).view(B, L, -1, k_))
    kk = attn.k_norm(attn.k_proj(x).view(B, L, -1, k_))
    v = attn.v_proj(x).view(B, L, -1, k_)

    def rot(t):  # (B, L, heads, k): pair p rotated by angle p
        a, b = t[..., 0::2], t[..., 1::2]
        c, s = cos[None, :, None], sin[None, :, None]
        return torch.stack((a * c - b * s, b * c + a * s), -1).flatten(-2)

    q, kk = rot(q), rot(kk)
    if extra_k is not None:
        kk = torch.cat([extra_k, kk], 1)
        v = torch.cat([extra_v, v], 1)
    rep = attn.heads // attn.kv_heads
    outs = []
    for h in range(attn.heads):
        w = (q[:, :, h] @ kk[:, :, h // rep].transpose(1, 2)) / math.sqrt(k_)
        outs.append(w.softmax(-1) @ v[:, :, h // rep])
    return attn.o_proj(torch.cat(outs, -1))


def test_gqa_attention_with_cached_reference_matches_brute_force():
    from dataclasses import replace
    cfg = replace(star_preset("infinitystar-tiny"), width=64, heads=4, kv_heads=2, name="t")
    torch.manual_seed(0)
    attn = InfinityStar(cfg).blocks[0].attn
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    pos_ref = torch.randint(0, 9, (5, 4))
    pos = torch.randint(0, 9, (7, 4))
    x_ref, x = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    cache = {}
    c0, s0 = rope_4d(pos_ref, 16)
    attn(x_ref, c0, s0, cache, write_slot="r")  # fills the slot
    c1, s1 = rope_4d(pos, 16)
    got = attn(x, c1, s1, cache, read_slots=("r",))
    k_ref, v_ref = cache["r"]  # (B, Hk, L, k) -> (B, L, Hk, k)
    want = _brute_attention(attn, x, c1, s1, k_ref.transpose(1, 2), v_ref.transpose(1, 2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_tiny_forward_shapes_and_heads():
    model = init_random_(InfinityStar(star_preset("infinitystar-tiny")))
    cache = model.new_cache()
    prefix = model.text_prefix(torch.randn(6, 2048))
    assert prefix.shape == (2, 6, 512)
    torch.testing.assert_close(prefix[1], model.text_proj(model.cfg_uncond[:6]))
    model.run_text(prefix, cache)
    assert len(cache.layers) == 4 and all("t0" in layer for layer in cache.layers)
    x = model.embed_codes(torch.zeros(1, 64, 2, 2, 3), 2)
    pos = torch.zeros(12, 4, dtype=torch.long)
    h = model.run_blocks(x, pos, cache, read_slots=("t0",))
    assert model.logits(h, semantic=True).shape == (2, 12, 32)
    assert model.logits(h, semantic=False).shape == (2, 12, 128)
