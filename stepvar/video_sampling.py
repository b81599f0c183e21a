"""InfinityStar's generation loop: text prefix once, then every scale of every clip, repeats included.

Per pass: the blocks run on the scale's tokens (attending to the text, to the previous clip's
largest scale and to themselves), the head gives two logits per bit, temperature divides them,
APG guidance combines the two rows over the whole scale, one bit is drawn per position, and the
codes are added to the clip's accumulator on its full (t, H, W) grid. The accumulator, area-
downsampled, is the next pass's input; a new clip starts from zeros. Only a scale's last repeat
writes its K/V, and only when a later clip reads them.

Legend: B guidance rows (2: [cond; uncond], 1 without guidance), L = t*h*w tokens of a scale,
d bits per token (16 semantic, 64 detail), V = 2d logits, D = 64 latent channels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models.infinitystar import TEXT_SLOT, InfinityStar
from .pruning.base import Dense, Pruner, ScaleRun, TokenCounter
from .pruning.plan import PruningPlan
from .video_pruning import StarConditioning, StarLayerCache, StarModelView, for_video, video_plan
from .video_schedules import StarScale, StarSchedule

LATENT_CHANNELS = 64
# Appended to every prompt by the official 480p / 720p scripts (their negative prompt is empty).
PROMPT_SUFFIX = ", Close-up on big objects, emphasize scale and detail"


def star_prompt(prompt: str, seconds: int) -> str:
    """The prompt as the released models were trained to read it: a duration tag, the text, the suffix."""
    return f"<<<t={seconds}s>>>{prompt}{PROMPT_SUFFIX}"


@dataclass
class StarSampling:
    """Sampling settings; the defaults are the official 720p / 480p scripts'."""

    guidance: float = 34.0  # APG strength; 1 disables guidance (one row)
    apg_norm_threshold: float = 0.05
    tau_image: float = 1.0  # temperature of the image clip's scales
    tau_video: float = 0.4  # temperature of every video clip's scales
    seed: int = 41

    def __post_init__(self) -> None:
        if not self.guidance >= 1:
            raise ConfigError(f"guidance must be >= 1 (1 = off), got {self.guidance}")
        if not (self.tau_image > 0 and self.tau_video > 0):
            raise ConfigError("temperatures must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, cfg: str | None, tau: str | None, seed: int) -> "StarSampling":
        """--cfg G (APG strength) and --tau T or T_IMAGE,T_VIDEO; left out, the official values."""
        kw: dict = {"seed": seed}
        try:
            if cfg is not None:
                kw["guidance"] = float(cfg)
            if tau is not None:
                taus = [float(t) for t in tau.split(",")]
                if len(taus) not in (1, 2):
                    raise ValueError
                kw["tau_image"], kw["tau_video"] = taus[0], taus[-1]
        except ValueError:
            raise ConfigError(f"a video model takes --cfg G (one number) and --tau T or T_IMAGE,T_VIDEO; got "
                              f"--cfg {cfg} --tau {tau}") from None
        return cls(**kw)


@dataclass
class PassRecord:
    scale: int
    repeat: int
    tokens: int


@dataclass
class StarResult:
    latent: torch.Tensor  # (1, D, T, H, W): every clip's accumulator, concatenated in time
    passes: list[PassRecord] = field(default_factory=list)
    peak_kv_bytes: int = 0
    counter: TokenCounter = field(default_factory=TokenCounter)  # tokens per (scale, layer, branch), all repeats
    plan: PruningPlan | None = None
    method: dict = field(default_factory=dict)  # the method's settings as it ran, its resolved plan included

    @property
    def token_passes(self) -> int:
        """Tokens the blocks processed, summed over blocks and passes (one guidance row)."""
        return self.counter.total("sa")


def apg_guidance(cond_BLV: torch.Tensor, uncond_BLV: torch.Tensor, scale: float, norm_threshold: float,
                 eta: float = 0.0) -> torch.Tensor:
    """Adaptive projected guidance over the whole scale: the update is clipped in RMS and its
    component parallel to the conditional logits is dropped (kept with weight eta)."""
    _, L, V = cond_BLV.shape
    diff = cond_BLV - uncond_BLV
    if norm_threshold > 0:
        rms = diff.norm(p=2, dim=(-1, -2), keepdim=True) / math.sqrt(L * V)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / rms)
    unit = F.normalize(cond_BLV.double(), dim=(-1, -2))
    parallel = (diff.double() * unit).sum(dim=(-1, -2), keepdim=True) * unit
    orthogonal = diff.double() - parallel
    update = orthogonal.to(diff.dtype) + eta * parallel.to(diff.dtype)
    return cond_BLV + (scale - 1) * update


