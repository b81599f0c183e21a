"""`stepvar bench`: how much faster, at what cost, on this model and this machine.

Protocol (docs/bench_schema.md has the report schema):
1. Every configuration (method x keep) of a resolution is checked before anything runs.
2. Warm-up runs of every configuration (untimed), then `repeats` timed rounds. A round runs
   every configuration once, in order, and the next round in reverse order (A B C, C B A, ...),
   so slow drift of the machine hits all methods alike and ratios stay meaningful.
3. Each run is one Pipeline.generate() call (same prompts, same seed); its own timings give
   text, transformer loop (with per-scale times) and decode, synchronised on CUDA. Peak memory
   is reset before each run (stepvar.eval.measure says what is measured on which device).
4. After every timed run, that configuration's row (status "partial: n/N timed runs" until its
   rounds end, then "ok") is written and report.json / report.csv are rewritten atomically, so a
   bench stopped in any way, SIGKILL included, leaves every timed run it finished on disk in
   complete files. A configuration that raises is recorded as a failed row at once and left out
   of later rounds. One bench at a time writes an output directory (stepvar.run_lock).

All times and FLOPs in a row are per image: one generate() call on `batch` prompts, / batch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .flops import decode_flops, plan_flops, planned_counts, result_flops, rows_per_scale
from ..io import save_json, save_text
from ..pruning.accelerations import guided_cfgs
from ..run_lock import output_lock
from .measure import MemoryPeak, busy_machine_note, cpu_busy_fraction, environment
from .runs import BenchConfig, expand_configs, one_line_error, prepare_out_dir, run_once, scalar_keep
from ..sampling import SamplingConfig
from ..schedules import ScaleSchedule, schedule_for

SCHEMA_VERSION = 1

# name -> (JSON type(s), description). docs/bench_schema.md documents exactly these (tested).
# Fields that are numbers on measured rows are null on failed rows.
ROW_FIELDS: dict[str, tuple[str, str]] = {
    "method": ("string", "method spec as given (preset name, optionally with :key=value overrides)"),
    "label": ("string", "method plus keep, e.g. stepvar@0.4; how tables and plots name the row"),
    "keep": ("number|null", "the single keep ratio of the pruned scales; null for dense and per-scale/release ratios"),
    "resolution": ("integer", "nominal resolution (256, 512, 768, 1024, 2048)"),
    "aspect": ("string", "aspect ratio as asked (W:H)"),
    "size_wh": ("array", "output image [width, height] in pixels"),
    "batch": ("integer", "prompts per generate() call"),
    "status": ("string", "ok, failed: <reason>, interrupted: <n>/<N> timed runs, or partial: <n>/<N> timed runs "
                         "(a row still being measured: what a killed bench leaves)"),
    "measured": ("boolean", "false for --flops-only rows (no timing, no memory)"),
    "repeats": ("integer", "timed runs that went into the medians"),
    "latency_s": ("number|null", "median end-to-end seconds per image (text + transformer + decode)"),
    "latency_iqr_s": ("number|null", "interquartile range of the per-image end-to-end times"),
    "latency_runs": ("array", "every timed per-image end-to-end time, in run order"),
    "text_s": ("number|null", "median text-encoding seconds per image"),
    "transformer_s": ("number|null", "median seconds per image of the scale loop (all blocks, heads, sampling)"),
    "decode_s": ("number|null", "median VAE-decode seconds per image"),
    "per_scale_s": ("array", "median seconds per image of each scale of the loop"),
    "throughput_img_s": ("number|null", "images per second (batch / median batch time)"),
    "peak_memory_bytes": ("integer|null", "peak memory of a run, max over runs; meaning given by peak_memory_kind"),
    "peak_memory_kind": ("string|null", "cuda_max_allocated, cpu_rss_peak_delta or cpu_rss_sampled_delta (see below)"),
    "peak_memory_reserved_bytes": ("integer|null", "CUDA: peak reserved by the caching allocator"),
    "peak_rss_bytes": ("integer|null", "CPU: absolute peak resident set of the process"),
    "kv_cache_bytes": ("integer|null", "bytes of the self-attention KV cache at the end of a generation (all rows)"),
    "flops": ("integer|null", "FLOPs per image, end to end: transformer + VAE decode (multiply-add = 2)"),
    "flops_transformer": ("integer|null", "transformer FLOPs per image: sum(flops_per_scale) + flops_conditioning"),
    "flops_conditioning": ("integer|null", "once-per-generation text work per image (pooling, projections, CA text K/V)"),
    "flops_decode": ("integer|null", "VAE-decode FLOPs per image (torch.utils.flop_counter, same for every method)"),
    "flops_per_scale": ("array", "transformer FLOPs per image at each scale (blocks, head, next-scale embedding)"),
    "text_len": ("integer|null", "text tokens the FLOP count assumes (cross-attention length)"),
    "tokens_per_block": ("array", "per scale: {grid, dense, min, max, skipped}, SA tokens per row over layers"),
    "token_fraction": ("number|null", "SA tokens processed over all scales and layers / the dense count"),
    "pruned_scales": ("array", "scale indices the method prunes"),
    "skipped_scales": ("array", "scale indices the method skips entirely"),
    "cfg_drop_from": ("integer|null", "first scale run without the unconditional guidance row (null: never dropped)"),
    "skip_last": ("integer", "last scales not run (the skip_last acceleration; 0: none)"),
    "speedup_vs_dense": ("number|null", "dense latency_s / this latency_s (same resolution, same process)"),
    "transformer_speedup_vs_dense": ("number|null", "dense transformer_s / this transformer_s"),
    "flop_speedup_bound": ("number|null", "dense flops / this flops: the end-to-end speedup FLOPs allow"),
    "transformer_flop_speedup_bound": ("number|null", "dense flops_transformer / this flops_transformer"),
    "realised_fraction": ("number|null", "speedup_vs_dense / flop_speedup_bound"),
    "pruning": ("object", "the method's resolved settings (Pruner.config_dict())"),
}
ROW_REQUIRED = ("method", "keep", "resolution", "latency_s", "peak_memory_bytes", "flops", "speedup_vs_dense",
                "flop_speedup_bound", "status")


@dataclass
class _Runs:
    """What the timed runs of one configuration at one resolution produced."""

    config: BenchConfig
    pruner: object
    totals: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=lambda: {"text_s": [], "transformer_s": [], "decode_s": []})
    per_scale: list[list[float]] = field(default_factory=list)
    memory: list[MemoryPeak] = field(default_factory=list)
    last: object = None  # the last GenerationResult (counts, kv bytes)
    error: str | None = None
    static: dict = field(default_factory=dict)  # the row fields known before running
    ctx: dict = field(default_factory=dict)  # what _measured_row needs about the resolution


@dataclass
class BenchReport:
    environment: dict
    settings: dict
    rows: list[dict] = field(default_factory=list)
    status: str = "running"  # running | complete | interrupted
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if not str(r.get("status", "")).startswith("ok")]

    def to_dict(self) -> dict:
        return {"kind": "stepvar-bench", "schema_version": SCHEMA_VERSION, "status": self.status,
                "environment": self.environment, "settings": self.settings, "notes": self.notes, "results": self.rows}


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _iqr(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return 0.0 if xs else None
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


# ---- rows ---------------------------------------------------------------------------------------
def _token_summary(counts, schedule: ScaleSchedule, depth: int, skipped: set[int]) -> tuple[list[dict], float]:
    summary, done, dense = [], 0, 0
    for si, s in enumerate(schedule.scales):
        per_layer = [counts.get((si, layer, "sa"), 0) for layer in range(depth)]
        summary.append({"grid": f"{s.h}x{s.w}", "dense": s.n, "min": min(per_layer), "max": max(per_layer),
                        "skipped": si in skipped})
        done += sum(per_layer)
        dense += s.n * depth
    return summary, done / dense


def _flop_fields(flops, dec: int, batch: int) -> dict:
    per = lambda v: int(round(v / batch))  # noqa: E731 - per image
    return {"flops": per(flops.total + dec), "flops_transformer": per(flops.total),
            "flops_conditioning": per(flops.conditioning), "flops_decode": per(dec),
            "flops_per_scale": [per(v) for v in flops.per_scale]}


def _static_fields(config: BenchConfig, pruner, res: int, aspect: str, schedule: ScaleSchedule, batch: int) -> dict:
    hpx, wpx = schedule.pixel_size
    plan = pruner.resolved_plan(schedule, 10**6)
    return {"method": config.spec, "label": config.label, "keep": scalar_keep(pruner), "resolution": res,
            "aspect": aspect, "size_wh": [wpx, hpx], "batch": batch, "pruned_scales": plan.pruned_scales,
            "skipped_scales": [], "cfg_drop_from": plan.cfg_drop_from, "skip_last": plan.skip_last,
            "pruning": pruner.config_dict()}


def _empty_row(static: dict, status: str, measured: bool = True) -> dict:
    row = {name: None for name in ROW_FIELDS}
    row.update(latency_runs=[], per_scale_s=[], flops_per_scale=[], tokens_per_block=[], repeats=0)
    row.update(static)
    row.update(status=status, measured=measured)
    return row


def _measured_row(runs: _Runs, static: dict, ctx: dict, status: str = "ok") -> dict:
    """A row from a configuration's timed runs (ctx: schedule, batch, depth, cfg_scales, text_len, decode flops)."""
    b = ctx["batch"]
    row = _empty_row(static, status)
    sample = runs.last.sample
    flops = result_flops(ctx["arch"], sample, ctx["schedule"], guided_cfgs(ctx["cfg_scales"], runs.pruner.active_plan), b,
                         ctx["text_len"])
    skipped = {t.si for t in sample.timings if t.skipped}
    tokens, fraction = _token_summary(sample.counter.counts, ctx["schedule"], ctx["arch"].depth, skipped)
    per_image = [t / b for t in runs.totals]
    peak = max(runs.memory, key=lambda m: m.bytes)
    row.update(
        repeats=len(runs.totals), latency_s=_median(per_image), latency_iqr_s=_iqr(per_image), latency_runs=per_image,
        **{k: _median(v) / b for k, v in runs.parts.items()},
        per_scale_s=[statistics.median(col) / b for col in zip(*runs.per_scale)],
        throughput_img_s=b / _median(runs.totals), peak_memory_bytes=peak.bytes, peak_memory_kind=peak.kind,
        peak_memory_reserved_bytes=peak.reserved_bytes, peak_rss_bytes=peak.rss_peak_bytes,
        kv_cache_bytes=sample.kv_cache_bytes, text_len=ctx["text_len"], tokens_per_block=tokens, token_fraction=fraction,
        skipped_scales=sorted(skipped), pruning=runs.pruner.config_dict(),
        **_flop_fields(flops, ctx["decode_flops"], b))
    return row


