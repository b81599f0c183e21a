"""Spatio-temporal scale schedules of InfinityStar: one image pyramid, then one pyramid per clip.

A video of F frames has T = F // 4 + 1 latent frames. Latent frame 0 is generated as an image
(clip 0: K scales of t = 1); the remaining T - 1 frames come in clips of up to 20 latent frames,
each its own K-scale pyramid over the same (h, w) sides with t = the clip's frame count. Every
scale is run `repeats` times on the same grid (the accumulated codes are re-fed between repeats);
only the last repeat writes the KV cache. A scale attends to the text prefix, to its own tokens,
and, in clip c >= 1, to the cached keys of clip c - 1's largest scale: nothing else.

Everything here is plain data computed once (no tensors), so it is cheap to build for the 8B
settings and to test exhaustively.

Legend: t, h, w = a scale's latent frames x rows x cols; (H, W) = the full grid (last scale);
K = scales per clip; rel = index of a scale inside its clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .errors import ConfigError

# Pixels per latent cell and pixel frames per latent frame of the InfinityStar video VAE.
SPATIAL_STRIDE = 16
TEMPORAL_STRIDE = 4
FPS = 16
FRAMES_PER_CLIP = 20  # latent frames in a full video clip

# Sides of the base pyramid; a budget takes its first K entries (the official v2 table).
_BASE_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 40, 60)
_BASE_RATIOS = (1.0, 100 / 116, 3 / 4, 2 / 3, 9 / 16, 1 / 2, 2 / 5, 1 / 3)  # h / w
BUDGETS: dict[str, int] = {"0.06M": 11, "0.25M": 13, "0.40M": 14, "0.90M": 15}


def _sides_for(ratio: float) -> tuple[tuple[int, int], ...]:
    """(h, w) of every base side for template h/w = ratio: equal area s^2, rounded half-to-even."""
    out = []
    for s in _BASE_SIDES:
        w = math.sqrt(s * s / ratio)
        out.append((round(w * ratio), round(w)))
    return tuple(out)


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    # Templates are named by the h/w of their largest (60-side) grid, truncated to 3 decimals,
    # as the official code names them (9/16 -> 45/80 = 0.562); inverses swap h and w.
    out: dict[float, tuple[tuple[int, int], ...]] = {}
    for r in _BASE_RATIOS:
        sides = _sides_for(r)
        h, w = sides[-1]
        out[int(h / w * 1000) / 1000] = sides
        if r != 1.0:
            out[int(w / h * 1000) / 1000] = tuple((b, a) for a, b in sides)
    return out


TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = _build_templates()


def nearest_template(h_div_w: float) -> float:
    if not h_div_w > 0:
        raise ConfigError(f"aspect h/w must be positive, got {h_div_w}")
    return min(TEMPLATES, key=lambda r: abs(r - h_div_w))


def latent_frames(frames: int) -> int:
    return frames // TEMPORAL_STRIDE + 1


def frames_for_duration(seconds: int) -> int:
    return seconds * FPS + 1


def check_frames(frames: int, max_seconds: int) -> int:
    """The whole-second duration of `frames` (0 for a single image), or a ConfigError naming the counts that work.

    The official loop builds its tables for 16 fps whole seconds (frames = 16 s + 1). It also
    accumulates every video clip on the grid of the schedule's last clip, so a video whose
    last clip is shorter than an earlier full clip cannot run there: one video clip (1 to 5 s)
    or only full clips (10 s) are what the official code can generate.
    """
    allowed = [s for s in range(1, max_seconds + 1) if s * FPS // TEMPORAL_STRIDE <= FRAMES_PER_CLIP
               or (s * FPS // TEMPORAL_STRIDE) % FRAMES_PER_CLIP == 0]
    ok = {1: 0} | {frames_for_duration(s): s for s in allowed}  # 1 frame: the image clip alone
    if frames not in ok:
        listed = ", ".join(f"{f} ({s} s)" if s else "1 (an image)" for f, s in ok.items())
        raise ConfigError(f"--frames {frames} is not a length this schedule can make; allowed: {listed}")
    return ok[frames]


@dataclass(frozen=True)
class StarScale:
    """One scale of the schedule: where it sits, how often it runs, what it attends to."""

    index: int  # si, over the whole schedule
    clip: int  # 0 = the image clip
    rel: int  # index inside the clip (picks the head and the code width)
    t: int
    h: int
    w: int
    repeats: int
    first_pass: int  # passes (repeats) of all earlier scales: the RoPE step of repeat 0 is text_maxlen + this
    frame_start: int  # absolute latent frame of its first frame
    refs: tuple[int, ...]  # earlier scales whose cached K/V it reads (besides the text)
    semantic_head: bool  # rel < semantic_scales: the semantic head predicts it
    semantic_codes: bool  # h * w < detail_min_tokens: its codes are 16 bits wide

    @property
    def tokens(self) -> int:
        return self.t * self.h * self.w

    @property
    def n(self) -> int:
        """Tokens, under the name the pruning plans read."""
        return self.tokens

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.t, self.h, self.w)


@dataclass(frozen=True)
class StarSchedule:
    """A whole spatio-temporal schedule (frozen, computed once)."""

    scales: tuple[StarScale, ...]
    budget: str
    template: float  # h / w of the template
    frames: int  # pixel frames of the video
    scales_per_clip: int

    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def n_clips(self) -> int:
        return self.n_scales // self.scales_per_clip

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the largest scale: the token grid every clip's codes are accumulated on."""
        return self.scales[-1].h, self.scales[-1].w

    @property
    def latent_frames(self) -> int:
        return latent_frames(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output in pixels."""
        H, W = self.grid
        return H * SPATIAL_STRIDE, W * SPATIAL_STRIDE

    @property
    def dense_tokens(self) -> int:
        return sum(s.tokens for s in self.scales)

    @property
    def visual_token_passes(self) -> int:
        """Token positions the blocks run over, repeats included (text excluded)."""
        return sum(s.tokens * s.repeats for s in self.scales)

    @property
    def block_passes(self) -> int:
        """Passes through the block stack: one for the text prefix plus every repeat of every scale."""
        return 1 + sum(s.repeats for s in self.scales)

    @cached_property
    def last_use(self) -> dict[int, int]:
        """Scale -> the last scale that reads its cached K/V (scales read by none are absent)."""
        out: dict[int, int] = {}
        for s in self.scales:
            for r in s.refs:
                out[r] = s.index
        return out

    def clip_scales(self, clip: int) -> tuple[StarScale, ...]:
        k = self.scales_per_clip
        return self.scales[clip * k:(clip + 1) * k]

    def clip_grid(self, clip: int) -> tuple[int, int, int]:
        """(t, H, W): the grid a clip's codes accumulate on."""
        last = self.clip_scales(clip)[-1]
        return last.t, last.h, last.w

    def to_dict(self) -> dict:
        return {"budget": self.budget, "template": self.template, "frames": self.frames,
                "scales": [list(s.shape) for s in self.scales], "repeats": [s.repeats for s in self.scales],
                "dense_tokens": self.dense_tokens, "block_passes": self.block_passes}


def build_star_schedule(
    budget: str,
    frames: int,
    image_repeats: tuple[int, ...],
    video_repeats: tuple[int, ...],
    semantic_scales: int,
    detail_min_tokens: int,
    h_div_w: float = 1.0,
) -> StarSchedule:
    """The official schedule for `frames` pixel frames (1 = an image) at a pixel budget and aspect.

    `image_repeats` / `video_repeats` give the repeats of each rel in the image clip / video clips.
    """
    if budget not in BUDGETS:
        raise ConfigError(f"unknown video budget {budget!r}; known: {', '.join(BUDGETS)}")
    k = BUDGETS[budget]
    if len(image_repeats) != k or len(video_repeats) != k:
        raise ConfigError(f"budget {budget} has {k} scales per clip; got {len(image_repeats)} image and "
                          f"{len(video_repeats)} video repeats")
    if min(image_repeats) < 1 or min(video_repeats) < 1:
        raise ConfigError("every scale must run at least once (repeats >= 1)")
    template = nearest_template(h_div_w)
    sides = TEMPLATES[template][:k]
    T = latent_frames(frames)
    clip_ts = [1] + [min(FRAMES_PER_CLIP, T - 1 - c) for c in range(0, T - 1, FRAMES_PER_CLIP)]
    scales: list[StarScale] = []
    passes, frame = 0, 0
    for clip, t in enumerate(clip_ts):
        repeats = image_repeats if clip == 0 else video_repeats
        # A video clip reads the previous clip's largest scale, which is its own rel k - 1.
        refs = () if clip == 0 else ((clip - 1) * k + k - 1,)
        for rel, (h, w) in enumerate(sides):
            scales.append(StarScale(
                index=len(scales), clip=clip, rel=rel, t=t, h=h, w=w, repeats=repeats[rel],
                first_pass=passes, frame_start=frame, refs=refs,
                semantic_head=rel < semantic_scales, semantic_codes=h * w < detail_min_tokens))
            passes += repeats[rel]
        frame += t
    return StarSchedule(tuple(scales), budget, template, frames, k)


@dataclass(frozen=True)
class StarResolution:
    """The settings the official inference scripts pair with one resolution of the released weights."""

    name: str
    budget: str
    image_repeats: tuple[int, ...]
    video_repeats: tuple[int, ...]
    semantic_scales: int  # rel < this: semantic head
    detail_min_tokens: int  # h * w >= this: 64-bit codes
    max_seconds: int
    h_div_w: float  # what the scripts request (snapped to the nearest template)

    def schedule(self, frames: int) -> StarSchedule:
        check_frames(frames, self.max_seconds)
        return build_star_schedule(self.budget, frames, self.image_repeats, self.video_repeats,
                                   self.semantic_scales, self.detail_min_tokens, self.h_div_w)


RESOLUTIONS: dict[str, StarResolution] = {
    # tools/infer_video_720p.py: 81 frames (the 720p weights are a 5-second model).
    "720p": StarResolution("720p", "0.90M", (3,) * 15, (3,) * 12 + (2, 1, 1), 12, 750, 5, 0.571),
    # tools/infer_video_480p.py: 5 or 10 seconds.
    "480p": StarResolution("480p", "0.40M", (3,) * 14, (3,) * 12 + (2, 1), 11, 350, 10, 0.571),
    # Not an official setting: the smallest budget, square, for the random-weights tiny model
    # (semantic head and 16-bit codes below 10 x 10, consistent for 1:1 and 16:9).
    "256": StarResolution("256", "0.06M", (1,) * 11, (1,) * 11, 8, 100, 5, 1.0),
}
