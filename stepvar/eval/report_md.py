"""Human-readable reports (Markdown) and the number formats that the terminal tables share."""

from __future__ import annotations

import math


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_flops(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} FLOP"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.1f}"


def fmt_keep(k: float | None, method: str = "") -> str:
    """'-' for dense, 'own' for a method at its own (release or per-scale) ratios."""
    if k is None:
        return "-" if method == "dense" else "own"
    return f"{k:g}"


MEMORY_KINDS = {
    "cuda_max_allocated": "CUDA peak allocated (weights included)",
    "cpu_rss_peak_delta": "CPU peak RSS growth over the loaded model",
    "cpu_rss_sampled_delta": "CPU peak RSS growth over the loaded model (sampled)",
}


def bench_table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the bench summary table (terminal and Markdown share it)."""
    measured = any(r.get("measured") for r in rows)
    head = ["res", "method", "keep", "status"]
    if measured:
        head += ["latency (IQR)", "transformer", "speedup", "tr. speedup"]
    head += ["FLOP bound", "tr. FLOP bound"]
    if measured:
        head += ["realised", "peak mem", "KV cache"]
    head += ["FLOPs", "tokens"]
    cells = []
    for r in rows:
        row = [str(r["resolution"]), r["method"], fmt_keep(r["keep"], r["method"]), r["status"]]
        if measured:
            lat = "-" if r.get("latency_s") is None else f"{fmt_seconds(r['latency_s'])} (±{fmt_seconds(r['latency_iqr_s'])})"
            row += [lat, fmt_seconds(r.get("transformer_s")), fmt_ratio(r.get("speedup_vs_dense")),
                    fmt_ratio(r.get("transformer_speedup_vs_dense"))]
        row += [fmt_ratio(r.get("flop_speedup_bound")), fmt_ratio(r.get("transformer_flop_speedup_bound"))]
        if measured:
            rf = r.get("realised_fraction")
            row += ["-" if rf is None else f"{100 * rf:.0f}%", fmt_bytes(r.get("peak_memory_bytes")),
                    fmt_bytes(r.get("kv_cache_bytes"))]
        tf = r.get("token_fraction")
        row += [fmt_flops(r.get("flops")), "-" if tf is None else f"{100 * tf:.0f}%"]
        cells.append(row)
    return head, cells


def _flop_unit(values: list) -> tuple[str, float]:
    top = max([v for v in values if v] or [0])
    return ("TFLOP", 1e12) if top >= 1e13 else ("GFLOP", 1e9)


def bench_compact_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The terminal table: short columns that fit 80 characters (report.md has the full one)."""
    measured = any(r.get("measured") for r in rows)
    if measured:
        head = ["res", "config", "ms/img", "±IQR", "speedup", "bound", "loop×", "loop bnd", "MiB"]
    else:
        unit, div = _flop_unit([r.get("flops") for r in rows])
        head = ["res", "config", "bound", "loop bnd", "tokens", unit]
    cells = []
    for r in rows:
        row = [str(r["resolution"]), r["label"]]
        if measured and r["status"] != "ok":
            row += [r["status"].split(":")[0].upper()] + ["-"] * 6
        elif measured:
            mem = r.get("peak_memory_bytes")
            row += [f"{r['latency_s'] * 1e3:.1f}", f"{r['latency_iqr_s'] * 1e3:.1f}",
                    fmt_ratio(r.get("speedup_vs_dense")), fmt_ratio(r.get("flop_speedup_bound")),
                    fmt_ratio(r.get("transformer_speedup_vs_dense")), fmt_ratio(r.get("transformer_flop_speedup_bound")),
                    "-" if mem is None else f"{mem / 2**20:.0f}"]
        else:
            tf = r.get("token_fraction")
            row += [fmt_ratio(r.get("flop_speedup_bound")), fmt_ratio(r.get("transformer_flop_speedup_bound")),
                    "-" if tf is None else f"{100 * tf:.0f}%", "-" if not r.get("flops") else f"{r['flops'] / div:.3g}"]
        cells.append(row)
    return head, cells


