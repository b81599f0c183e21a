"""Parity of stepvar's InfinityStar with the official code, on random weights of the tiny architecture.

Both implementations get the same random weights (the infinitystar-tiny preset: the official
infinity_qwen0b shapes), the same random text features and the same forced bits for every pass
(teacher forcing), so any difference in the transformer, the RoPE positions, the KV cache and
its references, the heads, the temperature and the code accumulation shows up in the logits.
Reported per scale: the largest absolute difference of the raw logits (both guidance rows,
every repeat), and of the final accumulated latent; APG is compared on one scale's logits.

The official code is read from a local export of FoundationVision/InfinityStar (never part of
this repository). Its GPU-only and training-only imports are replaced by inert stand-ins before
it is imported, and its attention runs through PyTorch's SDPA in fp32 instead of flash-attn in
bf16 (the casts to bf16 before flash_attn_func are dropped in memory; the file is not changed).
The VAE quantizer is not imported: its bits -> codes step (2b - 1, L2-normalised) is restated.

    python scripts/infinitystar_parity.py [--official /work/scratch/infinitystar] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import tempfile
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from stepvar.models.infinitystar import InfinityStar, init_random_, star_preset
from stepvar.video_sampling import StarSampling, apg_guidance, generate_latent
from stepvar.video_schedules import build_star_schedule

DEFAULT_OFFICIAL = Path("/work/scratch/infinitystar")
CASES = {
    # name: (frames, image repeats, video repeats), all at 0.06M, 1:1, semantic_scales 8, 100 detail tokens
    "17f-repeats": (17, (2, 2, 1, 3, 1, 1, 1, 2, 1, 1, 1), (3, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1)),
    "161f-3clips": (161, (1,) * 11, (1,) * 11),
}
SEMANTIC_SCALES, DETAIL_MIN_TOKENS = 8, 100


# --------------------------------------------------------------------------------------------------
# Importing the official code on a CPU machine
# --------------------------------------------------------------------------------------------------


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo inspects every module's spec
    return mod


class _Bar:
    def __init__(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


def _flash_attn_func(q, k, v, softmax_scale=None, **_):
    """(B, L, H, k) layout as flash-attn, computed with SDPA in the inputs' dtype."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
    return o.transpose(1, 2)


def load_official(root: Path):
    """Import infinity.models.infinity from an export of the official repository."""
    stubs = {
        "pytz": _module("pytz"),
        "tqdm": _module("tqdm", tqdm=_Bar),
        "timm": _module("timm"),
        "timm.loss": _module("timm.loss", SoftTargetCrossEntropy=None),
        "timm.models": _module("timm.models", register_model=lambda f: f),
        "timm.models.layers": _module("timm.models.layers", DropPath=None, drop_path=None),
        "flash_attn": _module("flash_attn", flash_attn_func=_flash_attn_func, flash_attn_qkvpacked_func=None),
    }
    try:
        import einops  # noqa: F401  (the video VAE needs the real package)
    except ImportError:
        stubs["einops"] = _module("einops", rearrange=None, repeat=None)
    for name, mod in stubs.items():
        sys.modules.setdefault(name, mod)
    sys.path.insert(0, str(root))
    # infinity.models.basic, with the bf16 casts before flash_attn_func removed (fp32 parity).
    # The package's __init__ re-binds __repr__ of torch classes process-wide; an empty package
    # object stands in for it so only the modules needed here run.
    import infinity  # noqa: F401
    package = _module("infinity.models", __path__=[str(root / "infinity/models")])
    sys.modules["infinity.models"] = package
    src = (root / "infinity/models/basic.py").read_text()
    cast = ".permute([0,2,1,3]).to(torch.bfloat16)"
    if src.count(cast) < 3:
        raise SystemExit(f"{root}: infinity/models/basic.py no longer has the expected flash-attn call")
    basic = _module("infinity.models.basic", __file__=str(root / "infinity/models/basic.py"))
    exec(compile(src.replace(cast, ".permute([0,2,1,3])"), basic.__file__, "exec"), basic.__dict__)
    sys.modules["infinity.models.basic"] = basic
    package.basic = basic
    # Same for the VAE's modules package, whose __init__ pulls in LPIPS and torchvision.
    vae_modules = root / "infinity/models/videovae/modules"
    sys.modules["infinity.models.videovae.modules"] = _module(
        "infinity.models.videovae.modules", __path__=[str(vae_modules)], DiagonalGaussianDistribution=None)
    from infinity.models import infinity as official
    from infinity.models.apg import normalized_guidance
    from infinity.schedules.infinity_elegant import get_scale_pack_info, get_visual_rope_embeds
    return official, normalized_guidance, get_scale_pack_info, get_visual_rope_embeds