def add_ratios(rows: list[dict]) -> None:
    """Fill the speedup columns of every row from the dense row of its resolution (and batch)."""
    dense = {(r["resolution"], r["batch"]): r for r in rows if r["label"] == "dense" and r.get("flops")}
    for r in rows:
        ref = dense.get((r["resolution"], r["batch"]))
        if ref is None or not r.get("flops"):
            continue
        r["flop_speedup_bound"] = ref["flops"] / r["flops"]
        r["transformer_flop_speedup_bound"] = ref["flops_transformer"] / r["flops_transformer"]
        if r.get("latency_s") and ref.get("latency_s"):
            r["speedup_vs_dense"] = ref["latency_s"] / r["latency_s"]
            r["transformer_speedup_vs_dense"] = ref["transformer_s"] / r["transformer_s"]
            r["realised_fraction"] = r["speedup_vs_dense"] / r["flop_speedup_bound"]


# ---- the bench ----------------------------------------------------------------------------------
def _prepare(pipeline, resolutions, aspect, configs) -> tuple[dict[int, ScaleSchedule], list[str]]:
    """Schedules for every resolution, and every configuration validated on each (before any compute),
    with the notes the validation gave (once each)."""
    schedules, plan_notes = {}, []
    depth = len(pipeline.model.blocks)
    for res in resolutions:
        sched = schedule_for(res, aspect, pipeline.vae.cfg.token_stride)
        if len(sched) > pipeline.model.cfg.num_levels:
            raise ConfigError(f"resolution {res} needs {len(sched)} scales; {pipeline.preset.name} has "
                              f"{pipeline.model.cfg.num_levels} level embeddings")
        for c in configs:
            try:
                plan_notes += [f"{n} (at {res} px)" for n in c.pruner().validate(sched, depth)]
            except ConfigError as exc:
                raise ConfigError(f"{c.label} at {res}: {exc}") from None
        schedules[res] = sched
    return schedules, plan_notes


