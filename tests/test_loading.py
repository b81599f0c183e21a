import json
import re

import pytest
import torch

from stepvar.errors import CheckpointError
from stepvar.loading.checkpoints import (
    CONTAINERS,
    LoadedCheckpoint,
    check_against,
    check_vae_against,
    guess_preset,
    load_model_weights,
    load_vae_weights,
    preset_shapes,
    read_checkpoint,
    save_checkpoint,
    vae_shapes,
)
from stepvar.loading.inspect import inspect_checkpoint
from stepvar.models.bsq_vae import BSQVAE, VAE_PRESETS
from stepvar.models.config import load_model_preset
from stepvar.models.infinity import Infinity

TINY = load_model_preset("tiny").arch
H = TINY.heads


def _tiny_model() -> Infinity:
    torch.manual_seed(0)
    model = Infinity(TINY)
    with torch.no_grad():  # no all-zero / all-one tensors, so a mix-up could not pass unnoticed
        for p in model.parameters():
            p.normal_()
    return model


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


@pytest.fixture()
def sd(tiny):
    return dict(tiny.state_dict())


def _meta_model(cfg=TINY) -> Infinity:
    with torch.device("meta"):
        return Infinity(cfg)


def _fake(shapes) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _path_for(tmp_path, container):
    return tmp_path / {"safetensors": "m.safetensors", "safetensors-sharded": "shards"}.get(container, "m.pth")


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ---- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("container", CONTAINERS)
def test_round_trip_every_container(tmp_path, tiny, sd, container):
    written = save_checkpoint(sd, _path_for(tmp_path, container), container, n_shards=3)
    ckpt = read_checkpoint(written)
    assert ckpt.container == container
    assert ckpt.n_tensors == len(sd) and ckpt.dtypes == {"float32": len(sd)}

    model = _meta_model()
    report = load_model_weights(model, ckpt, "tiny")
    assert report.converted == 0 and report.dropped == []
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys()
    # assign=True: the model holds the file's (memory-mapped) tensors themselves, not copies.
    assert loaded["head.weight"].data_ptr() == ckpt.tensors["head.weight"].data_ptr()
    for key, t in sd.items():
        assert torch.equal(loaded[key], t), key
    # Non-persistent buffers are rebuilt on a real device, equal to a normally built model's.
    for (name, buf), (_, ref) in zip(model.named_buffers(), tiny.named_buffers()):
        assert not buf.is_meta and torch.equal(buf, ref), name


def test_sharded_layout_and_index(tmp_path, sd):
    index_path = save_checkpoint(sd, tmp_path / "shards", "safetensors-sharded", n_shards=3)
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in sd.values())
    assert read_checkpoint(index_path).n_tensors == len(sd)  # the index path works as well as the directory
    assert not list((tmp_path / "shards").glob(".*tmp*"))  # no temporaries left behind


class TrainArgs:  # an arbitrary pickled object, like the official training `args`
    def __init__(self):
        self.lr = 1e-4


def test_training_checkpoint_with_pickled_args(tmp_path, sd):
    torch.save({"trainer": {"gpt_fsdp": sd, "step": 3}, "args": TrainArgs()}, tmp_path / "ar-ckpt.pth")
    ckpt = read_checkpoint(tmp_path / "ar-ckpt.pth")
    assert ckpt.container == "pth-training" and ckpt.n_tensors == len(sd)


def test_dtype_conversion_only_when_needed(tmp_path, sd):
    path = save_checkpoint({k: v.bfloat16() for k, v in sd.items()}, tmp_path / "bf16.safetensors", "safetensors")
    assert load_model_weights(_meta_model(), path, "tiny").converted == len(sd)
    bf16_model = _meta_model().to(torch.bfloat16)
    assert load_model_weights(bf16_model, path, "tiny").converted == 0
    assert bf16_model.head.weight.dtype == torch.bfloat16


# ---- tolerated differences -------------------------------------------------------------------------


