"""Pruning on InfinityStar's (t, h, w) scales: the 3-D score, propagation and resize against brute force,
and every registered method against the contract (keep 1 = dense bit for bit, tokens = the plan) on a
small random model."""

import itertools
import math
from dataclasses import replace

import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.models.infinitystar import InfinityStar, init_random_, star_preset
from stepvar.pruning.propagation import nearest_kept
from stepvar.pruning.registry import list_methods, make_pruner
from stepvar.pruning.scores import texture_score
from stepvar.pruning.spacetime import area_resize_grid, nearest_kept_3d, nearest_kept_grid, texture_score_grid
from stepvar.pruning.stepvar import StepVAR
from stepvar.video_pruning import for_video, video_pass_counts, video_plan
from stepvar.video_sampling import StarSampling, generate_latent
from stepvar.video_schedules import build_star_schedule



pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# brute-force references


def ref_texture(x_BLC, t, h, w, border, window):
    """sum_c (x - mean of the neighbourhood)^2, one token at a time."""
    B, L, C = x_BLC.shape
    x = x_BLC.double().reshape(B, t, h, w, C)
    out = torch.zeros(B, t, h, w, dtype=torch.float64)
    dts = (0,) if window == "frame" else (-1, 0, 1)

    def src(i, n):  # index of the padded neighbour i in a dim of length n, or None (outside, no value)
        if 0 <= i < n:
            return i
        if border == "replicate" or (border == "reflect" and n < 2):
            return min(max(i, 0), n - 1)
        if border == "reflect":
            return 1 if i < 0 else n - 2
        return None

    for b, f, r, c in itertools.product(range(B), range(t), range(h), range(w)):
        acc, count = torch.zeros(C, dtype=torch.float64), 0
        for df, dr, dc in itertools.product(dts, (-1, 0, 1), (-1, 0, 1)):
            ff = f + df if window == "volume" else f
            idx = (src(ff, t) if window == "volume" else f, src(r + dr, h), src(c + dc, w))
            if None in idx:
                if border == "zero_pad":
                    count += 1
                continue
            acc += x[b, idx[0], idx[1], idx[2]]
            count += 1
        out[b, f, r, c] = ((x[b, f, r, c] - acc / count) ** 2).sum()
    return out.reshape(B, L)


def ref_nearest(idx_Bl, t, h, w, metric, time_weight):
    """For every position, the slot of its nearest kept position: min (distance, position) by exhaustion."""
    B, l = idx_Bl.shape
    out = torch.empty(B, t * h * w, dtype=torch.long)
    for b in range(B):
        kept = [(int(p), j) for j, p in enumerate(idx_Bl[b])]
        for p in range(t * h * w):
            f, r, c = p // (h * w), p // w % h, p % w

            def dist(q):
                qf, qr, qc = q // (h * w), q // w % h, q % w
                dt, dr, dc = abs(f - qf), abs(r - qr), abs(c - qc)
                if time_weight is None:  # same frame first: (|dt|, in-frame distance)
                    space = {"euclidean": dr * dr + dc * dc, "manhattan": dr + dc, "chebyshev": max(dr, dc)}[metric]
                    return (dt, space)
                s = time_weight * dt
                return ({"euclidean": s * s + dr * dr + dc * dc, "manhattan": s + dr + dc,
                         "chebyshev": max(s, dr, dc)}[metric],)

            out[b, p] = min(kept, key=lambda qj: (dist(qj[0]), qj[0]))[1]
    return out


def ref_area(y_BLC, src, dst):
    """Area resize by averaging the adaptive-pooling windows, written out."""
    B, _, C = y_BLC.shape
    y = y_BLC.double().reshape(B, *src, C)
    out = torch.zeros(B, *dst, C, dtype=torch.float64)

    def win(i, n_in, n_out):
        return range(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out))

    for f, r, c in itertools.product(*(range(d) for d in dst)):
        cells = [y[:, a, b_, e] for a in win(f, src[0], dst[0]) for b_ in win(r, src[1], dst[1])
                 for e in win(c, src[2], dst[2])]
        out[:, f, r, c] = torch.stack(cells).mean(0)
    return out.reshape(B, -1, C)


# --------------------------------------------------------------------------------------------
# kernels


@pytest.mark.parametrize("window", ["frame", "volume"])
@pytest.mark.parametrize("border", ["exclude_pad", "zero_pad", "replicate", "reflect"])
def test_texture_3d_equals_brute_force(window, border):
    t, h, w = 3, 4, 5
    x = torch.randn(2, t * h * w, 6, generator=torch.Generator().manual_seed(0))
    got = texture_score_grid(x, (t, h, w), border=border, window=window)
    torch.testing.assert_close(got.double(), ref_texture(x, t, h, w, border, window), rtol=1e-5, atol=1e-5)


