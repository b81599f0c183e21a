"""InfinityStar's generation loop on a small random model: guidance, positions, accumulation, determinism."""

import math
from dataclasses import replace

import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.models.infinitystar import InfinityStar, init_random_, star_preset
from stepvar.video_sampling import (
    StarSampling, apg_guidance, star_prompt, bits_to_codes, codes_to_grid, generate_latent, scale_positions,
)
from stepvar.video_schedules import RESOLUTIONS, build_star_schedule


@pytest.fixture(scope="module")
def small():
    cfg = replace(star_preset("infinitystar-tiny"), name="small", width=64, heads=2, kv_heads=1, depth=2,
                  block_chunks=1, text_channels=32, text_maxlen=16)
    return init_random_(InfinityStar(cfg), seed=1).eval()


def small_schedule(frames=17, image=(1,) * 11, video=(1,) * 11):  # 1 frame: the image clip alone
    return build_star_schedule("0.06M", frames, image, video, 8, 100, 1.0)


def test_apg_matches_formula_written_out():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 6, 4, generator=g), torch.randn(1, 6, 4, generator=g)
    for threshold in (0.0, 0.05, 100.0):
        got = apg_guidance(cond, uncond, 34.0, threshold)
        c, u = cond.double().flatten(), uncond.double().flatten()
        diff = c - u
        rms = math.sqrt(float((diff ** 2).sum()) / diff.numel())
        if threshold > 0:
            diff = diff * min(1.0, threshold / rms)
        unit = c / c.norm()
        orth = diff - (diff @ unit) * unit
        want = (c + 33.0 * orth).view(1, 6, 4)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_positions_of_a_720p_video_scale():
    s = RESOLUTIONS["720p"].schedule(81)
    sc = s.scales[15 + 11]  # clip 1, rel 11: (20, 18, 32)
    pos = scale_positions(sc, 2, s.grid, 512)
    assert pos.shape == (20 * 18 * 32, 4)
    assert set(pos[:, 0].tolist()) == {512 + sc.first_pass + 2}
    assert pos[:, 1].min() == 1 and pos[:, 1].max() == 20  # absolute latent frames 1..20
    rows = sorted(set(pos[:, 2].tolist()))
    assert rows == [round(i * 45 / 18) for i in range(18)]  # 45/18 = 2.5: halves round to even
    assert pos[1, 3] - pos[0, 3] in (2, 3) and pos[32 * 18, 1] == 2  # row-major (t, h, w)


def test_codes_are_unit_bsq_and_stretch_channels():
    bits = torch.randint(0, 2, (1, 2, 3, 3, 16))
    codes = bits_to_codes(bits)
    assert codes.shape == (1, 16, 2, 3, 3)
    torch.testing.assert_close(codes.abs(), torch.full_like(codes, 0.25))
    up = codes_to_grid(codes, (2, 6, 6))
    assert up.shape == (1, 64, 2, 6, 6)
    # frames are never mixed: frame 1 of the result depends only on frame 1 of the codes
    other = codes.clone()
    other[:, :, 0] = 0
    torch.testing.assert_close(codes_to_grid(other, (2, 6, 6))[:, :, 1], up[:, :, 1])


def test_forced_bits_accumulate_exactly(small):
    sched = small_schedule(image=(2,) + (1,) * 10, video=(1, 3) + (1,) * 9)
    g = torch.Generator().manual_seed(2)
    forced = [torch.randint(0, 2, (1, s.t, s.h, s.w, 16 if s.semantic_codes else 64), generator=g)
              for s in sched.scales for _ in range(s.repeats)]
    res = generate_latent(small, sched, torch.randn(5, 32), StarSampling(), forced_bits=forced)
    assert res.latent.shape == (1, 64, 5, 16, 16)
    # Brute force: each clip's latent is the sum of its passes' codes on the clip grid.
    want, p = [], 0
    for clip in range(sched.n_clips):
        acc = torch.zeros(1, 64, *sched.clip_grid(clip))
        for s in sched.clip_scales(clip):
            for _ in range(s.repeats):
                acc = acc + codes_to_grid(bits_to_codes(forced[p]), sched.clip_grid(clip))
                p += 1
        want.append(acc)
    torch.testing.assert_close(res.latent, torch.cat(want, 2), atol=1e-6, rtol=0)
    assert [(r.scale, r.repeat) for r in res.passes][:3] == [(0, 0), (0, 1), (1, 0)]
    assert len(res.passes) == sched.block_passes - 1


def test_sampling_is_seeded_and_guidance_changes_it(small):
    sched = small_schedule(frames=1)
    text = torch.randn(5, 32)
    a = generate_latent(small, sched, text, StarSampling(seed=3)).latent
    b = generate_latent(small, sched, text, StarSampling(seed=3)).latent
    c = generate_latent(small, sched, text, StarSampling(seed=4)).latent
    d = generate_latent(small, sched, text, StarSampling(seed=3, guidance=1.0)).latent
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


PER_TOKEN = 2 * 2 * 1 * 1 * 32 * 4  # layers x (k, v) x rows x kv heads x head dim x fp32 bytes


def test_cache_holds_only_what_a_later_clip_reads(small):
    """17 frames: clip 1 reads the image clip's largest scale (256 tokens); nothing reads clip 1."""
    res = generate_latent(small, small_schedule(), torch.randn(3, 32), StarSampling(guidance=1.0))
    assert res.peak_kv_bytes == PER_TOKEN * (3 + 256)


@pytest.mark.slow
def test_three_clips_read_the_previous_clip_only(small):
    sched = build_star_schedule("0.06M", 161, (1,) * 11, (1,) * 11, 8, 100, 1.0)
    seen = []
    res = generate_latent(small, sched, torch.randn(3, 32), StarSampling(guidance=1.0),
                          on_pass=lambda s, r, lg: seen.append(lg.shape))
    assert res.latent.shape == (1, 64, 41, 16, 16)
    # Peak while clip 1's largest scale writes: text + the image clip's largest (freed after this
    # scale, its last reader) + clip 1's largest (20 x 16 x 16).
    assert res.peak_kv_bytes == PER_TOKEN * (3 + 256 + 20 * 256)
    assert seen[0] == (1, 1, 32) and seen[-1] == (1, 20 * 256, 128)


def test_bad_settings():
    with pytest.raises(ConfigError):
        StarSampling(guidance=0.5)
    with pytest.raises(ConfigError):
        StarSampling(tau_video=0)


def test_prompt_template_carries_the_duration():
    assert star_prompt("a red car", 5) == "<<<t=5s>>>a red car, Close-up on big objects, emphasize scale and detail"
