"""InfinityStar checkpoints in the official sharded layout: strict load, index quirks, `inspect` exit codes."""

import json

import pytest
import torch
from typer.testing import CliRunner

from stepvar.errors import CheckpointError
from stepvar.loading.checkpoints import guess_preset, save_checkpoint
from stepvar.loading.infinitystar import load_infinitystar
from stepvar.models.infinitystar import InfinityStar, init_random_, star_preset
from stepvar_cli.app import app

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def tiny_sd():
    return init_random_(InfinityStar(star_preset("infinitystar-tiny")), seed=3).state_dict()


def write_official(tmp_path, sd, extra_total=384):
    """Two shards + index as the official writer lays them out (total_size counts 384 bytes more)."""
    root = tmp_path / "infinitystar_tiny_weights"
    save_checkpoint(sd, root, "safetensors-sharded", n_shards=2)
    index = json.loads((root / INDEX).read_text())
    index["metadata"]["total_size"] += extra_total
    (root / INDEX).write_text(json.dumps(index))
    return root


def test_strict_load_round_trip_with_index_total_size_not_the_sum(tmp_path, tiny_sd):
    root = write_official(tmp_path, tiny_sd)
    assert set(json.loads((root / INDEX).read_text())["weight_map"].values()) == {
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    model, report = load_infinitystar("infinitystar-tiny", root)
    assert report.container == "safetensors-sharded" and report.n_tensors == 55
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_sd[k]), k
    assert guess_preset(tiny_sd) == "infinitystar-tiny"


def test_untrained_preset_builds_without_weights_and_8b_needs_them():
    model, report = load_infinitystar("infinitystar-tiny")
    assert report is None and model.cfg.untrained
    with pytest.raises(Exception, match="needs --weights"):
        load_infinitystar("infinitystar-8b")


def _broken(sd, how):
    sd = dict(sd)
    key = "block_chunks.1.module.0.attn.k_proj.weight"
    if how == "renamed":
        sd["block_chunks.1.module.0.attn.key_proj.weight"] = sd.pop(key)
    elif how == "reshaped":
        sd[key] = sd[key][:256].clone()
    elif how == "missing":
        del sd[key]
    elif how == "unexpected":
        sd["block_chunks.1.module.0.attn.extra_bias"] = torch.zeros(3)
    return sd


@pytest.mark.parametrize("how,named", [
    ("renamed", "block_chunks.1.module.0.attn.k_proj.weight"),
    ("reshaped", "block_chunks.1.module.0.attn.k_proj.weight"),
    ("missing", "block_chunks.1.module.0.attn.k_proj.weight"),
    ("unexpected", "block_chunks.1.module.0.attn.extra_bias"),
])
def test_mismatches_are_refused_naming_the_key(tmp_path, tiny_sd, how, named):
    root = write_official(tmp_path, _broken(tiny_sd, how))
    with pytest.raises(CheckpointError) as exc:
        load_infinitystar("infinitystar-tiny", root)
    msg = str(exc.value)
    assert named in msg and "\n" not in msg
    r = CliRunner().invoke(app, ["inspect", str(root), "--model", "infinitystar-tiny"])
    assert r.exit_code == 3, r.output
    assert any(named in line for line in r.output.splitlines())


def test_inspect_accepts_the_official_layout(tmp_path, tiny_sd):
    root = write_official(tmp_path, tiny_sd)
    r = CliRunner().invoke(app, ["inspect", str(root), "--model", "infinitystar-tiny", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["ok"] and data["n_tensors"] == 55 and data["n_params"] == 17_423_520
    assert data["guessed_preset"] == "infinitystar-tiny" and data["kind"] == "transformer"
    # The same file against the 8B preset: every shape differs, exit 3.
    r = CliRunner().invoke(app, ["inspect", str(root), "--model", "infinitystar-8b"])
    assert r.exit_code == 3


def test_inspect_8b_layout_on_meta_tensors():
    """The 8B key set, checked without 35 GB: meta tensors of the 8B preset fit it exactly."""
    from stepvar.loading.checkpoints import check_against, preset_shapes
    from stepvar.models.infinitystar import build_on_meta
    sd = build_on_meta(star_preset("infinitystar-8b")).state_dict()
    assert not check_against(preset_shapes("infinitystar-8b"), sd)
    assert guess_preset(sd) == "infinitystar-8b"
    sd.pop("semantic_head2.bias")
    problems = check_against(preset_shapes("infinitystar-8b"), sd)
    assert [str(p) for p in problems] == ["missing key 'semantic_head2.bias' (expected shape (32))"]


def test_missing_shard_is_refused(tmp_path, tiny_sd):
    root = write_official(tmp_path, tiny_sd)
    (root / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_infinitystar("infinitystar-tiny", root)
    r = CliRunner().invoke(app, ["inspect", str(root), "--model", "infinitystar-tiny"])
    assert r.exit_code == 2 and "model-00002-of-00002.safetensors" in r.output
