"""A procedural world of coloured shapes: the data set of the toy text-to-image model.

Why a procedural world: the pruning methods need a real next-scale generator to be
measured on, and a GenEval-style evaluator needs ground truth it can check without a
detector network. Scenes hold 1-4 flat shapes (circle, square, triangle) in four strongly
saturated colours on a low-saturation background. Both the background and the objects
carry a fine texture (a period of a few pixels), so the late, fine scales of a VAR model
have real high-frequency work to do -- otherwise pruning them would look free.

Geometry is in fractions of the image side (0..1, y grows downwards), so a scene
renders at any resolution; texture periods are given in pixels at 256 and scale with it.
Everything random is drawn from a numpy Generator passed in, so data are reproducible.

The word lists (colours, shapes, relations) live in stepvar.toy.vocabulary, which both
this module and the grammar read: the world imports the grammar, never the reverse.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from .grammar import describe, parse, random_spec
from .vocabulary import COLORS, RELATIONS, SHAPES  # noqa: F401  (SHAPES: the world's word lists, read as world.SHAPES)

BG_TEXTURES = ("stripes", "checker", "noise")
OBJ_TEXTURES = ("none", "stripes", "dots", "noise")

# Layout constants (fractions of the image side).
EDGE = 0.03          # clear border around every object
GAP = 0.06           # clear space between objects (~15 px at 256): survives blur
SIZE_RANGES = {1: (0.22, 0.36), 2: (0.18, 0.30), 3: (0.16, 0.25), 4: (0.16, 0.22)}
MAX_OBJECTS = 4


@dataclass
class Obj:
    """One shape. cx, cy: centre of its bounding box; size: box side (fractions).

    shade scales the colour's brightness (variety without changing hue); the texture
    fields describe a brightness modulation in the object's own hue.
    """

    shape: str
    color: str
    cx: float
    cy: float
    size: float
    shade: float = 1.0
    texture: str = "none"
    texture_period: float = 3.0
    texture_amp: float = 0.0


@dataclass
class Background:
    """A low-saturation base colour with an achromatic fine texture.

    The texture adds the same value to all three channels, so it never adds chroma:
    the objects stay the only saturated things in the image.
    """

    rgb: tuple[int, int, int] = (200, 200, 200)
    texture: str = "stripes"
    period: float = 3.0
    amplitude: float = 8.0   # in 0..255 units
    angle: float = 0.0       # stripe orientation, radians


@dataclass
class Scene:
    """Objects over a background; texture_seed makes noise textures reproducible."""

    objects: list[Obj]
    background: Background = field(default_factory=Background)
    texture_seed: int = 0


# ----------------------------------------------------------------------------- render


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in pixels (x, y), float32, shape (size, size)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="xy")


def _pattern(kind: str, period: float, x, y, rng, angle: float = 0.0) -> np.ndarray:
    """A zero-mean texture in [-1, 1] with a period of a few pixels."""
    if kind == "none":
        return np.zeros_like(x)
    if kind == "stripes":
        t = x * np.cos(angle) + y * np.sin(angle)
        return np.sin(2 * np.pi * t / period)
    if kind == "checker":
        return ((np.floor(x / period) + np.floor(y / period)) % 2) * 2.0 - 1.0
    if kind == "dots":
        return np.cos(2 * np.pi * x / period) * np.cos(2 * np.pi * y / period)
    if kind == "noise":
        # Blocky noise: one value per period-sized cell, so its scale follows period.
        cell = max(1, int(round(period / 2)))
        n = x.shape[0] // cell + 1
        g = np.clip(rng.standard_normal((n, n)) / 2, -1, 1).astype(np.float32)
        g = np.repeat(np.repeat(g, cell, 0), cell, 1)
        return g[: x.shape[0], : x.shape[1]]
    raise ValueError(f"unknown texture {kind!r}")


def signed_distance(obj: Obj, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Signed distance (pixels, <0 inside) to obj's outline; exact enough near edges.

    Used for a 1-pixel soft edge: cheaper than supersampling and just as smooth.
    Triangles are isosceles, pointing up, base = height = size (bbox fill ratio 0.5).
    """
    cx, cy, h = obj.cx * size, obj.cy * size, obj.size * size / 2
    dx, dy = x - cx, y - cy
    if obj.shape == "circle":
        return np.hypot(dx, dy) - h
    if obj.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - h
    if obj.shape == "triangle":
        base = dy - h
        ay = dy + h  # y relative to the apex
        left = (-2 * dx - ay) / np.sqrt(5)
        right = (2 * dx - ay) / np.sqrt(5)
        return np.maximum(base, np.maximum(left, right))
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_alpha(obj: Obj, size: int = 256) -> np.ndarray:
    """Coverage in [0, 1] of obj on a size x size image (anti-aliased edge)."""
    x, y = _grid(size)
    return np.clip(0.5 - signed_distance(obj, x, y, size), 0.0, 1.0)


