"""What every trainer shares: devices and autocast, the LR schedule, RNG state, atomic
checkpoints, the JSON-lines log, and the step loop with resume.

A trainer is a `Job`: named modules, one optimizer, two random generators (numpy for the
data, a CPU torch.Generator for everything random on the torch side), a config dict, and a
`step()` that performs one optimizer update. `run_job` drives it: it resumes from the
checkpoint, logs, and writes checkpoints atomically. All randomness flows through the two
generators (the global torch RNG is used only to initialise weights), and both are saved in
every checkpoint, so a resumed run continues exactly as an uninterrupted one would.

Out directory layout:
    checkpoint.pt   the latest training state (modules, optimizer, step, RNG, config)
    config.json     the run's configuration (written at start)
    log.jsonl       one JSON object per logged window: step, metrics, seconds per step, elapsed

checkpoint.pt and config.json are replaced atomically (stepvar.io.atomic_path), so a kill never
tears them; a kill while a log line is appended can tear that line, and a resume drops it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..devices import resolve_device  # noqa: F401  (re-exported for the trainers)
from ..errors import CheckpointError, ConfigError, StepvarError
from ..io import atomic_path
from ..run_lock import output_lock
from ..user_files import make_output_dir
from ..loading.containers import torch_load_problem
from ..validate import shown

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"

# Config fields that may change when a run is resumed: they do not affect the math.
RESUMABLE_CHANGES = frozenset({"device", "ckpt_every", "log_every"})


# --------------------------------------------------------------------------------------------------
# Device, autocast, seeds
# --------------------------------------------------------------------------------------------------


def autocast(device: torch.device, enabled: bool = True, cpu_bf16: bool = False):
    """bf16 autocast on CUDA; on a CPU only when asked (cpu_bf16), since CPU bf16 matmuls are slow
    unless the CPU has native bf16 (AVX512-BF16 or AMX, see check_cpu_bf16)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and cpu_bf16 and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_cpu_bf16(settings: "RunSettings", device: torch.device) -> None:
    """Refuse cpu_bf16 on a CPU without native bf16, where it would be several times slower than fp32."""
    if settings.cpu_bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise ConfigError("cpu_bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); train in fp32")


@dataclass
class Rngs:
    """The run's random generators: data (numpy) and torch-side draws (CPU generator)."""

    data: np.random.Generator
    torch: torch.Generator

    @classmethod
    def from_seed(cls, seed: int) -> "Rngs":
        # Independent streams from one seed: numpy's SeedSequence spawns the two children.
        data_ss, torch_ss = np.random.SeedSequence(seed).spawn(2)
        g = torch.Generator().manual_seed(int(torch_ss.generate_state(1, np.uint64)[0] >> 1))
        return cls(np.random.default_rng(data_ss), g)

    def state(self) -> dict:
        return {"data": self.data.bit_generator.state, "torch": self.torch.get_state()}

    def load_state(self, state: dict) -> None:
        self.data.bit_generator.state = state["data"]
        self.torch.set_state(state["torch"])


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    """How a training run runs (not what it learns); shared by the VAE and transformer configs."""

    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (on a CPU only with cpu_bf16)
    # bf16 autocast on a CPU with native bf16: a toy transformer update took 1.24x fewer seconds on cpu-2c
    # (AVX512-BF16; its matmuls alone ran about 3x faster, the rest of the update is not matmul).
    # Off by default: results then depend on the CPU, and most CPUs would run it slower.
    cpu_bf16: bool = False
    ckpt_every: int = 500
    log_every: int = 10


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.97)
    warmup_steps: int = 200
    schedule: str = "cosine"     # "cosine" (to min_lr_ratio * lr at decay_steps) or "constant"
    decay_steps: int = 20000     # cosine horizon; fixed in the config so a resumed run keeps its LR curve
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0       # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.decay_steps < 1:
            raise ConfigError("optim: lr must be > 0, warmup_steps >= 0, decay_steps >= 1")


