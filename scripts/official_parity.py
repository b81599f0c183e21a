"""Parity with the official code on random weights: FastVAR's released pruning rule, and the official numerics.

The official repositories are read from copies OUTSIDE this project, never committed:

    fastvar   csguoh/FastVAR, exported to /work/scratch/fastvar (its Infinity/ part is used)
    numerics  FoundationVision/Infinity, exported to /work/scratch/infinity

Both are built on the CPU with the same random weights as a stepvar model (the official state dict is
loaded into stepvar with its strict loader). What they import only for CUDA (flash-attn, timm, cv2,
torchvision, pytz, tqdm) is replaced by small stand-ins: flash-attention becomes fp32 softmax attention on
the tensors it is handed, returned in their dtype, so the official code's own bf16 casts stay in effect.

    fastvar: every scale's bits are forced to the same random bits on both sides (the official loop's
    gt_leak; stepvar's forced_bits), so both see the same inputs at every scale. Recorded per budget:
    the scales each side pruned (and how many tokens it kept), skipped, cached, the pruned layers, and
    whether every kept-index list (per scale, pruned layer, branch, CFG row; in score order) is identical.

    numerics: the logits of every scale from the official model and from stepvar with numerics
    "exact" and "official", bits forced as above (dense against Infinity; fastvar-release-skip against FastVAR's
    copy of Infinity, which always prunes).

Usage (prints a Markdown table; --json for the raw figures):

    python scripts/official_parity.py fastvar --release /work/scratch/fastvar/Infinity --budgets 0.25M,0.60M,1M
    python scripts/official_parity.py numerics --release /work/scratch/infinity --budget 0.25M
    python scripts/official_parity.py numerics --release /work/scratch/fastvar/Infinity --budget 0.25M --method fastvar-release-skip
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import io
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from stepvar.loading.checkpoints import load_model_weights
from stepvar.models.config import InfinityConfig
from stepvar.models.infinity import Infinity
from stepvar.pruning.registry import make_pruner
from stepvar.sampling import LatentCodec, SamplingConfig, sample
from stepvar.schedules import get_schedule

ARCH = dict(depth=32, width=128, heads=2, bits=16, text_channels=128, text_maxlen=16, block_chunks=8)


# ---- stand-ins for the CUDA-only imports -----------------------------------------------------------
def _attention_blhc(q, k, v, softmax_scale):
    """(B, L, H, c) attention in fp32, returned in the inputs' dtype."""
    out = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2),
                                         v.float().transpose(1, 2), scale=softmax_scale)
    return out.transpose(1, 2).to(v.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, **_kw):
    return _attention_blhc(q, k, v, softmax_scale)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=0.0, softmax_scale=None, **_kw):
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        qi = q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]][None]
        kvi = kv[cu_seqlens_k[i]:cu_seqlens_k[i + 1]]
        outs.append(_attention_blhc(qi, kvi[None, :, 0], kvi[None, :, 1], softmax_scale)[0])
    return torch.cat(outs, 0)


def install_stubs(release: Path) -> None:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # some importers look for it
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    class DropPath(torch.nn.Identity):
        def __init__(self, *a, **k):
            super().__init__()

    module("flash_attn", flash_attn_func=flash_attn_func, flash_attn_varlen_kvpacked_func=flash_attn_varlen_kvpacked_func)
    module("timm")
    module("timm.models", register_model=lambda f: f)
    module("timm.models.layers", DropPath=DropPath, drop_path=lambda x, *a, **k: x, trunc_normal_=torch.nn.init.trunc_normal_)
    module("timm.loss", SoftTargetCrossEntropy=type("SoftTargetCrossEntropy", (torch.nn.Module,), {}))
    module("cv2")
    module("torchvision")
    module("torchvision.transforms")
    module("pytz", timezone=lambda *a: None)
    module("tqdm", tqdm=lambda x, *a, **k: x)
    sys.path.insert(0, str(release))


class StubQuantizer:
    """The two things the official loop asks of the VAE: bits -> codes, and the upsampling mode."""

    z_interplote_up = "trilinear"

    def __init__(self, codec: LatentCodec):
        self.codec = codec
        self.lfq = self
        self.mask = 2 ** torch.arange(codec.codebook_dim - 1, -1, -1)

    def indices_to_codes(self, idx_B1hwd, label_type="bit_label"):
        return self.codec.bits_to_latent(idx_B1hwd[:, 0]).unsqueeze(2)  # (B, d, 1, h, w)