def official_args(frames: int, image_rep, video_rep, sampling: StarSampling):
    return types.SimpleNamespace(
        detail_scale_min_tokens=DETAIL_MIN_TOKENS, semantic_scales=SEMANTIC_SCALES, mask_type="infinity_elegant_clip20frames_v2",
        context_frames=10000, dynamic_scale_schedule="infinity_elegant_clip20frames_v2", video_frames=frames,
        image_batch_size=0, video_batch_size=1, image_scale_repetition=json.dumps(list(image_rep)),
        video_scale_repetition=json.dumps(list(video_rep)), rope_type="4d", steps_per_frame=3,
        temporal_compress_rate=4, inject_sync=0, detail_scale_dim=64, semantic_scale_dim=16, num_of_label_value=2,
        use_two_stage_lfq=1, simple_text_proj=1, noise_input=0, use_cfg=0, use_apg=1,
        apg_norm_threshold=sampling.apg_norm_threshold, max_repeat_times=10000, frames_inner_clip=20,
        context_from_largest_no=1, context_interval=2, use_learnable_dim_proj=0)


class _BSQ:
    """The official quantizer's bits -> codes for bit labels: 2b - 1, L2-normalised, channels first."""

    def indices_to_codes(self, bits, label_type):
        assert label_type == "bit_label"
        return F.normalize(bits.float() * 2 - 1, dim=-1).permute(0, 4, 1, 2, 3)


def _vae_stub():
    quantizer = types.SimpleNamespace(
        z_interplote_up="trilinear", z_interplote_down="area", detail_scale_min_tokens=DETAIL_MIN_TOKENS,
        lfq_detail=_BSQ(), lfq_semantic=_BSQ(), other_args=types.SimpleNamespace(use_learnable_dim_proj=0))
    return types.SimpleNamespace(quantizer=quantizer, codebook_dim=64)


# --------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------


