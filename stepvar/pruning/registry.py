"""Methods by name, built from YAML presets (presets/methods/*.yaml) plus overrides.

A preset names its engine (`method: stepvar` or `method: fastvar`) and sets config
fields; anything given on the command line overrides the preset, and the resolved
settings are saved with every output.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..models.config import _load_yaml, _preset_root
from .base import Dense, Pruner
from .fastvar import FastVAR, FastVARConfig
from .stepvar import StepVAR, StepVARConfig

ENGINES = {"stepvar": (StepVAR, StepVARConfig), "fastvar": (FastVAR, FastVARConfig)}
# The pruning preset a command uses when it is asked to prune without naming a method
# (chosen by measurement: docs/pruning.md).
RECOMMENDED_METHOD = "stepvar-plus"


def list_methods() -> list[str]:
    return sorted(p.stem for p in (_preset_root() / "methods").glob("*.yaml"))


def method_preset(name: str) -> dict:
    path = _preset_root() / "methods" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return _load_yaml(path)


def make_pruner(name: str, keep: float | list | dict | None = None, **overrides) -> Pruner:
    """Build a method by preset name. keep=None keeps the preset's own keep ratios."""
    data = dict(method_preset(name))
    engine = data.pop("method", name)
    data.pop("description", None)
    if engine == "dense":
        return Dense()
    if engine not in ENGINES:
        raise ConfigError(f"method preset {name!r} names an unknown engine {engine!r}")
    cls, cfg_cls = ENGINES[engine]
    if keep is not None:
        data["keep"] = keep
    given = {k: v for k, v in overrides.items() if v is not None}
    # The preset's choice of scales is one setting in two spellings: naming either replaces it.
    if "first_scale" in given and "scales" not in given:
        data.pop("scales", None)
    if "scales" in given and "first_scale" not in given:
        data.pop("first_scale", None)
    data.update(given)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"method {name!r}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return cls(cfg_cls(**data), name=name)


def choose_method(method: str | None, prunes: bool) -> str:
    """The method a command runs: the one named; unnamed, the recommended preset if pruning options were given, else dense.

    prunes: a keep ratio, per-scale table or first pruned scale was given. Naming a method
    that does not prune together with them is a contradiction, refused rather than ignored.
    """
    if method is None:
        return RECOMMENDED_METHOD if prunes else "dense"
    if prunes and method_preset(method).get("method", method) == "dense":
        raise ConfigError(f"method {method!r} does not prune, so --keep/--keep-per-scale/--first-scale make no sense with it; "
                          f"leave out --method to prune with the recommended {RECOMMENDED_METHOD}")
    return method


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