def _reading_notes(configs: list[BenchConfig], keeps, cpu_busy: float | None) -> list[str]:
    notes = []
    fixed = sorted({c.spec for c in configs if c.keep is None and c.spec != "dense"})
    if keeps and fixed:
        notes.append(f"--keep does not apply to {', '.join(fixed)} (run at their own ratios; "
                     "write e.g. fastvar@0.4 to pin one)")
    busy = busy_machine_note(cpu_busy, "just before the bench")
    return notes + ([busy] if busy else [])


def run_bench(pipeline, resolutions: Sequence[int], methods: Sequence[str], keeps: Sequence[float] | None = None,
              batch: int = 1, repeats: int = 3, warmup: int = 2, prompts: Sequence[str] = ("a lighthouse at dawn",),
              seed: int = 0, on_row: Callable[[dict], None] | None = None, out_dir: str | Path | None = None,
              aspect: str = "1:1", sampling: SamplingConfig | None = None,
              on_progress: Callable[[str], None] | None = None, decode: bool = True) -> BenchReport:
    """Benchmark every method x keep at every resolution in this process, interleaved. See the module docstring.

    decode=False leaves out the VAE decode (the same work for every method, and most of a
    1024-px run on a CPU): end-to-end times and FLOP bounds then cover text + transformer only."""
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"need --repeats >= 1, --warmup >= 0, --batch >= 1 (got {repeats}, {warmup}, {batch})")
    configs = expand_configs(methods, keeps)
    schedules, plan_notes = _prepare(pipeline, resolutions, aspect, configs)
    base = sampling or SamplingConfig()
    sampling = SamplingConfig(cfg=base.cfg, tau=base.tau, top_p=base.top_p, seed=seed)
    prompt_list = [list(prompts)[i % len(prompts)] for i in range(batch)]
    text_len = int(pipeline.text_encoder.encode(prompt_list, pipeline.device)[0].shape[1])
    report = BenchReport(environment(pipeline), {
        "resolutions": list(resolutions), "aspect": aspect, "methods": list(methods), "keeps": list(keeps or []),
        "configurations": [c.label for c in configs], "batch": batch, "repeats": repeats, "warmup": warmup,
        "prompts": prompt_list, "seed": seed, "cfg": sampling.cfg, "tau": sampling.tau, "top_p": sampling.top_p,
        "order": "interleaved: each round runs every configuration once, alternating forward and reverse order",
        "decode": decode})
    say = on_progress or (lambda msg: None)
    notes = _reading_notes(configs, keeps, report.environment["cpu_busy_before"]) + plan_notes
    if not decode:
        notes.insert(0, "no VAE decode (--no-decode): end-to-end times and FLOP bounds cover text encoding and the "
                        "transformer loop only")
    for note in notes:
        report.notes.append(note)
        say(f"note: {note}")
    with contextlib.ExitStack() as stack:
        out = None
        if out_dir is not None:  # created only now, when every option has been checked
            out = stack.enter_context(output_lock(prepare_out_dir(out_dir), on_note=lambda m: say(f"note: {m}")))
        _bench_all(pipeline, resolutions, schedules, configs, prompt_list, sampling, repeats, warmup, text_len,
                   report, out, on_row, say)
    return report


