"""State-dict layout of the official models, built on the meta device (nothing allocated)."""

import pytest
import torch

from stepvar.models.config import load_model_preset
from stepvar.models.infinity import Infinity, count_parameters


def spec_shapes(depth, C, H, F, d, chunks, Ct=2048, maxlen=512, pool_heads=16):
    """The official key table, written out independently of the model code."""
    D = C
    out = {
        "cfg_uncond": (maxlen, Ct),
        "text_norm.weight": (Ct,),
        "text_proj_for_sos.ca.mat_q": (1, pool_heads, D // pool_heads),
        "text_proj_for_sos.ca.mat_kv.weight": (2 * D, Ct),
        "text_proj_for_sos.ca.v_bias": (D,),
        "text_proj_for_sos.ca.proj.weight": (D, D),
        "text_proj_for_sos.ca.proj.bias": (D,),
        "text_proj_for_ca.0.weight": (D, Ct),
        "text_proj_for_ca.0.bias": (D,),
        "text_proj_for_ca.2.weight": (D, D),
        "text_proj_for_ca.2.bias": (D,),
        "pos_start": (1, 1, C),
        "lvl_embed.weight": (15, C),
        "word_embed.weight": (C, d),
        "word_embed.bias": (C,),
        "shared_ada_lin.1.weight": (6 * C, D),
        "shared_ada_lin.1.bias": (6 * C,),
        "head_nm.ada_lin.1.weight": (2 * C, D),
        "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (2 * d, C),
        "head.bias": (2 * d,),
    }
    per = depth // chunks
    for i in range(depth):
        p = f"block_chunks.{i // per}.module.{i % per}."
        out.update({
            p + "ada_gss": (1, 1, 6, C),
            p + "sa.mat_qkv.weight": (3 * C, C),
            p + "sa.q_bias": (C,), p + "sa.v_bias": (C,),
            p + "sa.scale_mul_1H11": (1, H, 1, 1),
            p + "sa.proj.weight": (C, C), p + "sa.proj.bias": (C,),
            p + "ca.mat_q.weight": (C, C), p + "ca.mat_q.bias": (C,),
            p + "ca.mat_kv.weight": (2 * C, D),
            p + "ca.v_bias": (C,),
            p + "ca.proj.weight": (C, C), p + "ca.proj.bias": (C,),
            p + "ca_norm.weight": (C,), p + "ca_norm.bias": (C,),
            p + "ffn.fc1.weight": (F, C), p + "ffn.fc1.bias": (F,),
            p + "ffn.fc2.weight": (C, F), p + "ffn.fc2.bias": (C,),
        })
    return out


CASES = {
    # preset: (depth, C, H, F, d, chunks, exact parameter count from the spec)
    "infinity-2b": (32, 2048, 16, 8192, 32, 8, 2_204_564_032),
    "infinity-8b": (40, 3584, 28, 14336, 56, 8, 8_375_791_824),
    "infinity-125m": (12, 768, 8, 3072, 32, 4, 125_185_696),
}


@pytest.mark.parametrize("name", list(CASES))
def test_official_state_dict_layout(name):
    depth, C, H, F, d, chunks, n_params = CASES[name]
    with torch.device("meta"):
        model = Infinity(load_model_preset(name).arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = spec_shapes(depth, C, H, F, d, chunks)
    assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    assert got == want
    assert len(got) == 21 + 19 * depth  # the spec's tensor-count sanity check
    assert count_parameters(model) == n_params


def test_parameter_counts_in_billions():
    counts = {}
    for name in CASES:
        with torch.device("meta"):
            counts[name] = count_parameters(Infinity(load_model_preset(name).arch))
    assert round(counts["infinity-2b"] / 1e9, 4) == 2.2046
    assert round(counts["infinity-8b"] / 1e9, 3) == 8.376
    assert abs(counts["infinity-125m"] / 1e9 - 0.125) < 0.001


def test_layer_configs_ffn_rounding():
    # round-half-to-even: 4*2080/256 = 32.5 -> 32, 4*3360/256 = 52.5 -> 52
    assert load_model_preset("infinity-layer32").arch.ffn_hidden == 8192
    assert load_model_preset("infinity-layer48").arch.ffn_hidden == 13312
    assert load_model_preset("infinity-layer24").arch.head_dim == 96
