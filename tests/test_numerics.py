"""The opt-in "official" numerics: the official code's bf16 roundings in the text attentions."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from stepvar.errors import ConfigError
from stepvar.models.blocks import bf16_round_trip_attention
from stepvar.models.config import load_model_preset
from stepvar.models.infinity import Infinity
from stepvar.models.rope import Rope2D
from stepvar_cli.app import app


def _bf16(t):
    return t.to(torch.bfloat16).float()


def test_round_trip_attention_equals_a_brute_force_reference():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    scores = _bf16(q) @ _bf16(k).transpose(-1, -2) / 8 ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    want = _bf16(scores.softmax(-1) @ _bf16(v))
    got = bf16_round_trip_attention(q, k, v, mask)
    assert torch.allclose(got, want, atol=1e-2, rtol=0)  # both rounded to bf16: equal up to one bf16 step
    assert torch.equal(got, _bf16(got))  # the output itself is bf16-representable
    assert not torch.equal(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_official_numerics_change_only_the_text_attentions():
    torch.manual_seed(1)
    model = Infinity(load_model_preset("tiny").arch).eval()
    text, mask = torch.randn(2, 6, model.cfg.text_channels), torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        exact = model.condition(text, mask)
        model.set_numerics("official")
        official = model.condition(text, mask)
        assert not torch.equal(exact.cond_BD, official.cond_BD)
        diff = (exact.cond_BD - official.cond_BD).abs().max().item()
        assert 0 < diff < 1e-2 * exact.cond_BD.abs().max().item()
        assert torch.equal(exact.text.kv_BTD, official.text.kv_BTD)  # the CA projection itself stays fp32
        assert model.rope.official and not torch.equal(model.rope.cos, Rope2D(model.cfg.head_dim).cos)
        model.set_numerics("exact")
        assert torch.equal(model.condition(text, mask).cond_BD, exact.cond_BD)
        assert torch.equal(model.rope.cos, Rope2D(model.cfg.head_dim).cos)
    with pytest.raises(ConfigError):
        model.set_numerics("fast")


def test_generate_records_numerics_and_refuses_unknown(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "-p", "x", "-m", "tiny", "-o", str(tmp_path / "a.png"), "--numerics", "official"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.json").read_text())["numerics"] == "official"
    r = runner.invoke(app, ["generate", "-p", "x", "-m", "tiny", "-o", str(tmp_path / "b.png"), "--numerics", "fast"])
    assert r.exit_code == 2 and "--numerics" in r.output and not (tmp_path / "b.png").exists()
