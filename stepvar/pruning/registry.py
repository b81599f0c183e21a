"""Methods by name, built from YAML presets (presets/methods/*.yaml) plus overrides.

A preset names its engine (`method: stepvar` or `method: fastvar`) and sets config
fields; anything given on the command line overrides the preset, and the resolved
settings are saved with every output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ConfigError
from ..models.config import _load_yaml, _preset_root
from ..user_files import parse_yaml
from ..validate import check_name, shown
from .base import Dense, Pruner
from .fastvar import FastVAR, FastVARConfig
from .propagation import METRICS
from .scores import BORDERS, INITS, NORMS, ORDERS, ROUNDINGS
from .stepvar import CFG_ROWS, PROPAGATE, SCORES, SELECTIONS, StepVAR, StepVARConfig

ENGINES = {"stepvar": (StepVAR, StepVARConfig), "fastvar": (FastVAR, FastVARConfig)}


def list_methods() -> list[str]:
    return sorted(p.stem for p in (_preset_root() / "methods").glob("*.yaml"))


def method_preset(name: str) -> dict:
    path = _preset_root() / "methods" / f"{check_name(name, 'method')}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return _load_yaml(path)


def method_preset_file(path: str | Path) -> tuple[str, dict]:
    """(name, settings) of a method preset from a YAML file the user names on purpose."""
    path = Path(path)
    return path.stem, _load_yaml(path)


def make_pruner(name: str, keep: float | list | dict | None = None, preset: dict | None = None, **overrides) -> Pruner:
    """Build a method by preset name (or from `preset`, the settings of a preset file).
    keep=None keeps the preset's own keep ratios."""
    data = dict(method_preset(name) if preset is None else preset)
    engine = data.pop("method", name)
    data.pop("description", None)
    if engine == "dense":
        return Dense()
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ConfigError(f"method preset '{shown(name, 80)}' names an unknown engine '{shown(engine, 80)}'; "
                          f"known: dense, {', '.join(ENGINES)}")
    cls, cfg_cls = ENGINES[engine]
    if keep is not None:
        data["keep"] = keep
    data.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"method '{shown(name, 80)}': unknown setting(s) {shown(', '.join(map(str, unknown)), 200)}; "
                          f"known: {', '.join(sorted(fields))}")
    try:
        cfg = cfg_cls(**data)
        _check_settings(cfg, name)
        return cls(cfg, name=name)
    except (TypeError, ValueError) as exc:  # a setting of the wrong type that the config's own checks missed
        raise ConfigError(f"method '{shown(name, 80)}': {shown(exc, 200)}") from None


# The settings whose value is one of a few words; every other setting is checked by its type.
CHOICES = {"score": SCORES, "selection": SELECTIONS, "cfg_rows": CFG_ROWS, "propagate": PROPAGATE, "norm": NORMS,
           "power_init": INITS, "border": BORDERS, "order": ORDERS, "rounding": ROUNDINGS, "metric": METRICS}


def _check_settings(cfg, name: str) -> None:
    """Every setting of a method config, before anything runs: words from their lists, finite numbers
    of the field's type, keep ratios in (0, 1], scale lists of integers."""
    def bad(field_name: str, value, expected: str) -> ConfigError:
        return ConfigError(f"method '{shown(name, 80)}': {field_name} must be {expected}, got {shown(repr(value), 80)}")

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default
        if f.name in CHOICES:
            if value not in CHOICES[f.name]:
                raise bad(f.name, value, "one of " + ", ".join(CHOICES[f.name]))
        elif f.name == "keep":
            items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
            if value is not None and (not items or not all(_is_number(v) and 0 < v <= 1 for v in items)):
                raise bad("keep", value, "a ratio in (0, 1], a list of them, or a scale:ratio mapping")
            if isinstance(value, dict) and not all(_is_int(k) for k in value):
                raise bad("keep", value, "keyed by scale index")
        elif f.name in ("scales", "skip"):
            if value is not None and (not isinstance(value, list) or not all(_is_int(v) and abs(v) <= 2**62 for v in value)):
                raise bad(f.name, value, "a list of scale indices, e.g. [9,10]")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise bad(f.name, value, "true or false")
        elif isinstance(default, int) or f.name in ("first_scale", "dense_prefix", "dense_suffix", "cache_scale"):
            if value is not None and not (_is_int(value) and 0 <= value <= 2**62):
                raise bad(f.name, value, "a non-negative integer")
        elif isinstance(default, float):
            if not _is_number(value):
                raise bad(f.name, value, "a finite number")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_method_spec(spec: str) -> tuple[str, dict]:
    """'stepvar:norm=rank:w_str=2' -> ('stepvar', {'norm': 'rank', 'w_str': 2}).

    Lets compare and bench put variants of one method side by side without a preset file.
    Values are read as YAML scalars or lists ('scales=[9,10]').
    """
    name, *parts = spec.strip().split(":")
    overrides = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"method variant '{shown(spec, 120)}': expected name:key=value[:key=value...]")
        overrides[key.strip().replace("-", "_")] = parse_yaml(value, f"method variant '{shown(spec, 120)}', {shown(key, 40)}")
    method_preset(name)  # unknown names fail here, with the list of known ones
    return name, overrides


def split_method_list(text: str) -> list[str]:
    """Split 'dense,stepvar:scales=[9,10],fastvar' on the commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    specs = [s.strip() for s in out if s.strip()]
    if not specs:
        raise ConfigError("--methods is empty")
    return specs


def make_pruner_from_spec(spec: str, keep: float | list | dict | None = None) -> Pruner:
    name, overrides = parse_method_spec(spec)
    pruner = make_pruner(name, keep=overrides.pop("keep", keep), **overrides)
    pruner.name = spec.strip()
    return pruner


def describe_methods() -> list[tuple[str, str]]:
    return [(n, method_preset(n).get("description", "")) for n in list_methods()]
