"""The toy world, its prompt grammar and its GenEval-style evaluator."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from stepvar.errors import StepvarError
from stepvar.toy import evaluator as ev
from stepvar.toy import grammar, world
from stepvar.toy.grammar import ObjectGroup, PromptSpec, Relation

EXAMPLES = {
    "a red circle": PromptSpec((ObjectGroup(1, "red", "circle"),)),
    "two blue circles": PromptSpec((ObjectGroup(2, "blue", "circle"),)),
    "three green squares": PromptSpec((ObjectGroup(3, "green", "square"),)),
    "a red circle left of a blue square": PromptSpec(
        (ObjectGroup(1, "red", "circle"), ObjectGroup(1, "blue", "square")), Relation("left of", 0, 1)),
    "a yellow triangle above a green circle": PromptSpec(
        (ObjectGroup(1, "yellow", "triangle"), ObjectGroup(1, "green", "circle")), Relation("above", 0, 1)),
}
SWAP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def degrade(img, rng, sigma=2.0, noise=5.0):
    """Mimic a small generator: soft edges and slight noise."""
    out = ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)) + rng.normal(0, noise, img.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw(spec, seed):
    rng = np.random.default_rng(seed)
    return world.render(world.sample_scene_for_prompt(spec, rng))


@pytest.fixture(scope="module")
def ground_truth():
    rng = np.random.default_rng(123)
    specs = [grammar.random_spec(rng) for _ in range(40)]
    return specs, [world.render(world.sample_scene_for_prompt(s, rng)) for s in specs]


# ----------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("text", list(EXAMPLES))
def test_parse_examples(text):
    spec = grammar.parse(text)
    assert spec == EXAMPLES[text]
    assert grammar.describe(spec) == text
    ids = grammar.tokenize(text)
    assert len(ids) == grammar.MAX_TOKENS and ids[-1] >= 0 and all(0 <= i < grammar.VOCAB_SIZE for i in ids)


def test_normalisation_gives_canonical_tokens():
    assert grammar.parse("  One RED circle. ") == EXAMPLES["a red circle"]
    assert grammar.parse("an red circles") == EXAMPLES["a red circle"]
    assert grammar.parse("Two blue circle") == EXAMPLES["two blue circles"]
    assert grammar.tokenize("one red circle") == grammar.tokenize("a red circle")
    assert grammar.VOCAB == sorted(grammar.VOCAB) and "circles" in grammar.VOCAB
    assert {s.form for s in EXAMPLES.values()} == {"single", "count", "relation"}


@pytest.mark.parametrize("bad", ["a purple circle", "a red circle\nnear a blue hexagon"])
def test_unknown_word_is_one_line_listing_vocab(bad):
    with pytest.raises(StepvarError) as e:
        grammar.parse(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert all(w in msg for w in grammar.VOCAB)
    assert "purple" in msg or "hexagon" in msg


@pytest.mark.parametrize("bad", ["", "   ", "red a circle", "a red", "two red circles left of a blue square",
                                 "a red circle left a blue square", "a red circle above a blue square two"])
def test_malformed_prompts_raise(bad):
    with pytest.raises(StepvarError) as e:
        grammar.parse(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", list(world.RELATIONS))
def test_mirrored_relation_means_the_same_scenes(kind):
    """'A right of B' == 'B left of A': every scene of the prompt satisfies its mirror and vice versa."""
    spec = PromptSpec((ObjectGroup(1, "red", "circle"), ObjectGroup(1, "blue", "square")), Relation(kind, 0, 1))
    mirrored = grammar.mirror_relation(spec)
    assert mirrored.relation.kind in ("left of", "above")
    assert (mirrored == spec) == (kind in ("left of", "above"))
    assert grammar.mirror_relation(mirrored) == mirrored
    rng = np.random.default_rng(6)
    for _ in range(3):
        for a, b in ((spec, mirrored), (mirrored, spec)):
            img = world.render(world.sample_scene_for_prompt(a, rng, "free"))
            assert ev.score(img, b)["overall"]
        wrong = world.render(world.sample_scene_for_prompt(PromptSpec(spec.groups, Relation(SWAP[kind], 0, 1)), rng))
        assert not ev.score(wrong, mirrored)["position"]
    assert grammar.mirror_relation(grammar.parse("two red circles")) == grammar.parse("two red circles")


def test_random_prompts_cover_forms_and_roundtrip():
    rng = np.random.default_rng(0)
    specs = [grammar.random_spec(rng) for _ in range(300)]
    forms = [s.form for s in specs]
    assert all(80 <= forms.count(f) <= 120 for f in grammar.FORMS)
    for s in specs:
        assert grammar.parse(grammar.describe(s)) == s
        assert len(grammar.describe(s).split()) <= grammar.MAX_TOKENS
    assert world.random_prompt(np.random.default_rng(7)) == world.random_prompt(np.random.default_rng(7))


# ----------------------------------------------------------------------------- world


def test_make_pair_is_deterministic():
    a = world.make_pair(np.random.default_rng(42))
    b = world.make_pair(np.random.default_rng(42))
    c = world.make_pair(np.random.default_rng(43))
    assert a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])
    assert a[1].shape == (256, 256, 3) and a[1].dtype == np.uint8
    assert not np.array_equal(a[1], c[1])
    scene = world.sample_scene_for_prompt("two blue circles", np.random.default_rng(1))
    assert np.array_equal(world.render(scene), world.render(scene))


def _saturation(img):
    f = img.astype(np.float32) / 255
    mx = f.max(-1)
    return (mx - f.min(-1)) / np.maximum(mx, 1e-6)


def test_background_low_saturation_objects_saturated_and_textured():
    rng = np.random.default_rng(5)
    for _ in range(8):
        scene = world.sample_scene_for_prompt(grammar.random_spec(rng), rng)
        img = world.render(scene)
        near = ndimage.binary_dilation(world.objects_mask(scene), iterations=2)
        sat = _saturation(img)
        assert sat[~near].max() < 0.2
        for obj in scene.objects:
            inside = world.object_alpha(obj) >= 1
            assert np.percentile(sat[inside], 5) > 0.6
            assert 40 <= obj.size * 256 <= 95
        bg = img[~near].astype(np.float32)
        assert bg.std(0).max() > 2.0  # fine texture is there


def test_layout_respects_counts_relations_and_spacing():
    rng = np.random.default_rng(9)
    for text in ["four red squares", "a red circle left of a blue square", "a yellow triangle above a green circle",
                 "a blue square below a red triangle", "a green circle right of a green square"]:
        spec = grammar.parse(text)
        scene = world.sample_scene_for_prompt(spec, rng)
        assert len(scene.objects) == spec.n_objects
        objs = scene.objects
        for i in range(len(objs)):
            for j in range(i):
                assert not (world.object_alpha(objs[i]) * world.object_alpha(objs[j])).any()
        if spec.relation:
            a, b = objs[0], objs[1]
            along, across = world.relation_offsets(spec.relation.kind, (a.cx, a.cy), (b.cx, b.cy))
            assert along > 0.15 and across <= along / 2


def test_slot_layout_keeps_the_rules_and_one_arrangement_per_form():
    """Slots: the same constraints as free placement, centres within the jitter of their slot."""
    rng = np.random.default_rng(4)
    for text in ["a red circle", "three blue squares", "four green triangles", "a red circle above a blue square",
                 "a yellow triangle left of a green circle", "a blue square below a red triangle"]:
        spec = grammar.parse(text)
        for _ in range(5):
            objs = world.sample_scene_for_prompt(spec, rng, "slots").objects
            assert len(objs) == spec.n_objects
            for i in range(len(objs)):
                for j in range(i):
                    assert not (world.object_alpha(objs[i]) * world.object_alpha(objs[j])).any()
            rel = None if spec.relation is None else (spec.relation.kind, 0, 1)
            slots = world._slot_centres(len(objs), rel)
            jitter = world.SLOT_SINGLE_JITTER if len(objs) == 1 else world.SLOT_JITTER
            for o, (x, y) in zip(objs, slots):
                assert abs(o.cx - x) <= jitter + 1e-9 and abs(o.cy - y) <= jitter + 1e-9
            if spec.relation:
                a, b = objs[0], objs[1]
                along, across = world.relation_offsets(spec.relation.kind, (a.cx, a.cy), (b.cx, b.cy))
                assert along > 0.15 and across <= along / 2
    with pytest.raises(ValueError, match="unknown layout"):
        world.sample_scene_for_prompt(spec, rng, "grid")


def test_slot_scenes_of_every_heldout_prompt_score_one():
    rng = np.random.default_rng(5)
    prompts = ev.load_prompts()
    images = [world.render(world.sample_scene_for_prompt(p, rng, "slots")) for p in prompts]
    report = ev.evaluate(images, prompts)
    assert report.overall == 1.0, [r for r in report.per_image if not r["overall"]]


# ----------------------------------------------------------------------------- evaluator


def test_detect_finds_example_scene():
    img = draw(EXAMPLES["a yellow triangle above a green circle"], 3)
    dets = ev.detect(img)
    assert sorted((d.color, d.shape) for d in dets) == [("green", "circle"), ("yellow", "triangle")]
    tri = next(d for d in dets if d.shape == "triangle")
    assert 0 < tri.area < 1 and tri.bbox[0] < tri.cx < tri.bbox[2]
    with pytest.raises(StepvarError):
        ev.detect(img.astype(np.float32))


def test_ground_truth_scores_one(ground_truth):
    specs, images = ground_truth
    report = ev.evaluate(images, specs)
    assert report.overall >= 0.95, [r for r in report.per_image if not r["overall"]]
    assert set(report.categories) == set(ev.CATEGORIES)
    blurred = [degrade(im, np.random.default_rng(i)) for i, im in enumerate(images)]
    report = ev.evaluate(blurred, [grammar.describe(s) for s in specs])
    assert report.overall >= 0.95, [r for r in report.per_image if not r["overall"]]
    d = report.to_dict()
    assert d["n_images"] == 40 and sum(d["counts"][c] for c in ("single_object", "counting", "two_object")) == 40


def _wrong(spec, **change):
    g = spec.groups
    return PromptSpec([dataclasses.replace(g[0], **change)] + list(g[1:]), spec.relation)


@pytest.mark.parametrize("i", range(3))
def test_wrong_scenes_fail_their_category(i):
    rng = np.random.default_rng(100 + i)
    colors, shapes = list(world.COLORS), list(world.SHAPES)
    single = grammar.random_spec(rng, "single")
    g = single.groups[0]
    other_color = colors[(colors.index(g.color) + 1 + i) % len(colors)]
    other_shape = shapes[(shapes.index(g.shape) + 1 + i % 2) % len(shapes)]
    s = ev.score(degrade(draw(_wrong(single, color=other_color), i), rng), single)
    assert s["single_object"] and not s["colors"] and not s["overall"]
    s = ev.score(degrade(draw(_wrong(single, shape=other_shape), i), rng), single)
    assert not s["single_object"] and not s["overall"]

    count = grammar.random_spec(rng, "count")
    n = count.groups[0].count
    s = ev.score(degrade(draw(_wrong(count, count=n + 1 if n < 4 else n - 1), i), rng), count)
    assert not s["counting"] and s["colors"] and not s["overall"]

    rel = grammar.random_spec(rng, "relation")
    swapped = PromptSpec(rel.groups, Relation(SWAP[rel.relation.kind], 0, 1))
    s = ev.score(degrade(draw(swapped, i), rng), rel)
    assert s["two_object"] and s["colors"] and not s["position"] and not s["overall"]


def test_evaluate_checks_lengths():
    with pytest.raises(StepvarError):
        ev.evaluate([np.zeros((8, 8, 3), np.uint8)], [])


def test_heldout_prompts_file_is_current_and_covers_categories():
    prompts = ev.load_prompts()
    assert prompts == ev.make_heldout_prompts(0)
    assert 60 <= len(prompts) <= 100 and len(set(prompts)) == len(prompts)
    specs = [grammar.parse(p) for p in prompts]
    assert {s.relation.kind for s in specs if s.relation} == set(world.RELATIONS)
    assert {s.groups[0].count for s in specs if s.form == "count"} == {2, 3, 4}
    with pytest.raises(StepvarError):
        ev.load_prompts("/nonexistent/prompts.txt")


# ----------------------------------------------------------------------------- stray objects


@pytest.fixture(scope="module")
def heldout_scenes():
    rng = np.random.default_rng(5)
    prompts = ev.load_prompts()
    return prompts, [world.sample_scene_for_prompt(p, rng, "slots") for p in prompts]


def _free_spot(scene, size, rng):
    """A centre where a box of side `size` keeps world.GAP from every object and EDGE from the border."""
    for _ in range(2000):
        cx, cy = rng.uniform(world.EDGE + size / 2, 1 - world.EDGE - size / 2, 2)
        if all(max(abs(cx - o.cx) - (size + o.size) / 2, abs(cy - o.cy) - (size + o.size) / 2) >= world.GAP
               for o in scene.objects):
            return float(cx), float(cy)
    return None


def _with_extra_object(scene, rng):
    """The scene plus one object of a random colour and shape in free space, or None if none fits."""
    for size in (0.16, 0.13, 0.11):
        spot = _free_spot(scene, size, rng)
        if spot is not None:
            extra = world.Obj(str(rng.choice(list(world.SHAPES))), str(rng.choice(list(world.COLORS))), *spot, size)
            return dataclasses.replace(scene, objects=[*scene.objects, extra]), extra
    return None


def test_plain_scene_of_every_heldout_prompt_has_no_stray_object(heldout_scenes):
    prompts, scenes = heldout_scenes
    report = ev.evaluate([world.render(s) for s in scenes], prompts)
    assert report.stray_share == 0.0, [r for r in report.per_image if r["stray_objects"]]
    assert report.stray_blob_share == 0.0, [r for r in report.per_image if r["stray_blobs"]]
    assert all(r["objects"] == len(s.objects) for r, s in zip(report.per_image, scenes))


def test_an_added_object_is_a_stray_in_every_heldout_scene(heldout_scenes):
    prompts, scenes = heldout_scenes
    rng = np.random.default_rng(6)
    tried = 0
    for i, (prompt, scene) in enumerate(zip(prompts, scenes)):
        added = _with_extra_object(scene, rng)
        if added is None:  # a 2 x 2 count scene may leave no free corner
            continue
        tried += 1
        busier, extra = added
        for img in (world.render(busier), degrade(world.render(busier), np.random.default_rng(i))):
            dets = ev.detect(img)
            strays = ev.stray_detections(dets, grammar.parse(prompt))
            assert len(strays) == 1, (prompt, extra, dets)
            s = strays[0]
            # The stray is the added object itself (unless it is a twin of a requested one, then either may be).
            twin = any((o.shape, o.color) == (extra.shape, extra.color) for o in scene.objects)
            assert twin or (s.color, s.shape) == (extra.color, extra.shape), (prompt, extra, s)
            assert twin or (abs(s.cx - extra.cx) < 0.03 and abs(s.cy - extra.cy) < 0.03)
        report = ev.evaluate([world.render(busier)], [prompt])
        assert report.stray_share == 1.0 and report.per_image[0]["stray_objects"] == 1
        assert report.per_image[0]["stray_blobs"] == 1
    assert tried >= 80, tried


def _brute_force_strays(dets, wanted):
    """Try every injective pairing of the requested objects with detections; the best one's leftovers."""
    import itertools

    if len(dets) <= len(wanted):
        return set()
    best, best_used = -1.0, None
    for used in itertools.permutations(range(len(dets)), len(wanted)):
        gain = 0.0
        for (shape, color), j in zip(wanted, used):
            d = dets[j]
            tier = 3 if (d.shape, d.color) == (shape, color) else 2 if d.color == color else 1 if d.shape == shape else 0
            gain += 2 * tier + d.area
        if gain > best:
            best, best_used = gain, set(used)
    return set(range(len(dets))) - best_used