class StubVAE:
    def __init__(self, bits: int):
        self.codec = LatentCodec(bits)
        self.quantizer = StubQuantizer(self.codec)
        self.embed_dim = bits
        self.vocab_size = 2 ** bits


# ---- the two models with the same weights ----------------------------------------------------------
def build_models(seed: int, pn: str):
    from infinity.models.infinity import Infinity as Official

    vae = StubVAE(ARCH["bits"])
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints its configuration
        official = Official(
            vae_local=vae, text_channels=ARCH["text_channels"], text_maxlen=ARCH["text_maxlen"], embed_dim=ARCH["width"],
            depth=ARCH["depth"], num_heads=ARCH["heads"], mlp_ratio=4.0, drop_path_rate=0.0, shared_aln=True,
            cross_attn_layer_scale=-1.0, nm0=False, tau=1, cos_attn=True, swiglu=False, head_aln=True,
            customized_flash_attn=False, fused_mlp=False, fused_norm=True, block_chunks=ARCH["block_chunks"],
            pad_to_multiplier=128, use_flex_attn=False, batch_size=2, add_lvl_embeding_only_first_block=1,
            use_bit_label=1, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2, pn=pn, apply_spatial_patchify=0,
            inference_mode=True,
        ).eval()
    # The released configuration uses the fused AdaLN path; without it the official block does not pass
    # the scale index to its RoPE, so a failed optional import must not go unnoticed.
    assert all(b.fused_norm_func is not None for b in official.unregistered_blocks), "official fused_norm path missing"
    with torch.no_grad():  # move every parameter off its initial value (zero biases, unit norms)
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = Infinity(InfinityConfig(name="parity", **ARCH)).eval()
    sd = {k: v for k, v in official.state_dict().items()}
    path = Path(f"/tmp/official_parity_{seed}.pth")
    torch.save(sd, path)
    load_model_weights(ours, path)
    ours.init_buffers()
    path.unlink()
    return official, ours, vae


def official_schedule(budget: str):
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w

    # The official inference scripts drop the video time extent the same way: (t, h, w) -> (1, h, w).
    return [(1, h, w) for _t, h, w in dynamic_resolution_h_w[1.0][budget]["scales"]]


def random_inputs(seed: int, schedule):
    g = torch.Generator().manual_seed(seed + 1)
    T = 9
    text = torch.randn(1, T, ARCH["text_channels"], generator=g)
    bits = [torch.randint(0, 2, (1, s.h, s.w, ARCH["bits"]), generator=g).bool() for s in schedule.scales]
    return text, bits


def run_official(official, vae, text_1TC, bits, sched_tuples, cfg=3.0):
    T = text_1TC.shape[1]
    label = (text_1TC[0], torch.tensor([T]), torch.tensor([0, T], dtype=torch.int32), T)
    n = len(sched_tuples)
    gt = [b.unsqueeze(1).long() for b in bits]  # (B, 1, h, w, d)
    return official.autoregressive_infer_cfg(
        vae=vae, scale_schedule=sched_tuples, label_B_or_BLT=label, B=1, g_seed=0, cfg_list=[cfg] * n,
        tau_list=[1.0] * n, top_k=0, top_p=0.0, returns_vemb=1, cfg_insertion_layer=[0], vae_type=1,
        ret_img=False, gt_leak=n, gt_ls_Bl=gt, inference_mode=True)


# ---- FastVAR: kept sets, skipped and cached scales, pruned layers ----------------------------------
def record_official_fastvar(official, vae, text, bits, sched_tuples):
    import infinity.models.fastvar_basic as fb

    log = {"kept": [], "layers": set(), "visited": set(), "cached": set()}
    current = {}
    original_merge, original_forward = fb.compute_merge, fb.FastVARCrossAttnBlock.forward

    def merge(x, is_later_layer=False, x_shape=None, **kw):
        m, u, idx_fn = original_merge(x, is_later_layer=is_later_layer, x_shape=x_shape, **kw)
        if idx_fn.__name__ != "do_nothing":
            log["kept"].append((current["si"], current["layer"], idx_fn()[..., 0].clone()))
            log["layers"].add(current["layer"])
        return m, u, idx_fn

    def forward(self, x, *a, scale_ind=0, layer_idx=-1, **kw):
        current.update(si=scale_ind, layer=layer_idx)
        log["visited"].add(scale_ind)
        before = self.previous_scale_cache_self_attn
        out = original_forward(self, x, *a, scale_ind=scale_ind, layer_idx=layer_idx, **kw)
        if self.previous_scale_cache_self_attn is not before:
            log["cached"].add(scale_ind)
        return out

    fb.compute_merge, fb.FastVARCrossAttnBlock.forward = merge, forward
    try:
        run_official(official, vae, text, bits, sched_tuples)
    finally:
        fb.compute_merge, fb.FastVARCrossAttnBlock.forward = original_merge, original_forward
    return log


