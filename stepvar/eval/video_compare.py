"""`compare` for video models: every method with the same prompt and seed, measured against dense.

Per method: PSNR and SSIM of every frame to dense's frame (and their means), a temporal-consistency
figure, the peak KV-cache bytes, the transformer FLOPs of its plan, the token passes and the time;
a side-by-side MP4 of all methods (dense first) and one MP4 per method.

Temporal consistency: the frame-to-frame differences of a method's video against dense's, as the
cosine similarity of the two difference signals (all frames, pixels and channels at once). 1 means
the method moves exactly as dense does; a method whose frames are each close to dense's but
flicker scores lower than its per-frame PSNR suggests. The first pixel frame repeats the second
(the released pipeline shows frame 1 in place of frame 0), so that pair is left out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..video_flops import plan_flops
from ..video_pruning import check_video_method
from ..video_sampling import StarSampling
from .metrics import psnr, ssim
from .runs import BenchConfig, expand_configs, prepare_out_dir


def frame_fidelity(frames: np.ndarray, ref: np.ndarray) -> tuple[list[float | None], list[float]]:
    """Per-frame PSNR (None where identical) and SSIM of (T, H, W, 3) uint8 frames to the reference."""
    if frames.shape != ref.shape:
        raise ValueError(f"videos differ in shape: {frames.shape} vs {ref.shape}")
    p = [psnr(a, b) for a, b in zip(frames, ref)]
    return [None if math.isinf(v) else v for v in p], [ssim(a, b) for a, b in zip(frames, ref)]


def temporal_agreement(frames: np.ndarray, ref: np.ndarray, skip_first: bool = True) -> float | None:
    """Cosine similarity of the frame-to-frame differences of two videos, (T, H, W, 3) uint8 each.

    None when there is no motion to compare (fewer than two usable frames, or both still)."""
    if frames.shape != ref.shape:
        raise ValueError(f"videos differ in shape: {frames.shape} vs {ref.shape}")
    start = 1 if skip_first else 0
    a = np.diff(frames[start:].astype(np.float64), axis=0).ravel()
    b = np.diff(ref[start:].astype(np.float64), axis=0).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if a.size == 0 or na == 0 or nb == 0:
        return 1.0 if a.size and na == nb == 0 else None
    return float(a @ b / (na * nb))


def side_by_side(videos: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """The videos next to each other, each with its label in a bar above it: (T, H + bar, W * n, 3) uint8."""
    from PIL import Image, ImageDraw

    T, H, W, _ = videos[0].shape
    bar = 16
    canvas = np.zeros((T, H + bar, W * len(videos), 3), dtype=np.uint8)
    label_row = Image.new("RGB", (W * len(videos), bar))
    draw = ImageDraw.Draw(label_row)
    for i, (video, label) in enumerate(zip(videos, labels)):
        canvas[:, bar:, i * W:(i + 1) * W] = video
        draw.text((i * W + 4, 2), label[: W // 6], fill=(255, 255, 255))
    canvas[:, :bar] = np.asarray(label_row)[None]
    return canvas


@dataclass
class VideoCompareReport:
    model: str
    status: str
    prompt: str
    frames: int
    seed: int
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "model_status": self.status, "prompt": self.prompt, "frames": self.frames,
                "seed": self.seed, "results": self.rows}


def _file_name(config: BenchConfig) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in config.label)
    return f"{safe}.mp4"


def run_video_compare(pipe, prompt: str, frames: int, methods: Sequence[str], keeps: Sequence[float] | None,
                      sampling: StarSampling, out_dir: str | Path,
                      on_progress: Callable[[str], None] | None = None) -> VideoCompareReport:
    """Every method once (dense first) on the same prompt, frames and seed; files go to out_dir."""
    from ..io import save_json
    from ..video_pipeline import write_mp4

    say = on_progress or (lambda msg: None)
    configs = expand_configs(methods, keeps)
    schedule = pipe.schedule(frames)
    pruners = {c.label: check_video_method(c.pruner(), schedule, pipe.model.cfg.depth) for c in configs}
    out = prepare_out_dir(out_dir)
    report = VideoCompareReport(pipe.name, pipe.status, prompt, frames, sampling.seed)
    videos, ref = [], None
    dense_flops = None
    for c in configs:
        say(f"{c.label}: generating {frames} frames")
        t0 = time.perf_counter()
        result = pipe.generate(prompt, frames, sampling, pruner=pruners[c.label])
        seconds = time.perf_counter() - t0
        video = result.frames
        ref = video if ref is None else ref
        flops = plan_flops(pipe.model.cfg, schedule, result.plan).total
        dense_flops = dense_flops or flops
        p, s = frame_fidelity(video, ref)
        finite = [v for v in p if v is not None]
        row = {
            "method": c.label, "video": _file_name(c),
            "psnr_per_frame": p, "ssim_per_frame": s,
            "psnr_mean": sum(finite) / len(finite) if finite else None, "identical": not finite,
            "ssim_mean": sum(s) / len(s),
            "temporal_agreement": temporal_agreement(video, ref),
            "peak_kv_bytes": result.record["peak_kv_bytes"],
            "transformer_flops": flops, "flops_bound": dense_flops / flops,
            "token_passes": result.record["token_passes"],
            "seconds": seconds, "sample_seconds": result.timings["sample"],
            "pruned_scales": result.plan.pruned_scales,
        }
        write_mp4(out / row["video"], video)
        report.rows.append(row)
        videos.append(video)
    write_mp4(out / "side_by_side.mp4", side_by_side(videos, [c.label for c in configs]))
    save_json(out / "report.json", report.to_dict())
    return report
