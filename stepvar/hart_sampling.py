"""HART's generation loop: next-scale token prediction, then the residual diffusion head.

Phases: (1) embed the prompt as a prefix, both CFG halves; (2) for each scale but the last,
run the blocks on that scale's tokens (the KV cache holds everything before), sample
tokens with ramped CFG and top-k, feed the codes (or their Gumbel-softmax soft mix) to the
tokenizer's residual quantiser to get the next scale's input; (3) at the last scale sample
every token at once, draw its continuous residual with the diffusion head, add both to
f_hat; (4) decode.

Randomness: one generator for tokens and Gumbel noise (seeded with `seed`, as the release's
own generator), and a second one for the diffusion noise (the release uses the global RNG
there), seeded from the same seed, so two runs with the same seed see identical noise.

Legend as in stepvar.models.hart: B prompts, B2 = 2B rows [cond; uncond], L tokens of a
scale, V vocabulary, Cv latent channels, P the last grid side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .models.hart import HartContext, HartTransformer, KVCache
from .models.hart_tokenizer import HartTokenizer

# Distinct stream for the diffusion noise, so it never repeats the token generator's draws.
DIFFUSION_SEED_OFFSET = 0x9E3779B1


@dataclass
class HartSamplingConfig:
    cfg: float = 4.5  # ramped: scale si uses t = cfg * si / (SN - 1); the last reuses SN - 2's t
    seed: int = 1
    top_k_coarse: int = 600  # before scale index `coarse_scales`
    top_k_fine: int = 300
    coarse_scales: int = 7
    top_p: float = 0.0
    more_smooth: bool = True  # feed the Gumbel-softmax soft codebook mix forward (the release's default)
    diffusion: bool = True  # False: the last scale keeps the discrete codes only
    diffusion_temperature: float = 1.0

    def top_k(self, si: int) -> int:
        return self.top_k_coarse if si < self.coarse_scales else self.top_k_fine


# A function that runs the block stack on one scale's tokens: (si, x_B2LC, pos_B2L2 or None,
# cos, sin, caches) -> dense hidden states (B2, L, C). Pruning methods supply their own.
ScaleRunner = Callable[[int, torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor, list], torch.Tensor]


@dataclass
class HartResult:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    f_hat: torch.Tensor  # (B, Cv, P, P)
    indices: list[torch.Tensor]  # per scale, (B, L)
    logits: list[torch.Tensor] = field(default_factory=list)  # per scale, CFG-combined, if recorded
    hidden_last: torch.Tensor | None = None  # (B2, P*P, C): the last scale's hidden states
    residual: torch.Tensor | None = None  # (B, P*P, Cv): the diffusion head's output
    timings: dict[str, float] = field(default_factory=dict)  # seconds: transformer, diffusion, decode


def mask_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place: logits outside the top k (ties kept) and outside the top-p mass become -inf."""
    if 0 < top_k < logits_BlV.shape[-1]:  # k >= V keeps everything
        kth = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits_BlV.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits_BlV