def test_texture_on_one_frame_is_the_image_filter_bit_for_bit():
    x = torch.randn(2, 30, 8)
    for window in ("frame", "volume"):
        assert torch.equal(texture_score_grid(x, (1, 5, 6), window=window), texture_score(x, 5, 6))


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "chebyshev"])
@pytest.mark.parametrize("time_weight", [None, 0.0, 0.5, 1.0, 3.0])
def test_nearest_3d_equals_brute_force(metric, time_weight):
    g = torch.Generator().manual_seed(1)
    t, h, w = 4, 3, 5
    L = t * h * w
    for l in (1, 3, 17, L):
        idx = torch.stack([torch.randperm(L, generator=g)[:l] for _ in range(2)])  # score order: unsorted
        got = nearest_kept_3d(idx, t, h, w, metric, time_weight)
        assert torch.equal(got, ref_nearest(idx, t, h, w, metric, time_weight)), (l, metric, time_weight)


def test_nearest_3d_with_empty_frames_and_one_frame():
    t, h, w = 5, 4, 4
    idx = torch.tensor([[3, 2 * 16 + 5, 2 * 16 + 6]])  # frames 1, 3, 4 keep nothing
    for tw in (None, 1.0):
        assert torch.equal(nearest_kept_3d(idx, t, h, w, "euclidean", tw), ref_nearest(idx, t, h, w, "euclidean", tw))
    idx2 = torch.tensor([[0, 7, 9], [15, 3, 4]])
    assert torch.equal(nearest_kept_grid(idx2, (1, 4, 4), "chebyshev"), nearest_kept(idx2, 4, 4, metric="chebyshev"))
    assert torch.equal(nearest_kept_3d(idx2, 1, 4, 4, "chebyshev"), nearest_kept(idx2, 4, 4, metric="chebyshev"))


def test_nearest_3d_refuses_bad_settings():
    with pytest.raises(ConfigError):
        nearest_kept_3d(torch.tensor([[0]]), 2, 2, 2, "euclidean", -1.0)
    with pytest.raises(ConfigError):
        make_pruner("stepvar", time_weight=-2)
    with pytest.raises(ConfigError):
        make_pruner("stepvar", texture_window="cube")


@pytest.mark.parametrize("src,dst", [((4, 6, 6), (4, 8, 8)), ((4, 7, 7), (4, 5, 5)), ((1, 4, 4), (3, 6, 6)),
                                     ((5, 6, 9), (2, 4, 4))])
def test_area_resize_3d_equals_brute_force(src, dst):
    y = torch.randn(2, math.prod(src), 3)
    torch.testing.assert_close(area_resize_grid(y, src, dst).double(), ref_area(y, src, dst), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the methods on a small random InfinityStar


@pytest.fixture(scope="module")
def small():
    cfg = replace(star_preset("infinitystar-tiny"), name="small", width=64, heads=2, kv_heads=1, depth=2,
                  block_chunks=1, text_channels=32, text_maxlen=16)
    return init_random_(InfinityStar(cfg), seed=1).eval()


def schedule(frames=9, video=(1,) * 11):  # 9 frames: the image clip, then one clip of 2 latent frames
    return build_star_schedule("0.06M", frames, (1,) * 11, video, 8, 100, 1.0)


TEXT = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def dense_ref(small):
    return generate_latent(small, schedule(), TEXT, StarSampling(seed=3))


@pytest.mark.parametrize("name", list_methods())
def test_keep_one_is_dense_bit_exact_on_video(small, dense_ref, name):
    sched = schedule()
    pruner = make_pruner(name, keep=1.0)
    if pruner.accelerations.active:  # e.g. fastvar-skip = fastvar with skip_last=2: refused on video
        with pytest.raises(ConfigError, match="image models only"):
            generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=pruner)
        return
    if for_video(make_pruner(name, keep=1.0)).plan(_view(sched), small.cfg.depth).skipped:
        pytest.skip(f"{name} skips scales by definition: it is never dense")
    r = generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=pruner)
    assert r.plan.keep and all(k == 1.0 for k in r.plan.keep.values()) or name == "dense"
    assert torch.equal(r.latent, dense_ref.latent)
    assert r.token_passes == dense_ref.token_passes


def _view(sched):
    from stepvar.video_pruning import VideoScheduleView

    return VideoScheduleView(sched)


