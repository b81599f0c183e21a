"""The training path: teacher forcing equals cached sampling, training lowers the loss,
and runs are reproducible and resumable. Tiny models, CPU, a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stepvar.errors import CheckpointError, ConfigError, StepvarError
from stepvar.models.bsq_vae import VAE_PRESETS, BSQVAE, multiscale_encode
from stepvar.models.blocks import KVCache
from stepvar.models.config import InfinityConfig
from stepvar.models.infinity import Infinity
from stepvar.pruning.base import ScaleRun, TokenCounter, run_dense_stack
from stepvar.schedules import get_schedule
from stepvar.toy import grammar
from stepvar.toy.text_encoder import ToyTextConfig, ToyTextEncoder
from stepvar.training import (GPTTrainConfig, OptimConfig, VAETrainConfig, export_embedded, forward_teacher_forced,
                              load_embedded, multiscale_targets, teacher_forced_inputs, train_transformer, train_vae)
from stepvar.training.common import lr_at
from stepvar.training.teacher_forcing import block_causal_mask
from stepvar.training.train_gpt import GPTJob
from stepvar.training.train_vae import VAEJob, load_trained_vae

TINY_VAE = VAE_PRESETS["tiny"]


def tiny_arch() -> InfinityConfig:
    return InfinityConfig(name="tiny-train", depth=2, width=64, heads=4, bits=TINY_VAE.codebook_dim, text_channels=32,
                          text_maxlen=16, block_chunks=1, pool_heads=4, vae="tiny", default_budget="0.06M")


def tiny_gpt_cfg(**kw) -> GPTTrainConfig:
    base = dict(arch=tiny_arch(), text=ToyTextConfig(channels=32, layers=1, heads=2), batch_size=2, device="cpu",
                optim=OptimConfig(lr=3e-3, warmup_steps=2, decay_steps=100), ckpt_every=1000, log_every=1)
    return GPTTrainConfig(**{**base, **kw})


def tiny_vae_cfg(**kw) -> VAETrainConfig:
    base = dict(vae=TINY_VAE, image_size=64, crop=32, batch_size=2, device="cpu",
                optim=OptimConfig(lr=3e-3, weight_decay=0.0, warmup_steps=2, decay_steps=100), ckpt_every=1000, log_every=1)
    return VAETrainConfig(**{**base, **kw})


def tiny_vae() -> BSQVAE:
    torch.manual_seed(1)
    return BSQVAE(TINY_VAE)


# ------------------------------------------------------------------------------------------ teacher forcing


def test_block_causal_mask():
    sch = get_schedule("0.06M")
    m = block_causal_mask(sch)
    (b1, e1), (b2, e2) = sch.offsets[1], sch.offsets[2]
    assert m[b1:e1, :e1].all() and not m[b1:e1, e1:].any()  # scale 1 sees scales 0-1, nothing later
    assert m[b2:e2, :e2].all() and m.sum() == sum(s.n * e for s, (_, e) in zip(sch.scales, sch.offsets))


def test_multiscale_targets_without_flips_equal_multiscale_encode():
    z = torch.randn(2, 8, 16, 16)
    grids = [(s.h, s.w) for s in get_schedule("0.06M").scales]
    ref, ours = multiscale_encode(z, grids), multiscale_targets(z, grids)
    assert all(torch.equal(a, b) for a, b in zip(ref.bits, ours.bits))
    assert all(torch.allclose(a, b) for a, b in zip(ref.next_inputs, ours.next_inputs))
    g = torch.Generator().manual_seed(0)
    noisy = multiscale_targets(z, grids, flip_strength=0.3, generator=g)
    assert torch.equal(noisy.bits[0], ref.bits[0])  # scale 0 labels come before any flip
    assert any(not torch.allclose(a, b) for a, b in zip(ref.next_inputs, noisy.next_inputs))


@pytest.mark.parametrize("abs_pos_grid", [0, 16])
def test_teacher_forced_logits_equal_cached_inference(abs_pos_grid):
    torch.manual_seed(0)
    model = Infinity(InfinityConfig(**{**tiny_arch().__dict__, "abs_pos_grid": abs_pos_grid})).eval()
    if abs_pos_grid:
        torch.nn.init.normal_(model.abs_pos, std=0.5)  # non-zero, so both paths must add the same table
    sch = get_schedule("0.06M")
    B, T = 2, 5
    text, mask = torch.randn(B, T, 32), torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False  # padding must be handled the same way on both paths
    z = torch.randn(B, 8, 16, 16)
    next_inputs = multiscale_targets(z, [(s.h, s.w) for s in sch.scales]).next_inputs
    with torch.no_grad():
        cond = model.condition(text, mask)
        x_all = teacher_forced_inputs(model, cond.cond_BD, next_inputs)
        logits_tf = forward_teacher_forced(model, cond, x_all, sch)
        # The sampler's path: scale by scale with KV caches, the same inputs.
        cond = model.condition(text, mask)
        caches = [KVCache() for _ in model.blocks]
        for si, scale in enumerate(sch.scales):
            b, e = sch.offsets[si]
            run = ScaleRun(model, cond, model.add_level(x_all[:, b:e], si, (scale.h, scale.w)), si, scale, sch.positions(si),
                           caches, TokenCounter())
            logits = model.logits(run_dense_stack(run), cond.cond_BD)
            torch.testing.assert_close(logits_tf[:, b:e], logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ text encoder


def test_toy_text_encoder_protocol():
    enc = ToyTextEncoder(ToyTextConfig(channels=32, layers=1, heads=2)).eval()
    with torch.no_grad():
        feats, mask = enc.encode(["One Red circle.", "a red circle left of a blue square"], "cpu")
        again, _ = enc.encode(["a red circle"], "cpu")
    assert feats.shape == (2, mask.shape[1], 32) and mask[0].sum() == 3 and mask[1].all()
    torch.testing.assert_close(feats[0, :3], again[0, :3])  # synonyms tokenize alike
    assert enc.name == "toy-grammar" and enc.channels == 32 and enc.trained is False
    with pytest.raises(StepvarError, match="unknown word"):
        enc.encode(["a purple circle"], "cpu")


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.slow  # trains
def test_transformer_overfits_one_batch():
    job = GPTJob(tiny_gpt_cfg(cfg_dropout=0.0), tiny_vae())
    batch = job.next_batch()
    losses = [job.update(batch, i)["loss"] for i in range(20)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradients_reach_text_encoder_and_null_text():
    from stepvar.training.train_gpt import gpt_loss

    job = GPTJob(tiny_gpt_cfg(), tiny_vae())
    batch = job.next_batch()
    batch = batch._replace(drop_B=torch.tensor([True, False]))  # one null-text row, one prompt row
    loss, _ = gpt_loss(job.model, job.text_encoder, batch, job.schedule)
    loss.backward()
    assert job.model.cfg_uncond.grad.abs().sum() > 0
    assert job.text_encoder.tok_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in job.model.blocks[0].ca.parameters())
    assert all(p.grad is None for p in job.vae.parameters())  # frozen


def test_prefix_rows_equal_the_full_forward_on_their_first_scales():
    """Rows trained on a prefix of the scales give the loss a full forward gives on those tokens."""
    from stepvar.training.train_gpt import _forward_rows, bit_loss, gpt_loss

    job = GPTJob(tiny_gpt_cfg(cfg_dropout=0.0, batch_size=1, prefix_batch=2, prefix_scales=3), tiny_vae())
    job.model.eval()
    batch = job.next_batch()
    assert batch.n_full == 1 and batch.ids_BT.shape[0] == 3
    with torch.no_grad():
        mixed, _ = gpt_loss(job.model, job.text_encoder, batch, job.schedule, amp=False)
        full_logits = []
        for r in range(3):  # brute force: every row over every scale, one at a time
            row = batch._replace(ids_BT=batch.ids_BT[r:r + 1], bits=[b[r:r + 1] for b in batch.bits],
                                 next_inputs=[z[r:r + 1] for z in batch.next_inputs], drop_B=batch.drop_B[r:r + 1],
                                 n_full=None)
            feats, mask = job.text_encoder(row.ids_BT)
            full_logits.append(_forward_rows(job.model, feats, mask, slice(0, 1), row.bits, row.next_inputs, job.schedule))
    end = job.schedule.offsets[2][1]
    num = bit_loss(*full_logits[0])[0] * full_logits[0][1].numel()
    num = num + sum(bit_loss(lg[:, :end], lb[:, :end])[0] * lb[:, :end].numel() for lg, lb in full_logits[1:])
    den = full_logits[0][1].numel() + sum(lb[:, :end].numel() for _, lb in full_logits[1:])
    torch.testing.assert_close(mixed, num / den, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # trains
def test_vae_overfits_one_batch():
    job = VAEJob(tiny_vae_cfg())
    batch = job.next_batch()
    losses = [job.update(batch, i)["loss"] for i in range(20)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_lr_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(500, cfg) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------ reproducibility


@pytest.mark.slow  # trains
def test_same_seed_same_losses(tmp_path):
    a = train_vae(tiny_vae_cfg(seed=3), tmp_path / "a", steps=2)
    b = train_vae(tiny_vae_cfg(seed=3), tmp_path / "b", steps=2)
    c = train_vae(tiny_vae_cfg(seed=4), tmp_path / "c", steps=2)
    assert a.losses == b.losses and a.losses != c.losses
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and {"loss", "seconds", "elapsed"} <= set(log[0])


@pytest.mark.slow  # trains
def test_resume_reproduces_uninterrupted_run(tmp_path):
    # Self-correction and CFG dropout on, so every random stream is exercised.
    cfg = tiny_gpt_cfg(self_correction=0.2, cfg_dropout=0.5)
    vae = tiny_vae()
    full = train_transformer(cfg, tmp_path / "full", steps=3, vae=vae)
    train_transformer(cfg, tmp_path / "part", steps=2, vae=vae)
    rest = train_transformer(cfg, tmp_path / "part", steps=3, vae=vae, resume=True)
    assert [h["step"] for h in rest.history] == [3]
    assert rest.losses[0] == full.losses[2]
    log = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]


@pytest.mark.slow  # trains
def test_resume_guards(tmp_path):
    train_vae(tiny_vae_cfg(), tmp_path, steps=1)
    with pytest.raises(StepvarError, match="already holds"):
        train_vae(tiny_vae_cfg(), tmp_path, steps=2)
    with pytest.raises(ConfigError, match="different configuration"):
        train_vae(tiny_vae_cfg(edge_weight=0.0), tmp_path, steps=2, resume=True)
    assert train_vae(tiny_vae_cfg(log_every=5), tmp_path, steps=2, resume=True).step == 2


@pytest.mark.slow  # trains
def test_export_and_load_embedded(tmp_path):
    train_transformer(tiny_gpt_cfg(), tmp_path / "run", steps=1, vae=tiny_vae())
    out = export_embedded(tmp_path / "run", tmp_path / "export")
    model, vae, text = load_embedded(out)
    assert text.trained and next(model.parameters()).dtype == torch.float32
    from stepvar.sampling import LatentCodec, SamplingConfig, sample

    with torch.no_grad():
        feats, mask = text.encode(["two blue squares"], "cpu")
        res = sample(model, feats, mask, get_schedule("0.06M"), LatentCodec(8), SamplingConfig(seed=0))
        img = vae.decode(res.latent_BdHW)
    assert img.shape == (1, 3, 256, 256) and np.isfinite(img.numpy()).all()
    assert text.cfg.mirror_relations and json.loads((out / "model.json").read_text())["layout"] == "free"
    # An export from before relations were mirrored and layouts existed reads as unmirrored, free.
    meta = json.loads((out / "model.json").read_text())
    del meta["text"]["mirror_relations"], meta["layout"]
    (out / "model.json").write_text(json.dumps(meta))
    _, _, old = load_embedded(out)
    assert not old.cfg.mirror_relations
    assert old.tokenize(["a red circle below a blue square"]).tolist() == [grammar.tokenize("a red circle below a blue square")]
    assert text.tokenize(["a red circle below a blue square"]).tolist() == [grammar.tokenize("a blue square above a red circle")]


@pytest.mark.slow  # trains
def test_decoder_only_finetune_keeps_the_encoder_and_replaces_the_shipped_decoder(tmp_path):
    train_vae(tiny_vae_cfg(), tmp_path / "vae", steps=1)
    train_transformer(tiny_gpt_cfg(), tmp_path / "gpt", steps=1, vae=tmp_path / "vae")
    train_vae(tiny_vae_cfg(init_from=str(tmp_path / "vae"), decoder_only=True), tmp_path / "dec", steps=2)
    before, after = load_trained_vae(tmp_path / "vae").state_dict(), load_trained_vae(tmp_path / "dec").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    _, vae, _ = load_embedded(export_embedded(tmp_path / "gpt", tmp_path / "export", vae=tmp_path / "dec"))
    shipped = vae.state_dict()
    assert all(torch.equal(shipped[k], after[k].half().float()) for k in after)
    # a VAE with another encoder would silently change the codes: refused
    train_vae(tiny_vae_cfg(seed=7), tmp_path / "other", steps=1)
    with pytest.raises(CheckpointError, match="encoder differs"):
        export_embedded(tmp_path / "gpt", tmp_path / "export2", vae=tmp_path / "other")
    with pytest.raises(ConfigError, match="init_from"):
        tiny_vae_cfg(decoder_only=True)


def test_object_weighted_vae_loss():
    from stepvar.training.data import sample_pairs, sample_pairs_with_masks
    from stepvar.training.train_vae import vae_loss

    p1, im1 = sample_pairs(np.random.default_rng(3), 3, 64)
    p2, im2, masks = sample_pairs_with_masks(np.random.default_rng(3), 3, 64)
    assert p1 == p2 and np.array_equal(im1, im2)  # the same draws: masks come for free
    assert masks.any(axis=(1, 2)).all() and not masks.all(axis=(1, 2)).any()
    job = VAEJob(tiny_vae_cfg(object_weight=4.0))
    img, weight = job.next_batch()
    assert set(weight.unique().tolist()) <= {1.0, 5.0}
    with torch.no_grad():
        plain, _ = vae_loss(job.vae, img, job.cfg)
        ones, _ = vae_loss(job.vae, img, job.cfg, torch.ones_like(weight))
    torch.testing.assert_close(plain, ones)


@pytest.mark.slow  # trains
def test_transformer_continues_from_an_export(tmp_path):
    train_transformer(tiny_gpt_cfg(), tmp_path / "run", steps=1, vae=tiny_vae())
    out = export_embedded(tmp_path / "run", tmp_path / "export")
    shipped, _, text = load_embedded(out)
    job = GPTJob(tiny_gpt_cfg(init_from=str(out)), load_embedded(out)[1])
    for k, v in shipped.state_dict().items():
        assert torch.equal(job.model.state_dict()[k], v), k
    assert all(torch.equal(job.text_encoder.state_dict()[k], v) for k, v in text.state_dict().items())
    from stepvar.training.train_gpt import as_vae

    vae_sd = as_vae(out).state_dict()  # `train gpt --vae EXPORT_DIR` freezes the shipped VAE
    assert all(torch.equal(vae_sd[k], v) for k, v in load_embedded(out)[1].state_dict().items())
    with pytest.raises(ConfigError, match="do not fit"):
        GPTJob(tiny_gpt_cfg(init_from=str(out), arch=InfinityConfig(**{**tiny_arch().__dict__, "depth": 4, "block_chunks": 1})),
               tiny_vae())
    # the export counts every update the weights have had, through a chain of continuations
    assert job.prior_steps == 1
    train_transformer(tiny_gpt_cfg(init_from=str(out)), tmp_path / "more", steps=2, vae=load_embedded(out)[1])
    train_transformer(tiny_gpt_cfg(init_from=str(tmp_path / "more")), tmp_path / "again", steps=1,
                      vae=load_embedded(out)[1])
    meta = json.loads((export_embedded(tmp_path / "again", tmp_path / "export2") / "model.json").read_text())
    assert (meta["trained_steps"], meta["run_steps"]) == (1 + 2 + 1, 1)
    # weights from before the position table: it starts at zero, everything else is loaded
    with_table = GPTJob(tiny_gpt_cfg(init_from=str(out), arch=InfinityConfig(**{**tiny_arch().__dict__, "abs_pos_grid": 4})),
                        tiny_vae())
    assert not with_table.model.abs_pos.any()
    assert all(torch.equal(with_table.model.state_dict()[k], v) for k, v in shipped.state_dict().items())


def test_position_table_is_pooled_to_each_grid():
    model = Infinity(InfinityConfig(**{**tiny_arch().__dict__, "abs_pos_grid": 4}))
    torch.nn.init.normal_(model.abs_pos)
    table = model.abs_pos[0].detach()  # (C, 4, 4)
    two = model.position_table(2, 2).detach()  # row-major (h*w, C), like the token order
    assert torch.allclose(two[1], table[:, 0:2, 2:4].mean(dim=(1, 2)), atol=1e-6)  # top-right 2x2 block
    assert torch.allclose(model.position_table(1, 1)[0].detach(), table.mean(dim=(1, 2)), atol=1e-6)
    assert torch.equal(model.position_table(4, 4).detach(), table.flatten(1).T)
    assert model.position_table(8, 6).shape == (48, table.shape[0])  # above the table's size: resized


@pytest.mark.slow  # trains
def test_position_table_learns_at_a_multiple_of_the_lr():
    from stepvar.training.common import FAST_LR_SCALE, clip_and_step, make_optimizer

    model = Infinity(InfinityConfig(**{**tiny_arch().__dict__, "abs_pos_grid": 4}))
    opt = make_optimizer(model.named_parameters(), OptimConfig(lr=1e-3))
    (fast,) = [g for g in opt.param_groups if g.get("lr_scale")]
    assert fast["params"] == [model.abs_pos] and fast["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    clip_and_step(opt, list(model.parameters()), 2e-3, 1.0)
    assert fast["lr"] == pytest.approx(2e-3 * FAST_LR_SCALE)
    assert all(g["lr"] == 2e-3 for g in opt.param_groups if g is not fast)


def test_cpu_bf16_is_refused_without_native_bf16(monkeypatch):
    from stepvar.training import common

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16"):
        GPTJob(tiny_gpt_cfg(cpu_bf16=True), tiny_vae())
    with pytest.raises(ConfigError, match="no native bf16"):
        VAEJob(tiny_vae_cfg(cpu_bf16=True))
    GPTJob(tiny_gpt_cfg(), tiny_vae())  # fp32 is always fine


@pytest.mark.slow  # trains
@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_cpu_bf16_loss_tracks_fp32():
    """Same weights, same batch: under bf16 autocast the loss moves (bf16 is really used) but only by rounding."""
    fp32, bf16 = GPTJob(tiny_gpt_cfg(), tiny_vae()), GPTJob(tiny_gpt_cfg(cpu_bf16=True), tiny_vae())
    batch = fp32.next_batch()
    from stepvar.training.train_gpt import gpt_loss

    with torch.no_grad():
        a, _ = gpt_loss(fp32.model, fp32.text_encoder, batch, fp32.schedule)
        b, _ = gpt_loss(bf16.model, bf16.text_encoder, batch, bf16.schedule, cpu_bf16=True)
    assert a.item() != b.item() and abs(a.item() - b.item()) < 0.02 * a.item()


def test_scale_weighted_loss_equals_a_per_scale_loop():
    """loss_weighting="scale": mean over rows of the mean over the row's scales of that scale's mean
    bit cross-entropy, prefix rows (fewer scales) included; checked against a plain loop."""
    import torch.nn.functional as F

    from stepvar.training.train_gpt import _forward_rows, gpt_loss, prefix_schedule

    job = GPTJob(tiny_gpt_cfg(batch_size=2, prefix_batch=3, prefix_scales=2, loss_weighting="scale"), tiny_vae())
    batch = job.next_batch()
    with torch.no_grad():
        got, metrics = gpt_loss(job.model, job.text_encoder, batch, job.schedule, weighting="scale")
        token, _ = gpt_loss(job.model, job.text_encoder, batch, job.schedule, weighting="token")
        feats, mask = job.text_encoder(batch.ids_BT)
        feats = torch.where(batch.drop_B[:, None, None], job.model.uncond_text(mask), feats)
        row_losses = []
        for rows, sch in ((slice(0, 2), job.schedule), (slice(2, 5), prefix_schedule(job.schedule, 2))):
            logits, labels = _forward_rows(job.model, feats, mask, rows, batch.bits, batch.next_inputs, sch)
            for b in range(labels.shape[0]):
                per_scale = []
                for start, end in sch.offsets:
                    lg = logits[b, start:end].unflatten(-1, (-1, 2)).reshape(-1, 2)
                    per_scale.append(F.cross_entropy(lg, labels[b, start:end].long().reshape(-1)))
                row_losses.append(torch.stack(per_scale).mean())
    want = torch.stack(row_losses).mean()
    assert torch.allclose(got, want, rtol=1e-5) and not torch.allclose(got, token, rtol=1e-3)
    assert 0 < metrics["bit_acc"] <= 1
    with pytest.raises(ConfigError, match="loss_weighting"):
        tiny_gpt_cfg(loss_weighting="pixel")


def test_whole_scene_loss_decodes_the_generation_quantization_of_the_scene():
    """quantize_whole: against a brute-force reference that quantizes the whole scene with the
    generation schedule, decodes the window and scores only the crop (plus the scene's own borders)."""
    from stepvar.training.data import sample_pairs
    from stepvar.training.train_vae import whole_scene_loss

    vae = tiny_vae().eval()
    stride = vae.cfg.stride
    _, images = sample_pairs(np.random.default_rng(4), 3, 256, "slots")
    img = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    grids = [(s.h, s.w) for s in get_schedule("0.06M").scales]
    with torch.no_grad():
        zq = multiscale_encode(vae.encoder(img), grids).summed_BdHW
        # the whole scene as one window: everything scored
        cfg = tiny_vae_cfg(image_size=256, crop=256, init_from="x", decoder_only=True, quantize_whole=True, edge_weight=0.0)
        loss, _ = whole_scene_loss(vae, img, cfg, None, np.random.default_rng(0))
        torch.testing.assert_close(loss, (vae.decoder(zq) - img).abs().mean())
        # a 64 px crop with 2 latents of context: the window is decoded on its own, the margin is not scored
        cfg = tiny_vae_cfg(image_size=256, crop=64, context=2, init_from="x", decoder_only=True, quantize_whole=True,
                           edge_weight=0.0)
        loss, _ = whole_scene_loss(vae, img, cfg, None, np.random.default_rng(1))
        rng, win, H = np.random.default_rng(1), 8, 16
        ys, xs = rng.integers(0, H - win + 1, 3), rng.integers(0, H - win + 1, 3)
        errs, n = 0.0, 0
        for i, (y, x) in enumerate(zip(ys, xs)):
            rec = vae.decoder(zq[i:i + 1, :, y:y + win, x:x + win])[0]
            target = img[i, :, y * stride:(y + win) * stride, x * stride:(x + win) * stride]
            for py in range(win):
                for px in range(win):
                    inside_y = 2 <= py < 6 or (py < 2 and y == 0) or (py >= 6 and y + win == H)
                    inside_x = 2 <= px < 6 or (px < 2 and x == 0) or (px >= 6 and x + win == H)
                    if inside_y and inside_x:
                        block = (slice(None), slice(py * stride, (py + 1) * stride), slice(px * stride, (px + 1) * stride))
                        errs += (rec[block] - target[block]).abs().sum().item()
                        n += target[block].numel()
        # l1 is normalised by the mean weight over all channels' pixels: the scored pixels' mean error
        assert abs(loss.item() - errs / n) < 1e-5
    with pytest.raises(ConfigError, match="decoder_only"):
        tiny_vae_cfg(image_size=256, crop=64, quantize_whole=True)
    with pytest.raises(ConfigError, match="schedule"):
        tiny_vae_cfg(image_size=64, crop=32, init_from="x", decoder_only=True, quantize_whole=True)
    with pytest.raises(ConfigError, match="layout"):
        tiny_vae_cfg(layout="grid")