def test_optional_and_dropped_buffers_load(tmp_path, sd):
    extra = {k.replace("v_bias", "zero_k_bias"): torch.zeros_like(v) for k, v in sd.items() if k.endswith("v_bias")}
    extra |= {"lvl_1L": torch.zeros(1, 5), "attn_bias_for_masking": torch.zeros(1, 1, 5, 5)}
    path = save_checkpoint(sd | extra, tmp_path / "m.pth", "pth-flat")
    report = load_model_weights(_meta_model(), path, "tiny")
    assert sorted(report.dropped) == sorted(extra)


def test_nonzero_key_bias_is_refused(tmp_path, sd):
    path = save_checkpoint(sd | {"block_chunks.0.module.0.sa.zero_k_bias": torch.ones(TINY.width)},
                           tmp_path / "m.pth", "pth-flat")
    assert "block_chunks.0.module.0.sa.zero_k_bias" in _error(load_model_weights, _meta_model(), path, "tiny")


def test_scale_mul_1_1_H_1_layout_loads(tmp_path, sd):
    swapped = {k: (v.reshape(1, 1, H, 1) if k.endswith("scale_mul_1H11") else v) for k, v in sd.items()}
    path = save_checkpoint(swapped, tmp_path / "m.safetensors", "safetensors")
    model = _meta_model()
    report = load_model_weights(model, path, "tiny")
    assert any("scale_mul" in n for n in report.notes)
    key = "block_chunks.1.module.0.sa.scale_mul_1H11"
    assert torch.equal(model.state_dict()[key], sd[key])


def test_cfg_uncond_longer_is_truncated_shorter_is_an_error(tmp_path, sd):
    rows = TINY.text_maxlen
    longer = save_checkpoint(sd | {"cfg_uncond": torch.randn(rows + 8, TINY.text_channels)}, tmp_path / "l.pth", "pth-flat")
    model = _meta_model()
    load_model_weights(model, longer, "tiny")
    assert model.cfg_uncond.shape == (rows, TINY.text_channels)
    shorter = save_checkpoint(sd | {"cfg_uncond": torch.randn(rows - 1, TINY.text_channels)}, tmp_path / "s.pth", "pth-flat")
    assert "cfg_uncond" in _error(load_model_weights, _meta_model(), shorter, "tiny")


# ---- strict failures: one line naming the file and the key ------------------------------------------


def test_truncated_files(tmp_path, sd):
    for name, container in (("m.pth", "pth-flat"), ("m.safetensors", "safetensors")):
        path = save_checkpoint(sd, tmp_path / name, container)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert str(path) in _error(read_checkpoint, path)
        assert str(path) in _error(load_model_weights, _meta_model(), path, "tiny")


def test_missing_and_unknown_files(tmp_path, sd):
    assert "no such file" in _error(read_checkpoint, tmp_path / "nope.pth")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a checkpoint")
    assert "unknown checkpoint container" in _error(read_checkpoint, tmp_path / "junk.bin")
    torch.save({"a": torch.ones(1), "b": 3}, tmp_path / "mixed.pth")
    assert "'b'" in _error(read_checkpoint, tmp_path / "mixed.pth")


