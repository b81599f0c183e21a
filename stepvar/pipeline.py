"""The user-facing pipeline: named components, local loading, and a typed generation result.

Phases of generate(): check inputs -> encode prompts -> sample latents (the pruner runs
the blocks) -> decode -> images, with timings of each phase and a record of every setting.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .devices import resolve_device, resolve_dtype
from .errors import ConfigError, StepvarError
from .loading.embedded import embedded_dir, load_embedded_preset
from .models.bsq_vae import VAE_PRESETS, BSQVAE
from .models.config import DEFAULT_MODEL, ModelPreset, load_model_preset  # noqa: F401  (DEFAULT_MODEL: part of this API)
from .models.infinity import Infinity
from .pruning.base import Dense, Pruner
from .sampling import LatentCodec, SampleOutput, SamplingConfig, sample, to_uint8
from . import schedules
from .schedules import ScaleSchedule
from .text import HashTextEncoder, T5TextEncoder, TextEncoder, check_prompts



@dataclass
class GenerationResult:
    images: np.ndarray  # (B, H, W, 3) uint8 RGB
    sample: SampleOutput
    timings: dict[str, float]
    record: dict = field(default_factory=dict)


@dataclass
class Pipeline:
    preset: ModelPreset
    model: Infinity
    vae: BSQVAE
    text_encoder: TextEncoder
    device: torch.device
    dtype: torch.dtype
    trained: bool
    sources: dict[str, str] = field(default_factory=dict)
    # The budgets the weights were trained on (an embedded model's model.json says); None = not known
    # (official weights, random weights), in which case every schedule is allowed.
    budgets: tuple[str, ...] | None = None
    # Memory for small GPUs (stepvar.offload): None, "text-encoder" (moved off the device once the
    # prompts are encoded) or "model" (the blocks streamed to the device one at a time).
    offload: str | None = None
    streamer: object | None = None  # stepvar.offload.BlockStreamer when offload == "model"
    text_encoder_released: bool = False

    @property
    def codec(self) -> LatentCodec:
        return LatentCodec(self.vae.cfg.codebook_dim, self.vae.cfg.patchify)

    @property
    def status(self) -> str:
        return "trained" if self.trained else "untrained (random weights)"

    def schedule(self, budget: str | None = None, aspect: str | float | None = None, *, resolution: int | None = None,
                 size: str | tuple[int, int] | None = None) -> ScaleSchedule:
        """stepvar.schedules.schedule for this model: its VAE's token stride, and its own pixel budget
        when no budget, resolution or size is given."""
        if budget is None and resolution is None and size is None:
            budget = self.preset.arch.default_budget
        return schedules.schedule(budget, aspect, resolution=resolution, size=size,
                                  token_stride=self.vae.cfg.token_stride)

    def check_prompts(self, prompts: list[str]) -> list[str]:
        """Refuse, before any run, a prompt this model's text encoder cannot take (the toy grammar)."""
        prompts = check_prompts(list(prompts))
        tokenize = getattr(self.text_encoder, "tokenize", None)  # the toy encoder parses without running
        if tokenize is not None:
            tokenize(prompts)
        return prompts

    def check_schedule(self, schedule: ScaleSchedule) -> None:
        """Refuse a schedule the weights were not trained for: its untrained scales would draw noise."""
        if self.budgets is None or schedule.budget in self.budgets:
            return
        sides = [str(schedules.get_schedule(b, 1.0, self.vae.cfg.token_stride).pixel_size[0]) for b in self.budgets]
        raise ConfigError(f"{self.preset.name} was trained for {' and '.join(sides)} px only, not "
                          f"{max(schedule.pixel_size)} px ({schedule.budget}; its untrained scales would draw noise): "
                          f"use --resolution {' or '.join(sides)}")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features and mask on the pipeline's device (computed on the host once the encoder is released)."""
        if not self.text_encoder_released:
            return self.text_encoder.encode(prompts, self.device)
        text, mask = self.text_encoder.encode(prompts, torch.device("cpu"))
        return text.to(self.device), mask.to(self.device)

    def release_text_encoder(self) -> None:
        """Move the text encoder off the compute device (offload "text-encoder": once every prompt is encoded)."""
        if self.text_encoder_released or self.device.type == "cpu":
            self.text_encoder_released = True
            return
        module = self.text_encoder if isinstance(self.text_encoder, torch.nn.Module) else getattr(self.text_encoder, "model", None)
        if isinstance(module, torch.nn.Module):
            module.to("cpu")
        self.text_encoder_released = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.no_grad()
    def generate(self, prompts: list[str] | str, schedule: ScaleSchedule | None = None, pruner: Pruner | None = None,
                 sampling: SamplingConfig | None = None, on_scale=None, decode: bool = True,
                 keep_hidden: bool = False, forced_bits=None, encoded=None) -> GenerationResult:
        """forced_bits: bits for the first scales instead of sampled ones (stepvar.sampling.sample).
        encoded: the prompts' (features, mask) from encode(), to skip encoding here."""
        # 1. check inputs
        prompts = check_prompts([prompts] if isinstance(prompts, str) else list(prompts))
        schedule = schedule or self.schedule()
        sampling = sampling or SamplingConfig()
        pruner = pruner or Dense()
        if schedule.token_stride != self.vae.cfg.token_stride:
            raise ConfigError(f"schedule token stride {schedule.token_stride} != VAE token stride {self.vae.cfg.token_stride}")
        self.check_schedule(schedule)
        # 2. encode prompts
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        text, mask = encoded if encoded is not None else self.encode(prompts)
        if self.offload == "text-encoder":
            self.release_text_encoder()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        # 3. sample latents
        try:
            out = sample(self.model, text, mask, schedule, self.codec, sampling, pruner, on_scale, keep_hidden, forced_bits)
        finally:
            if self.streamer is not None:
                self.streamer.release()  # no block stays on the device after the loop
        t2 = time.perf_counter()
        # 4. decode
        if decode:
            images = self.decode(out.latent_BdHW)
        else:
            images = np.zeros((len(prompts), 0, 0, 3), np.uint8)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t3 = time.perf_counter()
        timings = {"text_s": t1 - t0, "transformer_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0}
        record = self.record(prompts, schedule, pruner, sampling, timings)
        record["memory"] = {
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            "kv_cache_bytes": out.kv_cache_bytes,
        }
        return GenerationResult(images, out, timings, record)

    @torch.no_grad()
    def decode(self, latent_BdHW: torch.Tensor) -> np.ndarray:
        """Accumulated codes -> (B, H, W, 3) uint8 images."""
        img = self.vae.decode(latent_BdHW.to(next(self.vae.parameters()).dtype))
        return to_uint8(img).numpy()

    def record(self, prompts, schedule, pruner, sampling, timings) -> dict:
        """Everything needed to reproduce an output, saved beside it."""
        return {
            "stepvar_version": __version__,
            "prompts": prompts,
            "seed": sampling.seed,
            "model": self.preset.name,
            "model_status": self.status,
            "sources": self.sources,
            "text_encoder": self.text_encoder.name,
            "schedule": schedule.to_dict(),
            "sampling": {"cfg": sampling.cfg, "tau": sampling.tau, "top_p": sampling.top_p},
            "pruning": pruner.config_dict(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "numerics": self.model.numerics,
            "offload": self.offload,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "timings": timings,
        }


def _build_untrained(preset: ModelPreset, seed: int) -> tuple[Infinity, BSQVAE]:
    torch.manual_seed(seed)  # random weights are reproducible, so their outputs are comparable
    model = Infinity(preset.arch)
    vae = BSQVAE(VAE_PRESETS[preset.arch.vae])
    return model, vae


def load_pipeline(model: str | ModelPreset | None = None, weights: str | Path | None = None, vae: str | Path | None = None,
                  text_encoder: str | Path | None = None, device: str = "auto", dtype: str = "auto",
                  init_seed: int = 0, numerics: str = "exact", offload: str | None = None) -> Pipeline:
    """Build a pipeline from a preset and local files. Nothing is ever downloaded.

    With no weights, the preset's architecture runs with seeded random weights and the
    pipeline says so (status "untrained"). Official weights need --weights, --vae and
    --text-encoder pointing at local files. numerics "official" reproduces the official code's bf16
    roundings in the text attentions of an fp32 run (Infinity.set_numerics); "exact" keeps fp32.
    offload: None, "text-encoder" or "model" (stepvar.offload).
    """
    from .offload import check_offload, move_except_blocks, stream_blocks

    offload = check_offload(offload)
    preset = model if isinstance(model, ModelPreset) else load_model_preset(model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    sources: dict[str, str] = {}
    budgets = None
    if preset.embedded:
        if vae is not None or text_encoder is not None:
            raise StepvarError(f"{preset.name} ships its weights inside the package; --vae/--text-encoder do not apply "
                               "(--weights may name another export of it)")
        net, ae, enc, meta = load_embedded_preset(preset, weights)
        where = "embedded" if weights is None else f"export {weights}"
        sources["weights"] = f"{where} ({embedded_dir(preset).name}, {meta['trained_steps']} training steps)"
        trained = True
        budgets = tuple(meta.get("budgets", [meta["budget"]]))  # exports before mixed resolutions: one budget
    elif weights is None:
        if vae is not None:
            raise StepvarError("--vae was given without --weights; give both, or neither for random weights")
        net, ae = _build_untrained(preset, init_seed)
        sources["weights"] = f"random init (seed {init_seed})"
        trained = False
    else:
        from .loading.checkpoints import load_model_weights, load_vae_weights

        if vae is None:
            raise StepvarError(f"--weights needs --vae too (the {preset.name} preset pairs with {preset.vae_file})")
        with torch.device("meta"):
            net = Infinity(preset.arch)
        load_model_weights(net, weights, preset.name)
        net.init_buffers()
        ae = BSQVAE(VAE_PRESETS[preset.arch.vae])
        load_vae_weights(ae, vae)
        sources.update(weights=str(weights), vae=str(vae))
        trained = True
    if not preset.embedded:
        enc = _make_text_encoder(preset, text_encoder, dev, trained)
    if text_encoder is not None:
        sources["text_encoder"] = str(text_encoder)
    if enc.channels != preset.arch.text_channels:
        raise StepvarError(f"text encoder width {enc.channels} != model text_channels {preset.arch.text_channels}")
    streamer = None
    if offload == "model":
        # The blocks never go to the device whole: cast on the host, then streamed one at a time.
        net.eval()
        if dt != torch.float32:
            net.cast_blocks(dt)
        streamer = stream_blocks(net, dev)
        move_except_blocks(net, dev)
    else:
        net.to(dev).eval()
        if dt != torch.float32:
            net.cast_blocks(dt)
    ae.to(dev).eval()
    if isinstance(enc, torch.nn.Module):
        enc.to(dev).eval()
    net.set_numerics(numerics)
    return Pipeline(preset, net, ae, enc, dev, dt, trained and enc.trained, sources, budgets, offload, streamer)


def _make_text_encoder(preset: ModelPreset, directory, device, trained: bool) -> TextEncoder:
    if preset.text_encoder == "t5":
        if directory is not None:
            return T5TextEncoder(directory, device)
        if trained:
            raise StepvarError(f"{preset.name} needs --text-encoder DIR (a local flan-t5-xl directory)")
        return HashTextEncoder(preset.arch.text_channels, max_tokens=min(64, preset.arch.text_maxlen))
    if preset.text_encoder == "hash":
        return HashTextEncoder(preset.arch.text_channels, max_tokens=preset.arch.text_maxlen)
    raise StepvarError(f"preset {preset.name}: unknown text encoder kind {preset.text_encoder!r}")