def run_case(official_mods, name: str, seed: int = 0) -> dict:
    official, normalized_guidance, get_scale_pack_info, get_visual_rope_embeds = official_mods
    frames, image_rep, video_rep = CASES[name]
    sampling = StarSampling(guidance=34.0, tau_image=1.0, tau_video=0.4, seed=seed)
    schedule = build_star_schedule("0.06M", frames, image_rep, video_rep, SEMANTIC_SCALES, DETAIL_MIN_TOKENS, 1.0)
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(7, 2048, generator=g)
    forced = []
    for s in schedule.scales:
        d = 16 if s.semantic_codes else 64
        forced += [torch.randint(0, 2, (1, s.t, s.h, s.w, d), generator=g) for _ in range(s.repeats)]

    ours = init_random_(InfinityStar(star_preset("infinitystar-tiny")), seed=seed + 1).eval()
    ours_logits: list[torch.Tensor] = []
    res = generate_latent(ours, schedule, text, sampling, forced_bits=forced,
                          on_pass=lambda s, r, lg: ours_logits.append(lg.clone()))

    # The official tables are built for whole clips (81 or 161 frames) and a shorter video picked from them.
    args = official_args(81 if frames <= 81 else 161, image_rep, video_rep, sampling)
    theirs = official.infinity_qwen0b(
        vae_local=_vae_stub(), text_channels=2048, text_maxlen=512, raw_scale_schedule=None, pad_to_multiplier=128,
        use_flex_attn=False, add_lvl_embeding_on_first_block=0, num_of_label_value=2, rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2, pn="0.06M", apply_spatial_patchify=0, inference_mode=True,
        train_h_div_w_list=[1.0], video_frames=args.video_frames, other_args=args).eval()
    missing, unexpected = theirs.load_state_dict(dict(ours.state_dict()), strict=True)
    assert not missing and not unexpected
    theirs_logits: list[torch.Tensor] = []
    original = theirs.get_logits_during_infer

    def record(x, is_semantic_scale):
        out = original(x, is_semantic_scale)
        theirs_logits.append(out.clone())
        return out

    theirs.get_logits_during_infer = record
    scale_list = [s.shape for s in schedule.scales]
    first_full = schedule.scales_per_clip - 1
    context = get_scale_pack_info(scale_list, first_full, args)
    kv = text.clone()
    label = (kv, [kv.shape[0]], torch.tensor([0, kv.shape[0]], dtype=torch.int32), kv.shape[0])
    with torch.no_grad():
        latent = theirs.ar_infer_infinity_elegant(
            vae=_vae_stub(), scale_schedule=scale_list, label_B_or_BLT=label, B=1, g_seed=seed,
            cfg_list=[sampling.guidance] * len(scale_list),
            tau_list=[sampling.tau_image if s.clip == 0 else sampling.tau_video for s in schedule.scales],
            gt_leak=len(scale_list), gt_ls_Bl=forced, args=args, get_visual_rope_embeds=get_visual_rope_embeds,
            context_info=context, return_summed_code_only=True)

    assert len(ours_logits) == len(theirs_logits) == len(forced)
    per_scale: dict[int, float] = {}
    scale_of_pass = [s.index for s in schedule.scales for _ in range(s.repeats)]
    for si, a, b in zip(scale_of_pass, ours_logits, theirs_logits):
        per_scale[si] = max(per_scale.get(si, 0.0), (a - b).abs().max().item())
    logit_scale = max(b.abs().max().item() for b in theirs_logits)

    # APG on the last pass's logits, against the official function.
    lg = theirs_logits[-1] / sampling.tau_video
    apg_ours = apg_guidance(lg[:1], lg[1:], sampling.guidance, sampling.apg_norm_threshold)
    apg_theirs = normalized_guidance(lg[:1], lg[1:], guidance_scale=sampling.guidance, momentum_buffer=None,
                                     eta=0, norm_threshold=sampling.apg_norm_threshold)
    return {
        "case": name, "frames": frames, "scales": schedule.n_scales, "passes": len(forced),
        "dense_tokens": schedule.dense_tokens,
        "max_abs_logit_diff": max(per_scale.values()), "max_abs_logit": logit_scale,
        "per_scale_max_abs_logit_diff": [per_scale[i] for i in range(schedule.n_scales)],
        "latent_shape": list(latent.shape), "latent_shapes_equal": list(latent.shape) == list(res.latent.shape),
        "max_abs_latent_diff": (latent - res.latent).abs().max().item(),
        "apg_max_abs_diff": (apg_ours - apg_theirs).abs().max().item(),
    }


def sensitivity_check(official_mods, name: str, seed: int = 0) -> list[float]:
    """The same case with a deliberate error on our side (one video scale's frames off by one):
    only that scale's logits may differ, which shows the comparison can see such an error."""
    import stepvar.video_sampling as vs

    original = vs.scale_positions

    def shifted(s, r, grid, text_maxlen, device="cpu"):
        pos = original(s, r, grid, text_maxlen, device)
        if s.clip == 1 and s.rel == 5:
            pos[:, 1] += 1
        return pos

    vs.scale_positions = shifted
    try:
        return run_case(official_mods, name, seed)["per_scale_max_abs_logit_diff"]
    finally:
        vs.scale_positions = original


