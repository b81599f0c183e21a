"""HART benchmarks: FLOP bounds per method (no weights needed) and measured same-run timings.

Published speedups the figures are read against: StepVAR's paper reports 1.4x on HART, FastVAR
1.5x (0.95 -> 0.63 s on its GPU); both are end-to-end latencies, not FLOP ratios.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .runs import expand_configs
from .hart_flops import count_hart_flops, decoder_flops
from ..hart_pruning import HartRunner, simulated_counts
from ..hart_sampling import HartSamplingConfig, generate
from ..models.hart_presets import hart_preset

PUBLISHED = {"stepvar": "1.4x (StepVAR paper, HART, end-to-end)", "fastvar": "1.5x (FastVAR, HART, 0.95 -> 0.63 s)"}
TRANSFORMER_PARTS = ("attn", "attn_scores", "ffn", "head", "embed", "context")


@dataclass
class HartFlopRow:
    method: str
    total: int  # one image with CFG: transformer, head, quantiser, diffusion head, decoder
    transformer: int  # blocks, heads, embeddings
    bound_total: float  # dense / method: the speedup FLOPs allow end to end
    bound_transformer: float
    published: str

    def to_dict(self) -> dict:
        return asdict(self)


def flop_rows(preset: str, methods: list[str], keeps: list[float] | None) -> list[HartFlopRow]:
    """One row per method x keep as `bench` expands them (--keep applies to methods whose preset
    has a keep; fastvar keeps its release settings unless written fastvar@K); dense first."""
    p = hart_preset(preset)
    dec = decoder_flops(p.tokenizer, p.model.patch_nums[-1])
    rows, base = [], None
    for c in expand_configs(methods, keeps):
        counts = simulated_counts(c.pruner(), p.model)
        r = count_hart_flops(p.model, p.tokenizer, counts, decoder=dec)
        tr = sum(r.by_part[k] for k in TRANSFORMER_PARTS)
        base = base or (r.total, tr)
        rows.append(HartFlopRow(c.label, r.total, tr, base[0] / r.total, base[1] / tr,
                                PUBLISHED.get(c.spec.split(":")[0], "")))
    return rows


@dataclass
class HartTimingRow:
    method: str
    seconds: list[float]  # one per repeat, end to end (wall clock)
    cpu_seconds: list[float]  # the process's CPU time per repeat: robust to other load on a shared machine
    transformer_s: list[float]  # the scale loop (blocks, heads, sampling)
    token_passes: int  # per row, every layer and branch
    speedup: float  # dense median / method median, end to end
    speedup_transformer: float
    speedup_cpu: float  # dense / method, by CPU time

    def to_dict(self) -> dict:
        return asdict(self)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def measure(model, tokenizer, text, methods: list[str], keeps: list[float] | None, repeats: int,
            sampling: HartSamplingConfig) -> list[HartTimingRow]:
    """Interleaved runs (every configuration once per repeat), same prompt and seed for all."""
    configs = expand_configs(methods, keeps)
    specs = [c.label for c in configs]
    pruners = {c.label: c.pruner() for c in configs}
    times = {s: [] for s in specs}
    cpu = {s: [] for s in specs}
    trans = {s: [] for s in specs}
    passes = {}
    for _ in range(repeats):
        for s in specs:
            runner = HartRunner(model, pruners[s])
            t0, c0 = time.perf_counter(), time.process_time()
            out = generate(model, tokenizer, text.features_BTD, text.mask_BT, sampling, runner=runner)
            times[s].append(time.perf_counter() - t0)
            cpu[s].append(time.process_time() - c0)
            trans[s].append(out.timings["transformer"])
            passes[s] = runner.counter.total()
    d, dt, dc = _median(times["dense"]), _median(trans["dense"]), _median(cpu["dense"])
    return [HartTimingRow(s, times[s], cpu[s], trans[s], passes[s], d / _median(times[s]), dt / _median(trans[s]),
                          dc / _median(cpu[s])) for s in specs]