def _bench_all(pipeline, resolutions, schedules, configs, prompt_list, sampling, repeats, warmup, text_len, report,
               out, on_row, say) -> None:
    current: dict[BenchConfig, _Runs] = {}
    labels = [c.label for c in configs]

    def emit(row: dict, final: bool = True) -> None:
        """Add or replace the row of (resolution, label) and rewrite the files; on_row hears of finished rows."""
        key = (row["resolution"], row["label"])
        report.rows[:] = [r for r in report.rows if (r["resolution"], r["label"]) != key] + [row]
        report.rows.sort(key=lambda r: (list(resolutions).index(r["resolution"]), labels.index(r["label"])))
        add_ratios(report.rows)
        if out is not None:
            write_bench_outputs(report, out, final=False)
        if on_row is not None and final:
            on_row(row)

    try:
        for res in resolutions:
            current.clear()
            _bench_resolution(pipeline, res, schedules[res], configs, prompt_list, sampling, repeats, warmup,
                              text_len, report, current, emit, say)
        report.status = "complete"
    except KeyboardInterrupt:
        report.status = "interrupted"
        for runs in current.values():  # keep the timed runs of the unfinished resolution
            if runs.totals and runs.error is None:
                emit(_measured_row(runs, runs.static, runs.ctx, f"interrupted: {len(runs.totals)}/{repeats} timed runs"))
        raise
    finally:
        report.environment["cpu_busy_after"] = cpu_busy_fraction() if pipeline.device.type == "cpu" else None
        busy = busy_machine_note(report.environment["cpu_busy_after"], "just after the bench")
        if busy:
            report.notes.append(busy)
            say(f"warning: {busy}")
        add_ratios(report.rows)
        if out is not None:
            write_bench_outputs(report, out, final=True)


