"""Generating a prompt set: samples per prompt, batched, sharded over torchrun's ranks, resumable.

Output layout (GenEval's, so its evaluator and others read it as is):

    OUT/manifest.json               every setting, the ranks, the status; rank 0 writes it
    OUT/summary.json                counts, times and memory of the last run; rank 0, at the end
    OUT/00000/metadata.jsonl        the prompt's metadata (GenEval's object, or {"prompt": ...})
    OUT/00000/samples/0000.png      sample 0 of prompt 0 (settings and seed in PNG text chunks)
    OUT/00000/records/0000.json     its record: timings, batch, rank, device, peak GPU memory, KV bytes

Every file is written to a temporary name and renamed into place, and an image's record is
renamed before the image, so a present PNG is a complete output with its record: a rerun skips
exactly those and makes the rest; a killed writer's temporaries are removed by the next run (it
holds the output's lock). The images depend only on the settings and the item, never on the
batch size, the number of ranks or what was already done: item (p, s) draws with
`sample_seed(seed, p, s)` from its own generator, and each image is decoded alone (the VAE's
convolutions give a row's pixels differently in a larger batch; the sampled codes do not differ).
The PNG holds only what the image depends on, so the same item is the same bytes whatever made it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import __version__
from .distributed import Ranks
from .errors import StepvarError
from .io import atomic_path, save_json, save_text, _write_image
from .prompt_sets import PromptEntry, file_digest, sample_seed
from .run_lock import check_unlocked, output_lock, remove_stale_temporaries
from .text import pad_features
from .user_files import check_output_dir, make_output_dir
from .validate import shown

MANIFEST, SUMMARY = "manifest.json", "summary.json"


def prompt_dir(out: Path, p: int) -> Path:
    return out / f"{p:05d}"


def image_path(out: Path, p: int, s: int) -> Path:
    return prompt_dir(out, p) / "samples" / f"{s:04d}.png"


def record_path(out: Path, p: int, s: int) -> Path:
    return prompt_dir(out, p) / "records" / f"{s:04d}.json"


@dataclass(frozen=True)
class Item:
    prompt: int
    sample: int
    seed: int


@dataclass
class PromptSetJob:
    """What to make: the prompt set, samples per prompt, the batch size, and where."""

    prompts_file: Path
    entries: list[PromptEntry]
    out: Path
    samples: int
    batch_size: int
    seed: int

    def items(self) -> list[Item]:
        return [Item(p.index, s, sample_seed(self.seed, p.index, s)) for p in self.entries for s in range(self.samples)]

    def shard(self, ranks: Ranks) -> list[Item]:
        """This rank's items: every world-th item, so every rank gets a mix of prompts and a near-equal share."""
        return self.items()[ranks.rank::ranks.world]

    def pending(self, items: list[Item]) -> list[Item]:
        return [it for it in items if not image_path(self.out, it.prompt, it.sample).is_file()]


def check_job(prompts_file: Path, entries: list[PromptEntry], out: Path, samples: int, batch_size: int, seed: int) -> PromptSetJob:
    """Everything about the output that can be refused before any work: nothing is written."""
    if samples < 1:
        raise StepvarError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise StepvarError(f"--batch-size must be >= 1, got {batch_size}")
    check_output_dir(out)
    if out.is_dir():
        check_unlocked(out)
    return PromptSetJob(prompts_file, entries, out, samples, batch_size, seed)


def image_settings(pipe, schedule, pruner, sampling) -> dict:
    """What an image depends on (and nothing that differs between ranks or runs): in every PNG, and
    compared with an existing output's before resuming it."""
    pruner.begin(schedule, len(pipe.model.blocks))  # the resolved plan belongs to the settings
    return {
        "stepvar_version": __version__,
        "model": pipe.preset.name,
        "model_status": pipe.status,
        "sources": pipe.sources,
        "text_encoder": pipe.text_encoder.name,
        "schedule": schedule.to_dict(),
        "sampling": {"cfg": sampling.cfg, "tau": sampling.tau, "top_p": sampling.top_p},
        "pruning": pruner.config_dict(),
        "device_type": pipe.device.type,
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "numerics": pipe.model.numerics,
    }


def _json_roundtrip(value):
    return json.loads(json.dumps(value, default=str))


