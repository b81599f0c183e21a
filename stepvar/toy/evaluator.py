"""A GenEval-style automatic evaluator for the toy world.

GenEval scores a text-to-image model by detecting objects in its images and checking
each prompt's requirements. In the toy world no detector network is needed: objects
are the only strongly saturated pixels, their colour is read from the hue, and their
shape from the geometry of the segmented blob. The segmentation is built for a small
generator's output (blurry edges, slight noise): chroma and hue thresholds, a
morphological opening, hole filling and removal of small components.

Categories (a prompt contributes to every category it exercises; see score()):

    single_object  single-object prompts: an object of the named shape is present
    two_object     relation prompts: both named shapes are present (two distinct objects)
    counting       count prompts: exactly N objects of the named shape
    colors         every prompt: each named object is present in its named colour;
                   for a count prompt every object of the named shape has that colour
    position       relation prompts: a matching A and a different matching B (shape and
                   colour) stand in the named relation

Colour is checked only in `colors` and count only in `counting`, so a wrong-colour or
wrong-count image fails exactly the category it gets wrong (besides `overall`).
`overall` for an image is True when all of its categories are.

Stray objects (reported beside the categories, not one of them): every object the prompt
asks for (a group of N counts N times) is paired with a distinct detected object, by the
pairing with the highest summed match (3 for the same shape and colour, 2 for the same
colour, 1 for the same shape, 0 otherwise; ties go to the larger objects); the detections
left over are the strays. Any detection may stand in for a
requested object, so a wrong shape or colour in a requested object's place is a `colors` /
shape failure, not a stray: an image has max(0, detected - requested) strays, and the
pairing only decides which ones they are. Two sizes are counted: `stray_objects` among the
detections (blobs of at least MIN_AREA, the size scoring uses) and `stray_blobs` with the same
segmentation down to STRAY_BLOB_MIN_AREA (specks far smaller than any object the world draws,
still plainly visible).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from stepvar.errors import StepvarError
from stepvar.toy.grammar import ObjectGroup, PromptSpec, Relation, describe, parse, random_spec
from stepvar.toy.vocabulary import COLORS, RELATIONS, SHAPES
from stepvar.toy.world import relation_offsets

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position")

# Segmentation thresholds. Object chroma (max - min, 0..1) is >= ~0.45 even when
# shaded and textured; backgrounds stay below ~0.12. A pixel half-blended with the
# background lands near 0.3, so this threshold also puts blurred edges where they were.
MIN_CHROMA = 0.3
MAX_HUE_DIST = 45.0      # degrees; hues far from every colour (magenta, ...) are ignored
MIN_AREA = 0.004         # fraction of the image; the smallest real object is ~0.012
# Strays are also counted down to this size (fraction of the image: 65 px at 256 px, about 8 x 8):
# pruning leaves coloured specks far smaller than an object, which MIN_AREA would not see.
STRAY_BLOB_MIN_AREA = 0.001
SMOOTH = 1 / 256         # sigma of the pre-blur, fraction of the side
OPEN_RADIUS = 2 / 256    # fraction of the side: removes speckle and thin bridges

# Shape by extent (blob area / bbox area): square 1.0, circle pi/4, triangle 0.5.
# Blur rounds square corners (extent falls) and cuts the triangle's apex (extent
# rises); measured on rendered scenes blurred with sigma 4 px plus noise, squares stay
# >= 0.88, circles in 0.74-0.81 and triangles <= 0.66, so the cuts sit in the gaps.
TRIANGLE_MAX_EXTENT = 0.68
SQUARE_MIN_EXTENT = 0.85

POSITION_MARGIN = 0.06   # fraction of the side the centres must differ by along the axis

HELDOUT_PATH = Path(__file__).with_name("heldout_prompts.txt")


@dataclass
class Detection:
    """One found object. cx, cy: centroid; bbox: (x0, y0, x1, y1); area: of the image.

    All geometry is in fractions of the image side (area: of the image area), the same
    units as stepvar.toy.world.Obj. extent is the feature the shape was read from.
    """

    color: str
    shape: str
    cx: float
    cy: float
    area: float
    bbox: tuple[float, float, float, float]
    extent: float


_COLOR_NAMES = list(COLORS)


def _hue_deg(rgb: tuple[int, int, int]) -> float:
    return float(_hue(np.asarray(rgb, np.float32)[None, None, :] / 255)[0][0, 0])


def _hue(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hue in degrees, chroma) of a float image in 0..1."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    c = mx - mn
    safe = np.where(c > 0, c, 1)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return h * 60.0, c


_COLOR_HUES = np.array([_hue_deg(rgb) for rgb in COLORS.values()], np.float32)


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _as_float_image(image) -> np.ndarray:
    """Validate an (H, W, 3) uint8 image and return it as float32 in 0..1."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise StepvarError(f"expected an (H, W, 3) uint8 image, got {a.dtype} array of shape {a.shape}")
    return a.astype(np.float32) / 255


