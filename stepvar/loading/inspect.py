"""Describe a checkpoint without building a model: container, size, dtypes, which preset it fits.

With a preset, every missing / unexpected / mis-shaped key is listed (the same strict check the loader
applies). Works for Infinity transformer files and for BSQ VAE files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..validate import check_name
from ..models.bsq_vae import VAE_PRESETS, vae_preset_for_file
from ..models.config import list_model_presets, load_model_preset
from ..models.infinitystar import is_star_preset
from .checkpoints import (
    KeyProblem,
    check_against,
    check_vae_against,
    guess_preset,
    guess_vae_preset,
    likely_cause,
    looks_like_vae,
    preset_shapes,
    read_checkpoint,
    vae_likely_cause,
    vae_shapes,
)


@dataclass
class InspectReport:
    path: str
    container: str
    kind: str  # "transformer" | "vae" | "unknown"
    n_tensors: int
    n_params: int  # elements of all tensors in the file
    dtypes: dict[str, int]
    guessed_preset: str | None  # a model preset, or a VAE preset when kind == "vae"
    preset: str | None = None  # the preset asked for
    checked_against: str | None = None  # the (VAE) preset whose shapes were compared
    problems: list[KeyProblem] = field(default_factory=list)
    cause: str | None = None  # likely cause of the problems
    vae_preset_from_name: str | None = None  # from an official VAE file name
    metadata: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Checked against a preset without problems; with no preset, some preset fits exactly."""
        if self.checked_against is not None:
            return not self.problems
        return self.guessed_preset is not None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "problems"}
        out["problems"] = [p.to_dict() for p in self.problems]
        out["ok"] = self.ok
        return out


def _vae_target(preset: str) -> str:
    """A VAE preset name as given, or the VAE paired with a model preset."""
    if preset in VAE_PRESETS:
        return preset
    try:
        return load_model_preset(preset).arch.vae
    except ConfigError:
        raise ConfigError(
            f"unknown preset {preset!r}; model presets: {', '.join(list_model_presets())}; "
            f"VAE presets: {', '.join(VAE_PRESETS)}") from None


def inspect_checkpoint(path: str | os.PathLike, preset: str | None = None) -> InspectReport:
    if preset is not None and not is_star_preset(check_name(preset, "preset")):
        _vae_target(preset)  # a bad preset is refused before the file is read
    ckpt = read_checkpoint(path)
    tensors = ckpt.tensors
    is_vae = ckpt.container == "vae" or looks_like_vae(tensors)
    report = InspectReport(
        path=str(ckpt.path), container=ckpt.container, kind="unknown", n_tensors=ckpt.n_tensors,
        n_params=ckpt.n_params, dtypes=ckpt.dtypes, guessed_preset=None, preset=preset, metadata=ckpt.metadata)
    if is_vae:
        report.kind = "vae"
        report.guessed_preset = guess_vae_preset(tensors, ckpt.path)
        report.vae_preset_from_name = vae_preset_for_file(ckpt.path)
        # The guess reads two shapes only; checking against it makes `ok` mean "every tensor fits".
        target = _vae_target(preset) if preset is not None else report.guessed_preset
        if target is not None:
            report.checked_against = target
            report.problems = check_vae_against(vae_shapes(target), tensors)
            if report.problems:
                report.cause = vae_likely_cause(tensors, ckpt.path, target)
        return report
    report.guessed_preset = guess_preset(tensors)
    if report.guessed_preset or any("block_chunks." in k for k in tensors):
        report.kind = "transformer"
    if preset is not None:
        report.checked_against = preset
        report.problems = check_against(preset_shapes(preset), tensors)
        if report.problems:
            report.cause = likely_cause(tensors, preset)
    return report