def _bench_resolution(pipeline, res, schedule, configs, prompts, sampling, repeats, warmup, text_len, report,
                      current, emit, say) -> None:
    b = len(prompts)
    decode = report.settings["decode"]
    ctx = {"schedule": schedule, "batch": b, "arch": pipeline.model.cfg, "text_len": text_len,
           "cfg_scales": sampling.per_scale("cfg", len(schedule)),
           "decode_flops": (decode_flops(pipeline.vae.cfg, pipeline.codec.vae_grid(schedule.last.h, schedule.last.w), b)
                            if decode else 0)}
    for c in configs:
        pruner = c.pruner()
        current[c] = _Runs(c, pruner, static=_static_fields(c, pruner, res, report.settings["aspect"], schedule, b),
                           ctx=ctx)
    for rnd in range(warmup + repeats):
        timed = rnd >= warmup
        order = configs if (rnd - warmup) % 2 == 0 else configs[::-1]
        for c in order:
            runs = current[c]
            if runs.error is not None:
                continue
            try:
                result, mem = run_once(pipeline, prompts, schedule, runs.pruner, sampling, decode=decode)
            except Exception as exc:  # one configuration failing must not lose the others
                runs.error = one_line_error(exc)
                say(f"[{res}] {c.label}: FAILED {runs.error}")
                emit(_empty_row(runs.static, f"failed: {runs.error}"))
                if pipeline.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            what = f"run {rnd - warmup + 1}/{repeats}" if timed else f"warm-up {rnd + 1}/{warmup}"
            say(f"[{res}] {c.label} {what}: {result.timings['total_s']:.3f} s")
            if timed:
                runs.totals.append(result.timings["total_s"])
                for k in runs.parts:
                    runs.parts[k].append(result.timings[k])
                runs.per_scale.append([t.seconds for t in result.sample.timings])
                runs.memory.append(mem)
                runs.last = result
                emit(_measured_row(runs, runs.static, ctx, f"partial: {len(runs.totals)}/{repeats} timed runs"),
                     final=False)
    for c in configs:
        runs = current[c]
        if runs.error is None:
            emit(_measured_row(runs, runs.static, ctx))
    current.clear()


