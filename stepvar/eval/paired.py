"""Paired comparison of two configurations over the same prompts and seeds.

Two pruning methods run on the same prompt and seed share every source of variation except
the method, so the per-prompt difference of a fidelity metric has a far smaller spread than
either method's own spread over prompts. `compare` reports, for every two configurations with
the same keep ratio, the mean difference, its standard error and on how many prompts the first
is higher: the evidence behind a claim such as "StepVAR is closer to dense than FastVAR".
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from typing import Sequence

METRICS = ("psnr_db", "ssim", "score")


def paired_difference(rows: Sequence[dict], a: str, b: str, metric: str) -> dict:
    """Mean of (a - b) over the prompts where both ran and have a finite value of `metric`.

    Returns {mean_diff, se, a_higher, b_higher, n}; mean_diff and se are None with n = 0, se None with n = 1.
    PSNR is None for an image identical to dense (infinite PSNR); such prompts drop out of the pair.
    """
    by = {label: {r["prompt_index"]: r[metric] for r in rows if r["label"] == label and r["status"] == "ok"}
          for label in (a, b)}
    diffs = [by[a][i] - by[b][i] for i in sorted(by[a].keys() & by[b].keys())
             if by[a][i] is not None and by[b][i] is not None]
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else None
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else None
    return {"mean_diff": mean, "se": se, "a_higher": sum(d > 0 for d in diffs), "b_higher": sum(d < 0 for d in diffs),
            "n": n}


def paired_comparisons(rows: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """Every two non-dense configurations that ran at the same keep ratio, in `labels` order."""
    keep = {}
    for r in rows:
        if r["status"] == "ok" and r["keep"] is not None and r["method"] != "dense":
            keep.setdefault(r["label"], r["keep"])
    present = [label for label in labels if label in keep]
    out = []
    for a, b in combinations(present, 2):
        if math.isclose(keep[a], keep[b]):
            item = {"a": a, "b": b, "keep": keep[a]}
            for metric in METRICS:
                item[metric] = paired_difference(rows, a, b, metric)
            out.append(item)
    return out