def color_labels(image) -> np.ndarray:
    """Per-pixel colour index into COLORS, or -1 for unsaturated / off-palette pixels.

    A light blur first (SMOOTH of the side) averages away pixel noise and the fine
    textures, so blob outlines are smooth and the shape features stable.
    """
    img = _as_float_image(image)
    img = ndimage.gaussian_filter(img, (SMOOTH * img.shape[0], SMOOTH * img.shape[1], 0))
    hue, chroma = _hue(img)
    d = np.abs(hue[..., None] - _COLOR_HUES)
    d = np.minimum(d, 360 - d)
    lab = d.argmin(-1)
    ok = (chroma > MIN_CHROMA) & (d.min(-1) <= MAX_HUE_DIST)
    return np.where(ok, lab, -1)


def classify_shape(extent: float) -> str:
    """Shape from the bbox fill ratio: robust to soft edges and pixel noise."""
    if extent < TRIANGLE_MAX_EXTENT:
        return "triangle"
    return "square" if extent >= SQUARE_MIN_EXTENT else "circle"


def _components(mask: np.ndarray, side: int):
    """Cleaned connected components of mask: yields (bbox slices, component mask)."""
    r = max(1, round(OPEN_RADIUS * side))
    mask = ndimage.binary_opening(mask, structure=_disk(r))
    mask = ndimage.binary_fill_holes(mask)
    lab, _ = ndimage.label(mask)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is not None:
            yield sl, lab[sl] == k


def detect(image, min_area: float = MIN_AREA) -> list[Detection]:
    """Find the objects in an (H, W, 3) uint8 image, sorted left to right.

    min_area (fraction of the image) is the smallest blob kept; below MIN_AREA only for strays.
    """
    return detect_in_labels(color_labels(image), min_area)


def detect_in_labels(labels: np.ndarray, min_area: float = MIN_AREA) -> list[Detection]:
    """detect() on colour_labels' output, so several floors can share one labelling."""
    h, w = labels.shape
    side = max(h, w)
    dets = []
    for ci, name in enumerate(_COLOR_NAMES):
        mask = labels == ci
        if mask.sum() < min_area * h * w:  # nothing of this colour: skip the morphology
            continue
        for sl, comp in _components(mask, side):
            area = int(comp.sum())
            if area < min_area * h * w:
                continue
            ys, xs = np.nonzero(comp)
            y0, x0 = sl[0].start, sl[1].start
            bh, bw = comp.shape
            extent = area / (bh * bw)
            dets.append(Detection(
                color=name, shape=classify_shape(extent),
                cx=float((xs.mean() + x0 + 0.5) / w), cy=float((ys.mean() + y0 + 0.5) / h),
                area=area / (h * w), bbox=(x0 / w, y0 / h, (x0 + bw) / w, (y0 + bh) / h),
                extent=float(extent),
            ))
    return sorted(dets, key=lambda d: (d.cx, d.cy))


# ----------------------------------------------------------------------------- scoring


def _relation_holds(kind: str, a: Detection, b: Detection) -> bool:
    """A is past B by a margin along the axis, and more along it than across it."""
    along, across = relation_offsets(kind, (a.cx, a.cy), (b.cx, b.cy))
    return along >= POSITION_MARGIN and along >= across


