"""InfinityStar spatio-temporal schedules: totals of the official settings, refs, and frame checks."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from stepvar.errors import ConfigError
from stepvar.video_schedules import RESOLUTIONS, TEMPLATES, build_star_schedule, check_frames

from conftest import official_copy

_STAR = official_copy("infinitystar")
OFFICIAL = _STAR / "infinity/schedules/dynamic_resolution.py" if _STAR else Path("/nonexistent")


@pytest.mark.parametrize("res,frames,n_scales,tokens,passes,positions", [
    ("720p", 81, 30, 157_479, 86, 244_197),
    ("480p", 81, 28, 81_879, 82, 161_397),
    ("480p", 161, 42, 159_859, 121, 311_097),
    ("256", 17, 22, 3_520, 23, 3_520),
])
def test_official_totals(res, frames, n_scales, tokens, passes, positions):
    s = RESOLUTIONS[res].schedule(frames)
    assert (s.n_scales, s.dense_tokens, s.block_passes, s.visual_token_passes) == (n_scales, tokens, passes, positions)


def test_720p_table():
    s = RESOLUTIONS["720p"].schedule(81)
    assert [sc.shape[1:] for sc in s.clip_scales(0)] == [
        (1, 1), (2, 3), (2, 4), (3, 5), (4, 7), (4, 8), (5, 9), (6, 11), (8, 13), (9, 16), (12, 21), (18, 32),
        (24, 43), (30, 53), (45, 80)]
    assert {sc.t for sc in s.clip_scales(0)} == {1} and {sc.t for sc in s.clip_scales(1)} == {20}
    assert s.size == (720, 1280)
    assert [sc.semantic_head for sc in s.clip_scales(1)] == [True] * 12 + [False] * 3
    assert [sc.semantic_codes for sc in s.clip_scales(1)] == [True] * 12 + [False] * 3
    # RoPE steps: passes of earlier scales (image clip: 15 scales x 3 repeats before clip 1).
    assert s.scales[15].first_pass == 45 and s.scales[15].frame_start == 1


def test_refs_previous_clip_largest_and_last_use():
    s = RESOLUTIONS["480p"].schedule(161)
    assert all(sc.refs == () for sc in s.clip_scales(0))
    assert all(sc.refs == (13,) for sc in s.clip_scales(1))
    assert all(sc.refs == (27,) for sc in s.clip_scales(2))
    assert s.last_use == {13: 27, 27: 41}
    assert [sc.frame_start for sc in (s.scales[0], s.scales[14], s.scales[28])] == [0, 1, 21]
    # 480p: 18 x 32 = 576 >= 350 is a detail-width scale although rel 11 is still >= semantic_scales
    assert s.scales[11].shape[1:] == (18, 32) and not s.scales[11].semantic_codes and not s.scales[11].semantic_head


def test_tiny_schedule_and_16_9():
    s = RESOLUTIONS["256"].schedule(17)
    assert s.scales[-1].shape == (4, 16, 16) and s.size == (256, 256)
    wide = build_star_schedule("0.06M", 17, (1,) * 11, (1,) * 11, 8, 100, h_div_w=0.571)
    assert wide.dense_tokens == 3_505 and wide.size == (192, 336)


@pytest.mark.parametrize("res,ok,bad", [
    ("720p", [1, 17, 33, 49, 65, 81], [2, 16, 80, 97, 161]),
    ("480p", [17, 81, 161], [97, 113, 129, 145, 18]),
])
def test_allowed_frame_counts(res, ok, bad):
    for f in ok:
        RESOLUTIONS[res].schedule(f)
    for f in bad:
        with pytest.raises(ConfigError, match="allowed"):
            check_frames(f, RESOLUTIONS[res].max_seconds)


def _official_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("official_dynamic_resolution", OFFICIAL)
    mod = importlib.util.module_from_spec(spec)
    if "tqdm" not in sys.modules:  # imported by the official file, unused by the schedule tables
        monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=None))
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not OFFICIAL.is_file(), reason="STEPVAR_OFFICIAL_CODE names no export of the official InfinityStar code")
def test_every_official_schedule_matches(monkeypatch):
    """Every template, budget and table-listed duration of the official function (161-frame table)."""
    mod = _official_module(monkeypatch)
    table = mod.get_ratio2hws_pixels2scales("infinity_elegant_clip20frames_v2", 161)
    assert sorted(table) == sorted(TEMPLATES)
    n = 0
    for ratio, per_budget in table.items():
        for budget, entry in per_budget.items():
            k = entry["scales_in_one_clip"]
            for pt, official in entry["pt2scale_schedule"].items():
                frames = (pt - 1) * 4 + 1 if pt > 1 else 1
                ours = build_star_schedule(budget, frames, (1,) * k, (1,) * k, k, 0, h_div_w=ratio)
                assert [sc.shape for sc in ours.scales] == [tuple(x) for x in official], (ratio, budget, pt)
                n += 1
    assert n == 15 * 4 * 11
