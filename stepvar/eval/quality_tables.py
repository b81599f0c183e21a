"""The quality tables of docs/quality.md from one `compare` run and one `bench` run of the same configurations.

`compare` gives, per configuration, the evaluator's score per category, the share of images with
a stray object and the paired fidelity to dense (same prompt and seed); `bench` gives the
transformer-loop and end-to-end speedups (interleaved, same process) and the FLOP bounds. They are
joined by configuration label (`stepvar@0.4`), so both runs must use the same method list.
`scripts/quality_tables.sh` runs both and then this renderer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import StepvarError
from .report_md import markdown_table

CATEGORY_COLUMNS = (("single_object", "single"), ("two_object", "two obj."), ("counting", "counting"),
                    ("colors", "colors"), ("position", "position"))
RECOMMENDED = "stepvar-plus"


def _mean(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def bench_rows_by_label(bench: dict | None) -> dict[str, dict]:
    """The bench's finished rows by configuration label; one resolution only (the tables are per resolution)."""
    if bench is None:
        return {}
    rows = [r for r in bench.get("results", []) if str(r.get("status", "")).startswith("ok")]
    resolutions = {r["resolution"] for r in rows}
    if len(resolutions) > 1:
        raise StepvarError(f"the bench report holds several resolutions ({sorted(resolutions)}); give one per table")
    return {r["label"]: r for r in rows}


def _psnr(stat: dict) -> str:
    if stat.get("mean") is None:
        return "identical" if stat.get("n_identical") else "-"
    extra = f" (+{stat['n_identical']} identical)" if stat.get("n_identical") else ""
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}{extra}"


def main_table(compare: dict, bench: dict | None) -> str:
    """One row per configuration: score per category, stray share, fidelity to dense, speed, FLOP bound."""
    timed = bench_rows_by_label(bench)
    head = ["configuration", "score (overall)", *[name for _, name in CATEGORY_COLUMNS], "stray objects", "stray blobs",
            "PSNR vs dense (dB)", "SSIM vs dense", "loop speedup", "end-to-end speedup", "loop FLOP bound"]
    cells = []
    for s in compare["summary"]:
        cats = s.get("score_categories") or {}
        b = timed.get(s["label"], {})
        cells.append([s["label"], _mean(s.get("score")), *[_mean(cats.get(key)) for key, _ in CATEGORY_COLUMNS],
                      _mean(s.get("stray")), _mean(s.get("stray_blobs")), _psnr(s["psnr_db"]), _mean(s["ssim"]),
                      _ratio(b.get("transformer_speedup_vs_dense")), _ratio(b.get("speedup_vs_dense")),
                      _ratio(b.get("transformer_flop_speedup_bound"))])
    return markdown_table(head, cells)


def _oriented(pair: dict, first: str) -> dict:
    """pair with `first` as A (differences negated and counts swapped when it was B)."""
    if pair["a"] == first:
        return pair
    out = {"a": pair["b"], "b": pair["a"], "keep": pair["keep"]}
    for metric in ("psnr_db", "ssim", "score"):
        d = pair[metric]
        out[metric] = {"mean_diff": None if d["mean_diff"] is None else -d["mean_diff"], "se": d["se"],
                       "a_higher": d["b_higher"], "b_higher": d["a_higher"], "n": d["n"]}
    return out


def stray_differences(rows: list[dict], a: str, b: str, key: str = "stray_objects") -> dict:
    """How many images have a stray (`key`: stray_objects or stray_blobs) under A and under B, over the
    prompts both scored."""
    by = {label: {r["prompt_index"]: r[key] > 0 for r in rows
                  if r["label"] == label and r["status"] == "ok" and r.get(key) is not None}
          for label in (a, b)}
    common = sorted(by[a].keys() & by[b].keys())
    return {"a": sum(by[a][i] for i in common), "b": sum(by[b][i] for i in common), "n": len(common)}


def paired_table(compare: dict, first: str = RECOMMENDED) -> str | None:
    """Every paired comparison of `first`'s configurations with the others at the same keep, `first` as A."""
    pairs = [_oriented(p, next(label for label in (p["a"], p["b"]) if _method_of(label) == first))
             for p in compare["paired"] if first in (_method_of(p["a"]), _method_of(p["b"]))]
    if not pairs:
        return None

    def diff(d: dict, digits: int) -> str:
        if d["mean_diff"] is None:
            return "-"
        mean = round(d["mean_diff"], digits) + 0.0  # never "-0.000"
        return f"{mean:+.{digits}f}" + ("" if d["se"] is None else f" ± {d['se']:.{digits}f}")

    head = ["A", "B", "PSNR A − B (dB)", "A higher", "SSIM A − B", "score A − B", "images with a stray object: A / B",
            "with a stray blob: A / B"]
    cells = []
    for p in pairs:
        st, sb = (stray_differences(compare["results"], p["a"], p["b"], key) for key in ("stray_objects", "stray_blobs"))
        cells.append([p["a"], p["b"], diff(p["psnr_db"], 2), f"{p['psnr_db']['a_higher']}/{p['psnr_db']['n']}",
                      diff(p["ssim"], 3), diff(p["score"], 3), f"{st['a']} / {st['b']} of {st['n']}",
                      f"{sb['a']} / {sb['b']} of {sb['n']}"])
    return markdown_table(head, cells)