def scale_positions(s: StarScale, repeat: int, grid: tuple[int, int], text_maxlen: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, 4) RoPE positions (step, frame, row, col) of a scale's tokens, (t, h, w) row-major.

    Rows and columns are the scale's coordinates stretched to the full grid and rounded (in fp32,
    half to even, as the official table), so every scale of a clip shares one coordinate frame.
    """
    H, W = grid
    frames = torch.arange(s.t, device=device) + s.frame_start
    rows = (torch.arange(s.h, dtype=torch.float32, device=device) * (H / s.h)).round().long()
    cols = (torch.arange(s.w, dtype=torch.float32, device=device) * (W / s.w)).round().long()
    tt, hh, ww = torch.meshgrid(frames, rows, cols, indexing="ij")
    step = torch.full_like(tt, text_maxlen + s.first_pass + repeat)
    return torch.stack((step, tt, hh, ww), dim=-1).reshape(-1, 4)


def bits_to_codes(bits_1thwd: torch.Tensor) -> torch.Tensor:
    """{0, 1} bits (1, t, h, w, d) -> BSQ codes (1, d, t, h, w) with entries +-1/sqrt(d)."""
    codes = F.normalize(bits_1thwd.float() * 2 - 1, dim=-1)
    return codes.permute(0, 4, 1, 2, 3)


def codes_to_grid(codes_1dthw: torch.Tensor, grid_thw: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear over (channels, rows, cols) to (1, D, t, H, W): 16 semantic channels are stretched
    to 64 as an interpolation axis, never mixed across frames."""
    t, H, W = grid_thw
    x = codes_1dthw.permute(0, 2, 1, 3, 4)  # (1, t, d, h, w)
    x = F.interpolate(x, size=(LATENT_CHANNELS, H, W), mode="trilinear")
    return x.permute(0, 2, 1, 3, 4)  # (1, D, t, H, W)


def sample_bits(logits_1LV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per bit from its two-way softmax; (1, L*d) in {0, 1}."""
    probs = logits_1LV.reshape(1, -1, 2).softmax(dim=-1)
    return torch.multinomial(probs.view(-1, 2), num_samples=1, replacement=True, generator=generator).view(1, -1)


@torch.no_grad()
def generate_latent(
    model: InfinityStar,
    schedule: StarSchedule,
    text_LCt: torch.Tensor,
    sampling: StarSampling,
    forced_bits: list[torch.Tensor] | None = None,
    on_pass: Callable[[StarScale, int, torch.Tensor], None] | None = None,
    pruner: Pruner | None = None,
) -> StarResult:
    """Run the whole schedule. `forced_bits[p]` (1, t, h, w, d), when given, replaces the draw of pass p
    (teacher forcing, for parity tests); `on_pass(scale, repeat, logits_BLV)` sees each pass's raw logits.
    `pruner` runs the blocks of every scale (dense if None); see stepvar.video_pruning."""
    pruner = for_video(pruner or Dense())
    plan = video_plan(pruner, schedule, model.cfg.depth)  # refuses what cannot run before anything runs
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    guided = sampling.guidance != 1
    cache = model.new_cache()
    prefix = model.text_prefix(text_LCt.to(device), guidance=guided)
    B = prefix.shape[0]
    model.run_text(prefix, cache)

    grid = schedule.grid
    result = StarResult(latent=torch.empty(0), plan=plan, method=pruner.config_dict())
    view, conditioning = StarModelView(model), StarConditioning(mods=(None,) * model.cfg.depth)
    masks: dict = {}  # a scale's kept positions, shared by its repeats
    clips: list[torch.Tensor] = []
    acc = torch.zeros(1, LATENT_CHANNELS, 1, 1, 1, device=device)
    x = model.embed_codes(torch.zeros(1, LATENT_CHANNELS, *schedule.scales[0].shape, device=device), B)
    n_pass = 0
    for s in schedule.scales:
        target = schedule.clip_grid(s.clip)
        tau = sampling.tau_image if s.clip == 0 else sampling.tau_video
        write = s.index if s.index in schedule.last_use else None
        for r in range(s.repeats if not pruner.skips(s.index) else 0):
            last = r == s.repeats - 1
            pos = scale_positions(s, r, grid, model.cfg.text_maxlen, device)
            caches = [StarLayerCache(layer, write if last else None, s.refs + (TEXT_SLOT,)) for layer in cache.layers]
            run = ScaleRun(view, conditioning, x, s.index, s, pos, caches, result.counter, cfg_pairs=guided,
                           share_rows=True, masks=masks)
            h = pruner.run_scale(run)
            logits = model.logits(h, semantic=s.semantic_head)
            if on_pass is not None:
                on_pass(s, r, logits)
            logits = logits / tau
            if guided:
                logits = apg_guidance(logits[:1], logits[1:], sampling.guidance, sampling.apg_norm_threshold)
            if forced_bits is not None:
                bits = forced_bits[n_pass].to(device)
            else:
                bits = sample_bits(logits, generator).view(1, s.t, s.h, s.w, -1)
            acc = F.interpolate(acc, size=target, mode="trilinear") + codes_to_grid(bits_to_codes(bits), target)
            if not last:
                x = model.embed_codes(F.interpolate(acc, size=s.shape, mode="area"), B)
            result.passes.append(PassRecord(s.index, r, s.tokens))
            result.peak_kv_bytes = max(result.peak_kv_bytes, cache.nbytes)
            n_pass += 1
        for slot, last_reader in schedule.last_use.items():
            if last_reader == s.index:
                cache.free(slot)
        if tuple(acc.shape[2:]) != target:  # every scale of the clip so far was skipped
            acc = F.interpolate(acc, size=target, mode="trilinear")
        if s.index + 1 == schedule.n_scales:
            break
        nxt = schedule.scales[s.index + 1]
        if nxt.clip != s.clip:  # a new clip starts from zero codes
            clips.append(acc)
            acc = torch.zeros(1, LATENT_CHANNELS, *nxt.shape, device=device)
            x = model.embed_codes(acc, B)
        else:
            x = model.embed_codes(F.interpolate(acc, size=nxt.shape, mode="area"), B)
    clips.append(acc)
    result.latent = torch.cat(clips, dim=2)
    return result