def markdown_table(head: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def _env_lines(env: dict) -> list[str]:
    return [f"- **{k}**: {v}" for k, v in env.items() if v is not None]


def bench_markdown(report, plot_names: list[str]) -> str:
    d = report.to_dict()
    s = d["settings"]
    rows = d["results"]
    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    parts = [
        "# stepvar bench", "",
        f"Status: **{d['status']}**; {len(rows)} rows, {len(report.failures)} not ok.", "",
        "## Environment", "", *_env_lines(d["environment"]), "",
        "## Settings", "", *[f"- **{k}**: {v}" for k, v in s.items()], "",
        "## Results", "",
        markdown_table(*bench_table_rows(rows)), "",
        "Times are per image, medians over the timed repeats (IQR in brackets). *speedup* is end to end "
        "(dense latency / latency, same resolution, same process); *tr.* is the transformer loop alone. "
        "*FLOP bound* is dense FLOPs / FLOPs (analytic; transformer + VAE decode end to end), the speedup the "
        "arithmetic allows; *realised* = speedup / FLOP bound. *tokens* is the share of dense block tokens "
        "processed. FLOPs exclude StepVAR's scoring and propagation (see `stepvar overhead`).",
    ]
    if kinds:
        parts += ["", "Peak memory: " + "; ".join(f"`{k}` = {MEMORY_KINDS.get(k, k)}" for k in kinds) + "."]
    if d.get("notes"):
        parts += ["", "## Notes", "", *[f"- {n}" for n in d["notes"]]]
    if plot_names:
        parts += ["", "## Plots", ""] + [f"![{n}]({n})" for n in plot_names]
    return "\n".join(parts) + "\n"


def compare_table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["prompt", "method", "keep", "status", "time", "speedup", "peak mem", "PSNR dB", "SSIM", "token agr.",
            "latent cos"]
    cells = []
    for r in rows:
        psnr = "inf (identical)" if r.get("identical") else fmt_num(r.get("psnr_db"), 4)
        cells.append([str(r["prompt_index"]), r["method"], fmt_keep(r["keep"], r["method"]), r["status"], fmt_seconds(r.get("time_s")),
                      fmt_ratio(r.get("speedup_vs_dense")), fmt_bytes(r.get("peak_memory_bytes")), psnr,
                      fmt_num(r.get("ssim"), 4), fmt_num(r.get("token_agreement_pruned"), 4),
                      fmt_num(r.get("latent_cosine"), 4)])
    return head, cells


def compare_compact_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["#", "config", "ms", "speedup", "PSNR dB", "SSIM", "tok. agr.", "latent cos", "peak MiB"]
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([str(r["prompt_index"]), r["label"], r["status"].split(":")[0].upper()] + ["-"] * 6)
            continue
        psnr = "inf" if r.get("identical") else f"{r['psnr_db']:.2f}"
        mem = r.get("peak_memory_bytes")
        cells.append([str(r["prompt_index"]), r["label"], f"{r['time_s'] * 1e3:.1f}", fmt_ratio(r["speedup_vs_dense"]),
                      psnr, f"{r['ssim']:.4f}", fmt_num(r.get("token_agreement_pruned"), 4),
                      f"{r['latent_cosine']:.4f}", "-" if mem is None else f"{mem / 2**20:.0f}"])
    return head, cells


def summary_table_rows(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["config", "n", "ms", "speedup", "PSNR dB", "SSIM", "tok. agr.", "latent cos"]

    def ms(stat: dict | None, decimals: int, scale: float = 1.0) -> str:
        if stat and stat.get("mean") is None and stat.get("n_identical"):
            return "inf (identical)"
        if not stat or stat.get("mean") is None:
            return "-"
        extra = f" +{stat['n_identical']} identical" if stat.get("n_identical") else ""
        return f"{stat['mean'] * scale:.{decimals}f} ± {stat['std'] * scale:.{decimals}f}{extra}"

    cells = [[s["label"], str(s["n"]), ms(s["time_s"], 1, 1e3), ms(s["speedup_vs_dense"], 2), ms(s["psnr_db"], 2),
              ms(s["ssim"], 3), ms(s["token_agreement_pruned"], 3), ms(s["latent_cosine"], 3)] for s in summary]
    if any((s.get("score") or {}).get("n") for s in summary):  # toy-world prompts: the evaluator's score
        # shares of images with an object the prompt did not ask for: object-sized, and down to specks
        head += ["score", "stray", "stray blobs"]
        for row, s in zip(cells, summary):
            shares = [(s.get(k) or {}).get("mean") for k in ("stray", "stray_blobs")]
            row += [ms(s.get("score"), 3), *("-" if x is None else f"{x:.3f}" for x in shares)]
    return head, cells


def paired_table_rows(paired: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the paired table: A - B per metric, ± standard error, prompts where A is higher."""
    head = ["A", "B", "PSNR A−B (dB)", "A higher", "SSIM A−B", "A higher"]
    with_score = any(p["score"]["n"] for p in paired)
    if with_score:
        head += ["score A−B"]

    def diff(d: dict, decimals: int) -> str:
        if d["mean_diff"] is None:
            return "-"
        se = "" if d["se"] is None else f" ± {d['se']:.{decimals}f}"
        return f"{d['mean_diff']:+.{decimals}f}{se}"

    cells = []
    for p in paired:
        row = [p["a"], p["b"], diff(p["psnr_db"], 2), f"{p['psnr_db']['a_higher']}/{p['psnr_db']['n']}",
               diff(p["ssim"], 3), f"{p['ssim']['a_higher']}/{p['ssim']['n']}"]
        if with_score:
            row.append(diff(p["score"], 3))
        cells.append(row)
    return head, cells


def compare_markdown(report) -> str:
    d = report.to_dict()
    parts = ["# stepvar compare", "", "Every method ran with the same prompts and seed; fidelity is measured "
             "against the dense output of the same prompt. Times are single runs after warm-up: use "
             "`stepvar bench` for timing.", "",
             "## Environment", "", *_env_lines(d["environment"]), "",
             "## Settings", "", *[f"- **{k}**: {v}" for k, v in d["settings"].items()], ""]
    if d["summary"]:
        parts += ["## Summary (mean ± std over prompts)", "", markdown_table(*summary_table_rows(d["summary"])), "",
                  "PSNR means are over the non-identical images; identical images (PSNR = inf) are counted apart.", ""]
    if d["paired"]:
        parts += ["## Paired (same prompts and seed, configurations at the same keep ratio)", "",
                  markdown_table(*paired_table_rows(d["paired"])), "",
                  "Mean of the per-prompt difference A − B ± its standard error; *A higher* counts the prompts "
                  "where A's value is higher, over those where both are finite.", ""]
    parts += ["## Per image", "", markdown_table(*compare_table_rows(d["results"])), "",
              "*token agr.* is the fraction of equal bits, averaged over the scales the method prunes "
              "(per-scale values in report.json). PSNR/SSIM (scikit-image) are on the uint8 RGB images.", "",
              "![grid](grid.png)"]
    return "\n".join(parts) + "\n"
