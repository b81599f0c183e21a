"""HART folder loading: the release layout, strict one-line errors, inspect; the text side."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stepvar.errors import CheckpointError, ConfigError, StepvarError
from stepvar.hart_text import StandInTextEncoder, encode_with_llm
from stepvar.loading.hart import inspect_hart, load_hart
from stepvar.models.hart import HartConfig, HartTransformer
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig

PNS = (1, 2, 3, 4)


def _write_release(root, mlp_type="gpt2", l2=False, drop=None, rename=None, reshape=None, tokenizer=True):
    """A miniature of the released folder, written the way the release writes it."""
    cfg = HartConfig(depth=1, width=64, heads=1, context_tokens=5, context_dim=16, patch_nums=PNS, vocab=16,
                     latent_channels=4, diff_width=32, diff_depth=1, mlp_type=mlp_type, attn_l2_norm=l2)
    tcfg = HartTokenizerConfig(vocab=16, latent_channels=4, ch=32, ch_mult=(1, 2))
    torch.manual_seed(0)
    model, tok = HartTransformer(cfg), HartTokenizer(tcfg)
    sd = dict(model.state_dict())
    sd["lvl_1L"] = torch.zeros(1, 33)
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, 33, 33)
    if drop:
        sd.pop(drop)
    if rename:
        sd[rename[1]] = sd.pop(rename[0])
    if reshape:
        sd[reshape] = torch.zeros(3, 3)
    (root / "llm").mkdir(parents=True)
    torch.save(sd, root / "llm" / "ema_model.bin")
    (root / "llm" / "config.json").write_text(json.dumps(dict(
        model_type="hart_transformer_t2i", embed_dim=64, depth=1, num_heads=1, context_token=5, context_dim=16,
        patch_nums=list(PNS), attn_type="llama", disable_aln=True, diff_width=32, diff_depth=1,
        num_sampling_steps="8", mlp_type="gpt2", attn_l2_norm=False)))
    if tokenizer:
        (root / "tokenizer").mkdir()
        tsd = {f"vae.{k}": v.contiguous() for k, v in tok.state_dict().items()}
        tsd["vae.quantize.ema_vocab_hit_SV"] = torch.zeros(10, 16)
        tsd["disc.net.0.weight"] = torch.zeros(2, 2)
        save_file(tsd, str(root / "tokenizer" / "model.safetensors"))
        (root / "tokenizer" / "config.json").write_text(json.dumps(dict(
            vocab_size=16, z_channels=4, ch=32, ch_mult=[1, 2], quantizer_type="var_hybrid")))
    return model, tok


@pytest.mark.parametrize("mlp_type,l2", [("gpt2", False), ("llama", True)])
def test_load_release_layout(tmp_path, mlp_type, l2):
    model, tok = _write_release(tmp_path, mlp_type, l2)
    m2, t2 = load_hart(tmp_path, "hart-0.7b")
    assert m2.cfg.mlp_type == mlp_type and m2.cfg.attn_l2_norm == l2  # from the keys, over config.json
    for k, v in model.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
    for k, v in tok.state_dict().items():
        assert torch.equal(t2.state_dict()[k], v), k
    assert inspect_hart(tmp_path / "llm", "hart-0.7b").ok  # the llm/ subfolder works too


@pytest.mark.parametrize("kind,kw,needle", [
    ("missing", dict(drop="head.bias"), "missing key 'head.bias'"),
    ("renamed", dict(rename=("head.bias", "head.b")), "missing key 'head.bias', found 'head.b'"),
    ("reshaped", dict(reshape="decoder_norm.weight"), "key 'decoder_norm.weight' has shape (3, 3)"),
])
def test_strict_one_line_errors(tmp_path, kind, kw, needle):
    _write_release(tmp_path, **kw)
    with pytest.raises(CheckpointError) as e:
        load_hart(tmp_path, "hart-0.7b")
    assert needle in str(e.value) and "\n" not in str(e.value)
    report = inspect_hart(tmp_path, "hart-0.7b")
    assert not report.ok and any(needle.split("'")[1] in p for p in report.problems)


def test_missing_tokenizer_names_the_download(tmp_path):
    _write_release(tmp_path, tokenizer=False)
    with pytest.raises(CheckpointError, match="tokenizer folder not found.*hart-0.7b-1024px"):
        load_hart(tmp_path, "hart-0.7b")


def test_unsupported_config_is_one_line(tmp_path):
    _write_release(tmp_path)
    cfg = json.loads((tmp_path / "llm" / "config.json").read_text())
    cfg["use_cross_attn"] = True
    (tmp_path / "llm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="use_cross_attn"):
        load_hart(tmp_path, "hart-0.7b")


def test_missing_text_encoder_dir_names_the_download(tmp_path):
    from stepvar.hart_text import QwenTextEncoder

    with pytest.raises(StepvarError, match="Qwen2-VL-1.5B-Instruct"):
        QwenTextEncoder(tmp_path / "nope", "cpu")


def test_stand_in_pads_to_fixed_length():
    enc = StandInTextEncoder(8, max_length=10)
    out = enc.encode(["a red apple", "b"], "cpu")
    assert out.features_BTD.shape == (2, 10, 8)
    assert out.mask_BT.sum(1).tolist() == [3, 1]
    assert torch.equal(out.features_BTD[0, 5], out.features_BTD[1, 9])  # one padding vector


class _FakeTok:
    pad_token_id = 0

    def __call__(self, text, return_tensors, padding, max_length, truncation):
        ids = [ord(c) % 50 + 1 for c in text][:max_length]
        if padding == "max_length":
            ids = ids + [0] * (max_length - len(ids))
        return type("T", (), {"input_ids": torch.tensor([ids])})()


class _FakeLLM:
    """Hidden state = embedding of the token + the number of attended tokens before it (causal)."""

    def __call__(self, ids, attention_mask, output_hidden_states):
        seen = attention_mask.long().cumsum(1).float()
        h = torch.stack((ids.float(), seen), -1)
        return type("O", (), {"hidden_states": [h * 0, h]})()


def test_llm_encoding_pads_prepends_system_prompt_and_keeps_prompt_positions():
    out = encode_with_llm(["abc"], _FakeTok(), _FakeLLM(), 6, "xy", "cpu")
    assert out.features_BTD.shape == (1, 6, 2) and out.system_prompt
    assert out.mask_BT.tolist() == [[True] * 3 + [False] * 3]
    assert out.features_BTD[0, :, 0].tolist() == [ord(c) % 50 + 1 for c in "abc"] + [0, 0, 0]
    assert out.features_BTD[0, :3, 1].tolist() == [3, 4, 5]  # the two system tokens were attended first
    plain = encode_with_llm(["abc"], _FakeTok(), _FakeLLM(), 6, None, "cpu")
    assert plain.features_BTD[0, :3, 1].tolist() == [1, 2, 3] and not plain.system_prompt