def record_stepvar_fastvar(ours, text, bits, schedule, method="fastvar-release-skip"):
    import stepvar.pruning.fastvar as fv_module

    log = {"kept": []}
    original = fv_module.select_topk

    def select(score, k, *a, **kw):
        idx = original(score, k, *a, **kw)
        log["kept"].append(idx.clone())
        return idx

    pruner = make_pruner(method)
    fv_module.select_topk = select
    try:
        out = sample(ours, text, torch.ones(1, text.shape[1], dtype=torch.bool), schedule, LatentCodec(ARCH["bits"]),
                     SamplingConfig(cfg=3.0, tau=1.0, seed=0), pruner, forced_bits=bits)
    finally:
        fv_module.select_topk = original
    log["skipped"] = [si for si, b in enumerate(out.bits) if b is None]
    log["cache"] = pruner.cache_si
    plan = pruner.active_plan
    log["layers"] = list(range(*plan.layers)) if plan.keep else []
    log["keep"] = dict(plan.kept)
    return log


def fastvar_parity(budgets: list[str], seed: int, numerics: str) -> list[dict]:
    rows = []
    for budget in budgets:
        official, ours, vae = build_models(seed, budget)
        ours.set_numerics(numerics)
        sched_tuples = official_schedule(budget)
        schedule = get_schedule(budget, 1.0)
        assert [(1, s.h, s.w) for s in schedule.scales] == [tuple(t) for t in sched_tuples], budget
        text, bits = random_inputs(seed, schedule)
        off = record_official_fastvar(official, vae, text, bits, sched_tuples)
        mine = record_stepvar_fastvar(ours, text, bits, schedule)
        off_kept = [k for _si, _layer, k in off["kept"]]
        pairs = list(zip(off_kept, mine["kept"]))
        same = sum(int(torch.equal(a, b)) for a, b in pairs)
        row_lists = sum(a.shape[0] for a in off_kept)
        row_pairs = [(a[r], b[r]) for a, b in pairs for r in range(min(a.shape[0], b.shape[0]))]
        same_rows = sum(int(torch.equal(a, b)) for a, b in row_pairs)
        set_diffs = [len(set(a.tolist()) - set(b.tolist())) for a, b in row_pairs]
        same_sets = sum(int(d == 0) for d in set_diffs)
        off_pruned = sorted({si for si, _l, _k in off["kept"]})
        off_keep = {si: next(k.shape[1] for s, _l, k in off["kept"] if s == si) for si in off_pruned}
        n = len(sched_tuples)
        rows.append({
            "budget": budget, "numerics": numerics,
            "release": {"pruned": {f"{schedule.scales[si].h}x{schedule.scales[si].w}": off_keep[si] for si in off_pruned},
                        "skipped": [f"{schedule.scales[si].h}x{schedule.scales[si].w}" for si in range(n) if si not in off["visited"]],
                        "cached": [f"{schedule.scales[si].h}x{schedule.scales[si].w}" for si in sorted(off["cached"])],
                        "layers": [min(off["layers"]), max(off["layers"])] if off["layers"] else []},
            "stepvar": {"pruned": {f"{schedule.scales[si].h}x{schedule.scales[si].w}": k for si, k in sorted(mine["keep"].items())},
                        "skipped": [f"{schedule.scales[si].h}x{schedule.scales[si].w}" for si in mine["skipped"]],
                        "cached": [] if mine["cache"] is None else [f"{schedule.scales[mine['cache']].h}x{schedule.scales[mine['cache']].w}"],
                        "layers": [mine["layers"][0], mine["layers"][-1]] if mine["layers"] else []},
            "selections": {"release": len(off_kept), "stepvar": len(mine["kept"]), "identical": same,
                           "row_lists": row_lists, "identical_rows": same_rows, "identical_sets": same_sets,
                           "most_tokens_swapped": max(set_diffs, default=0)},
        })
    return rows


