"""Write docs/benchmarks_gpu.md from a GPU bench report (scripts/gpu_bench.sh runs this after its bench)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _x(x) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


OFFLOAD_MODES = ("none", "text-encoder", "model")


def offload_table(records: dict[str, dict | None]) -> list[str]:
    """Peak GPU memory per offload mode, from the generate records gpu_bench.sh wrote (None: no record)."""
    lines = ["## Peak memory with and without offload (infinity-2b, 1024 px, bf16, dense, one image)", "",
             "`stepvar generate --model infinity-2b --resolution 1024 --device cuda --dtype bf16 --offload MODE`, "
             "one process per mode; the peak is `torch.cuda.max_memory_allocated` during the generation.", "",
             "| --offload | peak GPU allocated MiB | KV cache MiB | transformer loop ms | total ms |",
             "|---|---|---|---|---|"]
    for mode in OFFLOAD_MODES:
        rec = records.get(mode)
        if rec is None:
            lines.append(f"| {mode} | no record (the run failed) | | | |")
            continue
        mem, t = rec.get("memory", {}), rec.get("timings", {})
        lines.append(f"| {mode} | {_mib(mem.get('peak_gpu_memory_bytes'))} | {_mib(mem.get('kv_cache_bytes'))} "
                     f"| {_ms(t.get('transformer_s'))} | {_ms(t.get('total_s'))} |")
    return lines + [""]


def read_offload_records(folder: Path) -> dict[str, dict | None]:
    out = {}
    for mode in OFFLOAD_MODES:
        f = folder / f"offload_{mode}.json"
        out[mode] = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    return out


def render(report: dict, tests_summary: str, tests_rc: int, command: str, offload: dict | None = None) -> str:
    env = report["environment"]
    lines = [
        "# GPU benchmarks",
        "",
        f"Written by `scripts/gpu_bench.sh` on {env.get('time_utc', '?')}: **{env.get('device_name', '?')}**, "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, {env.get('dtype')}, {env.get('attention')}. "
        f"Model: {env.get('model')} architecture, {env.get('model_status')}: "
        "times and memory are real, no image quality is implied.",
        "",
        f"CUDA tests (`pytest -m cuda`): {'passed' if tests_rc == 0 else 'FAILED'} — {tests_summary}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Bench status: {report.get('status')}. Per image, batch 1 (2 CFG rows while guidance runs), "
        "median of the timed runs after the warm-ups, methods interleaved in one process.",
        "",
        "| configuration | latency ms (IQR) | transformer loop ms | decode ms | speedup | loop speedup | loop FLOP bound "
        "| peak GPU allocated MiB | peak reserved MiB | KV cache MiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['label']} | {_ms(r.get('latency_s'))} ({_ms(r.get('latency_iqr_s'))}) | {_ms(r.get('transformer_s'))} "
            f"| {_ms(r.get('decode_s'))} | {_x(r.get('speedup_vs_dense'))} | {_x(r.get('transformer_speedup_vs_dense'))} "
            f"| {_x(r.get('transformer_flop_speedup_bound'))} | {_mib(r.get('peak_memory_bytes'))} "
            f"| {_mib(r.get('peak_memory_reserved_bytes'))} | {_mib(r.get('kv_cache_bytes'))} | {r.get('status')} |")
    lines += ["", "Peak memory is `torch.cuda.max_memory_allocated` / `max_memory_reserved`, reset before each run.", ""]
    if offload is not None:
        lines += offload_table(offload)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--tests-log", type=Path, required=True)
    ap.add_argument("--tests-rc", type=int, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--offload-records", type=Path, help="folder with offload_{none,text-encoder,model}.json")
    a = ap.parse_args()
    log = a.tests_log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(log) if " passed" in line or " failed" in line
                    or " skipped" in line or "error" in line), "no summary line")
    if a.report.exists():
        offload = read_offload_records(a.offload_records) if a.offload_records else None
        text = render(json.loads(a.report.read_text(encoding="utf-8")), summary, a.tests_rc, a.command, offload)
    else:
        text = (f"# GPU benchmarks\n\nThe last run of `scripts/gpu_bench.sh` produced no bench report "
                f"({a.report} is missing). CUDA tests: {summary}\n")
    fd, tmp = tempfile.mkstemp(dir=a.out.parent, prefix=".benchmarks_gpu.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