@pytest.mark.parametrize("seed", range(4))
def test_stray_pairing_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        spec = grammar.random_spec(rng)
        n = int(rng.integers(0, 7))
        areas = rng.dirichlet(np.ones(n + 1))[:n] if n else []  # disjoint objects: areas sum below 1
        dets = [ev.Detection(str(rng.choice(list(world.COLORS))), str(rng.choice(list(world.SHAPES))),
                             float(rng.uniform()), float(rng.uniform()), float(a), (0, 0, 1, 1), 0.8) for a in areas]
        strays = ev.stray_detections(dets, spec)
        expect = _brute_force_strays(dets, ev.requested_objects(spec))
        assert {id(d) for d in strays} == {id(dets[i]) for i in expect}
        assert len(strays) == max(0, n - sum(g.count for g in spec.groups))


def test_specks_count_as_stray_blobs_not_objects(heldout_scenes):
    """A coloured speck far below object size: a stray blob, not a stray object; plain scenes have neither."""
    prompts, scenes = heldout_scenes
    rng = np.random.default_rng(7)
    report = ev.evaluate([degrade(world.render(s), np.random.default_rng(i)) for i, s in enumerate(scenes)], prompts)
    assert report.stray_blob_share == 0.0, [r for r in report.per_image if r["stray_blobs"]]
    for prompt, scene in list(zip(prompts, scenes))[::4]:
        spot = _free_spot(scene, 0.05, rng)
        speck = world.Obj("square", str(rng.choice(list(world.COLORS))), *spot, 0.045)  # ~0.2 % of the image
        img = world.render(dataclasses.replace(scene, objects=[*scene.objects, speck]))
        row = ev.evaluate([img], [prompt]).per_image[0]
        assert (row["stray_objects"], row["stray_blobs"]) == (0, 1), (prompt, speck)