def fastvar_table(rows: list[dict]) -> str:
    out = ["| budget | numerics | pruned (grid: kept tokens) | skipped | cached | pruned layers "
           "| identical kept sets | identical kept lists (score order) | most tokens swapped |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel, mine, sel = r["release"], r["stepvar"], r["selections"]
        agree = all(rel[k] == mine[k] for k in ("pruned", "skipped", "layers")) and rel["cached"][-1:] == mine["cached"]
        pruned = ", ".join(f"{g}: {k}" for g, k in rel["pruned"].items()) or "none"
        layers = f"{rel['layers'][0]}-{rel['layers'][1]}" if rel["layers"] else "-"
        out.append(f"| {r['budget']} | {r['numerics']} | {pruned} | {', '.join(rel['skipped']) or 'none'} | "
                   f"{', '.join(rel['cached']) or 'none'} | {layers} | {sel['identical_sets']} of {sel['row_lists']} | "
                   f"{sel['identical_rows']} of {sel['row_lists']} | {sel['most_tokens_swapped']} |"
                   + ("" if agree and sel["release"] == sel["stepvar"] else " PLANS DIFFER |"))
    return "\n".join(out)


# ---- numerics: dense logits ------------------------------------------------------------------------
def numerics_parity(budget: str, seed: int, method: str) -> dict:
    official, ours, vae = build_models(seed, budget)
    sched_tuples = official_schedule(budget)
    schedule = get_schedule(budget, 1.0)
    text, bits = random_inputs(seed, schedule)
    captured = []
    original = official.get_logits

    def get_logits(h, cond_BD):
        logits = original(h, cond_BD)
        captured.append(logits[:1].clone())  # the conditional row
        return logits

    official.get_logits = get_logits
    run_official(official, vae, text, bits, sched_tuples, cfg=1.0)
    result = {"budget": budget}
    for numerics in ("exact", "official"):
        ours.set_numerics(numerics)
        mine = []
        original_logits = ours.logits

        def logits(h, cond, _orig=original_logits):
            out = _orig(h, cond)
            mine.append(out[:1].clone())
            return out

        ours.logits = logits
        sample(ours, text, torch.ones(1, text.shape[1], dtype=torch.bool), schedule, LatentCodec(ARCH["bits"]),
               SamplingConfig(cfg=1.0, tau=1.0, seed=0), make_pruner(method), forced_bits=bits)
        del ours.logits
        diffs = [(a - b).abs().max().item() for a, b in zip(captured, mine)]
        result[numerics] = {"max_abs_logit_diff": max(diffs), "per_scale": diffs,
                            "bit_identical_scales": sum(int(torch.equal(a, b)) for a, b in zip(captured, mine)),
                            "scales": len(diffs)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("fastvar", "numerics"))
    ap.add_argument("--release", type=Path, required=True, help="the official code's folder holding infinity/")
    ap.add_argument("--budgets", default="0.25M,0.60M,1M")
    ap.add_argument("--budget", default="0.25M")
    ap.add_argument("--numerics", default="official", choices=("exact", "official"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="dense", help="numerics: the stepvar method matching the official code "
                    "(dense for Infinity, fastvar-release-skip for FastVAR's copy of it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.release / "infinity" / "models" / "infinity.py").is_file():
        sys.exit(f"error: {args.release} does not hold the official infinity/ package")
    torch.set_grad_enabled(False)
    install_stubs(args.release)
    if args.what == "fastvar":
        rows = fastvar_parity([b.strip() for b in args.budgets.split(",")], args.seed, args.numerics)
        print(json.dumps(rows, indent=1) if args.json else fastvar_table(rows))
    else:
        res = numerics_parity(args.budget, args.seed, args.method)
        print(json.dumps(res, indent=1) if args.json else
              "\n".join(f"{k}: max |logit diff| vs official {v['max_abs_logit_diff']:.3g}, "
                        f"bit-identical scales {v['bit_identical_scales']} of {v['scales']}"
                        for k, v in res.items() if k != "budget"))


if __name__ == "__main__":
    main()
