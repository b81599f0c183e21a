"""Parsing of option text the CLI and scripts share (number lists, per-scale keep tables)."""

from __future__ import annotations

from .errors import ConfigError


def parse_float_list(text: str | float | None, name: str) -> float | list[float] | None:
    """'3' -> 3.0; '3,3,4' -> [3.0, 3.0, 4.0] (one value per scale)."""
    if text is None or isinstance(text, (int, float)):
        return text
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be a number or a comma list of numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values[0] if len(values) == 1 else values


def parse_keep_table(text: str | None) -> dict[int, float] | None:
    """'9:0.6,10:0.5' -> {9: 0.6, 10: 0.5} (scale index: keep ratio)."""
    if not text:
        return None
    table = {}
    for part in text.split(","):
        try:
            si, keep = part.split(":")
            table[int(si)] = float(keep)
        except ValueError:
            raise ConfigError(f"--keep-per-scale must look like 9:0.6,10:0.5 (scale:keep), got {text!r}") from None
    return table


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be a comma list of integers, got {text!r}") from None
