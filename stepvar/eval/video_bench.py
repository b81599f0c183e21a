"""Video benchmarks (InfinityStar): FLOP bounds per method on any preset (no weights needed) and
measured same-run timings on a model that is loaded.

Published speedups the figures are read against, both measured end to end on the 8B model with
settings not published in full: FastSTAR 2.01x (one H100), StepVAR 1.4x (VBench 83.88 -> 83.35).
A FLOP bound counts the transformer only (no selection cost, no memory effects): it is the most a
method can gain, not a measurement.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..models.infinitystar import star_preset
from ..video_flops import plan_flops
from ..video_pruning import for_video, video_plan
from ..video_sampling import StarSampling, generate_latent
from ..video_schedules import RESOLUTIONS, StarSchedule
from .runs import expand_configs

PUBLISHED = {"stepvar": "1.4x (StepVAR paper, InfinityStar, end-to-end)",
             "fastvar": "2.01x (FastSTAR, InfinityStar 720p, one H100; FastVAR's successor)"}


@dataclass
class VideoFlopRow:
    method: str
    pflop: float  # transformer, one guidance row (the guidance row doubles dense and pruned alike)
    bound: float  # dense / method
    pruned_scales: list[int]
    published: str

    def to_dict(self) -> dict:
        return asdict(self)


def flop_rows(preset: str, resolution: str, frames: int, methods: list[str], keeps: list[float] | None) -> list[VideoFlopRow]:
    """One row per method x keep as `bench` expands them, dense first."""
    cfg = star_preset(preset)
    schedule = RESOLUTIONS[resolution].schedule(frames)
    rows, dense = [], None
    for c in expand_configs(methods, keeps):
        pruner = for_video(c.pruner())
        plan = video_plan(pruner, schedule, cfg.depth)
        total = plan_flops(cfg, schedule, plan).total
        dense = dense or total
        rows.append(VideoFlopRow(c.label, total / 1e15, dense / total, plan.pruned_scales,
                                 PUBLISHED.get(c.spec.split(":")[0].split("@")[0], "")))
    return rows


@dataclass
class VideoTimingRow:
    method: str
    seconds: list[float]  # the sampling loop (transformer, heads, sampling), wall clock, one per repeat
    cpu_seconds: list[float]  # the process's CPU time for the same: robust to other load on a shared machine
    token_passes: int  # tokens through the blocks, summed over blocks and passes, one guidance row
    speedup: float  # dense median / method median (wall clock)
    speedup_cpu: float

    def to_dict(self) -> dict:
        return asdict(self)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def measure(model, schedule: StarSchedule, text_LCt: torch.Tensor, methods: list[str], keeps: list[float] | None,
            repeats: int, sampling: StarSampling, warmup: int = 1) -> list[VideoTimingRow]:
    """Interleaved runs of the sampling loop (every configuration once per repeat), same prompt and seed.
    The VAE decode is left out: it does not depend on the method."""
    configs = expand_configs(methods, keeps)
    labels = [c.label for c in configs]
    times = {s: [] for s in labels}
    cpu = {s: [] for s in labels}
    passes = {}
    for rep in range(warmup + repeats):
        for c in configs:
            t0, c0 = time.perf_counter(), time.process_time()
            out = generate_latent(model, schedule, text_LCt, sampling, pruner=c.pruner())
            if rep >= warmup:
                times[c.label].append(time.perf_counter() - t0)
                cpu[c.label].append(time.process_time() - c0)
            passes[c.label] = out.token_passes
    d, dc = _median(times["dense"]), _median(cpu["dense"])
    return [VideoTimingRow(s, times[s], cpu[s], passes[s], d / _median(times[s]), dc / _median(cpu[s])) for s in labels]