def _position_ok(dets: list[Detection], spec: PromptSpec) -> bool:
    r = spec.relation
    ga, gb = spec.groups[r.a], spec.groups[r.b]
    As = [d for d in dets if (d.shape, d.color) == (ga.shape, ga.color)]
    Bs = [d for d in dets if (d.shape, d.color) == (gb.shape, gb.color)]
    return any(a is not b and _relation_holds(r.kind, a, b) for a in As for b in Bs)


def _colors_ok(dets: list[Detection], spec: PromptSpec) -> bool:
    found = Counter((d.shape, d.color) for d in dets)
    if spec.form == "count":
        g = spec.groups[0]
        shapes = sum(n for (s, _), n in found.items() if s == g.shape)
        return found[(g.shape, g.color)] >= 1 and found[(g.shape, g.color)] == shapes
    need = Counter((g.shape, g.color) for g in spec.groups for _ in range(g.count))
    return all(found[k] >= n for k, n in need.items())


def score_detections(dets: list[Detection], spec: PromptSpec) -> dict[str, bool]:
    """Per-category verdicts (only the categories spec exercises) plus 'overall'."""
    shapes = Counter(d.shape for d in dets)
    out: dict[str, bool] = {}
    if spec.form == "single":
        out["single_object"] = shapes[spec.groups[0].shape] >= 1
    elif spec.form == "count":
        out["counting"] = shapes[spec.groups[0].shape] == spec.groups[0].count
    else:
        need = Counter(g.shape for g in spec.groups)
        out["two_object"] = all(shapes[s] >= n for s, n in need.items())
    out["colors"] = _colors_ok(dets, spec)
    if spec.relation is not None:
        out["position"] = _position_ok(dets, spec)
    out["overall"] = all(out.values())
    return out


def _match_quality(det: Detection, shape: str, color: str) -> float:
    """How well a detection stands for a requested object: 3 same shape and colour, 2 same colour,
    1 same shape, 0 neither; doubled, plus the detection's area to break ties."""
    same_shape, same_color = det.shape == shape, det.color == color
    tier = 3 if same_shape and same_color else 2 if same_color else 1 if same_shape else 0
    # Detections are disjoint parts of the image, so the area terms of a whole pairing sum to at
    # most 1: the tiers decide first, and only ties between pairings go to the larger objects.
    return 2 * tier + det.area


def requested_objects(spec: PromptSpec) -> list[tuple[str, str]]:
    """(shape, colour) of every object the prompt asks for: a group of N contributes N."""
    return [(g.shape, g.color) for g in spec.groups for _ in range(g.count)]


def stray_detections(dets: list[Detection], spec: PromptSpec) -> list[Detection]:
    """The detections left once every requested object is paired with a distinct one (see module doc).

    The pairing maximises the summed _match_quality (an optimal assignment, exact). Returned in
    dets' order.
    """
    wanted = requested_objects(spec)
    if len(dets) <= len(wanted):
        return []
    gain = np.array([[_match_quality(d, s, c) for d in dets] for s, c in wanted], np.float64)  # (requested, detected)
    _, used = linear_sum_assignment(gain, maximize=True)
    used = set(used.tolist())
    return [d for i, d in enumerate(dets) if i not in used]


def stray_counts(labels: np.ndarray, dets: list[Detection], spec: PromptSpec) -> dict[str, int]:
    """{stray_objects, stray_blobs} of an image from its colour labels and its detections (module doc)."""
    blobs = detect_in_labels(labels, STRAY_BLOB_MIN_AREA)
    return {"stray_objects": len(stray_detections(dets, spec)), "stray_blobs": len(stray_detections(blobs, spec))}


def score(image, spec: PromptSpec | str) -> dict[str, bool]:
    """Detect the objects in image and check them against the prompt (see module doc)."""
    spec = parse(spec) if isinstance(spec, str) else spec
    return score_detections(detect(image), spec)


