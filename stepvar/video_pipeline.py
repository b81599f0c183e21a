"""Text-to-video with InfinityStar: named components, local loading, a typed result, MP4 output.

Phases of generate(): check inputs -> encode the prompt (with the duration tag) -> sample the
latent over the spatio-temporal schedule -> decode it in temporal chunks -> uint8 frames, with the
time of each phase and a record of every setting.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import ConfigError, StepvarError
from .io import atomic_path
from .loading.infinitystar import load_infinitystar, load_video_vae
from .models.infinitystar import InfinityStar, star_preset
from .models.video_vae import VideoVAEDecoder, frames_to_uint8
from .text import HashTextEncoder, T5TextEncoder, TextEncoder
from .video_sampling import StarSampling, generate_latent, star_prompt
from .video_schedules import FPS, RESOLUTIONS, StarResolution, StarSchedule, check_frames

VIDEO_SUFFIXES = {".mp4": "MP4"}


@dataclass
class VideoResult:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    latent: torch.Tensor  # (1, 64, T', H', W')
    timings: dict[str, float]
    record: dict = field(default_factory=dict)
    plan: object = None  # the PruningPlan the method ran by (over the video schedule)


@dataclass
class VideoPipeline:
    name: str
    model: InfinityStar
    vae: VideoVAEDecoder
    text_encoder: TextEncoder
    resolution: StarResolution
    device: torch.device
    trained: bool
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "trained" if self.trained else "untrained (random weights)"

    def schedule(self, frames: int) -> StarSchedule:
        return self.resolution.schedule(frames)

    def encode_prompt(self, prompt: str, seconds: int) -> torch.Tensor:
        """(L, Ct) features of the real tokens of the templated prompt."""
        feats, mask = self.text_encoder.encode([star_prompt(prompt, seconds)], self.device)
        return feats[0][mask[0]].float()

    def generate(self, prompt: str, frames: int, sampling: StarSampling, on_pass=None, pruner=None) -> VideoResult:
        seconds = check_frames(frames, self.resolution.max_seconds)  # phase 1: inputs
        schedule = self.schedule(frames)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        text = self.encode_prompt(prompt, seconds)  # phase 2
        timings["text"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = generate_latent(self.model, schedule, text, sampling, on_pass=on_pass, pruner=pruner)  # phase 3
        timings["sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        video = self.vae.decode(out.latent)  # phase 4
        timings["decode"] = time.perf_counter() - t0
        frames_u8 = frames_to_uint8(video).cpu().numpy()
        record = {
            "prompt": prompt, "model": self.name, "model_status": self.status, "resolution": self.resolution.name,
            "frames": int(frames_u8.shape[0]), "fps": FPS, "size": list(frames_u8.shape[1:3]),
            "seconds": seconds, "schedule": schedule.to_dict(), "sampling": sampling.to_dict(),
            "method": out.method,
            "token_positions": sum(p.tokens for p in out.passes), "token_passes": out.token_passes,
            "block_passes": len(out.passes) + 1,
            "peak_kv_bytes": out.peak_kv_bytes, "timings": timings, "sources": self.sources,
            "versions": {"stepvar": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
        return VideoResult(frames_u8, out.latent, timings, record, out.plan)


def load_video_pipeline(
    name: str,
    weights: str | Path | None = None,
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    resolution: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> VideoPipeline:
    """Every component from local paths; the untrained preset builds seeded random weights instead."""
    cfg = star_preset(name)
    res_name = resolution or cfg.resolutions[0]
    if res_name not in cfg.resolutions:
        raise ConfigError(f"{name} has resolutions {', '.join(cfg.resolutions)}; got {res_name!r}")
    dev = torch.device(device)
    if cfg.untrained:
        if weights is not None or vae is not None:
            raise ConfigError(f"{name} is a random-weights preset; it takes no --weights or --vae")
        encoder: TextEncoder = HashTextEncoder(cfg.text_channels)
        sources = {"weights": "random (seeded)", "vae": "random (seeded)", "text_encoder": encoder.name}
    else:
        missing = [flag for flag, value in (("--weights", weights), ("--vae", vae), ("--text-encoder", text_encoder))
                   if value is None]
        if missing:
            raise ConfigError(f"{name} needs {', '.join(missing)} (local files; nothing is downloaded)")
        encoder = T5TextEncoder(text_encoder, dev)
        sources = {"weights": str(weights), "vae": str(vae), "text_encoder": str(text_encoder)}
    model, _ = load_infinitystar(name, weights, device=dev, seed=seed)
    decoder, _ = load_video_vae(vae, device=dev, seed=seed)
    return VideoPipeline(name, model, decoder, encoder, RESOLUTIONS[res_name], dev, not cfg.untrained, sources)


def write_mp4(path: str | Path, frames_THW3: np.ndarray, fps: int = FPS) -> Path:
    """H.264 MP4 (yuv420p, so any player opens it), written to a temporary file and renamed."""
    import imageio_ffmpeg

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise StepvarError(f"a video goes to an .mp4 file, not {path.suffix or '(none)'!r}: {path}")
    T, H, W, _ = frames_THW3.shape
    with atomic_path(path) as tmp:
        # The container is named explicitly: ffmpeg would guess it from the temporary file's suffix.
        writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             quality=8, macro_block_size=16, output_params=["-f", "mp4"])
        writer.send(None)
        try:
            for frame in frames_THW3:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def frames_from_request(frames: int | None, duration: int | None, max_seconds: int) -> int:
    """--frames or --duration (seconds) to a frame count the schedule can make (default 5 s, or the maximum)."""
    if frames is not None and duration is not None:
        raise ConfigError("give --frames or --duration, not both")
    if frames is None:
        seconds = duration if duration is not None else min(5, max_seconds)
        if seconds < 1:
            raise ConfigError(f"--duration must be at least 1 second, got {seconds}")
        frames = seconds * FPS + 1
    check_frames(frames, max_seconds)
    return frames


def check_video_output(path: str | Path, frames: int) -> Path:
    """.mp4 for a video; a single frame may also go to .png / .jpg. Checked before any compute."""
    from .io import IMAGE_SUFFIXES, check_output_path

    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if frames > 1:
            raise StepvarError(f"{path}: {frames} frames go to an .mp4 file, not {path.suffix}")
        return check_output_path(path, IMAGE_SUFFIXES)
    return check_output_path(path, VIDEO_SUFFIXES)


def save_video_outputs(path: str | Path, result: VideoResult) -> dict[str, Path]:
    """The MP4 (or the image, for one frame), a poster PNG of the middle frame and the JSON sidecar."""
    from .io import IMAGE_SUFFIXES, save_image, save_json

    path = Path(path)
    meta = {"prompt": result.record.get("prompt", ""), "record": result.record}
    if path.suffix.lower() in IMAGE_SUFFIXES:
        written = {"image": save_image(path, result.frames[0], meta)}
    else:
        written = {"video": write_mp4(path, result.frames)}
        poster = path.with_name(path.stem + ".poster.png")
        written["poster"] = save_image(poster, result.frames[len(result.frames) // 2], meta)
    written["sidecar"] = save_json(path.with_suffix(".json"), result.record | {k: str(v) for k, v in written.items()})
    return written