def _method_of(label: str) -> str:
    """The preset name of a configuration label: `stepvar-plus:scales=[-1]@0.4` -> `stepvar-plus`."""
    return label.rpartition("@")[0].split(":")[0] if "@" in label else label.split(":")[0]


def quality_markdown(compare: dict, bench: dict | None, title: str, command: str | None = None) -> str:
    """The tables of one resolution, with what they were measured on."""
    env, s = compare["environment"], compare["settings"]
    n = len(s["prompts"])
    lines = [f"## {title}", "",
             f"{n} prompts, seed {s['seed']}, cfg {s['cfg']}, tau {s['tau']}, {s['schedule']}; model `{env['model']}` "
             f"({env['model_status']}); {env['device_name']}, {env['threads']} thread(s), torch {env['torch']}, "
             f"compare at {env['time_utc']} (status {compare['status']})."]
    if bench is not None:
        bs, be = bench["settings"], bench["environment"]
        lines.append(f"Speeds: `bench`, median of {bs.get('repeats')} interleaved runs after {bs.get('warmup')} "
                     f"warm-up, at {be.get('time_utc')} (load average {be.get('load_average_1m')}).")
    if command:
        lines += ["", "```bash", command, "```"]
    lines += ["", main_table(compare, bench), "",
              "Score: the share of images whose every requirement holds (categories: over the prompts that "
              "exercise each). Stray objects / blobs: the share of images showing an object the prompt did not ask "
              "for, object-sized (at least 0.4 % of the image) / down to specks of 0.1 % (`stepvar.toy.evaluator`). PSNR / SSIM: against the dense image of the same prompt and seed, "
              "mean ± std over prompts. Loop: the transformer's scale loop; the FLOP bound is the loop's dense "
              "FLOPs over the configuration's."]
    paired = paired_table(compare)
    if paired:
        lines += ["", f"Paired against `{RECOMMENDED}` at the same keep (mean ± standard error over prompts):", "",
                  paired]
    return "\n".join(lines) + "\n"


def default_grid_prompts(prompts: Sequence[str], n: int = 4) -> list[int]:
    """Indices of a single-object, a count and relation prompts (the first of each form, then more relations)."""
    from ..toy.grammar import parse

    forms = [parse(p).form for p in prompts]
    picked = [forms.index(f) for f in ("single", "count") if f in forms]
    picked += [i for i, f in enumerate(forms) if f == "relation"][: max(0, n - len(picked))]
    return sorted(picked)[:n]


def grid_labels(configurations: Sequence[str], keep: float) -> list[str]:
    """The grid's columns: every configuration at `keep`, and those given no keep (dense, and presets
    such as fastvar-skip that prune nothing at this resolution and so run once), in run order."""
    return [c for c in configurations if "@" not in c or c.endswith("@" + f"{keep:g}")]


def quality_grid(compare_dir: Path, out_path: Path, keep: float, prompt_ids: Sequence[int] | None = None) -> Path:
    """A labelled grid from a finished compare: the chosen prompts as rows, dense and every configuration at
    `keep` or run without one (grid_labels)."""
    import json

    from ..user_files import open_image_rgb
    from .compare import save_grid

    compare = json.loads((Path(compare_dir) / "report.json").read_text(encoding="utf-8"))
    labels = grid_labels(compare["settings"]["configurations"], keep)
    prompt_ids = list(prompt_ids) if prompt_ids is not None else default_grid_prompts(compare["settings"]["prompts"])
    rows = [r for r in compare["results"] if r["status"] == "ok" and r["label"] in labels
            and r["prompt_index"] in prompt_ids]
    if not rows:
        raise StepvarError(f"{compare_dir}: no finished image at keep {keep:g} for prompts {prompt_ids}")
    images = {(r["prompt_index"], r["label"]): open_image_rgb(Path(compare_dir) / r["image"], "image")[0] for r in rows}
    return save_grid(Path(out_path), rows, images, labels, prompt_ids)


__all__ = ["bench_rows_by_label", "default_grid_prompts", "grid_labels", "main_table", "paired_table", "quality_grid",
           "quality_markdown", "stray_differences"]
