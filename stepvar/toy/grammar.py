"""The prompt grammar of the toy world, its parser and its tokenizer.

Three forms, mirroring the GenEval task families the evaluator scores:

    single    "a red circle"                        (a | an | one) COLOR SHAPE
    count     "three green squares"                 (two | three | four) COLOR SHAPES
    relation  "a red circle left of a blue square"  OBJ (left of | right of | above | below) OBJ

where OBJ is a single object ("a"/"an"/"one"). Input is lower-cased, punctuation is
dropped, and singular/plural nouns are accepted either way; every prompt maps to one
canonical text (describe), so "One Red circle." and "a red circle" tokenize alike.

A word outside the vocabulary raises StepvarError whose one-line message lists the
words the model knows: the CLI prints it as is, and the user sees what to type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from stepvar.errors import StepvarError
from stepvar.toy.vocabulary import COLORS, RELATIONS, SHAPES

COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
COUNT_NAMES = {1: "a", 2: "two", 3: "three", 4: "four"}
PLURALS = {s + "s": s for s in SHAPES}
FORMS = ("single", "count", "relation")

VOCAB: list[str] = sorted(
    set(COUNT_WORDS) | set(COLORS) | set(SHAPES) | set(PLURALS)
    | {w for kind in RELATIONS for w in kind.split()}
)
PAD = 0
WORD_INDEX: dict[str, int] = {w: i + 1 for i, w in enumerate(VOCAB)}  # 0 is padding
VOCAB_SIZE = len(VOCAB) + 1
# Longest canonical form: "a COLOR SHAPE <2-word relation> a COLOR SHAPE".
MAX_TOKENS = 3 + max(len(k.split()) for k in RELATIONS) + 3

_EXAMPLES = "'a red circle', 'two blue circles', 'a red circle left of a blue square'"


@dataclass(frozen=True)
class ObjectGroup:
    """count objects of one colour and shape."""

    count: int
    color: str
    shape: str


@dataclass(frozen=True)
class Relation:
    """'group a <kind> group b'; a and b index PromptSpec.groups."""

    kind: str
    a: int
    b: int


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: object groups and an optional relation between two of them."""

    groups: tuple[ObjectGroup, ...]
    relation: Relation | None = None

    def __post_init__(self):
        object.__setattr__(self, "groups", tuple(self.groups))  # accept lists; stay hashable

    @property
    def form(self) -> str:
        """'single', 'count' or 'relation': the GenEval-like family the prompt tests."""
        if self.relation is not None:
            return "relation"
        return "count" if self.groups[0].count > 1 else "single"

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)


def _fail(what: str, prompt: str) -> StepvarError:
    """One-line error naming the prompt, the problem and the words the model knows."""
    return StepvarError(
        f"{what} in prompt {prompt!r}; the toy model knows the words: {' '.join(VOCAB)} "
        f"(forms like {_EXAMPLES})"
    )


def _normalise(prompt: str) -> list[str]:
    """Lower-case words with punctuation removed."""
    return re.sub(r"[^\w\s]", " ", prompt.lower()).split()


def _parse_group(words: list[str], i: int, prompt: str) -> tuple[ObjectGroup, int]:
    """COUNT COLOR SHAPE starting at words[i]; returns the group and the next index."""
    if i + 3 > len(words):
        raise _fail("incomplete object (expected count, colour, shape)", prompt)
    n, color, shape = words[i : i + 3]
    if n not in COUNT_WORDS:
        raise _fail(f"expected a count word (a, one .. four), got {n!r}", prompt)
    if color not in COLORS:
        raise _fail(f"expected a colour ({', '.join(COLORS)}), got {color!r}", prompt)
    shape = PLURALS.get(shape, shape)
    if shape not in SHAPES:
        raise _fail(f"expected a shape ({', '.join(SHAPES)}), got {shape!r}", prompt)
    return ObjectGroup(COUNT_WORDS[n], color, shape), i + 3


