"""Two accelerations that compose with any pruning method: a late-scale guidance drop and a skip of the last scales.

- `cfg_drop_from=K`: the unconditional guidance row runs only for the scales before K. From K on
  only the conditional row runs (the model batch halves) and its logits are sampled unguided,
  which is what a guidance scale of 1 from K on would sample.
- `skip_last=N`: the last N scales run no blocks, no head and no sampling. The codes
  accumulated up to then, each already upsampled to the final grid, are what the VAE decodes.

Both are written into the plan (`PruningPlan.cfg_drop_from`, `PruningPlan.skipped`), so the FLOP
counter, bench, the records and the contract tests account for them without knowing the method.
Scale indices may be negative (counted from the end), so one setting, e.g. `cfg_drop_from=-3`,
means the same thing at every resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from ..schedules import ScaleSchedule
from .plan import PruningPlan

# The names a method variant or preset may set besides the method's own settings.
ACCELERATION_FIELDS = ("cfg_drop_from", "skip_last")


@dataclass(frozen=True)
class Accelerations:
    cfg_drop_from: int | None = None  # first scale that runs without the unconditional row; None: never
    skip_last: int = 0  # scales at the end that are not run

    @property
    def active(self) -> bool:
        return self.cfg_drop_from is not None or self.skip_last > 0

    def to_dict(self) -> dict:
        """Only the settings in use: an output made without them records exactly what it did before."""
        out = {}
        if self.cfg_drop_from is not None:
            out["cfg_drop_from"] = self.cfg_drop_from
        if self.skip_last:
            out["skip_last"] = self.skip_last
        return out

    def label(self) -> str:
        """The variant suffix that names these settings, e.g. ':cfg_drop_from=-3:skip_last=1'."""
        return "".join(f":{k}={v}" for k, v in self.to_dict().items())


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def pop_accelerations(settings: dict, name: str) -> Accelerations:
    """Take cfg_drop_from and skip_last out of a method's settings (a preset or variant) and check their types."""
    cfg_drop_from = settings.pop("cfg_drop_from", None)
    skip_last = settings.pop("skip_last", None)
    if cfg_drop_from is not None and not (_is_int(cfg_drop_from) and abs(cfg_drop_from) <= 2**62):
        raise ConfigError(f"method '{name}': cfg_drop_from must be a scale index (negative counts from the end), "
                          f"got {cfg_drop_from!r}")
    if skip_last is not None and not (_is_int(skip_last) and 0 <= skip_last <= 2**62):
        raise ConfigError(f"method '{name}': skip_last must be a non-negative number of scales, got {skip_last!r}")
    return Accelerations(cfg_drop_from, skip_last or 0)


def apply(plan: PruningPlan, acc: Accelerations, schedule: ScaleSchedule, method: str) -> PruningPlan:
    """The method's plan with the accelerations written in; ConfigError where the schedule cannot take them."""
    if not acc.active:
        return plan
    n = len(schedule)
    changes: dict = {}
    if acc.skip_last:
        if acc.skip_last >= n:
            raise ConfigError(f"{method}: skip_last={acc.skip_last} leaves no scale to run: this schedule has {n} scales "
                              f"({schedule.describe()}); skip_last must be at most {n - 1}")
        skipped = plan.skipped | frozenset(range(n - acc.skip_last, n))
        # A skipped scale is not pruned either: it runs nothing at all.
        keep = {si: k for si, k in plan.keep.items() if si not in skipped}
        changes.update(skipped=skipped, keep=keep, kept={si: k for si, k in plan.kept.items() if si in keep},
                       kv_filled={si: k for si, k in plan.kv_filled.items() if si in keep})
        extra = dict(plan.extra)
        if not keep and extra.get("cache_scale") is not None:
            # Every scale that would have read the method's restoration cache is skipped: nothing records it.
            extra["cache_scale"] = None
        if plan.keep and not keep:
            # Legal, and easy to do by accident (a last-grid preset with skip_last=1): say it in the record.
            extra["note"] = (f"{method} prunes nothing here: skip_last={acc.skip_last} skips every scale it prunes "
                             f"({', '.join(str(si) for si in sorted(plan.keep))}), so it runs as dense with the skip")
        changes["extra"] = extra
    if acc.cfg_drop_from is not None:
        k = acc.cfg_drop_from + n if acc.cfg_drop_from < 0 else acc.cfg_drop_from
        last = n - 1 - acc.skip_last  # the last scale that runs
        if not 0 <= k <= last:
            where = "before the first scale" if k < 0 else f"past the last scale that runs, {last}"
            skipping = f" with skip_last={acc.skip_last}" if acc.skip_last else ""
            raise ConfigError(f"{method}: cfg_drop_from={acc.cfg_drop_from} is {where} "
                              f"({schedule.describe()}{skipping})")
        changes["cfg_drop_from"] = k
    changes["skip_last"] = acc.skip_last
    return dataclasses.replace(plan, **changes)


def guided_cfgs(cfgs: Sequence[float], plan: PruningPlan | None) -> list[float]:
    """Per-scale guidance as it is applied: 1 (no unconditional row) from the plan's cfg_drop_from on.

    The sampler and the FLOP counter both read guidance through this, so the rows they count agree.
    """
    k = None if plan is None else plan.cfg_drop_from
    return [1.0 if k is not None and si >= k else float(c) for si, c in enumerate(cfgs)]
