"""Analytic FLOPs of the InfinityStar schedules (one guidance row, about 100 text tokens)."""

import pytest

from stepvar.models.infinitystar import build_on_meta, count_parameters, star_preset
from stepvar.video_flops import block_params, last_video_scales, video_flops
from stepvar.video_schedules import RESOLUTIONS

CFG = star_preset("infinitystar-8b")


def test_block_params_match_the_model():
    model = build_on_meta(CFG)
    assert block_params(CFG) == count_parameters(model.blocks[0]) == 243_278_080


@pytest.mark.parametrize("res,total_pflop,last_share,image_share", [
    ("720p", 9.26, 0.483, 0.046),
    ("480p", 4.39, 0.270, 0.048),
])
def test_dense_totals_and_shares(res, total_pflop, last_share, image_share):
    s = RESOLUTIONS[res].schedule(81)
    f = video_flops(CFG, s)
    assert f.total / 1e15 == pytest.approx(total_pflop, abs=0.005)
    assert f.per_scale[-1] / f.total == pytest.approx(last_share, abs=0.0005)
    assert sum(f.per_scale[: s.scales_per_clip]) / f.total == pytest.approx(image_share, abs=0.0005)
    pruned = last_video_scales(s)
    assert sum(f.per_scale[i] for i in pruned) / f.total == pytest.approx(0.757, abs=0.001)


def test_keep_bounds():
    s = RESOLUTIONS["720p"].schedule(81)
    dense = video_flops(CFG, s).total
    pruned = last_video_scales(s)
    assert video_flops(CFG, s, {i: 1.0 for i in pruned}).total == dense
    k4 = video_flops(CFG, s, {i: 0.4 for i in pruned}).total
    # Linear layers of the pruned scales shrink with keep, their self-attention up to keep squared:
    # the ratio lies between those two extremes for the pruned 75.8%.
    assert 1 / (1 - 0.758 * 0.6) < dense / k4 < 1 / (1 - 0.758 * (1 - 0.4 ** 2))
