"""Analytic FLOPs of one HART generation: transformer, head, diffusion head and tokenizer decoder.

Same convention as stepvar.eval.flops: one multiply-add is 2 FLOPs and only matrix products
(linears, attention scores and weighted sums, convolutions) are counted.

Per step si and layer with n tokens per row in a branch and R = 2B model rows (CFG):
    attn  qkv 2nC*3C + proj 2nC^2; attn_scores: scores and weighted sum 2*2*n*S*C, S = the
          layer's KV length: the 300 context tokens, every earlier scale's attention tokens, this scale's
    ffn   GELU 2*2*n*C*F, SwiGLU 3*2*n*C*F
    head  every position of the step, on both CFG halves: 2*L*C*V (+ the AdaLN 2*C*2C per row)
    embed word_embed of the next scale's input on the B prompt rows, 2*L*Cv*C
    quantizer the scale's 3x3 Phi convolution on the last grid, 2*Cv*Cv*9*P^2 per prompt
Once: context_embed on both halves (2*T*D*C per row). Diffusion head: for the P*P last-scale
tokens of both halves, every step runs input_proj, time and condition embeddings, the blocks
and the final layer. Decoder: every convolution and attention of the tokenizer's decoder on
the final latent, counted from its real shapes on the meta device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..models.hart import HartConfig
from ..models.hart_tokenizer import AttnBlock, Decoder, HartTokenizerConfig


@dataclass
class HartFlops:
    per_scale: list[int]  # blocks + head + next-scale embedding, by the step that computes them
    by_part: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def dense_counts(cfg: HartConfig) -> dict[tuple[int, int, str], int]:
    """Per-row tokens of a dense run: the context at step 0, then each scale's grid."""
    out = {}
    for si in range(cfg.num_scales):
        n = cfg.context_tokens if si == 0 else cfg.patch_nums[si] ** 2
        for layer in range(cfg.depth):
            out[(si, layer, "attn")] = n
            out[(si, layer, "ffn")] = n
    return out


def diffusion_flops(cfg: HartConfig, tokens: int) -> int:
    """All steps of the diffusion head for `tokens` rows (both CFG halves included by the caller)."""
    W, Cv, C = cfg.diff_width, cfg.latent_channels, cfg.width
    per_row = (2 * Cv * W + 2 * 256 * W + 2 * W * W + 2 * C * W  # input_proj, time MLP, cond_embed
               + cfg.diff_depth * (2 * W * 3 * W + 2 * 2 * W * W)  # AdaLN + two-layer MLP per block
               + 2 * W * 2 * W + 2 * W * 2 * Cv)  # final AdaLN and linear
    return cfg.diff_steps * tokens * per_row


def decoder_flops(tok: HartTokenizerConfig, latent_side: int, batch: int = 1) -> int:
    """Convolutions (2*Cin*Cout*k*k per output position) and attention (4*(HW)^2*C) of the decoder."""
    with torch.device("meta"):
        dec = Decoder(tok)
        post = nn.Conv2d(tok.latent_channels, tok.latent_channels, tok.quant_conv_ks, padding=tok.quant_conv_ks // 2)
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += 2 * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * out.numel()

    def attn_hook(m, inp, out):
        nonlocal total
        B, C, H, W = inp[0].shape
        total += B * 4 * (H * W) ** 2 * C

    hooks = [m.register_forward_hook(conv_hook) for m in list(dec.modules()) + [post] if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(attn_hook) for m in dec.modules() if isinstance(m, AttnBlock)]
    with torch.no_grad():
        dec(post(torch.empty(batch, tok.latent_channels, latent_side, latent_side, device="meta")))
    for h in hooks:
        h.remove()
    return total


def count_hart_flops(cfg: HartConfig, tok: HartTokenizerConfig, counts: Mapping[tuple[int, int, str], int],
                     batch: int = 1, decoder: int | None = None) -> HartFlops:
    """FLOPs from per-row token counts {(si, layer, 'attn'|'ffn'): n}; the head, the diffusion head and
    the decoder always run on every position (pruned hidden states are restored first)."""
    C, V, Cv, T, R = cfg.width, cfg.vocab, cfg.latent_channels, cfg.context_tokens, 2 * batch
    F = cfg.ffn_hidden
    ffn_mats = 2 if cfg.mlp_type == "gpt2" else 3
    parts = dict.fromkeys(("attn", "attn_scores", "ffn", "head", "embed", "quantizer", "context", "diffusion",
                           "decoder"), 0)
    per_scale = [0] * cfg.num_scales
    kv = [0] * cfg.depth
    for si in range(cfg.num_scales):
        L = T if si == 0 else cfg.patch_nums[si] ** 2
        s = 0
        for layer in range(cfg.depth):
            n_a = counts.get((si, layer, "attn"), 0)
            n_f = counts.get((si, layer, "ffn"), 0)
            kv[layer] += n_a
            a = R * (2 * n_a * C * 3 * C + 2 * n_a * C * C)
            sc = R * 4 * n_a * kv[layer] * C
            f = R * ffn_mats * 2 * n_f * C * F
            parts["attn"] += a
            parts["attn_scores"] += sc
            parts["ffn"] += f
            s += a + sc + f
        head = R * (2 * L * C * V + 2 * C * 2 * C)
        parts["head"] += head
        s += head
        if si + 1 < cfg.num_scales:
            e = batch * 2 * cfg.patch_nums[si + 1] ** 2 * Cv * C
            q = batch * 2 * Cv * Cv * 9 * cfg.patch_nums[-1] ** 2  # the scale's Phi convolution on the latent grid
            parts["embed"] += e
            parts["quantizer"] += q
            s += e + q
        per_scale[si] = s
    P2 = cfg.patch_nums[-1] ** 2
    parts["context"] = R * 2 * T * cfg.context_dim * C
    parts["diffusion"] = diffusion_flops(cfg, R * P2) + batch * 2 * P2 * Cv * C  # + word_embed of the sampled codes
    parts["decoder"] = decoder_flops(tok, cfg.patch_nums[-1], batch) if decoder is None else decoder
    return HartFlops(per_scale=per_scale, by_part=parts, total=sum(parts.values()))
