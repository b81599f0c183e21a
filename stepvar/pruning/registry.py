"""Methods by name: the one place where pruning methods register, and their presets.

A method is a Pruner subclass registered here under its name (register_method). A preset
(presets/methods/*.yaml) names a registered method (`method: stepvar`) and sets fields of
its config; anything given on the command line overrides the preset, and the resolved
settings are saved with every output. A registered method needs no preset: its name alone
runs it with its config's defaults.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..errors import ConfigError
from ..preset_registry import load_preset, preset_names, read_yaml
from ..user_files import parse_yaml
from ..validate import check_name, shown
from .accelerations import ACCELERATION_FIELDS, Accelerations, pop_accelerations
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
# The pruning preset a command uses when it is asked to prune without naming a method
# (chosen by measurement: docs/pruning.md).
RECOMMENDED_METHOD = "stepvar-plus"


def list_methods() -> list[str]:
    """Every method name: the presets, and registered methods without a preset of their own name."""
    return sorted(set(preset_names("methods")) | set(METHODS))


def method_preset(name: str) -> dict:
    check_name(name, "method")  # a name, never a path
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


def method_preset_file(path: str | Path) -> tuple[str, dict]:
    """(name, settings) of a method preset from a YAML file the user names on purpose."""
    path = Path(path)
    return path.stem, read_yaml(path)


def make_pruner(name: str, keep: float | list | dict | None = None, preset: dict | None = None, **overrides) -> Pruner:
    """Build a method by preset or registered name (or from `preset`, the settings of a preset file).
    keep=None keeps the preset's own keep ratios. cfg_drop_from and skip_last, in the preset or the
    overrides, are the accelerations any method takes (stepvar.pruning.accelerations)."""
    data = dict(method_preset(name) if preset is None else preset)
    engine = data.pop("method", name)
    data.pop("description", None)
    if not isinstance(engine, str) or engine not in METHODS:
        raise ConfigError(f"method preset '{shown(name, 80)}' names an unknown method '{shown(engine, 80)}'; "
                          f"registered: {', '.join(sorted(METHODS))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update({k: given.pop(k) for k in list(given) if k in ACCELERATION_FIELDS})
    accelerations = pop_accelerations(data, shown(name, 80))
    cls = METHODS[engine]
    config_class = cls.config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    if not fields:
        # A method without settings (dense) runs the same whatever keep or scales say.
        return _with(cls(name=name), accelerations)
    if keep is not None:
        data["keep"] = keep
    # The preset's choice of scales is one setting in two spellings: naming either replaces it.
    if "first_scale" in given and "scales" not in given:
        data.pop("scales", None)
    if "scales" in given and "first_scale" not in given:
        data.pop("first_scale", None)
    data.update(given)
    unknown = sorted(set(data) - fields)
    if unknown:
        known = ", ".join(sorted(fields | set(ACCELERATION_FIELDS)))
        raise ConfigError(f"method '{shown(name, 80)}': unknown setting(s) {shown(', '.join(map(str, unknown)), 200)}; "
                          f"known: {known}")
    try:
        config = config_class(**data)
        _check_settings(config, name)
        return _with(cls(config, name=name), accelerations)
    except (TypeError, ValueError) as exc:  # a setting of the wrong type that the config's own checks missed
        raise ConfigError(f"method '{shown(name, 80)}': {shown(exc, 200)}") from None


def _with(pruner: Pruner, accelerations: Accelerations) -> Pruner:
    # Set after construction: a method class of its own need not pass them through its __init__.
    pruner.accelerations = accelerations
    return pruner


def _check_settings(config, name: str) -> None:
    """Every setting of a method config by its type, before anything runs: finite numbers, integers,
    booleans, keep ratios in (0, 1], lists of scale indices; then the config's own check() (the
    settings that take one of a few words)."""
    def bad(field_name: str, value, expected: str) -> ConfigError:
        return ConfigError(f"method '{shown(name, 80)}': {field_name} must be {expected}, got {shown(repr(value), 80)}")

    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), f.default
        if f.name == "keep":
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
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise bad(f.name, value, "a word")
    check = getattr(config, "check", None)
    if check is not None:
        check()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pruner_from_settings(method: str | None, keep: float | None = None, keep_per_scale: dict[int, float] | None = None,
                         first_scale: int | None = None, preset: dict | None = None, cfg_drop_from: int | None = None,
                         skip_last: int | None = None) -> Pruner:
    """A method with one keep ratio, or a keep ratio per scale index (which then are the pruned
    scales), optionally pruning every scale from first_scale on. method None: see choose_method.
    `preset`: the settings of a method preset file, which then defines the method named `method`.
    cfg_drop_from / skip_last: the accelerations, on any method (dense too); the method is then
    named as the variant that says so, e.g. 'fastvar:skip_last=1'."""
    if keep_per_scale is not None and keep is not None:
        raise ConfigError("give either keep or keep_per_scale, not both")
    method = choose_method(method, keep is not None or keep_per_scale is not None or first_scale is not None, preset)
    overrides = {}
    if keep_per_scale is not None:
        overrides["scales"] = sorted(keep_per_scale)
    if first_scale is not None:
        overrides["first_scale"] = first_scale
    pruner = make_pruner(method, keep=keep_per_scale if keep_per_scale is not None else keep, preset=preset,
                         cfg_drop_from=cfg_drop_from, skip_last=skip_last, **overrides)
    pruner.name = method + Accelerations(cfg_drop_from, skip_last or 0).label()
    return pruner


def with_accelerations(spec: str, cfg_drop_from: int | None, skip_last: int | None) -> str:
    """A method spec with the given accelerations written into it as variant settings (those it sets itself win)."""
    name, overrides = parse_method_spec(spec.rpartition("@")[0] if "@" in spec else spec)
    add = "".join(f":{k}={v}" for k, v in (("cfg_drop_from", cfg_drop_from), ("skip_last", skip_last or None))
                  if v is not None and k not in overrides)
    if not add:
        return spec
    base, at, keep = spec.rpartition("@")
    return f"{base}{add}@{keep}" if at else f"{spec}{add}"


def choose_method(method: str | None, prunes: bool, preset: dict | None = None) -> str:
    """The method a command runs: the one named; unnamed, the recommended preset if pruning options were given, else dense.

    prunes: a keep ratio, per-scale table or first pruned scale was given. Naming a method
    that does not prune together with them is a contradiction, refused rather than ignored.
    """
    if method is None:
        return RECOMMENDED_METHOD if prunes else "dense"
    settings = preset if preset is not None else method_preset(method)
    if prunes and settings.get("method", method) == "dense":
        raise ConfigError(f"method {method!r} does not prune, so keep, keep_per_scale and first_scale make no sense with it; "
                          f"leave the method unnamed to prune with the recommended {RECOMMENDED_METHOD}")
    return method


def parse_method_spec(spec: str) -> tuple[str, dict]:
    """'stepvar:norm=rank:w_str=2' -> ('stepvar', {'norm': 'rank', 'w_str': 2}).

    Lets compare and bench put variants of one method side by side without a preset file.
    Values are read as YAML scalars or lists ('scales=[9,10]').
    """
    name, *parts = split_outside_brackets(spec.strip(), ":")
    overrides = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"method variant '{shown(spec, 120)}': expected name:key=value[:key=value...]")
        overrides[key.strip().replace("-", "_")] = parse_yaml(value, f"method variant '{shown(spec, 120)}', {shown(key, 40)}")
    method_preset(name)  # unknown names fail here, with the list of known ones
    return name, overrides


def split_outside_brackets(text: str, sep: str) -> list[str]:
    """text split on `sep` where it stands outside [] and {} (a variant's value may be a YAML list or
    mapping: 'stepvar:scales=[9,10]', 'stepvar:keep={-2: 0.6, -1: 0.4}')."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def split_method_list(text: str) -> list[str]:
    """Split 'dense,stepvar:scales=[9,10],fastvar' on the commas outside brackets and braces."""
    specs = [s.strip() for s in split_outside_brackets(text, ",") if s.strip()]
    if not specs:
        raise ConfigError("--methods is empty")
    return specs


def make_pruner_from_spec(spec: str, keep: float | list | dict | None = None) -> Pruner:
    name, overrides = parse_method_spec(spec)
    if isinstance(overrides.get("keep"), dict) and "scales" not in overrides and "first_scale" not in overrides:
        overrides["scales"] = sorted(overrides["keep"])  # a per-scale keep names its scales, as --keep-per-scale does
    pruner = make_pruner(name, keep=overrides.pop("keep", keep), **overrides)
    pruner.name = spec.strip()
    return pruner


def describe_methods() -> list[tuple[str, str]]:
    return [(n, method_preset(n).get("description", "")) for n in list_methods()]