def test_missing_shard(tmp_path, sd):
    index = save_checkpoint(sd, tmp_path / "shards", "safetensors-sharded", n_shards=2)
    (tmp_path / "shards" / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in _error(read_checkpoint, index.parent)


def test_renamed_wrong_shape_and_missing_keys(tmp_path, sd):
    renamed = dict(sd)
    renamed["head.biasx"] = renamed.pop("head.bias")
    msg = _error(load_model_weights, _meta_model(), save_checkpoint(renamed, tmp_path / "r.pth", "pth-flat"), "tiny")
    assert "r.pth" in msg and "'head.bias'" in msg and "1 more problem (1 unexpected)" in msg

    wrong = sd | {"word_embed.weight": torch.zeros(TINY.width, TINY.bits + 1)}
    msg = _error(load_model_weights, _meta_model(), save_checkpoint(wrong, tmp_path / "w.pth", "pth-flat"), "tiny")
    assert "'word_embed.weight'" in msg and f"({TINY.width}, {TINY.bits + 1})" in msg and f"({TINY.width}, {TINY.bits})" in msg

    missing = {k: v for k, v in sd.items() if k != "pos_start"}
    msg = _error(load_model_weights, _meta_model(), save_checkpoint(missing, tmp_path / "m.pth", "pth-flat"), "tiny")
    assert "missing key 'pos_start'" in msg and "damaged or modified" in msg


# ---- preset guessing (shapes only) -----------------------------------------------------------------


def test_guess_preset_from_shapes_alone():
    assert guess_preset(_fake(preset_shapes("infinity-2b"))) == "infinity-2b"
    assert guess_preset(_fake(preset_shapes("infinity-125m"))) == "infinity-125m"  # not layer12 (same shapes)
    eight = _fake(preset_shapes("infinity-8b"))
    eight["text_proj_for_sos.ca.zero_k_bias"] = torch.empty(3584, device="meta")
    assert guess_preset(eight) == "infinity-8b"
    assert guess_preset(_fake(preset_shapes("tiny"))) == "tiny"
    assert guess_preset({"x": torch.empty(3, device="meta")}) is None
    assert check_against(preset_shapes("infinity-8b"), _fake(preset_shapes("infinity-2b")))


def test_wrong_preset_names_the_likely_cause():
    eight = LoadedCheckpoint(_fake(preset_shapes("infinity-8b")), "safetensors-sharded", "8b/index.json")
    msg = _error(load_model_weights, _meta_model(load_model_preset("infinity-2b").arch), eight, "infinity-2b")
    assert msg.startswith("8b/index.json: ")
    assert "this looks like an infinity-8b file, but the infinity-2b preset was chosen" in msg


# ---- VAE ---------------------------------------------------------------------------------------------


def _plain_vae_keys(state_dict):
    """The release's other spelling: `x.conv1.weight` instead of `x.conv1.conv.weight`."""
    return {re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in state_dict.items()}


@pytest.mark.parametrize("with_mask", [True, False])
def test_vae_container_with_plain_keys(tmp_path, with_mask):
    torch.manual_seed(1)
    vae = BSQVAE(VAE_PRESETS["tiny"])
    ref = dict(vae.state_dict())
    plain = _plain_vae_keys(ref)
    assert "decoder.conv_in.weight" in plain
    if not with_mask:
        plain.pop("quantizer.lfq.mask")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in plain.items()}
    path = save_checkpoint(plain, tmp_path / "vae.pth", "vae", extra={"ema": ema})
    for use_ema, want in ((False, 0), (True, 1)):
        with torch.device("meta"):
            target = BSQVAE(VAE_PRESETS["tiny"])
        load_vae_weights(target, path, use_ema=use_ema)
        for key, t in ref.items():
            expected = t + want if t.is_floating_point() else t
            assert torch.equal(target.state_dict()[key], expected), key


def _official_vae_state_dict(vae):
    """What the official VAE class's state_dict() holds: plain conv keys, and the quantizer twice,
    because that class also assigns it to `self.quantize` (the two keys share one tensor)."""
    sd = _plain_vae_keys(dict(vae.state_dict()))
    sd["quantize.lfq.mask"] = sd["quantizer.lfq.mask"]
    return sd


def test_official_vae_file_with_alias_key_loads(tmp_path):
    torch.manual_seed(2)
    vae = BSQVAE(VAE_PRESETS["tiny"])
    path = tmp_path / "infinity_vae.pth"
    torch.save(_official_vae_state_dict(vae), path)
    with torch.device("meta"):
        target = BSQVAE(VAE_PRESETS["tiny"])
    report = load_vae_weights(target, path)
    for key, t in vae.state_dict().items():
        assert torch.equal(target.state_dict()[key], t), key
    assert any("quantize." in n and "dropped" in n for n in report.notes)
    assert check_vae_against(vae_shapes("tiny"), read_checkpoint(path).tensors) == []
    # A file holding the quantizer only under its alias is the same module under its other name.
    only_alias = _official_vae_state_dict(vae)
    only_alias.pop("quantizer.lfq.mask")
    torch.save(only_alias, tmp_path / "alias_only.pth")
    with torch.device("meta"):
        target = BSQVAE(VAE_PRESETS["tiny"])
    load_vae_weights(target, tmp_path / "alias_only.pth")
    assert torch.equal(target.quantizer.lfq.mask, vae.quantizer.lfq.mask)