def optim_for_run(default: OptimConfig, steps: int, lr: float | None = None, warmup_steps: int | None = None,
                  decay_steps: int | None = None, resume_dir: str | os.PathLike | None = None) -> OptimConfig:
    """Optimiser settings of a run: the given overrides over the config's. A fresh run's warm-up is
    at most a tenth of `steps` and its cosine ends at `steps`; a resumed run (resume_dir holds its
    config.json, or where a kill tore that, its checkpoint) keeps the LR curve it was started with,
    so `steps` can grow."""
    from dataclasses import replace

    stored = read_run_config(resume_dir) if resume_dir is not None else None
    if stored is not None and isinstance(stored.get("optim"), dict):
        base = OptimConfig(**stored["optim"])
    else:
        base = replace(default, warmup_steps=min(default.warmup_steps, max(1, steps // 10)), decay_steps=steps)
    return replace(base, lr=base.lr if lr is None else lr,
                   warmup_steps=base.warmup_steps if warmup_steps is None else warmup_steps,
                   decay_steps=base.decay_steps if decay_steps is None else decay_steps)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then constant or cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.decay_steps - cfg.warmup_steps))
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


# Parameters that are embeddings, gains or per-head scales: weight decay would only shrink them.
_NO_DECAY_NAMES = ("cfg_uncond", "pos_start", "pos_embed", "abs_pos", "lvl_embed", "tok_embed", "ada_gss", "scale_mul", "mat_q")


# Parameters added at zero to an already trained model (the position table, the budget embedding): they learn at this
# multiple of the LR so they catch up within a continuation run rather than staying near zero.
_FAST_NAMES = ("abs_pos", "budget_embed")
FAST_LR_SCALE = 10.0


def make_optimizer(named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not biases, norms, embeddings, learned queries)."""
    decay, no_decay, fast = [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if any(n in name for n in _FAST_NAMES):
            fast.append(p)
            continue
        is_matrix = p.ndim >= 2 and not any(n in name for n in _NO_DECAY_NAMES)
        (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if fast:
        groups.append({"params": fast, "weight_decay": 0.0, "lr_scale": FAST_LR_SCALE})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], lr: float, clip: float) -> float:
    """Set the LR, clip the global grad norm, step, zero grads; returns the pre-clip norm."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# --------------------------------------------------------------------------------------------------
# Checkpoints and log
# --------------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through stepvar.io.atomic_path: temporary file, fsync, rename (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_training_checkpoint(path: str | os.PathLike, kind: str | None = None, purpose: str = "this") -> dict:
    """A training checkpoint from a file or a run directory; with `kind`, it must be of that kind."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{shown(path)}: no training checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{shown(path)}: cannot read training checkpoint: {torch_load_problem(exc)}") from None
    if (not isinstance(ckpt, dict) or not isinstance(ckpt.get("kind"), str) or not isinstance(ckpt.get("modules"), dict)
            or not isinstance(ckpt.get("config"), dict)):
        raise CheckpointError(f"{shown(path)}: not a stepvar training checkpoint")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{shown(path)}: a {shown(ckpt['kind'], 40)} checkpoint; {purpose} needs a {kind} checkpoint")
    return ckpt


def _log_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step", 0), int) else None


class JsonlLog:
    """Append-only JSON-lines log; on resume, lines past the checkpoint's step are dropped.

    A kill during an append leaves a torn last line: that is expected, so it is dropped (and
    said), as is any other line that is not a log record. The log never stops a resume.
    """

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> list[str]:
        """Keep the records up to `step`, rewritten atomically; returns notes on what was dropped."""
        if not self.path.is_file():
            return []
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        keep, torn = [], []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            record = _log_record(ln)
            if record is None:
                torn.append(i + 1)
            elif record.get("step", 0) <= step:
                keep.append(ln)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        if not torn:
            return []
        if torn == [len(lines)]:
            return [f"{self.path}: dropped its torn last line (the run was stopped while writing it)"]
        return [f"{self.path}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn[:5]))})"]

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------
# The job interface and the loop
# --------------------------------------------------------------------------------------------------


class Job:
    """One training run's state. Subclasses fill the attributes and implement step()."""

    kind: str = "job"
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    rngs: Rngs
    device: torch.device

    def config_dict(self) -> dict:
        raise NotImplementedError

    def step(self, step: int) -> dict[str, float]:
        """One optimizer update (0-based index `step`); returns scalar metrics (at least 'loss')."""
        raise NotImplementedError

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self, step: int) -> dict:
        return {
            "kind": self.kind,
            "stepvar_version": __version__,
            "step": step,
            "config": json.loads(json.dumps(self.config_dict())),  # plain JSON types (tuples -> lists)
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rngs.state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, ckpt: dict, path: Path) -> int:
        if ckpt["kind"] != self.kind:
            raise CheckpointError(f"{path}: a {ckpt['kind']} checkpoint cannot resume a {self.kind} run")
        _check_same_config(ckpt["config"], self.config_dict(), path)
        for name, module in self.modules.items():
            module.load_state_dict(ckpt["modules"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.rngs.load_state(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        return int(ckpt["step"])


def _check_same_config(saved: dict, current: dict, path: Path) -> None:
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(json.loads(json.dumps(saved))), flat(json.loads(json.dumps(current)))  # tuples -> lists
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k.split(".")[-1] not in RESUMABLE_CHANGES)
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"{path}: cannot resume with a different configuration ({shown})")


@dataclass
class TrainResult:
    out_dir: Path
    step: int                     # updates completed
    checkpoint: Path
    history: list[dict] = field(default_factory=list)  # per-step metrics of this call (not of earlier calls)

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


def read_run_config(run_dir: str | os.PathLike) -> dict | None:
    """The configuration a run directory was started with: config.json, or, where that file is
    missing or unreadable (torn by a kill before it was written atomically), the checkpoint's."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        if isinstance(config, dict):
            return config
    except (OSError, ValueError):
        pass
    if not (run_dir / CHECKPOINT_NAME).is_file():
        return None
    ckpt = read_training_checkpoint(run_dir)
    return {"kind": ckpt["kind"], **ckpt["config"]}


def run_job(job: Job, out_dir: str | os.PathLike, steps: int, resume: bool | str | os.PathLike = False,
            ckpt_every: int = 500, log_every: int = 10,
            on_log: Callable[[dict], None] | None = None, on_note: Callable[[str], None] | None = None) -> TrainResult:
    """Train until `steps` updates in total are done; resume=True / 'auto' / a checkpoint path.

    resume=False refuses an out_dir that already holds a checkpoint (nothing is overwritten by
    accident); 'auto' resumes when there is one and starts fresh otherwise. One run at a time
    writes a directory (stepvar.run_lock); `on_note` hears what was repaired (a stale lock, a
    torn log line).
    """
    out = Path(out_dir)
    make_output_dir(out, "--out")
    with output_lock(out, on_note=on_note):
        return _run_locked(job, out, steps, resume, ckpt_every, log_every, on_log, on_note or (lambda msg: None))


def _run_locked(job: Job, out: Path, steps: int, resume, ckpt_every: int, log_every: int, on_log, say) -> TrainResult:
    ckpt_path, log = out / CHECKPOINT_NAME, JsonlLog(out / LOG_NAME)
    start = 0
    if resume == "auto":
        resume = ckpt_path.is_file()
    if resume:
        src = ckpt_path if resume is True else Path(resume)
        start = job.load_state_dict(read_training_checkpoint(src), src)
        notes = log.truncate_after(start)
    elif ckpt_path.is_file():
        raise StepvarError(f"{out} already holds a training checkpoint; resume it or choose another directory")
    else:
        notes = log.truncate_after(0)
    for note in notes:
        say(note)
    with atomic_path(out / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps({"kind": job.kind, **job.config_dict()}, indent=2) + "\n", encoding="utf-8")

    history, window, t_start = [], [], time.perf_counter()
    for step in range(start, steps):
        t0 = time.perf_counter()
        metrics = job.step(step)
        metrics["seconds"] = time.perf_counter() - t0
        history.append({"step": step + 1, **metrics})
        window.append(metrics)
        done = step + 1
        if done % log_every == 0 or done == steps:
            record = {"step": done, **{k: float(np.mean([m[k] for m in window])) for k in window[0]},
                      "elapsed": time.perf_counter() - t_start}
            log.write(record)
            if on_log is not None:
                on_log(record)
            window = []
        if done % ckpt_every == 0 or done == steps:
            atomic_save(job.state_dict(done), ckpt_path)
    return TrainResult(out, max(start, steps), ckpt_path, history)