def run_vae(root: Path, seed: int = 0) -> dict:
    """Decode random latents with the official video VAE and ours, sharing random weights."""
    from infinity.models.videovae.models.load_vae_bsq_wan_absorb_patchify import video_vae_model

    from stepvar.models.video_vae import VideoVAEDecoder
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({"vae": {}}, empty)
        args = types.SimpleNamespace(use_feat_proj=2, detail_scale_min_tokens=DETAIL_MIN_TOKENS, semantic_scale_dim=16,
                                     detail_scale_dim=64, use_learnable_dim_proj=0, semantic_scales=SEMANTIC_SCALES)
        theirs = video_vae_model(str(empty), "dynamic", 64, global_args=args, test_mode=True)
    ours = VideoVAEDecoder().eval()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in theirs.state_dict().items():
        if not v.dtype.is_floating_point:
            sd[k] = v
            continue
        base = 1.0 if k.endswith("gamma") or k == "scale_learnable_parameters" else 0.0
        sd[k] = base + torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 1 else 0.1)
    theirs.load_state_dict(sd, strict=True)
    own = ours.state_dict()
    ours.load_state_dict({k: sd[k] for k in own}, strict=True)
    rows = []
    for T, side in ((1, 3), (5, 3), (4, 2), (9, 2)):  # image, 17 frames, an even length, several chunks
        z = torch.randn(1, 64, T, side, side, generator=g)
        with torch.no_grad():
            a, b = theirs.decode(z), ours.decode(z, clamp=False)
        rows.append({"latent": [1, 64, T, side, side], "video": list(a.shape), "shapes_equal": a.shape == b.shape,
                     "max_abs_diff": (a - b).abs().max().item(), "max_abs": a.abs().max().item(),
                     "decoder_keys": len(own), "file_keys": len(sd)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL, help="export of FoundationVision/InfinityStar")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--sensitivity", action="store_true",
                    help="also rerun the first case with one video scale's frame positions shifted by one")
    ap.add_argument("--vae", action="store_true", help="also compare the video VAE decoder (needs einops)")
    ap.add_argument("--pythonpath", type=Path, help="a folder with einops (pip install --target DIR einops)")
    a = ap.parse_args()
    if not (a.official / "infinity/models/infinity.py").is_file():
        raise SystemExit(f"{a.official}: not an export of FoundationVision/InfinityStar (infinity/models/infinity.py missing)")
    if a.pythonpath:
        sys.path.insert(0, str(a.pythonpath))
    mods = load_official(a.official)
    rows = [run_case(mods, name, a.seed) for name in a.cases.split(",") if name]
    for r in rows:
        print(f"{r['case']}: {r['scales']} scales, {r['passes']} passes, max |logit diff| {r['max_abs_logit_diff']:.3g} "
              f"(|logit| up to {r['max_abs_logit']:.3g}), max |latent diff| {r['max_abs_latent_diff']:.3g}, "
              f"APG max diff {r['apg_max_abs_diff']:.3g}")
        print("  per scale:", " ".join(f"{v:.2g}" for v in r["per_scale_max_abs_logit_diff"]))
    if a.sensitivity:
        r = sensitivity_check(mods, a.cases.split(",")[0] or "17f-repeats", a.seed)
        print("sensitivity (clip 1, rel 5 shifted one frame): per scale", " ".join(f"{v:.2g}" for v in r))
        rows.append({"sensitivity_per_scale_max_abs_logit_diff": r})
    if a.vae:
        vae_rows = run_vae(a.official, a.seed)
        for r in vae_rows:
            print(f"VAE latent {r['latent']} -> video {r['video']}: max |diff| {r['max_abs_diff']:.3g} "
                  f"(|x| up to {r['max_abs']:.3g}); {r['decoder_keys']} of the file's {r['file_keys']} keys used")
        rows.append({"vae": vae_rows})
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