@dataclass
class EvalReport:
    """Scores over a prompt set.

    categories: mean verdict per category (over the prompts exercising it);
    counts: how many images each category mean is over; overall: fraction of images
    whose every requirement holds; stray_share: fraction of images with an object the prompt
    did not ask for (per image: stray_objects, their number; stray_blob_share and stray_blobs
    the same down to specks, see the module doc); category_mean: the mean of the category means
    (GenEval's headline number, which weighs categories equally).
    """

    categories: dict[str, float]
    counts: dict[str, int]
    overall: float
    category_mean: float
    n_images: int
    per_image: list[dict] = field(default_factory=list)
    stray_share: float = 0.0  # fraction of images with at least one stray object (module doc)
    stray_blob_share: float = 0.0  # the same down to STRAY_BLOB_MIN_AREA

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(images, prompts) -> EvalReport:
    """Score images[i] against prompts[i] (text or PromptSpec) and aggregate."""
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise StepvarError(f"evaluate: {len(images)} images but {len(prompts)} prompts; they must pair up")
    per_image, sums = [], {c: [] for c in CATEGORIES}
    for img, p in zip(images, prompts):
        spec = parse(p) if isinstance(p, str) else p
        labels = color_labels(img)
        dets = detect_in_labels(labels)
        s = score_detections(dets, spec)
        per_image.append({"prompt": describe(spec), **s, "objects": len(dets), **stray_counts(labels, dets, spec)})
        for c in CATEGORIES:
            if c in s:
                sums[c].append(s[c])
    cats = {c: float(np.mean(v)) for c, v in sums.items() if v}
    return EvalReport(
        categories=cats,
        counts={c: len(v) for c, v in sums.items() if v},
        overall=float(np.mean([r["overall"] for r in per_image])) if per_image else 0.0,
        category_mean=float(np.mean(list(cats.values()))) if cats else 0.0,
        n_images=len(per_image),
        per_image=per_image,
        stray_share=float(np.mean([r["stray_objects"] > 0 for r in per_image])) if per_image else 0.0,
        stray_blob_share=float(np.mean([r["stray_blobs"] > 0 for r in per_image])) if per_image else 0.0,
    )


# ----------------------------------------------------------------------------- prompt set

RELATIONS_PER_KIND = 10


def make_heldout_prompts(seed: int = 0) -> list[str]:
    """The default evaluation prompt set, reproducible from seed.

    Every single-object prompt (12), every count prompt (2-4 of each colour and
    shape: 36), and RELATIONS_PER_KIND distinct random relation prompts per relation
    kind (40): 88 prompts, so each category has enough prompts for a stable mean.
    """
    groups = [ObjectGroup(1, c, s) for c in sorted(COLORS) for s in SHAPES]
    out = [describe(PromptSpec((g,))) for g in groups]
    out += [describe(PromptSpec((ObjectGroup(n, g.color, g.shape),))) for g in groups for n in (2, 3, 4)]
    rng = np.random.default_rng(seed)
    for kind in RELATIONS:
        chosen: list[str] = []
        while len(chosen) < RELATIONS_PER_KIND:
            s = random_spec(rng, "relation")
            text = describe(PromptSpec(s.groups, Relation(kind, 0, 1)))
            if text not in chosen:
                chosen.append(text)
        out += chosen
    return out


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a text file (one a line; blank lines and '#' comments skipped),
    canonicalised; the default is the committed held-out set."""
    from ..user_files import read_lines
    from ..validate import shown

    path = Path(path) if path is not None else HELDOUT_PATH
    out = []
    for n, line in read_lines(path, "prompt file"):
        try:
            out.append(describe(parse(line)))
        except StepvarError as e:
            raise StepvarError(f"{shown(path)}:{n}: {e}") from None
    return out


__all__ = [
    "CATEGORIES", "Detection", "EvalReport", "STRAY_BLOB_MIN_AREA", "color_labels", "classify_shape",
    "detect", "detect_in_labels", "stray_counts", "evaluate", "load_prompts", "make_heldout_prompts", "requested_objects", "score", "score_detections",
    "stray_detections",
]