def _background_image(bg: Background, x, y, size: int, rng) -> np.ndarray:
    """Base colour plus the achromatic texture, float (H, W, 3) in 0..255."""
    period = bg.period * size / 256
    tex = _pattern(bg.texture, period, x, y, rng, bg.angle) * bg.amplitude
    return np.asarray(bg.rgb, np.float32)[None, None, :] + tex[..., None]


def _object_fill(obj: Obj, x, y, size: int, rng) -> np.ndarray:
    """The object's colour times (1 + amp * texture): same hue, varying brightness."""
    base = np.asarray(COLORS[obj.color], np.float32) * obj.shade
    period = obj.texture_period * size / 256
    mod = 1.0 + obj.texture_amp * _pattern(obj.texture, period, x, y, rng)
    return base[None, None, :] * mod[..., None]


def render(scene: Scene, size: int = 256, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw scene as uint8 (size, size, 3). Deterministic: noise comes from
    scene.texture_seed unless an explicit rng is given."""
    rng = rng if rng is not None else np.random.default_rng(scene.texture_seed)
    x, y = _grid(size)
    img = _background_image(scene.background, x, y, size, rng)
    for obj in scene.objects:
        a = np.clip(0.5 - signed_distance(obj, x, y, size), 0.0, 1.0)[..., None]
        img = img * (1 - a) + _object_fill(obj, x, y, size, rng) * a
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def objects_mask(scene: Scene, size: int = 256) -> np.ndarray:
    """Boolean mask of pixels any object touches (alpha > 0); for tests and analysis."""
    mask = np.zeros((size, size), bool)
    for obj in scene.objects:
        mask |= object_alpha(obj, size) > 0
    return mask


# ----------------------------------------------------------------------------- layout


def relation_offsets(kind: str, a: tuple[float, float], b: tuple[float, float]):
    """(along, across) of centre a relative to centre b for 'A <kind> B'.

    along > 0 means the relation points the right way; across is the absolute offset
    on the other axis. Shared by the layout sampler and the evaluator so that both
    agree on what "left of" means.
    """
    ux, uy = RELATIONS[kind]
    dx, dy = a[0] - b[0], a[1] - b[1]
    return dx * ux + dy * uy, abs(dx * uy - dy * ux)


def _apart(p, q) -> bool:
    """True when two (cx, cy, size) boxes are separated by at least GAP on some axis."""
    need = (p[2] + q[2]) / 2 + GAP
    return abs(p[0] - q[0]) >= need or abs(p[1] - q[1]) >= need


def _clear_relation(kind: str, pa, pb) -> bool:
    """Relation holds unambiguously: A is past B along the axis (boxes do not even
    overlap in projection) and the cross-axis offset is at most half of that."""
    along, across = relation_offsets(kind, pa[:2], pb[:2])
    return along >= (pa[2] + pb[2]) / 2 + GAP and across <= along / 2


def _valid_layout(boxes, relation) -> bool:
    """Every two boxes apart, and the relation (kind, index of A, index of B), if any, clear."""
    n = len(boxes)
    if not all(_apart(boxes[i], boxes[j]) for i in range(n) for j in range(i)):
        return False
    return relation is None or _clear_relation(relation[0], boxes[relation[1]], boxes[relation[2]])


def _sample_layout(n: int, relation, rng: np.random.Generator, scale: float = 1.0):
    """Rejection-sample n non-overlapping (cx, cy, size) boxes; None if it gave up."""
    lo, hi = SIZE_RANGES[n]
    for _ in range(500):
        sizes = rng.uniform(lo, hi, n) * scale
        pos = rng.uniform(EDGE + sizes / 2, 1 - EDGE - sizes / 2, (2, n))
        boxes = [(pos[0, i], pos[1, i], sizes[i]) for i in range(n)]
        if _valid_layout(boxes, relation):
            return boxes
    return None


# Slot layouts: every prompt form has one arrangement, jittered. Why: with free placement the
# coarse scales (1x1..4x4 tokens) must commit to *where* before *what*, and a 4M-parameter model
# trained on CPU learnt the arrangement but not which colour goes where (docs/model_card.md:
# held-out 0.364, relation prompts 0.075). With slots the coarse tokens follow from the prompt.
LAYOUTS = ("free", "slots")
SLOT_JITTER = 0.07
SLOT_CENTRES: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.28, 0.5), (0.72, 0.5)),
    3: ((0.25, 0.3), (0.75, 0.3), (0.5, 0.72)),
    4: ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)),
}
SLOT_SINGLE_JITTER = 0.15
RELATION_SPREAD = 0.22   # |centre - 0.5| of A and B along the relation's axis


def check_layout(layout: str) -> str:
    """layout itself, or the one-line ConfigError a command shows for an unknown one."""
    from stepvar.errors import ConfigError

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return layout


def _slot_centres(n: int, relation) -> list[tuple[float, float]]:
    """Un-jittered centres: A and B either side of the middle for a relation, else SLOT_CENTRES[n]."""
    if relation is None:
        return list(SLOT_CENTRES[n])
    kind, ia, ib = relation
    ux, uy = RELATIONS[kind]
    out = [(0.5, 0.5)] * n
    out[ia] = (0.5 + RELATION_SPREAD * ux, 0.5 + RELATION_SPREAD * uy)
    out[ib] = (0.5 - RELATION_SPREAD * ux, 0.5 - RELATION_SPREAD * uy)
    return out


def _sample_slot_layout(n: int, relation, rng: np.random.Generator, scale: float = 1.0):
    """Rejection-sample jittered slot boxes with the same constraints as _sample_layout; None if it gave up."""
    lo, hi = SIZE_RANGES[n]
    jitter = SLOT_SINGLE_JITTER if n == 1 else SLOT_JITTER
    centres = np.array(_slot_centres(n, relation))
    for _ in range(500):
        sizes = rng.uniform(lo, hi, n) * scale
        pos = centres + rng.uniform(-jitter, jitter, (n, 2))
        pos = np.clip(pos, (EDGE + sizes / 2)[:, None], (1 - EDGE - sizes / 2)[:, None])
        boxes = [(pos[i, 0], pos[i, 1], sizes[i]) for i in range(n)]
        if _valid_layout(boxes, relation):
            return boxes
    return None


def _random_background(rng: np.random.Generator) -> Background:
    """Grey/beige-ish base (saturation <= 0.12) with a low-amplitude fine texture."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.12), rng.uniform(0.55, 0.9))
    return Background(
        rgb=(int(r * 255), int(g * 255), int(b * 255)),
        texture=str(rng.choice(BG_TEXTURES)),
        period=float(rng.uniform(2.0, 5.0)),
        amplitude=float(rng.uniform(4.0, 12.0)),
        angle=float(rng.choice([0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4])),
    )


def _random_style(rng: np.random.Generator) -> dict:
    """Per-object brightness and own-hue texture; never drops chroma below ~0.45."""
    return dict(
        shade=float(rng.uniform(0.85, 1.08)),
        texture=str(rng.choice(OBJ_TEXTURES, p=[0.1, 0.3, 0.3, 0.3])),
        texture_period=float(rng.uniform(2.0, 5.0)),
        texture_amp=float(rng.uniform(0.05, 0.15)),
    )


def sample_scene_for_prompt(spec, rng: np.random.Generator, layout: str = "free") -> Scene:
    """A random scene that satisfies spec (a PromptSpec or prompt text).

    The scene holds exactly the objects the prompt names; relations hold with a clear
    margin (see _clear_relation) so that a correct image is never borderline. layout:
    "free" places objects anywhere, "slots" at jittered fixed slots (see LAYOUTS).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    sample = _sample_layout if layout == "free" else _sample_slot_layout
    if isinstance(spec, str):

        spec = parse(spec)
    kinds, first = [], []
    for g in spec.groups:
        first.append(len(kinds))
        kinds += [(g.shape, g.color)] * g.count
    rel = None
    if spec.relation is not None:
        r = spec.relation
        rel = (r.kind, first[r.a], first[r.b])
    boxes, scale = None, 1.0
    while boxes is None:  # shrinking always ends: tiny boxes fit anywhere
        boxes = sample(len(kinds), rel, rng, scale)
        scale *= 0.9
    objs = [Obj(s, c, float(x), float(y), float(z), **_random_style(rng)) for (s, c), (x, y, z) in zip(kinds, boxes)]
    return Scene(objs, _random_background(rng), int(rng.integers(2**31 - 1)))


def random_prompt(rng: np.random.Generator) -> str:
    """A canonical prompt drawn uniformly over the grammar's forms (then contents)."""

    return describe(random_spec(rng))


def make_pair(rng: np.random.Generator, size: int = 256, layout: str = "free"):
    """One training example: (canonical prompt, uint8 image (size, size, 3), spec)."""
    prompt, image, spec, _ = make_example(rng, size, layout)
    return prompt, image, spec


def make_example(rng: np.random.Generator, size: int = 256, layout: str = "free"):
    """make_pair plus the scene itself (for object masks); draws from rng exactly like make_pair."""

    spec = random_spec(rng)
    scene = sample_scene_for_prompt(spec, rng, layout)
    return describe(spec), render(scene, size), spec, scene