@pytest.mark.parametrize("damage", ["alias differs", "alias reshaped", "renamed", "reshaped"])
def test_official_vae_file_real_mismatch_refused(tmp_path, damage):
    vae = BSQVAE(VAE_PRESETS["tiny"])
    sd = _official_vae_state_dict(vae)
    if damage == "alias differs":
        sd["quantize.lfq.mask"] = sd["quantizer.lfq.mask"].flip(0)
        want = "key 'quantize.lfq.mask' names the same module as 'quantizer.lfq.mask' but holds different values"
    elif damage == "alias reshaped":
        sd["quantize.lfq.mask"] = torch.cat([sd["quantizer.lfq.mask"]] * 2)
        want = "key 'quantize.lfq.mask' names the same module as 'quantizer.lfq.mask'"
    elif damage == "renamed":
        sd["decoder.conv_in.weight_old"] = sd.pop("decoder.conv_in.weight")
        want = "missing key 'decoder.conv_in.conv.weight'"
    else:
        sd["decoder.conv_in.weight"] = sd["decoder.conv_in.weight"][:, :-1]
        want = "key 'decoder.conv_in.conv.weight' has shape"
    path = tmp_path / "vae.pth"
    torch.save(sd, path)
    with torch.device("meta"):
        target = BSQVAE(VAE_PRESETS["tiny"])
    assert want in _error(load_vae_weights, target, path)
    assert check_vae_against(vae_shapes("tiny"), read_checkpoint(path).tensors) != []


def test_vae_mismatch_names_guess(tmp_path):
    vae = BSQVAE(VAE_PRESETS["tiny"])
    path = save_checkpoint(vae.state_dict(), tmp_path / "vae.pth", "vae")
    with torch.device("meta"):
        other = BSQVAE(VAE_PRESETS["d16"])
    msg = _error(load_vae_weights, other, path)
    assert "looks like a tiny VAE" in msg


# ---- inspect -----------------------------------------------------------------------------------------


def test_inspect_good_and_mismatched(tmp_path, sd):
    good = save_checkpoint(sd, tmp_path / "good.safetensors", "safetensors")
    report = inspect_checkpoint(good, preset="tiny")
    assert report.ok and report.kind == "transformer" and report.guessed_preset == "tiny"
    assert report.n_params == sum(t.numel() for t in sd.values())
    assert inspect_checkpoint(good).ok
    json.dumps(report.to_dict())

    bad = save_checkpoint({k: v for k, v in sd.items() if k != "head.bias"}, tmp_path / "bad.pth", "pth-flat")
    report = inspect_checkpoint(bad, preset="tiny")
    assert not report.ok and report.guessed_preset is None
    assert [(p.key, p.kind) for p in report.problems] == [("head.bias", "missing")]
    assert json.loads(json.dumps(report.to_dict()))["problems"][0]["key"] == "head.bias"
    assert not inspect_checkpoint(bad).ok


def test_inspect_vae(tmp_path):
    vae = BSQVAE(VAE_PRESETS["tiny"])
    path = save_checkpoint(_plain_vae_keys(vae.state_dict()), tmp_path / "vae.pth", "vae")
    report = inspect_checkpoint(path, preset="tiny")  # the model preset's paired VAE
    assert report.kind == "vae" and report.guessed_preset == "tiny" and report.checked_against == "tiny"
    assert report.ok
    assert inspect_checkpoint(path).ok  # checked against the guessed VAE preset
    report = inspect_checkpoint(path, preset="d32")
    assert not report.ok and "tiny" in report.cause