def _compare_settings(out: Path, prompts_sha: str, seed: int, settings: dict) -> None:
    """Refuse to add to an output made with other settings: its images would not belong together."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise StepvarError(f"--out {shown(out)}: its {MANIFEST} cannot be read; use another --out") from None
    new = {"prompts_sha256": prompts_sha, "seed": seed, "settings": _json_roundtrip(settings)}
    for key, value in new.items():
        if old.get(key) != value:
            what = key
            if key == "settings" and isinstance(old.get(key), dict):
                what = next((k for k in value if old[key].get(k) != value[k]), key)
            raise StepvarError(f"--out {shown(out)} holds images made with another {what}; "
                               "use another --out to make this set")


@dataclass
class RankReport:
    rank: int
    device: str
    assigned: int
    already_done: int
    generated: int = 0
    seconds: float = 0.0
    peak_gpu_memory_bytes: int | None = None
    kv_cache_bytes_max: int = 0


@dataclass
class PromptSetResult:
    manifest: dict
    summary: dict | None  # rank 0 only
    report: RankReport
    ranks: list[RankReport] = field(default_factory=list)


def _prepare_output(job: PromptSetJob, manifest: dict, on_note: Callable[[str], None]) -> None:
    """Rank 0, holding the lock: folders, metadata, the manifest, and no stale temporary left."""
    for entry in job.entries:
        d = prompt_dir(job.out, entry.index)
        for sub in (d / "samples", d / "records"):
            sub.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temporaries(sub)
            if removed:
                on_note(f"removed {len(removed)} unfinished temporary file(s) a killed run left in {sub}")
        meta = d / "metadata.jsonl"
        line = json.dumps(entry.metadata, ensure_ascii=False) + "\n"
        if not meta.is_file() or meta.read_text(encoding="utf-8") != line:
            save_text(meta, line)
    save_json(job.out / MANIFEST, manifest)


def _encode_one(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's features and mask on the host; encoded alone, so no other prompt's length pads it."""
    text, mask = pipe.encode([prompt])
    return text[0].cpu(), mask[0].cpu()


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_prompt_set(job: PromptSetJob, pipe, schedule, pruner, sampling, ranks: Ranks,
                   on_progress: Callable[[int, int], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> PromptSetResult:
    """Make every pending image of this rank's shard; rank 0 prepares the output and, after every rank
    is done, writes the merged manifest and the summary. A StepvarError on rank 0 before any image
    is made (another run holds the output, other settings) is raised on every rank."""
    say = on_note or (lambda msg: None)
    prompts_sha = file_digest(job.prompts_file)
    settings = image_settings(pipe, schedule, pruner, sampling)
    manifest = {
        "stepvar_version": __version__,
        "status": "running",
        "prompts_file": str(job.prompts_file),
        "prompts_sha256": prompts_sha,
        "prompts": len(job.entries),
        "samples": job.samples,
        "images": len(job.entries) * job.samples,
        "seed": job.seed,
        "seed_rule": "sample s of prompt p draws with stepvar.prompt_sets.sample_seed(seed, p, s)",
        "batch_size": job.batch_size,
        "world_size": ranks.world,
        "backend": ranks.backend,
        "offload": pipe.offload,
        "layout": "OUT/{prompt:05d}/metadata.jsonl, samples/{sample:04d}.png, records/{sample:04d}.json",
        "settings": settings,
    }
    with contextlib.ExitStack() as stack:
        problem = None
        if ranks.is_main:
            try:
                _compare_settings(job.out, prompts_sha, job.seed, settings)
                make_output_dir(job.out)
                stack.enter_context(output_lock(job.out, on_note=say))
                _prepare_output(job, _json_roundtrip(manifest), say)
            except StepvarError as exc:
                problem = str(exc)
        problem = ranks.broadcast(problem)
        if problem is not None:
            raise StepvarError(problem)
        ranks.barrier()  # the folders exist and no stale temporary is left before any rank writes

        mine = job.shard(ranks)
        todo = job.pending(mine)
        report = RankReport(ranks.rank, str(pipe.device), len(mine), len(mine) - len(todo))
        try:
            _generate_items(job, pipe, schedule, pruner, sampling, ranks, todo, report, settings, on_progress)
        except KeyboardInterrupt:
            if ranks.is_main:  # what is finished stays; a rerun makes the rest
                with contextlib.suppress(Exception):
                    save_json(job.out / MANIFEST, _json_roundtrip(manifest | {"status": "interrupted"}))
            raise

        reports = [RankReport(**r) for r in ranks.gather(report.__dict__)]  # also the barrier after the work
        summary = None
        if ranks.is_main:
            missing = len(job.pending(job.items()))
            manifest["status"] = "complete" if missing == 0 else "incomplete"
            manifest["ranks"] = [r.__dict__ for r in reports]
            summary = _summary(job, reports, missing)
            save_json(job.out / SUMMARY, summary)
            save_json(job.out / MANIFEST, manifest)
        ranks.barrier()  # no rank leaves (and no launcher tears the group down) before rank 0 has written
    return PromptSetResult(manifest, summary, report, reports)


def _generate_items(job, pipe, schedule, pruner, sampling, ranks, todo, report, settings, on_progress) -> None:
    features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    prompts = {e.index: e.prompt for e in job.entries}
    if pipe.offload == "text-encoder":
        for p in sorted({it.prompt for it in todo}):  # every prompt first, then the encoder leaves the device
            features[p] = _encode_one(pipe, prompts[p])
        pipe.release_text_encoder()
    if on_progress is not None:
        on_progress(0, len(todo))
    done = 0
    t_start = time.perf_counter()
    for batch in _batches(todo, job.batch_size):
        for it in batch:
            if it.prompt not in features:
                features[it.prompt] = _encode_one(pipe, prompts[it.prompt])
        feats = [features[it.prompt] for it in batch]
        text, _ = pad_features([f for f, _ in feats])
        mask = torch.zeros(text.shape[:2], dtype=torch.bool)
        for row, (_, m) in enumerate(feats):
            mask[row, : m.shape[0]] = m
        row_sampling = type(sampling)(cfg=sampling.cfg, tau=sampling.tau, top_p=sampling.top_p, seed=batch[0].seed,
                                      row_seeds=[it.seed for it in batch])
        result = pipe.generate([prompts[it.prompt] for it in batch], schedule, pruner, row_sampling, decode=False,
                               encoded=(text.to(pipe.device), mask.to(pipe.device)))
        for row, it in enumerate(batch):
            image = pipe.decode(result.sample.latent_BdHW[row:row + 1])[0]
            _write_item(job, it, image, prompts[it.prompt], settings, result, row, len(batch), ranks, pipe)
            done += 1
            if on_progress is not None:
                on_progress(done, len(todo))
        report.generated += len(batch)
        memory = result.record["memory"]
        report.kv_cache_bytes_max = max(report.kv_cache_bytes_max, memory["kv_cache_bytes"])
        if memory["peak_gpu_memory_bytes"] is not None:
            report.peak_gpu_memory_bytes = max(report.peak_gpu_memory_bytes or 0, memory["peak_gpu_memory_bytes"])
    report.seconds = time.perf_counter() - t_start


def _write_item(job, it: Item, image, prompt: str, settings: dict, result, row: int, rows: int, ranks: Ranks, pipe) -> None:
    img = image_path(job.out, it.prompt, it.sample)
    record = {
        "prompt": prompt, "prompt_index": it.prompt, "sample_index": it.sample, "seed": it.seed,
        "image": str(img.relative_to(job.out)),
        "batch_rows": rows, "row": row, "rank": ranks.rank, "world_size": ranks.world, "device": str(pipe.device),
        "timings_of_batch": result.timings, "memory": result.record["memory"], "offload": pipe.offload,
        "tokens_per_layer": result.sample.counter.total() // max(1, len(pipe.model.blocks)),
        "settings": settings,
    }
    # The record first, the image last: a present image is a finished item whose record is there too.
    save_json(record_path(job.out, it.prompt, it.sample), record)
    chunks = {"prompt": prompt, "seed": str(it.seed), "prompt_index": str(it.prompt), "sample_index": str(it.sample),
              "settings": json.dumps(settings, default=str, sort_keys=True)}
    with atomic_path(img) as tmp:
        _write_image(tmp, "PNG", image, chunks)


def _summary(job: PromptSetJob, reports: list[RankReport], missing: int) -> dict:
    generated = sum(r.generated for r in reports)
    slowest = max((r.seconds for r in reports), default=0.0)
    peaks = [r.peak_gpu_memory_bytes for r in reports if r.peak_gpu_memory_bytes is not None]
    return {
        "images": len(job.entries) * job.samples,
        "complete": len(job.entries) * job.samples - missing,
        "missing": missing,
        "generated_this_run": generated,
        "skipped_as_complete": sum(r.already_done for r in reports),
        "seconds_this_run": slowest,
        "images_per_second": generated / slowest if slowest > 0 else None,
        "peak_gpu_memory_bytes": max(peaks) if peaks else None,
        "kv_cache_bytes_max": max((r.kv_cache_bytes_max for r in reports), default=0),
        "ranks": [r.__dict__ for r in reports],
    }
