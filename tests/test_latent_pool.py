"""Pre-encoded scene pools: exact latents of the trainers' own scenes, resumable training from
them, and refusal of a pool made by another encoder or for another image size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stepvar.errors import CheckpointError, ConfigError
from stepvar.models.config import load_model_preset
from stepvar.loading.embedded import embedded_dir
from stepvar.training import train_transformer, train_vae
from stepvar.training.data import sample_pairs, to_model_images
from stepvar.training.latent_pool import build_latent_pool, load_latent_pool, save_latent_pool
from stepvar.training.teacher_forcing import multiscale_targets
from stepvar.training.train_gpt import GPTJob
from stepvar_cli.app import app

from test_training import tiny_gpt_cfg, tiny_vae, tiny_vae_cfg


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.safetensors"
    save_latent_pool(build_latent_pool(tiny_vae(), 5, seed=3, chunk=2), path)
    return path


def test_pool_holds_the_encoded_scenes_of_its_seed(pool_file):
    vae = tiny_vae().eval()
    pool = load_latent_pool(pool_file, vae)
    prompts, images = sample_pairs(np.random.default_rng(3), 5, 256)
    x = to_model_images(images, "cpu")
    with torch.no_grad():  # the pool's chunks of 2: oneDNN's conv may sum in another order for another batch size
        z = torch.cat([vae.encode(x[i:i + 2]) for i in range(0, 5, 2)])
    assert pool.prompts == prompts and pool.seed == 3 and pool.image_size == 256
    assert torch.equal(pool.z, z)


def test_training_batches_come_from_the_pool(pool_file):
    job = GPTJob(tiny_gpt_cfg(latents=str(pool_file), batch_size=3), tiny_vae())
    state = np.random.default_rng()
    state.bit_generator.state = job.rngs.data.bit_generator.state
    idx = state.integers(0, 5, 3)  # the draw next_batch will make
    batch = job.next_batch()
    grids = [(s.h, s.w) for s in job.schedule.scales]
    want = multiscale_targets(job.pool.z[torch.from_numpy(idx)], grids)
    assert all(torch.equal(a, b) for a, b in zip(batch.bits, want.bits))
    assert batch.ids_BT.shape[0] == 3


@pytest.mark.slow  # trains
def test_pool_training_resumes_exactly(pool_file, tmp_path):
    cfg = tiny_gpt_cfg(latents=str(pool_file), cfg_dropout=0.5)
    full = train_transformer(cfg, tmp_path / "full", steps=3, vae=tiny_vae())
    train_transformer(cfg, tmp_path / "part", steps=2, vae=tiny_vae())
    rest = train_transformer(cfg, tmp_path / "part", steps=3, vae=tiny_vae(), resume=True)
    assert rest.losses[0] == full.losses[2]


def test_pool_of_another_encoder_or_size_is_refused(pool_file, tmp_path):
    torch.manual_seed(5)
    other = type(tiny_vae())(tiny_vae().cfg)
    with pytest.raises(CheckpointError, match="different VAE encoder"):
        GPTJob(tiny_gpt_cfg(latents=str(pool_file)), other)
    with pytest.raises(ConfigError, match="256px scenes"):
        GPTJob(tiny_gpt_cfg(latents=str(pool_file), budget="0.25M"), tiny_vae())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a pool")
    with pytest.raises(CheckpointError, match="not a latent pool"):
        load_latent_pool(bad)


@pytest.mark.slow  # trains
def test_train_latents_cli(tmp_path):
    train_vae(tiny_vae_cfg(), tmp_path / "vae", steps=1)
    out = tmp_path / "p.safetensors"
    r = CliRunner().invoke(app, ["train", "latents", "--vae", str(tmp_path / "vae"), "--out", str(out), "--n", "2",
                                 "--layout", "slots", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["scenes"] == 2 and json.loads(r.output)["layout"] == "slots"
    assert len(load_latent_pool(out)) == 2 and load_latent_pool(out).layout == "slots"
    bad = CliRunner().invoke(app, ["train", "latents", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "q"),
                                   "--n", "1", "--layout", "grid", "--device", "cpu"])
    assert bad.exit_code == 2 and "unknown layout 'grid'" in bad.output and not (tmp_path / "q").exists()
    missing = CliRunner().invoke(app, ["train", "gpt", "--vae", str(embedded_dir(load_model_preset("toy"))), "--out", str(tmp_path / "g"),
                                       "--latents", str(tmp_path / "nope.safetensors"), "--steps", "1", "--device", "cpu"])
    assert missing.exit_code == 2 and "no such latent pool" in missing.output


def test_form_weights_choose_the_prompt_forms(pool_file):
    from stepvar.toy.grammar import parse

    job = GPTJob(tiny_gpt_cfg(latents=str(pool_file), form_weights=(0, 0, 1), batch_size=6), tiny_vae())
    rows = job._pool_rows(6)
    assert all(parse(job.pool.prompts[i]).form == "relation" for i in rows)
    with pytest.raises(ConfigError, match="three non-negative"):
        tiny_gpt_cfg(latents=str(pool_file), form_weights=(1, -1, 1))
    with pytest.raises(ConfigError, match="latent pool"):
        tiny_gpt_cfg(form_weights=(1, 1, 1))


def test_pool_records_its_layout_and_a_run_must_match(tmp_path):
    path = tmp_path / "slots.safetensors"
    save_latent_pool(build_latent_pool(tiny_vae(), 3, seed=4, layout="slots"), path)
    pool = load_latent_pool(path)
    prompts, images = sample_pairs(np.random.default_rng(4), 3, 256, "slots")
    assert pool.layout == "slots" and pool.prompts == prompts
    job = GPTJob(tiny_gpt_cfg(latents=str(path)), tiny_vae())
    assert job.layout == "slots" and job.config_dict()["layout"] == "slots"
    with pytest.raises(ConfigError, match="holds 'slots' scenes"):
        GPTJob(tiny_gpt_cfg(latents=str(path), layout="free"), tiny_vae())
    with pytest.raises(ConfigError, match="unknown layout"):
        build_latent_pool(tiny_vae(), 1, layout="grid")


def test_merged_pool_holds_every_scene_in_order_and_refuses_mixed_kinds(pool_file, tmp_path):
    other = tmp_path / "other.safetensors"
    save_latent_pool(build_latent_pool(tiny_vae(), 3, seed=9, chunk=2), other)
    out = tmp_path / "merged.safetensors"
    res = CliRunner().invoke(app, ["train", "merge-latents", str(pool_file), str(other), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    a, b, m = load_latent_pool(pool_file), load_latent_pool(other), load_latent_pool(out, tiny_vae())
    assert m.prompts == a.prompts + b.prompts and torch.equal(m.z, torch.cat([a.z, b.z]))
    assert (m.seed, m.image_size, m.layout) == (a.seed, a.image_size, a.layout)
    slots = tmp_path / "slots.safetensors"
    save_latent_pool(build_latent_pool(tiny_vae(), 2, seed=4, layout="slots"), slots)
    res = CliRunner().invoke(app, ["train", "merge-latents", str(pool_file), str(slots), "--out", str(tmp_path / "x.safetensors")])
    assert res.exit_code == 2 and "layout slots" in res.output and not (tmp_path / "x.safetensors").exists()
