"""Methods by name: the one place where pruning methods register, and their presets.

A method is a Pruner subclass registered here under its name (register_method). A preset
(presets/methods/*.yaml) names a registered method (`method: stepvar`) and sets fields of
its config; anything given on the command line overrides the preset, and the resolved
settings are saved with every output. A registered method needs no preset: its name alone
runs it with its config's defaults.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..preset_registry import load_preset, preset_names
from .base import Dense, Pruner
from .fastvar import FastVAR
from .stepvar import StepVAR

METHODS: dict[str, type[Pruner]] = {}


def register_method(cls: type[Pruner], name: str | None = None) -> type[Pruner]:
    """Make a Pruner class available by name to make_pruner, generate, bench and compare.

    Usable as a class decorator. Registering another class under a taken name is an error.
    """
    key = name or cls.name
    if key in METHODS and METHODS[key] is not cls:
        raise ConfigError(f"method {key!r} is already registered (by {METHODS[key].__qualname__})")
    METHODS[key] = cls
    return cls


for _cls in (Dense, StepVAR, FastVAR):
    register_method(_cls)


def list_methods() -> list[str]:
    """Every method name: the presets, and registered methods without a preset of their own name."""
    return sorted(set(preset_names("methods")) | set(METHODS))


def method_preset(name: str) -> dict:
    if name in preset_names("methods"):
        return load_preset("methods", name)
    if name in METHODS:
        return {"method": name, "description": (METHODS[name].__doc__ or "").strip().split("\n")[0]}
    raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")


def default_keep(name: str):
    """The keep a method runs at unless told otherwise: its preset's, else its config's default (None: it has none)."""
    data = method_preset(name)
    if "keep" in data:
        return data["keep"]
    cls = METHODS.get(data.get("method", name))
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)} if cls is not None else {}
    field = fields.get("keep")
    return None if field is None or field.default is dataclasses.MISSING else field.default


def make_pruner(name: str, keep: float | list | dict | None = None, **overrides) -> Pruner:
    """Build a method by preset or registered name. keep=None keeps the preset's own keep ratios."""
    data = dict(method_preset(name))
    engine = data.pop("method", name)
    data.pop("description", None)
    if engine not in METHODS:
        raise ConfigError(f"method preset {name!r} names an unknown method {engine!r}; "
                          f"registered: {', '.join(sorted(METHODS))}")
    cls = METHODS[engine]
    config_class = cls.config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    if not fields:
        return cls(name=name)  # a method without settings (dense) runs the same whatever keep or scales say
    if keep is not None:
        data["keep"] = keep
    data.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(data) - fields)
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"method {name!r}: unknown setting(s) {', '.join(unknown)}; known: {known}")
    return cls(config_class(**data), name=name)


def pruner_from_settings(method: str, keep: float | None = None, keep_per_scale: dict[int, float] | None = None,
                         first_scale: int | None = None) -> Pruner:
    """A method with one keep ratio, or a keep ratio per scale index (which then are the pruned
    scales), optionally pruning every scale from first_scale on."""
    if keep_per_scale is not None and keep is not None:
        raise ConfigError("give either keep or keep_per_scale, not both")
    overrides = {}
    if keep_per_scale is not None:
        overrides["scales"] = sorted(keep_per_scale)
    if first_scale is not None:
        overrides["first_scale"] = first_scale
    return make_pruner(method, keep=keep_per_scale if keep_per_scale is not None else keep, **overrides)


def parse_method_spec(spec: str) -> tuple[str, dict]:
    """'stepvar:norm=rank:w_str=2' -> ('stepvar', {'norm': 'rank', 'w_str': 2}).

    Lets compare and bench put variants of one method side by side without a preset file.
    Values are read as YAML scalars or lists ('scales=[9,10]').
    """
    import yaml

    name, *parts = spec.strip().split(":")
    overrides = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"method variant {spec!r}: expected name:key=value[:key=value...]")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
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
