"""Scale schedules: which token grids a generation visits, and where each token sits.

A schedule is data, computed once and passed everywhere (VAR's habit). Every scale
carries a time extent ``t`` (1 for images) so that a video path can reuse the same
objects. Token grids are written height x width.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .errors import ConfigError

# The 13-scale "1M" lists of the official release, keyed by template h/w.
# Inverse templates swap h and w and are derived below.
_BASE_1M: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}

# FastVAR's zero-shot 2K scale, appended to the 1M list. Only these
# templates have a published extra scale.
_EXTENSION_2K: dict[float, tuple[int, int]] = {
    1.000: (84, 84),
    1.333: (84, 63),
    2.000: (120, 60),
    0.500: (60, 120),
}

# Budget name -> number of scales taken from the front of the 1M list.
BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
# Nominal square resolution -> budget; 2048 means 1M plus the 2K extension scale.
RESOLUTIONS: dict[int, str] = {256: "0.06M", 512: "0.25M", 768: "0.60M", 1024: "1M", 2048: "2K"}

ROPE_GRID = 128  # the RoPE table covers 128 x 128 grid positions (2048 px / 16)


def _inverse_name(r: float) -> float:
    # The official code names inverse templates int(1000/r)/1000 (0.666, not 0.667).
    return int(1000 / r) / 1000


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    out: dict[float, tuple[tuple[int, int], ...]] = {}
    for r, scales in _BASE_1M.items():
        out[r] = scales
        if r != 1.0:
            out[_inverse_name(r)] = tuple((w, h) for h, w in scales)
    return out


TEMPLATES_1M = _build_templates()
# Official order: 1.0, 1.25, 0.8, 1.333, 0.75, ...
TEMPLATE_ORDER: tuple[float, ...] = tuple(TEMPLATES_1M)

_EXTENSION_BY_TEMPLATE: dict[float, tuple[int, int]] = dict(_EXTENSION_2K)


def nearest_template(h_div_w: float) -> float:
    """The template whose h/w is nearest to the request (the official rule)."""
    if not h_div_w > 0:
        raise ConfigError(f"aspect ratio h/w must be positive, got {h_div_w}")
    return min(TEMPLATE_ORDER, key=lambda r: abs(h_div_w - r))


def parse_aspect(aspect: str | float) -> float:
    """'1:1', '16:9' (width:height, as photographers write it), '0.75' (h/w) or a float h/w."""
    if isinstance(aspect, (int, float)):
        return float(aspect)
    text = str(aspect).strip()
    try:
        if ":" in text:
            w_str, h_str = text.split(":", 1)
            w, h = float(w_str), float(h_str)
            if w <= 0 or h <= 0:
                raise ValueError
            return h / w
        value = float(text)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        raise ConfigError(f"--aspect must look like W:H (e.g. 1:1, 4:3) or a positive h/w number, got {aspect!r}") from None


@dataclass(frozen=True)
class Scale:
    """One step of the schedule: a t x h x w token grid."""

    t: int
    h: int
    w: int

    @property
    def n(self) -> int:
        return self.t * self.h * self.w


@dataclass(frozen=True)
class ScaleSchedule:
    """A full generation schedule, with per-scale offsets and RoPE reference grid.

    ``ref_grid`` is the (h, w) grid whose integer coordinates every scale's tokens are
    mapped onto for RoPE ("star-style" normalisation): the last scale of the template's
    1M list, or the 2K extension scale when present.
    """

    template: float
    budget: str
    scales: tuple[Scale, ...]
    ref_grid: tuple[int, int]
    token_stride: int = 16

    def __post_init__(self) -> None:
        if not self.scales:
            raise ConfigError("a schedule needs at least one scale")
        uh, uw = self.ref_grid
        if uh > ROPE_GRID or uw > ROPE_GRID:
            raise ConfigError(f"reference grid {uh}x{uw} exceeds the {ROPE_GRID}x{ROPE_GRID} RoPE table")

    def __len__(self) -> int:
        return len(self.scales)

    @cached_property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(begin, end) of each scale in the concatenated token sequence."""
        out, begin = [], 0
        for s in self.scales:
            out.append((begin, begin + s.n))
            begin += s.n
        return tuple(out)

    @property
    def total_tokens(self) -> int:
        return self.offsets[-1][1]

    @property
    def last(self) -> Scale:
        return self.scales[-1]

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(height, width) of the decoded image in pixels."""
        return self.last.h * self.token_stride, self.last.w * self.token_stride

    def describe(self) -> str:
        hpx, wpx = self.pixel_size
        return f"{hpx}x{wpx}px (h x w), template {self.template}, {self.budget}, {len(self)} scales, {self.total_tokens} tokens"

    def positions(self, si: int) -> torch.Tensor:
        """RoPE table coordinates (n, 2) as (row, col) for the tokens of scale si, row-major.

        Token (i, j) of an (h, w) grid sits at round(i*uh/h), round(j*uw/w), computed in
        float32 and rounded half-to-even, like the official table.
        """
        s = self.scales[si]
        if s.t != 1:
            raise ConfigError("2-D RoPE positions are defined for image scales (t = 1) only")
        uh, uw = self.ref_grid
        rows = torch.round(torch.arange(s.h, dtype=torch.float32) * (uh / s.h)).long()
        cols = torch.round(torch.arange(s.w, dtype=torch.float32) * (uw / s.w)).long()
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)

    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "budget": self.budget,
            "scales": [[s.t, s.h, s.w] for s in self.scales],
            "total_tokens": self.total_tokens,
            "pixel_size_hw": list(self.pixel_size),
        }


def resolution_for_budget(budget: str) -> int:
    """The nominal resolution of a pixel budget ("0.06M" -> 256): a model's own resolution."""
    for resolution, name in RESOLUTIONS.items():
        if name == budget:
            return resolution
    raise ConfigError(f"unknown pixel budget {budget!r}; known: {', '.join(RESOLUTIONS.values())}")


