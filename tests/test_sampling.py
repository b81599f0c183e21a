"""The generation loop: determinism, CFG rows, per-scale settings, bits sampling."""

import numpy as np
import pytest
import torch

from stepvar.errors import ConfigError, StepvarError
from stepvar.sampling import SamplingConfig, sample_bits


def test_same_seed_same_image_different_seed_different(tiny_pipe):
    a = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=7))
    b = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=7))
    c = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=8))
    assert a.images.shape == (1, 256, 256, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert all(torch.equal(x, y) for x, y in zip(a.sample.bits, b.sample.bits))


def test_cfg_one_runs_a_single_branch(tiny_pipe):
    one = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=1, cfg=1.0))
    two = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=1, cfg=3.0))
    assert one.sample.rows == 1 and two.sample.rows == 2
    # half the work per layer: the KV cache of one branch is half that of two
    assert two.sample.kv_cache_bytes == 2 * one.sample.kv_cache_bytes


def test_per_scale_cfg_and_tau_lists(tiny_pipe):
    n = len(tiny_pipe.schedule())
    r = tiny_pipe.generate("x", sampling=SamplingConfig(seed=1, cfg=[1.0] * (n - 1) + [2.0], tau=[0.5] * n))
    assert r.sample.rows == 2
    with pytest.raises(ConfigError):
        tiny_pipe.generate("x", sampling=SamplingConfig(cfg=[3.0, 3.0]))
    with pytest.raises(ConfigError):
        tiny_pipe.generate("x", sampling=SamplingConfig(cfg=-1.0))
    with pytest.raises(ConfigError):
        tiny_pipe.generate("x", sampling=SamplingConfig(tau=0.0))


def test_batch_of_prompts_is_row_independent(tiny_pipe):
    both = tiny_pipe.generate(["a red circle", "two blue squares"], sampling=SamplingConfig(seed=3, cfg=1.0))
    assert both.images.shape[0] == 2
    assert not np.array_equal(both.images[0], both.images[1])


def test_empty_prompt_is_refused(tiny_pipe):
    with pytest.raises(StepvarError):
        tiny_pipe.generate("   ")


def test_sample_bits_top_p_and_pairs():
    g = torch.Generator().manual_seed(0)
    # bit 0 strongly prefers value 1; bit 1 strongly prefers value 0; bit 2 is a coin flip
    logits = torch.tensor([[[-10.0, 10.0, 10.0, -10.0, 0.0, 0.0]]]).repeat(1, 4000, 1)
    bits = sample_bits(logits, top_p=0.97, generators=[g])
    assert bits.shape == (1, 4000, 3)
    assert bits[..., 0].all() and not bits[..., 1].any()
    assert 0.45 < bits[..., 2].float().mean() < 0.55
    # a 0.02 minority is zeroed by top-p 0.97 (<= 0.03), kept with top-p 1
    p = torch.log(torch.tensor([0.98, 0.02]))
    logits = p.repeat(1, 20000, 1)
    assert not sample_bits(logits, 0.97, [torch.Generator().manual_seed(1)]).any()
    assert sample_bits(logits, 1.0, [torch.Generator().manual_seed(1)]).any()


def test_unconditional_rows_dropped_once_cfg_is_one_for_the_rest(tiny_pipe):
    n = len(tiny_pipe.schedule())
    drop = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=4, cfg=[3.0] * (n - 2) + [1.0, 1.0]))
    # the same mix, but computing the unconditional rows (a weight of 1e-7 on them keeps them alive)
    keep = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=4, cfg=[3.0] * (n - 2) + [1.0000001] * 2))
    assert drop.sample.kv_cache_bytes < keep.sample.kv_cache_bytes
    for a, b in zip(drop.sample.bits, keep.sample.bits):
        assert (a == b).float().mean() > 0.999


def test_a_prompt_gets_the_same_image_whatever_else_is_in_the_batch(tiny_pipe):
    alone = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=9))
    batch = tiny_pipe.generate(["a red circle", "two blue squares"], sampling=SamplingConfig(seed=9))
    assert all((a[0] == b[0]).float().mean() > 0.999 for a, b in zip(alone.sample.bits, batch.sample.bits))


def test_sampling_defaults_come_from_the_model_preset():
    from stepvar.errors import ConfigError
    from stepvar.sampling import SamplingConfig

    s = SamplingConfig.for_model({"cfg": 5.0, "tau": 0.25}, seed=3)
    assert (s.cfg, s.tau, s.top_p, s.seed) == (5.0, 0.25, SamplingConfig().top_p, 3)
    s = SamplingConfig.for_model({"cfg": 5.0}, cfg=[1.0, 2.0], tau=0.7, top_p=0.9)
    assert (s.cfg, s.tau, s.top_p) == ([1.0, 2.0], 0.7, 0.9)  # the command line wins
    d = SamplingConfig()
    assert SamplingConfig.for_model({}).cfg == d.cfg and SamplingConfig.for_model({}).tau == d.tau
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig.for_model({"temperature": 1.0})


def test_forced_bits_replace_the_sampled_ones(tiny_pipe):
    from stepvar.sampling import sample

    pipe = tiny_pipe
    schedule = pipe.schedule()
    text, mask = pipe.text_encoder.encode(["a red circle"], pipe.device)
    a = sample(pipe.model, text, mask, schedule, pipe.codec, SamplingConfig(seed=1))
    # forcing a run's own bits at the first scales reproduces it exactly, whatever the seed
    same = sample(pipe.model, text, mask, schedule, pipe.codec, SamplingConfig(seed=2), forced_bits=a.bits[:len(schedule)])
    assert torch.equal(same.latent_BdHW, a.latent_BdHW)
    # forced first scale: exactly those bits there, and the later scales follow from them
    flipped = ~a.bits[0]
    b = sample(pipe.model, text, mask, schedule, pipe.codec, SamplingConfig(seed=1), forced_bits=[flipped])
    assert torch.equal(b.bits[0], flipped) and not torch.equal(b.latent_BdHW, a.latent_BdHW)
