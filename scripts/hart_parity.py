"""Parity of stepvar's HART with the official code (mit-han-lab/hart) on random weights.

The official code is NOT part of this repository. Export it yourself into a scratch folder
outside the project, e.g.

    git clone https://github.com/mit-han-lab/hart /work/scratch/hart   (commit e28a41f)

and run (CPU, fp32, a few seconds):

    python scripts/hart_parity.py --official /work/scratch/hart [--json]

The official modules import CUDA-only pieces at import time. This script stands them in
without editing the copy: `hart_backend.fused_kernels.rms_norm` becomes its PyTorch
equivalent, `transformers`/`huggingface_hub` (used only for config/base classes) become
minimal shims, `.cuda()` is the identity, and the tokenizer is handed to the transformer
instead of being read from disk. Every parameter of the official model (biases, norms,
the zero-initialised diffusion output layer included) is set to random values, and the
same state dict is loaded into stepvar's model with strict key checking.

Compared, for several small configurations (GELU or SwiGLU FFN, with or without L2-normed
attention and context norm): the CFG-combined logits of every scale with forced tokens,
with and without the soft-codebook input (its Gumbel noise from the same seeded
generator); the final image of that run (diffusion noise recorded from the official run
and replayed); the diffusion head alone with the same noise; the tokenizer's decode and its
multi-scale quantisation. All in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stepvar.hart_sampling import HartSamplingConfig, generate  # noqa: E402
from stepvar.models.hart import HartConfig, HartTransformer  # noqa: E402
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig  # noqa: E402


# ----------------------------------------------------------------------------- stand-ins


def _install_shims() -> None:
    def rms_norm(out, x, weight, eps, use_quant):
        xf = x.float()
        out.copy_((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight)

    backend = types.ModuleType("hart_backend")
    backend.fused_kernels = types.SimpleNamespace(rms_norm=rms_norm)
    sys.modules["hart_backend"] = backend
    sys.modules["hart_backend.fused_kernels"] = backend.fused_kernels

    tf = types.ModuleType("transformers")

    class PretrainedConfig:
        def __init__(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self, k, v)

    class PreTrainedModel(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.gradient_checkpointing = False

    class _Registry:
        @staticmethod
        def register(*args, **kwargs):
            return None

    tf.PretrainedConfig, tf.PreTrainedModel = PretrainedConfig, PreTrainedModel
    tf.AutoConfig = tf.AutoModel = _Registry
    tf.PreTrainedTokenizer = object
    sys.modules["transformers"] = tf
    hub = types.ModuleType("huggingface_hub")
    hub.PyTorchModelHubMixin = object
    sys.modules["huggingface_hub"] = hub
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self


def _randomize_(module: nn.Module, gen: torch.Generator) -> None:
    """Random values everywhere, scaled so activations stay O(1): no zero-initialised layer survives."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2 and "embed" not in name and "embedding" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif leaf == "scale_mul_1H11":
                p.copy_(math.log(4.0) + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "weight" and p.ndim == 1:  # norms
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:  # embeddings and codebooks
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            else:  # biases, q_bias, v_bias
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        # Keep the diffusion head's epsilon/variance outputs O(0.1): at O(10) an 8-step chain
        # with CFG diverges to inf in both implementations and nothing can be compared.
        for name, p in module.named_parameters():
            if "final_layer.linear" in name:
                p.mul_(0.05)


CASES = {
    "gelu": dict(mlp_type="gpt2", attn_l2_norm=False, use_context_norm=False),
    "swiglu+l2": dict(mlp_type="llama", attn_l2_norm=True, use_context_norm=False),
    "gelu+l2+ctxnorm": dict(mlp_type="gpt2", attn_l2_norm=True, use_context_norm=True),
}
PATCH_NUMS = (1, 2, 3, 4, 6, 8)


def _build(official: Path, case: dict, seed: int):
    from hart.modules.models.autoencoder import HARTAutoEncoder, HARTAutoEncoderConfig, HARTAutoEncoderWithDisc
    from hart.modules.models.transformer.configuration import HARTForT2IConfig
    from hart.modules.models.transformer.hart_transformer_t2i import HARTForT2I

    V, Cv, T, Dctx = 1024, 8, 8, 48
    tok_cfg = HARTAutoEncoderConfig(vocab_size=V, z_channels=Cv, ch=32, ch_mult=(1, 1, 2, 2, 4),
                                    quantizer_type="var_hybrid", v_patch_nums=PATCH_NUMS)
    ovae = HARTAutoEncoder(tok_cfg).eval()
    HARTAutoEncoderWithDisc.from_pretrained = classmethod(lambda cls, path: SimpleNamespace(vae=ovae))
    ocfg = HARTForT2IConfig(
        vae_path="unused", context_token=T, context_dim=Dctx, depth=2, embed_dim=128, num_heads=2,
        patch_nums=PATCH_NUMS, attn_type="llama", disable_aln=True, diff_width=64, diff_depth=2,
        num_sampling_steps="8", flash_if_available=False, fused_if_available=False,
        mlp_type=case["mlp_type"], attn_l2_norm=case["attn_l2_norm"], use_context_norm=case["use_context_norm"],
    )
    omodel = HARTForT2I(ocfg).eval()
    gen = torch.Generator().manual_seed(seed)
    _randomize_(omodel, gen)
    _randomize_(ovae, gen)

    cfg = HartConfig(depth=2, width=128, heads=2, context_tokens=T, context_dim=Dctx, patch_nums=PATCH_NUMS,
                     vocab=V, latent_channels=Cv, diff_width=64, diff_depth=2, **case)
    model = HartTransformer(cfg).eval()
    sd = {k: v for k, v in omodel.state_dict().items() if k not in ("lvl_1L", "attn_bias_for_masking")}
    model.load_state_dict(sd, strict=True)
    tok = HartTokenizer(HartTokenizerConfig(vocab=V, latent_channels=Cv, ch=32, ch_mult=(1, 1, 2, 2, 4))).eval()
    tsd = {k: v for k, v in ovae.state_dict().items() if k != "quantize.ema_vocab_hit_SV"}
    tok.load_state_dict(tsd, strict=True)
    return omodel, ovae, model, tok


class _NoiseRecorder:
    """Records every torch.randn / randn_like draw (the official diffusion head's global-RNG noise)."""

    def __init__(self):
        self.draws: list[torch.Tensor] = []

    def __enter__(self):
        self._randn, self._like = torch.randn, torch.randn_like

        def randn(*a, **k):
            out = self._randn(*a, **k)
            self.draws.append(out.clone())
            return out

        def randn_like(x, *a, **k):
            out = self._like(x, *a, **k)
            self.draws.append(out.clone())
            return out

        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like = self._randn, self._like

    def cond_half(self) -> list[torch.Tensor]:
        """The initial noise (already the cond half) and the cond half of each step's noise."""
        first = self.draws[0]
        return [first] + [d[: first.shape[0]] for d in self.draws[1:]]


def _rel(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    return {"max_abs": (a - b).abs().max().item(), "rel": ((a - b).norm() / b.norm().clamp_min(1e-30)).item()}


def _text(seed: int, T: int = 8, Dctx: int = 48):
    g = torch.Generator().manual_seed(seed + 1)
    text = torch.randn(2, T, Dctx, generator=g)
    mask = torch.tensor([[1] * 5 + [0] * (T - 5), [1] * T], dtype=torch.bool)
    return text, mask


def compare_loop(omodel, model, tok, more_smooth: bool, seed: int, forced_mode: bool = True) -> dict:
    import hart.modules.models.transformer.hart_transformer_t2i as official_t2i

    text, mask = _text(seed)
    B = text.shape[0]
    tg = torch.Generator().manual_seed(seed + 2)
    forced = [torch.randint(0, model.cfg.vocab, (B, p * p), generator=tg) for p in PATCH_NUMS]
    original = official_t2i.sample_with_top_k_top_p_
    recorded: list[torch.Tensor] = []
    sampled: list[torch.Tensor] = []

    def forcing_sampler(logits_BlV, rng=None, top_k=0, top_p=0.0, num_samples=1):
        recorded.append(logits_BlV.clone())
        if not forced_mode:
            out = original(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=num_samples)
            sampled.append(out[:, :, 0].clone())
            return out
        # Apply the in-place top-k mask as the release does, drawing from a throwaway generator
        # so the seeded one (which feeds the Gumbel noise) is not advanced.
        original(logits_BlV, rng=torch.Generator().manual_seed(0), top_k=top_k, top_p=top_p, num_samples=num_samples)
        return forced[len(recorded) - 1].unsqueeze(-1)

    official_t2i.sample_with_top_k_top_p_ = forcing_sampler
    try:
        pos = torch.cumsum(mask.long(), dim=1) - 1
        torch.manual_seed(seed + 3)
        with _NoiseRecorder() as noise, torch.no_grad():
            img_o = omodel.autoregressive_infer_cfg(B=B, label_B=text.clone(), g_seed=seed, cfg=4.5, top_k=0,
                                                    more_smooth=more_smooth, context_position_ids=pos,
                                                    context_mask=mask.clone(), final_stage=0)
    finally:
        official_t2i.sample_with_top_k_top_p_ = original
    ours = generate(model, tok, text, mask, HartSamplingConfig(cfg=4.5, seed=seed, more_smooth=more_smooth),
                    forced=forced if forced_mode else None, record_logits=True, diffusion_noise=noise.cond_half())
    out = {"logits_per_scale": [_rel(a, b) for a, b in zip(ours.logits, recorded)], "image": _rel(ours.images, img_o)}
    if not forced_mode:
        out["token_agreement"] = [float((a == b).float().mean()) for a, b in zip(ours.indices, sampled)]
    return out


def compare_diffusion(omodel, model, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 4)
    z = torch.randn(2 * 64, model.cfg.width, generator=g)
    torch.manual_seed(seed + 5)
    with _NoiseRecorder() as noise, torch.no_grad():
        ref = omodel.diffloss.sample(z=z, temperature=1.0, cfg=3.2)
    ours = model.diffloss.sample(z, 3.2, noise=noise.cond_half())
    return _rel(ours, ref[: z.shape[0] // 2])


def compare_tokenizer(ovae, tok, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 6)
    f = torch.randn(2, tok.cfg.latent_channels, PATCH_NUMS[-1], PATCH_NUMS[-1], generator=g)
    with torch.no_grad():
        dec = _rel(tok.decode(f), ovae.fhat_to_img(f.clone()))
        ref = ovae.quantize.f_to_idxBl_and_frest(f.clone(), v_patch_nums=PATCH_NUMS)
        idx, rest = tok.quantize.quantize(f, PATCH_NUMS)
        # The official returns the last scale's residual before its discrete code is removed.
        last_code = tok.quantize.codes(idx[-1].view(2, PATCH_NUMS[-1], PATCH_NUMS[-1]))
        rest_before_last = (rest + last_code).permute(0, 2, 3, 1).reshape(-1, PATCH_NUMS[-1] ** 2, tok.cfg.latent_channels)
        img = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
        enc = _rel(tok.encode_latent(img), ovae.quant_conv(ovae.encoder(img)))
    return {
        "decode": dec,
        "encode": enc,
        "vq_index_agreement": [float((a == b).float().mean()) for a, b in zip(idx, ref[:-1])],
        "vq_continuous_residual": _rel(rest_before_last, ref[-1]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", default="/work/scratch/hart", help="the exported official repository")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="run only these configurations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (Path(args.official) / "hart" / "modules").is_dir():
        print(f"error: no official HART code at {args.official}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _install_shims()
    sys.path.insert(0, str(Path(args.official).resolve()))
    results = {}
    for name, case in CASES.items():
        if args.case and name not in args.case:
            continue
        omodel, ovae, model, tok = _build(Path(args.official), case, args.seed)
        results[name] = {
            "forced_hard": compare_loop(omodel, model, tok, more_smooth=False, seed=args.seed),
            "forced_soft": compare_loop(omodel, model, tok, more_smooth=True, seed=args.seed),
            "sampled_soft": compare_loop(omodel, model, tok, more_smooth=True, seed=args.seed, forced_mode=False),
            "diffusion_head": compare_diffusion(omodel, model, args.seed),
            "tokenizer": compare_tokenizer(ovae, tok, args.seed),
        }
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, r in results.items():
            print(f"== {name}")
            for mode in ("forced_hard", "forced_soft", "sampled_soft"):
                worst = max(x["max_abs"] for x in r[mode]["logits_per_scale"])
                worst_rel = max(x["rel"] for x in r[mode]["logits_per_scale"])
                line = f"  {mode:13s} logits max|d| {worst:.2e} (rel {worst_rel:.1e}); image max|d| {r[mode]['image']['max_abs']:.2e}"
                if "token_agreement" in r[mode]:
                    line += f"; tokens equal {min(r[mode]['token_agreement']):.3f}"
                print(line)
            print(f"  diffusion head max|d| {r['diffusion_head']['max_abs']:.2e} (rel {r['diffusion_head']['rel']:.1e})")
            t = r["tokenizer"]
            print(f"  tokenizer decode max|d| {t['decode']['max_abs']:.2e}; encode {t['encode']['max_abs']:.2e}; "
                  f"VQ indices equal {min(t['vq_index_agreement']):.3f}; residual max|d| {t['vq_continuous_residual']['max_abs']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