def _parse_relation(words: list[str], i: int, prompt: str) -> tuple[str, int]:
    """A relation phrase starting at words[i]; returns its kind and the next index."""
    for kind in RELATIONS:
        k = kind.split()
        if words[i : i + len(k)] == k:
            return kind, i + len(k)
    raise _fail(f"expected a relation ({', '.join(RELATIONS)}) after the first object", prompt)


def parse(prompt: str) -> PromptSpec:
    """Parse a prompt of one of the three forms; StepvarError (one line) otherwise."""
    words = _normalise(prompt)
    if not words:
        raise _fail("empty prompt", prompt)
    unknown = [w for w in words if w not in WORD_INDEX]
    if unknown:
        raise _fail(f"unknown word(s) {', '.join(map(repr, dict.fromkeys(unknown)))}", prompt)
    first, i = _parse_group(words, 0, prompt)
    if i == len(words):
        return PromptSpec((first,))
    kind, i = _parse_relation(words, i, prompt)
    second, i = _parse_group(words, i, prompt)
    if i != len(words):
        raise _fail(f"unexpected words after the second object: {' '.join(words[i:])!r}", prompt)
    if first.count != 1 or second.count != 1:
        raise _fail("a relation takes a single object on each side", prompt)
    return PromptSpec((first, second), Relation(kind, 0, 1))


def _group_text(g: ObjectGroup) -> str:
    noun = g.shape if g.count == 1 else g.shape + "s"
    return f"{COUNT_NAMES[g.count]} {g.color} {noun}"


def describe(spec: PromptSpec) -> str:
    """Canonical prompt text; parse(describe(s)) == s for every spec parse can return."""
    if spec.relation is None:
        return _group_text(spec.groups[0])
    r = spec.relation
    return f"{_group_text(spec.groups[r.a])} {r.kind} {_group_text(spec.groups[r.b])}"


# "A right of B" says the same as "B left of A" (likewise below / above).
MIRRORED = {"right of": "left of", "below": "above"}


def mirror_relation(spec: PromptSpec) -> PromptSpec:
    """The same prompt with "right of" / "below" turned round, so the first-named object is the
    left or upper one; other prompts unchanged. Both describe exactly the same scenes."""
    r = spec.relation
    if r is None or r.kind not in MIRRORED:
        return spec
    return PromptSpec((spec.groups[r.b], spec.groups[r.a]), Relation(MIRRORED[r.kind], 0, 1))


def tokenize(prompt: str | PromptSpec, mirror: bool = False) -> list[int]:
    """Token ids of the canonical text, padded with PAD (0) to MAX_TOKENS.

    Tokenizing the canonical form (not the raw words) gives synonyms ("one"/"a",
    "circle"/"circles" after a count) the same ids, so the model never sees variants.
    """
    spec = parse(prompt) if isinstance(prompt, str) else prompt
    spec = mirror_relation(spec) if mirror else spec
    ids = [WORD_INDEX[w] for w in describe(spec).split()]
    return ids + [PAD] * (MAX_TOKENS - len(ids))


def random_spec(rng: np.random.Generator, form: str | None = None) -> PromptSpec:
    """A spec drawn uniformly over the forms, then uniformly within the form.

    Relation prompts name two different (colour, shape) objects, otherwise the
    relation could not be told apart from its mirror image.
    """
    form = form if form is not None else FORMS[rng.integers(len(FORMS))]
    colors, shapes = list(COLORS), list(SHAPES)

    def obj(n: int) -> ObjectGroup:
        return ObjectGroup(n, colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])

    if form == "single":
        return PromptSpec((obj(1),))
    if form == "count":
        return PromptSpec((obj(int(rng.integers(2, 5))),))
    if form == "relation":
        a, b = obj(1), obj(1)
        while b == a:
            b = obj(1)
        kinds = list(RELATIONS)
        return PromptSpec((a, b), Relation(kinds[rng.integers(len(kinds))], 0, 1))
    raise ValueError(f"unknown form {form!r}")