# Presets with an acceleration (fastvar-skip) are refused on video: test_keep_one_is_dense_bit_exact_on_video checks that.
VIDEO_METHODS = [m for m in list_methods() if not make_pruner(m).accelerations.active]


@pytest.mark.parametrize("name", VIDEO_METHODS)
def test_tokens_per_block_equal_the_plan_on_video(small, dense_ref, name):
    sched = schedule(video=(1,) * 9 + (2, 1))  # a pruned scale that runs twice
    r = generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=make_pruner(name))
    assert dict(r.counter.counts) == video_pass_counts(r.plan, sched)
    if name != "dense":
        assert r.plan.pruned_scales and min(r.plan.pruned_scales) >= sched.scales_per_clip  # the image clip is dense
        assert r.token_passes < sum(s.tokens * s.repeats for s in sched.scales) * small.cfg.depth
        assert not torch.equal(r.latent[:, :, 1:], dense_ref.latent[:, :, 1:]) or r.plan.skipped


def test_one_mask_for_both_rows_and_all_repeats(small, monkeypatch):
    chosen = []
    original = StepVAR.select

    def recording(self, *args, **kwargs):
        idx = original(self, *args, **kwargs)
        chosen.append(idx)
        return idx

    monkeypatch.setattr(StepVAR, "select", recording)
    sched = schedule(video=(1,) * 8 + (3, 2, 1))
    pruner = make_pruner("random", keep=0.5)  # random scores differ per row: sharing is what makes them equal
    r = generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=pruner)
    assert len(chosen) == len(r.plan.pruned_scales)  # once per scale, not once per repeat
    assert all(torch.equal(idx[0], idx[1]) for idx in chosen)
    assert dict(r.counter.counts) == video_pass_counts(r.plan, sched)


def test_video_settings_change_the_result(small):
    runs = [generate_latent(small, schedule(frames=17), TEXT, StarSampling(seed=3), pruner=make_pruner("stepvar", **kw))
            for kw in ({}, {"texture_window": "volume"}, {"time_weight": 0.0})]
    assert not torch.equal(runs[0].latent, runs[1].latent)
    assert not torch.equal(runs[0].latent, runs[2].latent)


def test_a_scale_a_later_clip_reads_runs_dense():
    sched = build_star_schedule("0.06M", 161, (1,) * 11, (1,) * 11, 8, 100, 1.0)  # three clips
    referenced = sorted(sched.last_use)
    assert referenced == [10, 21]
    pruner = for_video(make_pruner("stepvar", keep=0.5, first_scale=8))
    plan = video_plan(pruner, sched, 4)
    assert 10 not in plan.keep and 21 not in plan.keep and 20 in plan.keep and 32 in plan.keep
    assert any("[10, 21] run dense" in n for n in plan.extra["notes"])
    with pytest.raises(ConfigError, match="later clip reads"):
        video_plan(for_video(make_pruner("fastvar", keep=0.5, skip=[21])), sched, 4)
    default = video_plan(for_video(make_pruner("stepvar")), sched, 4)
    assert default.pruned_scales == [18, 19, 20, 29, 30, 31, 32]  # video clips, half the final side; 21 read by clip 2


def test_fastvar_on_video_uses_its_position_rule():
    sched = schedule(frames=17)
    pruner = for_video(make_pruner("fastvar", keep=0.4))
    plan = video_plan(pruner, sched, 36)
    assert plan.pruned_scales == [18, 19, 20, 21] and plan.extra["cache_scale"] == 17 and plan.layers == (3, 32)
    with pytest.raises(ConfigError, match="image grids only"):
        video_plan(for_video(make_pruner("stepvar", restore="idw")), sched, 4)
    with pytest.raises(ConfigError, match="kv restored"):
        video_plan(for_video(make_pruner("stepvar", kv="restored")), sched, 4)


def test_the_documented_example_method_runs_on_video(small, dense_ref):
    """docs/adding_a_method.md's example, exactly as written, prunes video scales through the same contract."""
    import re
    import types
    from pathlib import Path

    from stepvar.pruning import registry

    doc = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[0]
    module = types.ModuleType("every_nth_video")
    try:
        exec(compile(code, str(doc), "exec"), module.__dict__)
        sched = schedule()
        one = generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=make_pruner("every-nth", keep=1.0))
        assert torch.equal(one.latent, dense_ref.latent)
        half = generate_latent(small, sched, TEXT, StarSampling(seed=3), pruner=make_pruner("every-nth", keep=0.5))
        assert dict(half.counter.counts) == video_pass_counts(half.plan, sched) and half.plan.pruned_scales
        assert not torch.equal(half.latent, dense_ref.latent)
    finally:
        registry.METHODS.pop("every-nth", None)
