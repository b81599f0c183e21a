"""`stepvar compare`: every method on the same prompts and seed, side by side, with paired fidelity.

Phases: check every configuration on the schedule -> warm-up -> per prompt: the dense
reference, then each method (same seed, so the sampler RNG is consumed identically and any
difference comes from pruning) -> images, labelled grid, report.json / report.md. report.json
is rewritten atomically after every row (each image is written before its row), so a run
stopped in any way, SIGKILL included, keeps every row it finished. One compare at a time
writes an output directory (stepvar.run_lock).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .runs import BenchConfig, expand_configs, one_line_error, prepare_out_dir, run_once, scalar_keep
from ..errors import ConfigError
from ..io import atomic_path, save_image, save_json, save_text
from ..run_lock import output_lock
from .measure import environment
from .metrics import paired_fidelity
from .paired import paired_comparisons
from .report_md import fmt_seconds
from ..sampling import SamplingConfig
from ..schedules import ScaleSchedule

GRID_TILE = 256  # px: grid tiles are downscaled to at most this side
GRID_MAX_PROMPTS = 8  # grid rows; every image is still written on its own


@dataclass
class CompareReport:
    environment: dict
    settings: dict
    rows: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    status: str = "running"

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    def to_dict(self) -> dict:
        return {"kind": "stepvar-compare", "schema_version": 1, "status": self.status, "environment": self.environment,
                "settings": self.settings, "summary": self.summary, "paired": self.paired, "results": self.rows}


def image_name(prompt_index: int, config: BenchConfig) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", config.spec)
    return f"{prompt_index}_{safe}" + ("" if config.keep is None else f"_{config.keep:g}") + ".png"


def _row(idx: int, prompt: str, config: BenchConfig, pruner, schedule, image: str | None) -> dict:
    plan = pruner.resolved_plan(schedule, 10**6)
    return {"prompt_index": idx, "prompt": prompt, "method": config.spec, "label": config.label,
            "keep": scalar_keep(pruner), "image": image, "status": "ok", "time_s": None, "transformer_s": None,
            "speedup_vs_dense": None, "transformer_speedup_vs_dense": None, "peak_memory_bytes": None,
            "peak_memory_kind": None, "kv_cache_bytes": None, "psnr_db": None, "identical": None, "ssim": None,
            "token_agreement": None, "token_agreement_pruned": None, "latent_cosine": None, "score": None,
            "score_categories": None, "stray_objects": None, "stray_blobs": None,
            "pruned_scales": plan.pruned_scales, "skipped_scales": [],
            "cfg_drop_from": plan.cfg_drop_from, "skip_last": plan.skip_last}


def _fill(row: dict, result, mem, ref, ref_row: dict | None, fidelity: dict) -> None:
    t = result.timings
    row.update(time_s=t["total_s"], transformer_s=t["transformer_s"], peak_memory_bytes=mem.bytes,
               peak_memory_kind=mem.kind, kv_cache_bytes=result.sample.kv_cache_bytes,
               skipped_scales=[x.si for x in result.sample.timings if x.skipped])
    ref_t = ref.timings if ref_row is None else {"total_s": ref_row["time_s"], "transformer_s": ref_row["transformer_s"]}
    row["speedup_vs_dense"] = ref_t["total_s"] / t["total_s"]
    row["transformer_speedup_vs_dense"] = ref_t["transformer_s"] / t["transformer_s"]
    psnr = fidelity["psnr_db"]
    row.update({k: v for k, v in fidelity.items() if k != "psnr_db"})
    row["psnr_db"] = psnr if math.isfinite(psnr) else None  # JSON has no inf: identical images say identical=true


def run_compare(pipeline, prompts: Sequence[str], methods: Sequence[str], keeps: Sequence[float] | None = None,
                seed: int = 0, schedule: ScaleSchedule | None = None, out_dir: str | Path = "compare",
                sampling: SamplingConfig | None = None, warmup: int = 1,
                on_progress: Callable[[str], None] | None = None) -> CompareReport:
    """Run dense and every method x keep on each prompt with one seed; write images, grid and reports."""
    if not prompts:
        raise ConfigError("no prompts to compare")
    schedule = schedule or pipeline.schedule()
    configs = expand_configs(methods, keeps)
    depth = len(pipeline.model.blocks)
    plan_notes = []
    for c in configs:
        try:
            plan_notes += c.pruner().validate(schedule, depth)  # each note names its configuration
        except ConfigError as exc:
            raise ConfigError(f"{c.label}: {exc}") from None
    base = sampling or SamplingConfig()
    sampling = SamplingConfig(cfg=base.cfg, tau=base.tau, top_p=base.top_p, seed=seed)
    sampling.validate(len(schedule))
    prompts = pipeline.check_prompts(prompts)
    say = on_progress or (lambda msg: None)
    for n in plan_notes:
        say(f"note: {n}")
    with output_lock(prepare_out_dir(out_dir), on_note=lambda m: say(f"note: {m}")) as out:
        return _compare_all(pipeline, prompts, configs, seed, schedule, out, sampling, warmup, say)


def _compare_all(pipeline, prompts, configs, seed, schedule, out, sampling, warmup, say) -> CompareReport:
    report = CompareReport(environment(pipeline), {
        "prompts": list(prompts), "configurations": [c.label for c in configs], "seed": seed,
        "schedule": schedule.describe(), "cfg": sampling.cfg, "tau": sampling.tau, "top_p": sampling.top_p,
        "warmup": warmup, "reference": "dense, same prompt and seed"})
    for w in range(warmup):
        for c in configs:
            try:
                run_once(pipeline, [prompts[0]], schedule, c.pruner(), sampling)
            except Exception:  # noqa: BLE001 - the timed pass records the failure
                pass
        say(f"warm-up {w + 1}/{warmup} done")
    images: dict[tuple[int, str], np.ndarray] = {}

    def add_row(row: dict) -> None:
        report.rows.append(row)
        _summarize(report, configs)
        _write(report, out, final=False)

    try:
        for idx, prompt in enumerate(prompts):
            _compare_prompt(pipeline, idx, prompt, configs, schedule, sampling, out, add_row, images, say)
        report.status = "complete"
    except KeyboardInterrupt:
        report.status = "interrupted"
        raise
    finally:
        _summarize(report, configs)
        _write(report, out, final=True, images=images, configs=configs)
    return report


def toy_spec(prompt: str):
    """The prompt's parse in the toy world's grammar, or None: only such prompts can be scored."""
    from ..errors import StepvarError
    from ..toy.grammar import parse

    try:
        return parse(prompt)
    except StepvarError:
        return None


def _score(row: dict, image: np.ndarray, spec) -> None:
    """The evaluator's verdicts for this image (score = 1.0 when every requirement holds) and how
    many objects it shows that the prompt did not ask for."""
    from ..toy.evaluator import color_labels, detect_in_labels, score_detections, stray_counts

    labels = color_labels(image)
    dets = detect_in_labels(labels)
    verdicts = score_detections(dets, spec)
    row["score"] = float(verdicts.pop("overall"))
    row["score_categories"] = {k: bool(v) for k, v in verdicts.items()}
    row.update(stray_counts(labels, dets, spec))


def _compare_prompt(pipeline, idx, prompt, configs, schedule, sampling, out, add_row, images, say) -> None:
    ref = ref_row = None
    spec = toy_spec(prompt)
    for c in configs:
        pruner = c.pruner()
        name = image_name(idx, c)
        row = _row(idx, prompt, c, pruner, schedule, name)
        try:
            if c.spec == "dense" and ref is not None:
                result, mem = ref
            else:
                result, mem = run_once(pipeline, [prompt], schedule, pruner, sampling)
        except Exception as exc:  # noqa: BLE001 - one failing method must not lose the others
            row.update(status=f"failed: {one_line_error(exc)}", image=None)
            add_row(row)
            say(f"[{idx}] {c.label}: FAILED {row['status']}")
            if ref is None:  # without the dense reference nothing else can be compared
                return
            continue
        if ref is None:
            ref = (result, mem)
        fidelity = paired_fidelity(ref[0], result, row["pruned_scales"])
        _fill(row, result, mem, ref[0], ref_row, fidelity)
        if ref_row is None:
            ref_row = row
        if spec is not None:
            _score(row, result.images[0], spec)
        save_image(out / name, result.images[0], {"prompt": prompt, "seed": str(sampling.seed), "record": result.record})
        images[(idx, c.label)] = result.images[0]
        add_row(row)
        psnr = "inf" if row["identical"] else f"{row['psnr_db']:.2f}"
        say(f"[{idx}] {c.label}: {row['time_s']:.3f} s, PSNR {psnr} dB, SSIM {row['ssim']:.4f}")


def _stat(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(rows: list[dict], configs: Sequence[BenchConfig]) -> list[dict]:
    """Mean ± std (sample std) per configuration over the prompts it ran on."""
    out = []
    for c in configs:
        sel = [r for r in rows if r["label"] == c.label and r["status"] == "ok"]
        if not sel:
            continue
        item = {"method": c.spec, "label": c.label, "keep": sel[0]["keep"], "n": len(sel)}
        for key in ("time_s", "speedup_vs_dense", "transformer_speedup_vs_dense", "ssim", "token_agreement_pruned",
                    "latent_cosine", "score"):
            item[key] = _stat([r[key] for r in sel if r[key] is not None])
        item["psnr_db"] = _stat([r["psnr_db"] for r in sel if r["psnr_db"] is not None])
        item["psnr_db"]["n_identical"] = sum(1 for r in sel if r["identical"])
        scored = [r for r in sel if r.get("score_categories") is not None]
        # The share of images with an object the prompt did not ask for, and each category's mean
        # over the prompts that exercise it (the evaluator's categories).
        item["stray"] = _stat([float(r["stray_objects"] > 0) for r in scored])
        item["stray_blobs"] = _stat([float(r["stray_blobs"] > 0) for r in scored])
        cats = {k for r in scored for k in r["score_categories"]}
        item["score_categories"] = {k: _stat([float(r["score_categories"][k]) for r in scored if k in r["score_categories"]])
                                    for k in sorted(cats)}
        out.append(item)
    return out


def _summarize(report: CompareReport, configs: Sequence[BenchConfig]) -> None:
    report.summary = summarize(report.rows, configs)
    report.paired = paired_comparisons(report.rows, [c.label for c in configs])


def _write(report: CompareReport, out: Path, final: bool, images=None, configs=None) -> None:
    from .report_md import compare_markdown

    save_json(out / "report.json", report.to_dict())
    if final:
        if images:
            save_grid(out / "grid.png", report.rows, images, [c.label for c in configs])
        save_text(out / "report.md", compare_markdown(report))


# ---- the labelled grid -----------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _tile_label(row: dict) -> list[str]:
    keep = "own ratios" if row["keep"] is None else f"keep {row['keep']:g}"
    first = "dense (reference)" if row["method"] == "dense" else f"{row['method']}, {keep}"
    psnr = "PSNR inf" if row["identical"] else f"PSNR {row['psnr_db']:.2f} dB"
    lines = [first, f"{fmt_seconds(row['time_s'])} ({row['speedup_vs_dense']:.2f}x dense)", f"{psnr}, SSIM {row['ssim']:.3f}"]
    if row.get("score") is not None:  # a toy-world prompt: what the evaluator found
        verdict = "right" if row["score"] else "wrong: " + ", ".join(k for k, v in row["score_categories"].items() if not v)
        lines.append(verdict)
        objects, blobs = row.get("stray_objects") or 0, row.get("stray_blobs") or 0
        if blobs:
            lines.append(f"strays: {objects} object-sized, {blobs} in all")
    return lines


def save_grid(path: Path, rows: list[dict], images: dict, labels: Sequence[str],
              prompt_ids: Sequence[int] | None = None) -> Path:
    """Prompts as rows (the first GRID_MAX_PROMPTS, or prompt_ids), configurations as columns in
    `labels` order, the label lines under each tile."""
    if prompt_ids is None:
        prompt_ids = sorted({idx for idx, _ in images})[:GRID_MAX_PROMPTS]
    labels = [label for label in labels if any((i, label) in images for i in prompt_ids)]
    by_key = {(r["prompt_index"], r["label"]): r for r in rows}
    n_lines = max((len(_tile_label(by_key[k])) for k in images if k in by_key), default=3)
    h0, w0 = next(iter(images.values())).shape[:2]
    f = min(1.0, GRID_TILE / max(h0, w0))
    tw, th = max(1, round(w0 * f)), max(1, round(h0 * f))
    font, small = _font(13), _font(12)
    line, pad, head = 16, 6, 20
    cell_h = head + th + n_lines * line + 2 * pad
    grid = Image.new("RGB", (len(labels) * (tw + pad) + pad, len(prompt_ids) * cell_h + pad), "white")
    draw = ImageDraw.Draw(grid)
    for ri, idx in enumerate(prompt_ids):
        y0 = pad + ri * cell_h
        prompt = next((by_key[(idx, label)]["prompt"] for label in labels if (idx, label) in by_key), "")
        draw.text((pad, y0), f"prompt {idx}: {prompt[:120]}", fill="black", font=font)
        for ci, label in enumerate(labels):
            if (idx, label) not in images:
                continue
            x0 = pad + ci * (tw + pad)
            tile = Image.fromarray(images[(idx, label)]).resize((tw, th), Image.LANCZOS)
            grid.paste(tile, (x0, y0 + head))
            for li, text in enumerate(_tile_label(by_key[(idx, label)])):
                draw.text((x0, y0 + head + th + pad // 2 + li * line), text, fill="black", font=small)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
