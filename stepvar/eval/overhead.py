"""What StepVAR's selection costs next to the blocks it saves, at a real architecture's width.

Times, at one scale of a real schedule (default: the 64x64 scale of 1024^2 with the
infinity-2b width), (a) StepVAR's scoring + top-k + gather + nearest-neighbour map +
propagation, and (b) one dense block on that scale with a KV cache as long as the earlier
scales, from which the dense block-stack time is depth x (b). Timing a few full-width
blocks rather than the whole model keeps this runnable on a small CPU; the blocks are
identical, so the stack time is the per-block time times depth.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..models.blocks import CrossAttnBlock, KVCache, TextContext
from ..models.config import load_model_preset
from ..models.rope import Rope2D
from ..pruning.base import gather_rows
from ..pruning.propagation import nearest_kept, propagate
from ..pruning.scores import joint_score, keep_count, select_topk
from ..schedules import get_schedule


@dataclass
class OverheadReport:
    model: str
    grid: tuple[int, int]
    width: int
    depth: int
    rows: int
    keep: float
    kv_len_before: int
    selection_s: float  # median: score + top-k + gather + NN map + propagate
    selection_parts_s: dict
    block_s: float  # median time of one dense block at this scale
    stack_s: float  # depth x block_s
    overhead_fraction: float  # selection_s / stack_s
    device: str
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def measure_selection_overhead(model: str = "infinity-2b", budget: str = "1M", scale: int = -1, keep: float = 0.4,
                               rows: int = 2, repeats: int = 3, text_len: int = 32, device: str = "cpu",
                               seed: int = 0) -> OverheadReport:
    dev = torch.device(device)
    cfg = load_model_preset(model).arch
    sched = get_schedule(budget, 1.0)
    si = scale + len(sched) if scale < 0 else scale
    s = sched.scales[si]
    L, C = s.n, cfg.width
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, L, C, generator=g).to(dev)
    k = keep_count(L, keep, rounding="round")

    def select_and_propagate():
        parts = {}
        t0 = time.perf_counter()
        score = joint_score(x, s.h, s.w)
        t1 = time.perf_counter()
        idx = select_topk(score, k)
        xk = gather_rows(x, idx)
        t2 = time.perf_counter()
        nn_BL = nearest_kept(idx, s.h, s.w)
        dense = propagate(xk, nn_BL)
        t3 = time.perf_counter()
        parts.update(score_s=t1 - t0, topk_gather_s=t2 - t1, nn_propagate_s=t3 - t2)
        return dense, parts

    _timed(select_and_propagate, 1, dev)  # warm-up
    sel_times, part_list = [], []
    for _ in range(repeats):
        t, (_, parts) = _timed(select_and_propagate, 1, dev)
        sel_times.append(t)
        part_list.append(parts)
    selection_s = statistics.median(sel_times)
    parts = {key: statistics.median(p[key] for p in part_list) for key in part_list[0]}

    torch.manual_seed(seed)
    blk = CrossAttnBlock(C, cfg.cond_width, cfg.heads, cfg.ffn_hidden).to(dev).eval()
    rope = Rope2D(cfg.head_dim).to(dev)
    cos, sin = rope.gather(sched.positions(si).to(dev))
    mod = blk.modulation(torch.randn(rows, 1, 6, C, generator=g).to(dev) * 0.1)
    text = TextContext(torch.randn(rows, text_len, cfg.cond_width, generator=g).to(dev),
                       torch.ones(rows, text_len, dtype=torch.bool, device=dev))
    kv_before = sched.offsets[si][0]

    shape = (rows, cfg.heads, kv_before, cfg.head_dim)
    k0, v0 = torch.randn(shape, generator=g).to(dev), torch.randn(shape, generator=g).to(dev)

    def one_block():
        cache = KVCache()
        cache.k, cache.v = k0, v0  # the earlier scales' keys; this scale's are appended as in inference
        return blk(x, mod, cos, sin, cache, text, 0)

    _timed(one_block, 1, dev)
    block_s, _ = _timed(one_block, repeats, dev)
    stack_s = block_s * cfg.depth
    return OverheadReport(model, (s.h, s.w), C, cfg.depth, rows, keep, kv_before, selection_s, parts, block_s, stack_s,
                          selection_s / stack_s, str(dev), torch.get_num_threads())