def check_resolutions(values: list[int]) -> list[int]:
    """Distinct resolutions in order; each must have a schedule."""
    bad = [v for v in values if v not in RESOLUTIONS]
    if not values or bad:
        raise ConfigError(f"resolution must be one or more of {', '.join(map(str, RESOLUTIONS))}, got {values}")
    return list(dict.fromkeys(values))


def get_schedule(budget: str = "1M", template: float = 1.0, token_stride: int = 16) -> ScaleSchedule:
    """The official schedule for a budget ('0.06M', '0.25M', '0.60M', '1M', '2K') and template."""
    if template not in TEMPLATES_1M:
        raise ConfigError(f"unknown aspect template {template}; known: {', '.join(map(str, TEMPLATE_ORDER))}")
    full = TEMPLATES_1M[template]
    if budget == "2K":
        if template not in _EXTENSION_BY_TEMPLATE:
            known = ", ".join(str(t) for t in _EXTENSION_BY_TEMPLATE)
            raise ConfigError(f"the 2048 extension exists only for templates {known} (h/w), not {template}")
        grids = full + (_EXTENSION_BY_TEMPLATE[template],)
        ref = grids[-1]
    elif budget in BUDGETS:
        grids = full[: BUDGETS[budget]]
        ref = full[-1]  # shorter budgets reuse the 1M reference grid
    else:
        raise ConfigError(f"unknown pixel budget {budget!r}; known: {', '.join(list(BUDGETS) + ['2K'])}")
    scales = tuple(Scale(1, h, w) for h, w in grids)
    return ScaleSchedule(template=template, budget=budget, scales=scales, ref_grid=ref, token_stride=token_stride)


def schedule_for(resolution: int = 1024, aspect: str | float = "1:1", token_stride: int = 16) -> ScaleSchedule:
    """Pick the schedule for a nominal resolution (256/512/768/1024/2048) and aspect ratio."""
    if resolution not in RESOLUTIONS:
        known = ", ".join(map(str, RESOLUTIONS))
        raise ConfigError(f"no schedule for resolution {resolution}; choose one of {known}")
    return get_schedule(RESOLUTIONS[resolution], nearest_template(parse_aspect(aspect)), token_stride)


def schedule_for_size(width: int, height: int, token_stride: int = 16) -> ScaleSchedule:
    """The schedule whose output is closest to a requested pixel size WxH.

    The template is the nearest by h/w; the budget is the one whose pixel area is
    closest to the request (2K included where the template has one).
    """
    if width <= 0 or height <= 0:
        raise ConfigError(f"--size must be positive, got {width}x{height}")
    template = nearest_template(height / width)
    budgets = list(BUDGETS) + (["2K"] if template in _EXTENSION_BY_TEMPLATE else [])

    def area_gap(b: str) -> float:
        hp, wp = get_schedule(b, template, token_stride).pixel_size
        return abs(hp * wp - width * height)

    return get_schedule(min(budgets, key=area_gap), template, token_stride)


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768) as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 1024x768), got {text!r}") from None


def schedule(budget: str | None = None, aspect: str | float | None = None, *, resolution: int | None = None,
             size: str | tuple[int, int] | None = None, token_stride: int = 16) -> ScaleSchedule:
    """The one way to ask for a schedule.

    Give at most one of: a pixel budget ('0.06M', '0.25M', '0.60M', '1M', '2K'), a nominal
    resolution (256, 512, 768, 1024, 2048) or a pixel size ('WxH' or (width, height), snapped to
    the nearest schedule, whose own shape then overrides aspect). aspect (W:H text or an h/w
    number) snaps to the nearest template; with none of the three, the budget is '1M'.
    get_schedule, schedule_for and schedule_for_size are its building blocks.
    """
    given = [name for name, v in (("budget", budget), ("resolution", resolution), ("size", size)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of budget, resolution and size, not {' and '.join(given)}")
    if size is not None:
        w, h = parse_size(size) if isinstance(size, str) else size
        return schedule_for_size(w, h, token_stride)
    if resolution is not None:
        return schedule_for(resolution, "1:1" if aspect is None else aspect, token_stride)
    return get_schedule(budget or "1M", nearest_template(parse_aspect("1:1" if aspect is None else aspect)),
                        token_stride)
