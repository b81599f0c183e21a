"""Bench plots (matplotlib, Agg): what each figure claims is in its title and axis labels.

latency_vs_resolution.png  median seconds per image against output size, one line per
                           configuration, IQR as error bars; end to end and transformer loop.
speedup_vs_keep.png        measured speedup over dense against keep ratio (solid) with the
                           FLOP bound (dashed); methods at fixed ratios as horizontal lines.
per_scale_time.png         stacked seconds per image: one segment per scale, text + decode on top.
per_scale_flops.png        the same stacking for analytic FLOPs (transformer per scale + decode).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _labels(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _colors(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _side(row: dict) -> float:
    w, h = row["size_wh"]
    return math.sqrt(w * h)


def _quartile_err(row: dict) -> tuple[float, float]:
    """(median - Q1, Q3 - median) of the per-image runs, for asymmetric error bars."""
    runs = row.get("latency_runs") or []
    if len(runs) < 2:
        return 0.0, 0.0
    q1, _, q3 = statistics.quantiles(runs, n=4, method="inclusive")
    return max(0.0, row["latency_s"] - q1), max(0.0, q3 - row["latency_s"])


def plot_latency_vs_resolution(rows: list[dict], path: Path) -> Path:
    rows = [r for r in _ok(rows) if r.get("latency_s")]
    labels = _labels(rows)
    colors = _colors(labels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sides = sorted({_side(r) for r in rows})
    for ax, key, title in ((axes[0], "latency_s", "end to end (text + transformer + decode)"),
                           (axes[1], "transformer_s", "transformer loop only")):
        for label in labels:
            sel = sorted((r for r in rows if r["label"] == label), key=_side)
            ys = [r[key] for r in sel]
            errs = [_quartile_err(r) if key == "latency_s" else (0.0, 0.0) for r in sel]
            ax.errorbar([_side(r) for r in sel], ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], marker="o",
                        capsize=3, color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sides, [f"{int(round(s))}" for s in sides])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("output image side, px (sqrt of W x H)")
        ax.set_ylabel("seconds per image (median)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Latency vs resolution (log-log; error bars: IQR over repeats)")
    return _save(fig, path)


def plot_speedup_vs_keep(rows: list[dict], path: Path) -> Path:
    rows = [r for r in rows if r.get("flop_speedup_bound") and r["label"] != "dense"]
    measured = any(r.get("speedup_vs_dense") for r in rows)
    resolutions = sorted({r["resolution"] for r in rows})
    panels = [("speedup_vs_dense", "flop_speedup_bound", "end to end")]
    if measured:
        panels.append(("transformer_speedup_vs_dense", "transformer_flop_speedup_bound", "transformer loop"))
    fig, axes = plt.subplots(len(panels), max(1, len(resolutions)), squeeze=False,
                             figsize=(4.6 * max(1, len(resolutions)), 3.8 * len(panels)))
    methods = _labels([{"label": r["method"]} for r in rows])
    colors = _colors(methods)
    span = (0.0, 1.02)  # keep ratios live in (0, 1]; keep 1 is the dense computation
    for pi, (meas_key, bound_key, what) in enumerate(panels):
        for ci, res in enumerate(resolutions):
            ax = axes[pi][ci]
            ax.axhline(1.0, color="0.6", lw=1)
            ax.plot([1.0], [1.0], "D", color="0.4", ms=5)  # dense: keep 1, speedup 1 by definition
            for m in methods:
                sel = [r for r in rows if r["method"] == m and r["resolution"] == res]
                with_keep = sorted((r for r in sel if r["keep"] is not None), key=lambda r: r["keep"])
                fixed = [r for r in sel if r["keep"] is None]
                if with_keep:
                    ks = [r["keep"] for r in with_keep]
                    if measured:
                        ax.plot(ks, [r[meas_key] for r in with_keep], "o-", color=colors[m])
                    ax.plot(ks, [r[bound_key] for r in with_keep], "s--", color=colors[m], mfc="none")
                for r in fixed:  # a method at its own (release) ratios: no keep axis position
                    if measured:
                        ax.hlines(r[meas_key], *span, colors=[colors[m]], linestyles="solid", lw=1.5)
                    ax.hlines(r[bound_key], *span, colors=[colors[m]], linestyles="dashed", lw=1.2)
            ax.set_xlim(*span)
            ax.set_xticks([i / 10 for i in range(11)])
            ax.set_xlabel("keep ratio of the pruned scales")
            ax.set_ylabel(f"speedup over dense ({what})")
            ax.set_title(f"{res} px, {what}", fontsize=10)
            ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colors[m], lw=2,
                      label=m + ("" if any(r["keep"] is not None for r in rows if r["method"] == m)
                                 else " (own ratios: horizontal)")) for m in methods]
    handles.append(Line2D([], [], color="0.4", ls="none", marker="D", label="dense (keep 1)"))
    if measured:
        handles.append(Line2D([], [], color="k", ls="-", marker="o", label="measured"))
    handles.append(Line2D([], [], color="k", ls="--", marker="s", mfc="none", label="FLOP bound (dense FLOPs / FLOPs)"))
    fig.suptitle("Speedup over dense vs keep ratio: measured (solid) and FLOP bound (dashed)")
    fig.tight_layout(rect=(0, 0.1 / len(panels), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)


def plot_per_scale(rows: list[dict], path: Path, key: str = "per_scale_s") -> Path:
    """Stacked bars, one per configuration, one panel per resolution; one colour per scale index."""
    is_time = key == "per_scale_s"
    rows = [r for r in _ok(rows) if r.get(key)] if is_time else [r for r in rows if r.get(key)]
    resolutions = sorted({r["resolution"] for r in rows})
    n_max = max(len(r[key]) for r in rows)
    grids = next(r for r in rows if len(r[key]) == n_max)["tokens_per_block"]
    cmap = plt.get_cmap("viridis")
    scale_colors = [cmap(i / max(1, n_max - 1)) for i in range(n_max)]
    scale = 1.0 if is_time else 1e-9
    fig, axes = plt.subplots(1, len(resolutions), squeeze=False, figsize=(max(5.0, 1.3 * len(_labels(rows))) * len(resolutions) * 0.8 + 2, 4.6))
    for ax, res in zip(axes[0], resolutions):
        sel = [r for r in rows if r["resolution"] == res]
        for xi, r in enumerate(sel):
            bottom = 0.0
            for si, v in enumerate(r[key]):
                ax.bar(xi, v * scale, bottom=bottom, color=scale_colors[si], width=0.7, edgecolor="white", lw=0.3)
                bottom += v * scale
            rest = ((r.get("text_s") or 0.0) + (r.get("decode_s") or 0.0)) if is_time else r["flops_decode"] + r["flops_conditioning"]
            ax.bar(xi, rest * scale, bottom=bottom, color="0.85", hatch="//", width=0.7, edgecolor="0.5", lw=0.3)
            total = bottom + rest * scale
            ax.text(xi, total, f"{total * 1e3:.0f} ms" if is_time else f"{total:.3g} G", ha="center", va="bottom",
                    fontsize=7)
        ax.set_xticks(range(len(sel)), [r["label"] for r in sel], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{res} px ({sel[0]['size_wh'][0]}x{sel[0]['size_wh'][1]})", fontsize=10)
        ax.set_ylabel("seconds per image (sum of per-part medians)" if is_time else "GFLOPs per image (analytic)")
        ax.set_ylim(0, max(1e-12, ax.get_ylim()[1]) * 1.08)  # bars start at zero; room for the totals
    rest_label = "text + decode" if is_time else "text conditioning + VAE decode"
    handles = [plt.Rectangle((0, 0), 1, 1, color=scale_colors[si], label=f"scale {si} ({g['grid']})")
               for si, g in enumerate(grids)]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.5", label=rest_label))
    fig.legend(handles=handles[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    what = "time" if is_time else "analytic FLOPs"
    fig.suptitle(f"Per-scale {what} per image, stacked (later scales on top)")
    fig.tight_layout()
    return _save(fig, path)


def bench_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """All bench figures that the rows support; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    if any(r.get("status") == "ok" and r.get("latency_s") for r in rows):
        written.append(plot_latency_vs_resolution(rows, out_dir / "latency_vs_resolution.png"))
        written.append(plot_per_scale(rows, out_dir / "per_scale_time.png", "per_scale_s"))
    if any(r.get("flop_speedup_bound") and r["label"] != "dense" for r in rows):
        written.append(plot_speedup_vs_keep(rows, out_dir / "speedup_vs_keep.png"))
    if any(r.get("flops_per_scale") for r in rows):
        written.append(plot_per_scale(rows, out_dir / "per_scale_flops.png", "flops_per_scale"))
    return written
