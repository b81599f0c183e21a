"""One model at two resolutions: the world renders at 512, pools and training mix 256 and 512 px rows
(with a budget embedding that tells them apart), exports record the budgets trained, and a
resolution a model was not trained for is a one-line error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stepvar.errors import ConfigError
from stepvar.models.config import load_model_preset
from stepvar.models.infinity import Infinity
from stepvar.pipeline import embedded_dir, load_pipeline
from stepvar.schedules import get_schedule
from stepvar.toy import evaluator as ev
from stepvar.toy import world
from stepvar.training import export_embedded, train_transformer
from stepvar.training.latent_pool import build_latent_pool, save_latent_pool
from stepvar.training.train_gpt import GPTJob, budget_for_size, gpt_loss, mixed_gpt_loss
from stepvar_cli.app import app

from test_training import tiny_arch, tiny_gpt_cfg, tiny_vae


# ----------------------------------------------------------------------------- the world at 512


def test_a_scene_renders_at_512_as_its_256_render_scaled():
    rng = np.random.default_rng(7)
    scene = world.sample_scene_for_prompt("a red circle left of a blue square", rng, "slots")
    small = world.render(scene, 256).astype(np.float32)
    big = world.render(scene, 512).astype(np.float32)
    pooled = big.reshape(256, 2, 256, 2, 3).mean((1, 3))
    # Same geometry and colours; the fine textures (periods scaled with the side) average differently.
    assert np.abs(pooled - small).mean() < 6.0
    assert world.objects_mask(scene, 512).reshape(256, 2, 256, 2).any((1, 3)).sum() >= world.objects_mask(scene, 256).sum()


def test_slot_scenes_of_heldout_prompts_score_one_at_512():
    rng = np.random.default_rng(5)
    prompts = ev.load_prompts()[::3]  # every form and relation kind; a third of the prompts keeps it fast
    images = [world.render(world.sample_scene_for_prompt(p, rng, "slots"), 512) for p in prompts]
    report = ev.evaluate(images, prompts)
    assert report.overall == 1.0, [r for r in report.per_image if not r["overall"]]


# ----------------------------------------------------------------------------- the budget embedding


def test_budget_embedding_starts_as_the_same_function_and_then_tells_budgets_apart():
    torch.manual_seed(0)
    plain = Infinity(tiny_arch())
    with_embed = Infinity(replace(tiny_arch(), budget_embed=2))
    missing = with_embed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["budget_embed"]
    text, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    ref = plain.condition(text, mask).cond_BD
    assert torch.equal(with_embed.condition(text, mask, "0.06M").cond_BD, ref)
    with torch.no_grad():
        with_embed.budget_embed[1] = 1.0
    assert torch.equal(with_embed.condition(text, mask, "0.06M").cond_BD, ref)
    assert torch.equal(with_embed.condition(text, mask, "0.25M").cond_BD, ref + 1.0)
    with pytest.raises(ConfigError, match="0.60M"):
        with_embed.condition(text, mask, "0.60M")


def test_budget_for_size():
    assert budget_for_size(256) == "0.06M" and budget_for_size(512) == "0.25M"
    with pytest.raises(ConfigError, match="300 px"):
        budget_for_size(300)


# ----------------------------------------------------------------------------- mixed training


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    d = tmp_path_factory.mktemp("pools")
    for size, seed in ((256, 3), (512, 4)):
        save_latent_pool(build_latent_pool(tiny_vae(), 4, seed=seed, size=size, chunk=2, layout="slots"),
                         d / f"pool{size}.safetensors")
    return d / "pool256.safetensors", d / "pool512.safetensors"


def mixed_cfg(pools, **kw):
    return tiny_gpt_cfg(latents=str(pools[0]), mix_latents=str(pools[1]), batch_size=2, prefix_batch=1,
                        mix_batch=1, mix_prefix_batch=2, prefix_scales=2, loss_weighting="scale", **kw)


def test_mixed_run_draws_both_schedules_and_adds_a_budget_embedding(pools):
    job = GPTJob(mixed_cfg(pools), tiny_vae())
    assert job.cfg.arch.budget_embed == 2 and job.budgets == ["0.06M", "0.25M"]
    assert len(job.mix_schedule) == 10 and job.mix_schedule.pixel_size == (512, 512)
    a, b = job.next_batch(), job.next_mix_batch()
    assert a.ids_BT.shape[0] == 3 and a.n_full == 2 and len(a.bits) == 7
    assert b.ids_BT.shape[0] == 3 and b.n_full == 1 and len(b.bits) == 10 and b.bits[-1].shape[1:3] == (32, 32)
    metrics = job.step(0)
    assert {"loss", "loss_512", "bit_acc_last", "bit_acc_last_512"} <= set(metrics)
    assert job.config_dict()["budgets"] == ["0.06M", "0.25M"]


def test_mixed_loss_is_the_row_weighted_mean_of_each_schedules_loss(pools):
    job = GPTJob(mixed_cfg(pools), tiny_vae())
    a, b = job.next_batch(), job.next_mix_batch()
    with torch.no_grad():
        got, metrics = mixed_gpt_loss(job.model, job.text_encoder, [(a, job.schedule), (b, job.mix_schedule)],
                                      amp=False, weighting="scale")
        la, _ = gpt_loss(job.model, job.text_encoder, a, job.schedule, amp=False, weighting="scale")
        lb, _ = gpt_loss(job.model, job.text_encoder, b, job.mix_schedule, amp=False, weighting="scale")
    # "scale" weighting: each row counts once, whatever its schedule (3 rows each here)
    torch.testing.assert_close(got, (3 * la + 3 * lb) / 6)
    assert metrics["loss_512"] == pytest.approx(lb.item(), rel=1e-5)


def test_export_of_a_mixed_run_records_both_budgets(pools, tmp_path):
    from stepvar.training.common import atomic_save

    job = GPTJob(mixed_cfg(pools), tiny_vae())
    atomic_save(job.state_dict(0), tmp_path / "run" / "checkpoint.pt")
    meta = json.loads((export_embedded(tmp_path / "run", tmp_path / "export") / "model.json").read_text())
    assert meta["budgets"] == ["0.06M", "0.25M"] and meta["arch"]["budget_embed"] == 2


@pytest.mark.slow  # trains
def test_mixed_run_resumes_exactly(pools, tmp_path):
    cfg = mixed_cfg(pools)
    full = train_transformer(cfg, tmp_path / "full", steps=3, vae=tiny_vae())
    train_transformer(cfg, tmp_path / "part", steps=2, vae=tiny_vae())
    rest = train_transformer(cfg, tmp_path / "part", steps=3, vae=tiny_vae(), resume=True)
    assert rest.history[-1]["loss"] == full.history[-1]["loss"]


@pytest.mark.slow  # trains
def test_mixed_run_continues_from_weights_without_a_budget_embedding(pools, tmp_path):
    one = train_transformer(tiny_gpt_cfg(latents=str(pools[0])), tmp_path / "one", steps=1, vae=tiny_vae())
    job = GPTJob(mixed_cfg(pools, init_from=str(tmp_path / "one")), tiny_vae())
    assert torch.equal(job.model.budget_embed, torch.zeros_like(job.model.budget_embed))
    # The levels the 256 px weights never trained (scales 7-9 of the 512 schedule) start as a copy of level 6;
    # the others are the source's.
    source = torch.load(one.checkpoint, weights_only=True)["modules"]["transformer"]["lvl_embed.weight"]
    got = job.model.lvl_embed.weight
    assert torch.equal(got[:7], source[:7]) and torch.equal(got[10:], source[10:])
    assert all(torch.equal(got[i], source[6]) for i in (7, 8, 9))


def test_mix_pool_must_be_another_resolution(pools):
    with pytest.raises(ConfigError, match="another resolution"):
        GPTJob(tiny_gpt_cfg(latents=str(pools[0]), mix_latents=str(pools[0]), mix_batch=1), tiny_vae())
    with pytest.raises(ConfigError, match="mix_batch"):
        tiny_gpt_cfg(latents=str(pools[0]), mix_latents=str(pools[1]))


# ----------------------------------------------------------------------------- untrained resolutions


@pytest.fixture(scope="module")
def export_256_only(tmp_path_factory):
    """A copy of the shipped export whose model.json says it was trained at 256 px only."""
    d = tmp_path_factory.mktemp("toy256")
    src = embedded_dir(load_model_preset("toy"))
    for f in src.iterdir():
        shutil.copy(f, d / f.name)
    meta = json.loads((d / "model.json").read_text())
    meta["budgets"] = ["0.06M"]
    (d / "model.json").write_text(json.dumps(meta))
    return d


def test_pipeline_refuses_a_resolution_the_model_was_not_trained_for(export_256_only):
    pipe = load_pipeline("toy", weights=export_256_only, device="cpu")
    assert pipe.budgets == ("0.06M",)
    pipe.check_schedule(get_schedule("0.06M", 0.75))  # another aspect of the trained budget is allowed
    with pytest.raises(ConfigError, match="trained for 256 px only, not 512 px"):
        pipe.generate("a red circle", get_schedule("0.25M"))


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_cli_untrained_resolution_is_one_line_exit_2(export_256_only, tmp_path, command):
    out = tmp_path / ("a.png" if command == "generate" else "evaldir")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    args = ["generate", "--prompt", "a red circle"] if command == "generate" else ["eval", "--prompts", str(prompts)]
    r = CliRunner().invoke(app, [*args, "--weights", str(export_256_only), "--resolution", "512", "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "trained for 256 px only" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_exports_without_budgets_count_as_trained_for_their_one_budget(export_256_only, tmp_path):
    meta = json.loads((export_256_only / "model.json").read_text())
    del meta["budgets"]
    for f in export_256_only.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert load_pipeline("toy", weights=tmp_path, device="cpu").budgets == ("0.06M",)


# ----------------------------------------------------------------------------- the decoder at two sizes


def test_vae_batches_mix_crops_of_two_render_sizes():
    from stepvar.training.data import random_crops, sample_pairs_with_masks
    from stepvar.training.train_vae import VAEJob

    from test_training import tiny_vae_cfg

    job = VAEJob(tiny_vae_cfg(batch_size=2, mix_image_size=128, mix_batch=1, object_weight=2.0))
    rng = np.random.default_rng()
    rng.bit_generator.state = job.rngs.data.bit_generator.state
    img, weight = job.next_batch()
    assert img.shape == (3, 3, 32, 32) and weight.shape == (3, 1, 32, 32)
    # the same draws, in order: two 64 px scenes and their crops, then one 128 px scene and its crop
    crops = []
    for n, size in ((2, 64), (1, 128)):
        _, images, masks = sample_pairs_with_masks(rng, n, size)
        crops.append(random_crops(np.concatenate([images, masks[..., None].astype(np.uint8)], -1), 32, rng))
    want = np.concatenate(crops)
    assert torch.equal(img, torch.from_numpy(want[..., :3]).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    with pytest.raises(ConfigError, match="go together"):
        tiny_vae_cfg(mix_image_size=128)


@pytest.mark.slow  # trains
def test_decoder_only_finetune_can_start_from_an_export(tmp_path):
    from stepvar.training import load_embedded, train_vae
    from stepvar.training.train_vae import VAEJob

    from test_training import tiny_vae_cfg

    train_vae(tiny_vae_cfg(), tmp_path / "vae", steps=1)
    train_transformer(tiny_gpt_cfg(), tmp_path / "gpt", steps=1, vae=tmp_path / "vae")
    export = export_embedded(tmp_path / "gpt", tmp_path / "export")
    job = VAEJob(tiny_vae_cfg(init_from=str(export), decoder_only=True))
    shipped = load_embedded(export)[1].state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in job.vae.state_dict().items())


def test_shipped_model_records_the_budgets_it_was_trained_for():
    meta = json.loads((embedded_dir(load_model_preset("toy")) / "model.json").read_text())
    assert meta["budget"] in meta["budgets"] and load_model_preset("toy").arch.default_budget in meta["budgets"]