def plan_bench(preset_name: str, resolutions: Sequence[int], methods: Sequence[str], keeps: Sequence[float] | None = None,
               batch: int = 1, prompts: Sequence[str] = ("a lighthouse at dawn",), aspect: str = "1:1",
               sampling: SamplingConfig | None = None) -> BenchReport:
    """FLOP rows without running anything (--flops-only): any architecture, on any machine."""
    from ..models.bsq_vae import VAE_PRESETS
    from ..models.config import load_model_preset
    from ..sampling import LatentCodec
    from ..text import HashTextEncoder

    preset = load_model_preset(preset_name)
    arch, vae_cfg = preset.arch, VAE_PRESETS[preset.arch.vae]
    codec = LatentCodec(vae_cfg.codebook_dim, vae_cfg.patchify)
    sampling = sampling or SamplingConfig()
    prompt_list = [list(prompts)[i % len(prompts)] for i in range(batch)]
    # Word-level token count of the prompt (T5 usually yields a few more); it only sizes cross-attention.
    text_len = int(HashTextEncoder(8, arch.text_maxlen).encode(prompt_list, torch.device("cpu"))[0].shape[1])
    configs = expand_configs(methods, keeps)
    report = BenchReport({"model": preset_name, "torch": torch.__version__, "device": None, "measured": False},
                         {"resolutions": list(resolutions), "aspect": aspect, "methods": list(methods),
                          "keeps": list(keeps or []), "configurations": [c.label for c in configs], "batch": batch,
                          "prompts": prompt_list, "flops_only": True})
    for res in resolutions:
        sched = schedule_for(res, aspect, vae_cfg.token_stride)
        cfg_scales = sampling.per_scale("cfg", len(sched))
        dec = decode_flops(vae_cfg, codec.vae_grid(sched.last.h, sched.last.w), batch)
        for c in configs:
            pruner = c.pruner()
            report.notes += [f"{n} (at {res} px)" for n in pruner.validate(sched, arch.depth)]
            guided = guided_cfgs(cfg_scales, pruner.resolved_plan(sched, arch.depth))
            flops = plan_flops(arch, sched, pruner, rows_per_scale(guided, batch), text_len, batch)
            counts, skip = planned_counts(pruner, sched, arch.depth)
            tokens, fraction = _token_summary(counts, sched, arch.depth, skip)
            row = _empty_row(_static_fields(c, pruner, res, aspect, sched, batch), "ok", measured=False)
            row.update(text_len=text_len, tokens_per_block=tokens, token_fraction=fraction, skipped_scales=sorted(skip),
                       **_flop_fields(flops, dec, batch))
            report.rows.append(row)
    add_ratios(report.rows)
    report.status = "complete"
    return report


# ---- outputs ------------------------------------------------------------------------------------
def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue()


def write_bench_outputs(report: BenchReport, out_dir: Path, final: bool) -> list[Path]:
    """report.json and report.csv always (atomic rewrites); report.md and the plots when final."""
    written = [save_json(out_dir / "report.json", report.to_dict()),
               save_text(out_dir / "report.csv", rows_to_csv(report.rows))]
    if final:
        from .plots import bench_plots
        from .report_md import bench_markdown

        plots = bench_plots(report.rows, out_dir) if any(r.get("measured") or r.get("flops") for r in report.rows) else []
        written += plots
        written.append(save_text(out_dir / "report.md", bench_markdown(report, [p.name for p in plots])))
    return written


def save_bench_report(report: BenchReport, out_dir: str | Path, on_note: Callable[[str], None] | None = None) -> list[Path]:
    """Create out_dir and write a finished report (e.g. --flops-only) into it, holding its lock."""
    with output_lock(prepare_out_dir(out_dir), on_note=on_note) as out:
        return write_bench_outputs(report, out, final=True)


def validate_rows(rows: list[dict], types: dict[str, str] | None = None) -> list[str]:
    """Problems with rows against a schema {field: 'number|null'}; [] when they conform."""
    checks = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    problems = []
    for i, row in enumerate(rows):
        for name, spec in (types or {k: v[0] for k, v in ROW_FIELDS.items()}).items():
            if name not in row:
                problems.append(f"row {i}: missing {name}")
                continue
            value, allowed = row[name], spec.split("|")
            ok = (value is None and "null" in allowed) or any(
                t != "null" and isinstance(value, checks[t]) and not (t != "boolean" and isinstance(value, bool))
                for t in allowed)
            if not ok:
                problems.append(f"row {i}: {name}={value!r} is not {spec}")
    return problems
