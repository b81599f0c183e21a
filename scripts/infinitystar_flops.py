"""Analytic FLOPs of InfinityStar-8B (one guidance row) for the official settings, dense and with the
last three scales of every video clip pruned to a keep ratio (an upper bound on the speedup).

    python scripts/infinitystar_flops.py [--keep 0.6,0.5,0.4,0.3]
"""

from __future__ import annotations

import argparse

from stepvar.models.infinitystar import star_preset
from stepvar.video_flops import last_video_scales, video_flops
from stepvar.video_schedules import RESOLUTIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", default="0.6,0.5,0.4,0.3")
    keeps = [float(k) for k in ap.parse_args().keep.split(",")]
    cfg = star_preset("infinitystar-8b")
    print("| setting | dense PFLOP | pruned share | " + " | ".join(f"bound @ keep {k}" for k in keeps) + " |")
    print("|---" * (3 + len(keeps)) + "|")
    for res, frames in (("720p", 81), ("480p", 81), ("480p", 161)):
        s = RESOLUTIONS[res].schedule(frames)
        dense = video_flops(cfg, s)
        pruned = last_video_scales(s)
        share = sum(dense.per_scale[i] for i in pruned) / dense.total
        bounds = [dense.total / video_flops(cfg, s, {i: k for i in pruned}).total for k in keeps]
        print(f"| {res} {(frames - 1) // 16} s | {dense.total / 1e15:.2f} | {share:.1%} | "
              + " | ".join(f"{b:.2f}x" for b in bounds) + " |")


if __name__ == "__main__":
    main()