def draw_tokens(logits_BlV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    B, l, V = logits_BlV.shape
    return torch.multinomial(logits_BlV.softmax(dim=-1).view(-1, V), 1, replacement=True, generator=generator).view(B, l)


def gumbel_soft_codes(logits_BlV: torch.Tensor, tau: float, codebook_VCv: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Soft codebook mix softmax((logits + Gumbel) / tau) @ codebook, (B, l, Cv)."""
    gumbels = -torch.empty_like(logits_BlV).exponential_(generator=generator).log()
    return ((logits_BlV + gumbels) / tau).softmax(dim=-1) @ codebook_VCv.unsqueeze(0)


def dense_runner(model: HartTransformer) -> ScaleRunner:
    def run(si, x, pos, cos, sin, caches):
        return model.run_blocks(x, cos, sin, caches)

    return run


def _codes_for_next_input(logits, idx, ratio, cfg: HartSamplingConfig, codebook, gen):
    if not cfg.more_smooth:
        return F.embedding(idx, codebook)
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)  # annealed as in MaskGIT
    return gumbel_soft_codes(logits.mul(1 + ratio), tau, codebook, gen)


@torch.no_grad()
def generate(model: HartTransformer, tokenizer: HartTokenizer, text_BTD: torch.Tensor, mask_BT: torch.Tensor,
             cfg: HartSamplingConfig, runner: ScaleRunner | None = None, forced: list[torch.Tensor] | None = None,
             record_logits: bool = False, diffusion_noise: list[torch.Tensor] | None = None) -> HartResult:
    """Generate B images. `forced` replaces the sampled tokens of each scale (parity tests)."""
    mc = model.cfg
    pns, SN, B, Cv, P = mc.patch_nums, mc.num_scales, text_BTD.shape[0], mc.latent_channels, mc.patch_nums[-1]
    run = runner or dense_runner(model)
    device = text_BTD.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    diff_gen = torch.Generator(device=device).manual_seed(cfg.seed + DIFFUSION_SEED_OFFSET)
    codebook = tokenizer.codebook

    # 1. the prompt prefix
    t0 = time.perf_counter()
    ctx: HartContext = model.prepare_context(text_BTD, mask_BT)
    caches: list[KVCache] = model.new_caches()
    x, pos = ctx.x_B2TC, None
    cos, sin = model.rope_context(ctx)
    f_hat = text_BTD.new_zeros(B, Cv, P, P)
    indices, logits_rec = [], []

    def tokens_at(si: int, logits: torch.Tensor) -> torch.Tensor:
        if record_logits:
            logits_rec.append(logits.clone())
        mask_top_k_top_p_(logits, cfg.top_k(si), cfg.top_p)
        return forced[si].to(device) if forced is not None else draw_tokens(logits, gen)

    # 2. every scale but the last
    for si in range(SN - 1):
        ratio = si / (SN - 1)
        h = run(si, x, pos, cos, sin, caches)
        logits2 = model.logits(h, ctx)
        t = cfg.cfg * ratio
        logits = (1 + t) * logits2[:B] - t * logits2[B:]
        if si == 0:  # the 1x1 token comes from the last context position, padding or not
            logits = logits[:, -1:]
        idx = tokens_at(si, logits)
        indices.append(idx)
        codes = _codes_for_next_input(logits, idx, ratio, cfg, codebook, gen)  # (B, L, Cv)
        h_map = codes.transpose(1, 2).reshape(B, Cv, pns[si], pns[si])
        f_hat, nxt = tokenizer.quantize.add_scale(f_hat, h_map, si, pns)
        x = model.embed_scale(nxt.view(B, Cv, -1).transpose(1, 2), si + 1).repeat(2, 1, 1)
        pos = model.positions(si + 1, ctx)
        cos, sin = model.rope_image(pos)

    # 3. the last scale: every token at once, then the diffusion residual
    si = SN - 1
    h_last = run(si, x, pos, cos, sin, caches)
    logits2 = model.logits(h_last, ctx)
    logits = (1 + t) * logits2[:B] - t * logits2[B:]  # t (and ratio) of scale SN - 2, as released
    idx = tokens_at(si, logits)
    indices.append(idx)
    codes = _codes_for_next_input(logits, idx, ratio, cfg, codebook, gen)
    residual = None
    t1 = time.perf_counter()
    if cfg.diffusion:
        z = model.diffusion_condition(h_last, idx, codebook)  # (B2, L, C)
        r = model.diffloss.sample(z.reshape(-1, z.shape[-1]), t, generator=diff_gen, noise=diffusion_noise,
                                  temperature=cfg.diffusion_temperature)
        residual = r.reshape(B, -1, Cv)
        codes = codes + residual
    f_hat, _ = tokenizer.quantize.add_scale(f_hat, codes.transpose(1, 2).reshape(B, Cv, P, P), si, pns)

    # 4. decode
    t2 = time.perf_counter()
    images = tokenizer.decode(f_hat).add(1).mul(0.5)
    t3 = time.perf_counter()
    return HartResult(images=images, f_hat=f_hat, indices=indices, logits=logits_rec,
                      hidden_last=h_last, residual=residual,
                      timings={"transformer": t1 - t0, "diffusion": t2 - t1, "decode": t3 - t2})
