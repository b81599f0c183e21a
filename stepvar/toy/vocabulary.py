"""The toy world's words: object colours, shapes and spatial relations.

Shared by the renderer (stepvar.toy.world), the prompt grammar (stepvar.toy.grammar) and
the evaluator, so that none of them imports another for its word lists.
"""

from __future__ import annotations

# Object colours. Chosen with similar chroma (max-min >= ~0.6) and hues far apart
# (red 0, yellow ~52, green ~127, blue ~225 degrees) so that the evaluator can tell them
# apart by hue alone even after blur, noise and the +-15% brightness texture.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 175, 50),
    "blue": (35, 75, 215),
    "yellow": (230, 200, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Relation kind -> unit direction from B's centre towards A's centre ("A <kind> B").
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (-1, 0),
    "right of": (1, 0),
    "above": (0, -1),
    "below": (0, 1),
}
