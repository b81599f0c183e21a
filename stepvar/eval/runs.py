"""What bench and compare share: a method list expanded into configurations, one timed run, the output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..pruning.plan import check_keep
from ..pruning.registry import default_keep, make_pruner_from_spec, parse_method_spec
from ..sampling import SamplingConfig
from ..schedules import ScaleSchedule
from .measure import peak_memory


@dataclass(frozen=True)
class BenchConfig:
    """One method at one keep ratio (keep None: the method's own ratios)."""

    spec: str
    keep: float | None = None

    @property
    def label(self) -> str:
        return self.spec if self.keep is None else f"{self.spec}@{self.keep:g}"

    def pruner(self):
        return make_pruner_from_spec(self.spec, self.keep)


def _takes_keep(spec: str) -> bool:
    name, overrides = parse_method_spec(spec)
    return "keep" not in overrides and default_keep(name) is not None


def expand_configs(methods: Sequence[str], keeps: Sequence[float] | None) -> list[BenchConfig]:
    """Method specs x keep ratios, dense first.

    `--keep` applies to methods whose preset has a keep (stepvar and its ablations). Methods
    without one (fastvar, fastvar-skip: the release's per-width ratios) run once at their own
    settings; `name@0.4` pins one keep for any method. Dense is added if missing: every
    speedup is against it.
    """
    out: list[BenchConfig] = [BenchConfig("dense")]
    for spec in methods:
        spec = spec.strip()
        base, at, pinned = spec.rpartition("@")
        name, settings = parse_method_spec(base if at else spec)
        if name == "dense":
            if at:
                raise ConfigError(f"method {spec!r}: dense takes no keep ratio")
            if not settings:
                continue  # the reference, already first
            out += [BenchConfig(spec)] if BenchConfig(spec) not in out else []
            continue
        if at:
            try:
                configs = [BenchConfig(base.strip(), check_keep(float(pinned), f"keep of {spec!r}"))]
            except ValueError:
                raise ConfigError(f"method {spec!r}: the part after @ must be a keep ratio, e.g. fastvar@0.4") from None
        elif _takes_keep(spec):
            preset_keep = default_keep(name)
            configs = [BenchConfig(spec, float(k)) for k in (keeps or [preset_keep])]
        else:
            configs = [BenchConfig(spec)]
        out += [c for c in dict.fromkeys(configs) if c not in out]  # --keep 0.4,0.4 measures 0.4 once
    for c in out:
        c.pruner()  # unknown names and bad keeps fail here, before anything runs
    return out


def run_once(pipeline, prompts: list[str], schedule: ScaleSchedule, pruner, sampling: SamplingConfig, decode: bool = True):
    """One generation with its peak memory. A seam for tests (they inject failures here)."""
    with peak_memory(pipeline.device) as box:
        result = pipeline.generate(prompts, schedule, pruner, sampling, decode=decode)
    return result, box[0]


def one_line_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def scalar_keep(pruner) -> float | None:
    keep = getattr(pruner.config, "keep", None)
    return float(keep) if isinstance(keep, (int, float)) else None


def check_out_dir(path: str | Path) -> Path:
    """Fail early on an output directory that could not be created or written, or that another run
    is writing, without creating it (prepare_out_dir makes it once every option has been checked)."""
    from ..run_lock import check_unlocked
    from ..user_files import check_output_dir

    path = check_output_dir(path, "--out")
    if path.is_dir():
        check_unlocked(path)
    return path


def prepare_out_dir(path: str | Path) -> Path:
    """Create the output directory (and parents) and check it is writable, before any compute."""
    from ..user_files import make_output_dir

    return make_output_dir(path, "--out")
