"""The one preset registry: model, method and VAE presets, all YAML files under presets/<kind>/.

    presets/models/<name>.yaml   an architecture, its VAE, text encoder and defaults (stepvar.models.config)
    presets/methods/<name>.yaml  a registered pruning method and settings of its config (stepvar.pruning.registry)
    presets/vaes/<name>.yaml     the shapes of a BSQ VAE (stepvar.models.bsq_vae)

The presets ship inside the package as stepvar.presets. Files are read with yaml.safe_load,
so a preset holds data only, never code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError

KINDS = ("models", "methods", "vaes")


def preset_root() -> Path:
    return Path(str(resources.files("stepvar.presets")))


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file; anything else is a ConfigError naming the file."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping")
    return data


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown preset kind {kind!r}; known: {', '.join(KINDS)}")


def preset_names(kind: str) -> list[str]:
    _check_kind(kind)
    return sorted(p.stem for p in (preset_root() / kind).glob("*.yaml"))


def preset_path(kind: str, name: str) -> Path:
    _check_kind(kind)
    return preset_root() / kind / f"{name}.yaml"


def load_preset(kind: str, name: str) -> dict:
    """The preset's mapping (a fresh copy); an unknown name is a ConfigError listing the known ones."""
    path = preset_path(kind, name)
    if not path.is_file():
        singular = {"models": "model preset", "methods": "method", "vaes": "VAE preset"}[kind]
        raise ConfigError(f"unknown {singular} {name!r}; known: {', '.join(preset_names(kind))}")
    return read_yaml(path)
