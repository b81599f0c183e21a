"""Checking option values at the boundary, before any work: numbers, names, echoed user text.

`check_options` applies one table of rules (by option name) to every command's parsed values,
plus two rules that hold for every option: a float is finite, an int fits the 64-bit integers
torch and numpy take. So a NaN learning rate or a seed torch cannot use is a one-line error
before anything loads, not a crash (or a NaN checkpoint) later.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError

# torch.Generator.manual_seed takes [-2**63, 2**64) and numpy's generators any non-negative int;
# seeds are offset per image and per sample, so the top is kept far below both limits.
SEED_MAX = 2**62
INT_LIMIT = 2**62  # counts, sizes, steps: far beyond any real value, safely inside int64

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def shown(text: Any, limit: int = 300) -> str:
    """User-controlled text made safe to echo: control characters and stray surrogates (bytes that
    were not UTF-8) escaped, and cut to `limit` characters, so an echoed prompt can neither drive
    the terminal nor make a 200 KB error line."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + f"... ({len(s)} characters)"
    return _CONTROL.sub(_escape, s)


def _escape(match: re.Match) -> str:
    o = ord(match.group())
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, as Python's surrogateescape carries it
        return f"\\x{o - 0xDC00:02x}"
    return match.group().encode("unicode_escape").decode("ascii")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: str, what: str) -> str:
    """A preset name is a name: letters, digits, '.', '_', '+', '-', never a path or '..'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"{what} '{shown(name, 80)}' is not a name (letters, digits, '.', '_', '-'; "
                          "a file is given with its own option)")
    return name


def finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {shown(value, 40)}")
    return float(value)


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (either side open when lo_open / hi_open)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: float, name: str) -> None:
        low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low_bad or high_bad:
            raise ConfigError(f"{name} must be {self.describe()}, got {shown(value, 40)}")

    def describe(self) -> str:
        lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        if lo and hi:
            return f"{lo} and {hi}"
        return lo or hi or "a number"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
UNIT_OPEN_LOW = Range(0, 1, lo_open=True)  # (0, 1]

# Option name (as the command line spells it, without dashes) -> its range. A name means the same
# thing in every command that has it, so one table covers them all.
OPTION_RULES: dict[str, Range] = {
    "seed": Range(0, SEED_MAX),
    "batch": POSITIVE, "batch_size": POSITIVE, "repeats": POSITIVE, "samples": POSITIVE, "steps": POSITIVE, "ckpt_every": POSITIVE,
    "n": POSITIVE, "prefix_scales": POSITIVE, "decay_steps": POSITIVE,
    "warmup": NON_NEGATIVE, "prefix_batch": NON_NEGATIVE, "first_scale": NON_NEGATIVE,
    "lr": Range(0, lo_open=True), "object_weight": NON_NEGATIVE, "self_correction": Range(0, 1),
    "keep": UNIT_OPEN_LOW, "top_p": UNIT_OPEN_LOW,
    "size": Range(16, 4096),
}


def check_options(params: Mapping[str, Any], rules: Mapping[str, Range] = OPTION_RULES) -> None:
    """Every parsed option of a command: finite floats, ints inside int64, and the table's ranges."""
    for key, value in params.items():
        if value is None or isinstance(value, (bool, str)):
            continue
        name = "--" + key.replace("_", "-")
        if isinstance(value, float):
            finite(value, name)
        elif isinstance(value, int) and abs(value) > INT_LIMIT and key != "seed":
            raise ConfigError(f"{name} is out of range: {shown(value, 40)}")
        else:
            if not isinstance(value, int):
                continue
        rule = rules.get(key)
        if rule is not None:
            rule.check(value, name)
