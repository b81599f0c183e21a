import pytest

from stepvar.errors import ConfigError
from stepvar.schedules import (TEMPLATE_ORDER, get_schedule, nearest_template, parse_aspect, schedule, schedule_for,
                               schedule_for_size)

# tokens per template and budget (0.06M, 0.25M, 0.60M, 1M); inverses share them
TOKENS = {
    1.0: (521, 2521, 6425, 10521), 1.25: (614, 2814, 6854, 10774), 1.333: (665, 2657, 7085, 10973),
    1.5: (533, 2759, 6941, 10997), 1.75: (472, 2628, 7220, 11252), 2.0: (451, 2681, 7219, 11269),
    2.5: (555, 2555, 6805, 10805), 3.0: (509, 2588, 7016, 11123),
}
INVERSE = {1.25: 0.8, 1.333: 0.75, 1.5: 0.666, 1.75: 0.571, 2.0: 0.5, 2.5: 0.4, 3.0: 0.333}
PIXELS_1M = {1.0: (1024, 1024), 1.25: (1120, 896), 1.333: (1152, 864), 1.5: (1248, 832),
             1.75: (1344, 768), 2.0: (1440, 720), 2.5: (1600, 640), 3.0: (1776, 592)}


def test_template_list_and_order():
    assert TEMPLATE_ORDER == (1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333)


@pytest.mark.parametrize("template", list(TOKENS))
def test_token_totals(template):
    for budget, want in zip(("0.06M", "0.25M", "0.60M", "1M"), TOKENS[template]):
        assert get_schedule(budget, template).total_tokens == want
        if template in INVERSE:
            inv = get_schedule(budget, INVERSE[template])
            assert inv.total_tokens == want
            assert [(s.h, s.w) for s in inv.scales] == [(s.w, s.h) for s in get_schedule(budget, template).scales]
    assert get_schedule("1M", template).pixel_size == PIXELS_1M[template]


def test_offsets_1024():
    s = get_schedule("1M", 1.0)
    assert [b for b, _ in s.offsets] == [0, 1, 5, 21, 57, 121, 265, 521, 921, 1497, 2521, 4121, 6425]
    assert s.offsets[-1][1] == 10521


def test_rope_positions_known_cases():
    s = get_schedule("1M", 1.0)
    pos = s.positions(4)  # the 8x8 scale of 1024^2
    assert sorted(set(pos[:, 0].tolist())) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert pos.shape == (64, 2) and pos[9].tolist() == [8, 8]
    last = get_schedule("0.25M", 1.0).positions(9)  # 512 px reuses the 64x64 reference grid
    assert sorted(set(last[:, 1].tolist()))[:4] == [0, 2, 4, 6]
    assert int(last.max()) == 62


def test_2k_extension():
    totals = {1.0: 17577, 1.333: 16265, 2.0: 18469, 0.5: 18469}
    for template, want in totals.items():
        s = get_schedule("2K", template)
        assert s.total_tokens == want and len(s) == 14
    assert get_schedule("2K", 1.0).pixel_size == (1344, 1344)
    assert get_schedule("2K", 2.0).pixel_size == (1920, 960)
    assert schedule_for(2048, "1:1").ref_grid == (84, 84)
    with pytest.raises(ConfigError):
        get_schedule("2K", 1.5)


def test_aspect_and_size_snapping():
    assert parse_aspect("4:3") == pytest.approx(0.75)  # W:H -> h/w
    assert nearest_template(0.76) == 0.75
    assert schedule_for(512, "1:2").template == 2.0  # h/w = 2 for a 1:2 (W:H) portrait
    s = schedule_for_size(1000, 1000)
    assert s.pixel_size == (1024, 1024)
    assert schedule_for_size(256, 256).budget == "0.06M"
    assert schedule("0.06M").total_tokens == 521
    assert schedule(resolution=512, aspect="16:9") == schedule_for(512, "16:9")
    assert schedule(size="1000x1000") == schedule_for_size(1000, 1000)
    assert schedule() == get_schedule("1M")
    with pytest.raises(ConfigError, match="resolution and size"):
        schedule(resolution=256, size="256x256")
    for bad in ("0:1", "abc", "-1"):
        with pytest.raises(ConfigError):
            parse_aspect(bad)
    with pytest.raises(ConfigError):
        schedule_for(300)
