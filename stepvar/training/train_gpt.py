"""Training the Infinity transformer and the toy text encoder on the toy world.

One update:
  1. render a batch of (prompt, image) pairs (fresh scenes every step);
  2. frozen VAE: encode, then multi-scale residual bits (targets) and next-scale inputs, with
     optional bitwise self-correction (flip each bit of the first scales with a per-image
     probability drawn from {0, 0.01, ..., strength}; labels correct the corrupted trajectory);
  3. encode the prompts with the toy text encoder (trained jointly); with probability cfg_dropout a
     row's text is replaced by the learned null text model.uncond_text(mask), which is what
     classifier-free guidance uses at sampling time;
  4. teacher-forced forward over all scales at once (block-causal mask), cross-entropy over every
     bit of every token (logits (B, Lt, d, 2)), averaged uniformly over tokens and bits;
     optionally `prefix_batch` extra rows run only the first `prefix_scales` scales. Because the
     mask is block-causal, a prefix row's logits are exactly those of the full sequence's first
     scales, so these rows are the same objective at a fraction of the cost: the coarse scales
     that decide layout, count and colour see more scenes per FLOP than the fine ones;
  5. AdamW with warm-up and cosine (or constant) LR, global grad-norm clipping.

The checkpoint holds the transformer, the text encoder and the frozen VAE, so one file is
enough to export the whole model (export_embedded).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic_dir import atomic_directory
from ..errors import CheckpointError, ConfigError
from ..loading.containers import save_checkpoint
from ..loading.embedded import EXPORT_FILES, load_embedded
from ..loading.export_check import HASH_FIELD, export_hashes
from ..models.bsq_vae import BSQVAE
from ..run_lock import output_lock
from ..models.config import InfinityConfig
from ..models.infinity import Infinity
from ..schedules import BUDGETS, ScaleSchedule, get_schedule
from ..toy.grammar import MAX_TOKENS
from ..toy.text_encoder import ToyTextConfig, ToyTextEncoder
from .common import Job, OptimConfig, Rngs, RunSettings, TrainResult, autocast, check_cpu_bf16, clip_and_step, lr_at, \
    make_optimizer, read_training_checkpoint, resolve_device, run_job
from .data import sample_pairs, to_model_images
from .latent_pool import LatentPool, load_latent_pool
from .teacher_forcing import flat_bits, forward_teacher_forced, multiscale_targets, teacher_forced_inputs
from .train_vae import load_trained_vae, load_vae_source


def toy_arch() -> InfinityConfig:
    """The embedded model's transformer: presets/models/toy.yaml's arch (~4M parameters, 256 px in 7 scales).

    Sized so that a CPU-only training run (2 cores, ~90 GFLOP/s) sees enough updates in a
    couple of hours; depth 8 x 256 measured 2.5x slower per update on the same machine.
    """
    from ..models.config import load_model_preset

    return load_model_preset("toy").arch


@dataclass
class GPTTrainConfig(RunSettings):
    arch: InfinityConfig = field(default_factory=toy_arch)
    text: ToyTextConfig = ToyTextConfig()
    budget: str = "0.06M"              # schedule trained on (square template)
    batch_size: int = 16
    cfg_dropout: float = 0.1           # probability a row trains the null text
    self_correction: float = 0.0       # bit-flip strength (0 = off; the paper's script uses 0.3)
    self_correction_scales: int | None = None  # flip on the first n scales only (None = all)
    prefix_batch: int = 0              # extra rows trained on the first prefix_scales scales only
    prefix_scales: int = 5
    init_from: str | None = None       # start from these weights: an export directory or a transformer checkpoint
    latents: str | None = None         # train on this pre-encoded scene pool (latent_pool.py) instead of fresh scenes
    # With a pool: draw rows so the prompt forms (single, count, relation) have these shares, not the pool's
    # (a third each); relation prompts are the most numerous and the hardest. None = uniform over rows.
    form_weights: tuple[float, float, float] | None = None
    layout: str | None = None          # the world's object placement (world.LAYOUTS); None = the pool's, else "free"
    # How the bit cross-entropy is averaged: "token" = every token alike, so the 1x1..4x4 scales that
    # decide layout and colour carry 4 % of a full row's loss; "scale" = every scale of a row alike
    # (the mean over a scale's tokens, then over its scales), as Infinity's scale reweighting does.
    loss_weighting: str = "token"
    # A second pool at another resolution (e.g. 512 px scenes beside the first pool's 256 px), trained in
    # the same update: mix_batch full rows and mix_prefix_batch prefix rows of its own schedule (the
    # budget whose square output is its image size). The row counts set the ratio; the model then gets
    # a budget embedding (InfinityConfig.budget_embed) so it knows which resolution a row is.
    mix_latents: str | None = None
    mix_batch: int = 0
    mix_prefix_batch: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=5e-4, weight_decay=0.05, betas=(0.9, 0.97), warmup_steps=500, decay_steps=50000, grad_clip=2.0))

    def __post_init__(self) -> None:
        if isinstance(self.arch, dict):
            self.arch = InfinityConfig(**self.arch)
        if isinstance(self.text, dict):
            self.text = ToyTextConfig(**self.text)
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        a = self.arch
        if a.patchify:
            raise ConfigError("transformer training does not support the patchify variant")
        if a.text_channels != self.text.channels:
            raise ConfigError(f"arch.text_channels {a.text_channels} != text.channels {self.text.channels}")
        if a.text_maxlen < MAX_TOKENS:
            raise ConfigError(f"arch.text_maxlen {a.text_maxlen} < the grammar's MAX_TOKENS {MAX_TOKENS}")
        if self.form_weights is not None:
            self.form_weights = tuple(float(w) for w in self.form_weights)
            if len(self.form_weights) != 3 or min(self.form_weights) < 0 or sum(self.form_weights) <= 0:
                raise ConfigError("form_weights must be three non-negative shares (single, count, relation), not all 0")
            if self.latents is None:
                raise ConfigError("form_weights applies to a latent pool (--latents)")
        from ..toy.world import check_layout

        if self.layout is not None:
            check_layout(self.layout)
        if self.loss_weighting not in ("token", "scale"):
            raise ConfigError(f"loss_weighting must be 'token' or 'scale', got {self.loss_weighting!r}")
        if self.prefix_batch < 0 or self.prefix_scales < 1:
            raise ConfigError("prefix_batch must be >= 0 and prefix_scales >= 1")
        if self.mix_batch < 0 or self.mix_prefix_batch < 0:
            raise ConfigError("mix_batch and mix_prefix_batch must be >= 0")
        if self.mix_latents is not None and self.latents is None:
            raise ConfigError("mix_latents is a second latent pool; it needs a first one (--latents)")
        if self.mix_latents is not None and self.mix_batch < 1:
            raise ConfigError("mix_latents needs mix_batch >= 1 full rows per update")
        if not 0.0 <= self.cfg_dropout < 1.0 or not 0.0 <= self.self_correction < 0.5:
            raise ConfigError("cfg_dropout must be in [0, 1) and self_correction in [0, 0.5)")


def budget_for_size(size: int) -> str:
    """The budget whose square schedule outputs size x size pixels (256 -> 0.06M, 512 -> 0.25M)."""
    from ..schedules import RESOLUTIONS

    if RESOLUTIONS.get(size) not in BUDGETS:
        raise ConfigError(f"no square schedule outputs {size} px; pools must be one of "
                          f"{', '.join(str(r) for r, b in RESOLUTIONS.items() if b in BUDGETS)} px")
    return RESOLUTIONS[size]


class GPTBatch(NamedTuple):
    ids_BT: torch.Tensor                 # prompt tokens
    bits: list[torch.Tensor]             # per-scale (B, h, w, d) labels
    next_inputs: list[torch.Tensor]      # per-scale (B, d, h, w) inputs of scales 1..n-1
    drop_B: torch.Tensor                 # bool, rows trained on the null text
    n_full: int | None = None            # rows [n_full:] train only on the first prefix_scales scales
    prefix_scales: int = 0


def prefix_schedule(schedule: ScaleSchedule, n: int) -> ScaleSchedule:
    """The first n scales, same RoPE reference grid: positions are those of the full schedule."""
    return replace(schedule, scales=schedule.scales[:n])


def bit_loss(logits_BLV: torch.Tensor, bits_BLd: torch.Tensor,
             weight_L: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the bits ((B, L, 2d) -> (B, L, d, 2) pairs) and the bit accuracy.

    The loss is the mean over every (row, token, bit), or with weight_L (summing to 1) the mean over
    rows of the weighted sum over tokens of each token's mean over bits. The accuracy is unweighted.
    """
    logits_BLd2 = logits_BLV.float().unflatten(-1, (-1, 2))  # (B, L, d, 2): pair k scores bit k = 0 / 1
    target = bits_BLd.long()
    acc = (logits_BLd2.argmax(-1) == target).float().mean()
    if weight_L is None:
        return F.cross_entropy(logits_BLd2.reshape(-1, 2), target.reshape(-1)), acc
    ce_BLd = F.cross_entropy(logits_BLd2.flatten(0, 2), target.flatten(), reduction="none").view(target.shape)
    return (ce_BLd.mean(-1) * weight_L).sum(-1).mean(), acc


def scale_weights(schedule: ScaleSchedule, device=None) -> torch.Tensor:
    """(Lt,) per-token weights that give each scale the same share: 1 / (n_scales * tokens of its scale)."""
    sizes = torch.tensor([s.n for s in schedule.scales], dtype=torch.float32, device=device)
    return torch.repeat_interleave(1.0 / (len(schedule) * sizes), sizes.long())


def _forward_rows(model: Infinity, feats, mask, rows: slice, bits: list[torch.Tensor],
                  next_inputs: list[torch.Tensor], schedule: ScaleSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit logits (B', L, 2d) and labels (B', L, d) of `rows` over `schedule`'s scales."""
    n = len(schedule)
    cond = model.condition(feats[rows], mask[rows], schedule.budget)  # fresh per forward: its CA K/V cache fills in the pass
    x = teacher_forced_inputs(model, cond.cond_BD, [z[rows] for z in next_inputs[: n - 1]])
    return forward_teacher_forced(model, cond, x, schedule), flat_bits([b[rows] for b in bits[:n]])


def gpt_loss(model: Infinity, text_encoder: ToyTextEncoder, batch: GPTBatch, schedule: ScaleSchedule,
             amp: bool = True, cpu_bf16: bool = False, weighting: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """Bit cross-entropy of the batch, prefix rows included: the mean over every (row, token, bit)
    ("token"), or over rows of each row's mean over its scales of the scale's mean ("scale")."""
    return mixed_gpt_loss(model, text_encoder, [(batch, schedule)], amp, cpu_bf16, weighting)


def mixed_gpt_loss(model: Infinity, text_encoder: ToyTextEncoder, batches: list[tuple[GPTBatch, ScaleSchedule]],
                   amp: bool = True, cpu_bf16: bool = False,
                   weighting: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """gpt_loss over several batches, each on its own schedule (e.g. 256 and 512 px rows), as one batch:
    every row counts as it would in gpt_loss. Metrics: the overall loss and bit accuracy, the first
    batch's last-scale accuracy (bit_acc_last), and for each later batch its own loss and last-scale
    accuracy, suffixed with its pixel size (loss_512, bit_acc_last_512)."""
    parts, spans, fulls = [], [], []
    for batch, schedule in batches:
        batch_parts, logits, labels = _batch_parts(model, text_encoder, batch, schedule, amp, cpu_bf16)
        spans.append(slice(len(parts), len(parts) + len(batch_parts)))
        parts += batch_parts
        fulls.append((logits, labels, schedule))
    losses = _part_losses(parts, weighting)
    loss, acc = _combine(losses, parts, weighting)
    names, values = ["loss", "bit_acc"], [loss.detach(), acc]
    for i, (span, (logits, labels, schedule)) in enumerate(zip(spans, fulls)):
        suffix = "" if i == 0 else f"_{schedule.pixel_size[0]}"
        if i > 0:
            names.append(f"loss{suffix}")
            values.append(_combine(losses[span], parts[span], weighting)[0].detach())
        last = schedule.offsets[-1][0]
        names.append(f"bit_acc_last{suffix}")
        values.append(bit_loss(logits[:, last:].detach(), labels[:, last:])[1])
    return loss, dict(zip(names, torch.stack(values).tolist()))  # one device sync


def _part_losses(parts, weighting: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    by_scale = weighting == "scale"
    return [bit_loss(lg, lb, scale_weights(sch, lg.device) if by_scale else None) for lg, lb, sch in parts]


def _combine(losses, parts, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-weighted ("scale": each row counts once, its scales alike) or token-weighted mean of the parts."""
    counts = [lb.numel() for _, lb, _ in parts]
    rows = [lb.shape[0] for _, lb, _ in parts] if weighting == "scale" else counts
    loss = sum(l * c for (l, _), c in zip(losses, rows)) / sum(rows)
    acc = sum(a * c for (_, a), c in zip(losses, counts)) / sum(counts)
    return loss, acc


def _batch_parts(model: Infinity, text_encoder: ToyTextEncoder, batch: GPTBatch, schedule: ScaleSchedule,
                 amp: bool, cpu_bf16: bool):
    """[(logits, labels, schedule)] of the full rows and, if any, the prefix rows; plus the full rows' logits
    and labels."""
    device = batch.ids_BT.device
    B = batch.ids_BT.shape[0]
    n_full = B if batch.n_full is None else batch.n_full
    with autocast(device, amp, cpu_bf16):
        feats, mask = text_encoder(batch.ids_BT)
        feats = torch.where(batch.drop_B[:, None, None], model.uncond_text(mask).to(feats.dtype), feats)
        logits, labels = _forward_rows(model, feats, mask, slice(0, n_full), batch.bits, batch.next_inputs, schedule)
        parts = [(logits, labels, schedule)]
        if n_full < B:
            prefix = prefix_schedule(schedule, batch.prefix_scales)
            parts.append((*_forward_rows(model, feats, mask, slice(n_full, B), batch.bits, batch.next_inputs, prefix),
                          prefix))
    return parts, logits, labels


class GPTJob(Job):
    kind = "transformer"

    def __init__(self, cfg: GPTTrainConfig, vae: BSQVAE):
        if vae.cfg.codebook_dim != cfg.arch.bits or vae.cfg.patchify:
            raise ConfigError(f"the VAE has d={vae.cfg.codebook_dim} but arch.bits is {cfg.arch.bits}")
        self.device = resolve_device(cfg.device)
        check_cpu_bf16(cfg, self.device)
        self.cfg = cfg
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.schedule = get_schedule(cfg.budget, 1.0, vae.cfg.token_stride)
        self.pool = None if cfg.latents is None else self._load_pool(cfg.latents, self.schedule)
        self.layout = cfg.layout or (self.pool.layout if self.pool is not None else "free")
        self.pool_rows_by_form = self._rows_by_form(self.pool, cfg.latents)
        self.mix_pool = self.mix_schedule = self.mix_rows_by_form = None
        if cfg.mix_latents is not None:
            self.mix_pool = load_latent_pool(cfg.mix_latents, self.vae)
            self.mix_schedule = get_schedule(budget_for_size(self.mix_pool.image_size), 1.0, vae.cfg.token_stride)
            if self.mix_schedule.budget == cfg.budget:
                raise ConfigError(f"latent pools {cfg.latents} and {cfg.mix_latents} are both {budget_for_size(self.mix_pool.image_size)}; "
                                  "mix_latents is for another resolution")
            self._load_pool(cfg.mix_latents, self.mix_schedule, self.mix_pool)
            if self.mix_pool.layout != self.pool.layout:
                raise ConfigError(f"latent pools {cfg.latents} and {cfg.mix_latents} have different layouts "
                                  f"({self.pool.layout}, {self.mix_pool.layout})")
            self.mix_rows_by_form = self._rows_by_form(self.mix_pool, cfg.mix_latents)
            # Rows of two resolutions share their coarse grids but not those grids' codes: give the model
            # a budget embedding (zero at init) that tells them apart.
            need = 1 + max(self.budget_rows(b) for b in self.budgets)
            if cfg.arch.budget_embed < need:
                self.cfg = cfg = replace(cfg, arch=replace(cfg.arch, budget_embed=need))
        for sch in (self.schedule, self.mix_schedule):
            if sch is not None and len(sch) > cfg.arch.num_levels:
                raise ConfigError(f"budget {sch.budget} has {len(sch)} scales > arch.num_levels {cfg.arch.num_levels}")
        torch.manual_seed(cfg.seed)  # weight init only; everything later draws from self.rngs
        self.model = Infinity(cfg.arch).to(self.device).train()
        self.text_encoder = ToyTextEncoder(cfg.text).to(self.device).train()
        self.prior_steps = 0
        if cfg.init_from is not None:
            self._init_weights(cfg.init_from)
        self.modules = {"transformer": self.model, "text_encoder": self.text_encoder, "vae": self.vae}
        named = [*self.model.named_parameters(), *(("text." + n, p) for n, p in self.text_encoder.named_parameters())]
        self.params = [p for _, p in named]
        self.optimizer = make_optimizer(named, cfg.optim)
        self.rngs = Rngs.from_seed(cfg.seed)

    @property
    def budgets(self) -> list[str]:
        """The schedules this run trains: the first pool's (or fresh scenes'), then the mix pool's."""
        return [self.schedule.budget] + ([self.mix_schedule.budget] if self.mix_schedule is not None else [])

    @staticmethod
    def budget_rows(budget: str) -> int:
        return [*BUDGETS, "2K"].index(budget)

    def _rows_by_form(self, pool: LatentPool | None, path: str | None) -> list[np.ndarray] | None:
        if pool is None or self.cfg.form_weights is None:
            return None
        from ..toy.grammar import FORMS, parse

        forms = [parse(p).form for p in pool.prompts]
        rows_by_form = [np.array([i for i, f in enumerate(forms) if f == name]) for name in FORMS]
        if any(len(rows) == 0 and w > 0 for rows, w in zip(rows_by_form, self.cfg.form_weights)):
            raise ConfigError(f"latent pool {path} has no prompt of a form that form_weights asks for")
        return rows_by_form

    def _load_pool(self, path: str, schedule: ScaleSchedule, pool: LatentPool | None = None) -> LatentPool:
        pool = pool or load_latent_pool(path, self.vae)
        size = schedule.pixel_size[0]
        if pool.image_size != size:
            raise ConfigError(f"latent pool {path} holds {pool.image_size}px scenes; budget {schedule.budget} trains {size}px")
        if self.cfg.layout not in (None, pool.layout):
            raise ConfigError(f"latent pool {path} holds {pool.layout!r} scenes but the run's layout is "
                              f"{self.cfg.layout!r} (--layout {pool.layout})")
        return pool

    def config_dict(self) -> dict:
        # prior_steps: updates the init_from weights had already had, so an export counts them all
        # (absent for a fresh run, so checkpoints written before it existed still resume).
        prior = {"prior_steps": self.prior_steps} if self.prior_steps else {}
        # budgets: the schedules trained, which the export records as the resolutions the model draws.
        return {**asdict(self.cfg), "layout": self.layout, "vae": asdict(self.vae.cfg), "budgets": self.budgets, **prior}

    def _init_weights(self, source: str) -> None:
        """Continue from shipped (fp16, upcast) or checkpointed weights with a fresh optimiser."""
        p = Path(source)
        if (p / "model.json").is_file():
            model, _, text = load_embedded(p)
            states = model.state_dict(), text.state_dict()
            meta = json.loads((p / "model.json").read_text())
            self.prior_steps = int(meta["trained_steps"])
            trained = meta.get("budgets", [meta["budget"]])
        else:
            ckpt = read_training_checkpoint(p, "transformer", "init_from")
            states = ckpt["modules"]["transformer"], ckpt["modules"]["text_encoder"]
            self.prior_steps = ckpt["step"] + ckpt["config"].get("prior_steps", 0)
            trained = ckpt["config"].get("budgets", [ckpt["config"]["budget"]])
        try:
            # Weights from before the position table or the budget embedding existed: they start at zero,
            # i.e. the same function.
            result = self.model.load_state_dict(states[0], strict=False)
            self.text_encoder.load_state_dict(states[1])
        except RuntimeError as exc:  # mis-shaped tensors
            raise ConfigError(f"init_from {p}: weights do not fit this architecture ({str(exc).splitlines()[0]})") from None
        bad = sorted(set(result.missing_keys) - {"abs_pos", "budget_embed"}) + sorted(result.unexpected_keys)
        if bad:
            raise ConfigError(f"init_from {p}: weights do not fit this architecture (missing or unexpected keys: "
                              f"{', '.join(bad[:5])})")
        self._copy_untrained_levels(max(len(get_schedule(b)) for b in trained))

    @torch.no_grad()
    def _copy_untrained_levels(self, n_trained: int) -> None:
        """Scales the init weights never trained start with the last trained scale's level embedding.

        Their rows of lvl_embed are still the random init, which puts a 512 px run's new 20..32 grids
        out of distribution; a copy of the finest trained level (the one that adds the last detail at
        256 px) makes them refine from the start: before any 512 training the shipped model drew 3 of 4
        prompts right at 512 px this way, 0 of 4 with the random rows (docs/model_card.md, stage 22).
        """
        n_run = max(len(sch) for sch in (self.schedule, self.mix_schedule) if sch is not None)
        weight = self.model.lvl_embed.weight
        for level in range(n_trained, n_run):
            weight[level] = weight[n_trained - 1]

    def next_batch(self) -> GPTBatch:
        return self._draw(self.pool, self.pool_rows_by_form, self.schedule, self.cfg.batch_size, self.cfg.prefix_batch)

    def next_mix_batch(self) -> GPTBatch:
        """The mix pool's rows of this update (drawn after next_batch's, from the same generators)."""
        return self._draw(self.mix_pool, self.mix_rows_by_form, self.mix_schedule, self.cfg.mix_batch,
                          self.cfg.mix_prefix_batch)

    @torch.no_grad()
    def _draw(self, pool: LatentPool | None, rows_by_form, schedule: ScaleSchedule, n_full: int, n_prefix: int) -> GPTBatch:
        B = n_full + n_prefix
        if pool is not None:  # rows drawn with replacement: the data RNG state alone makes it resumable
            idx = self._pool_rows(B, pool, rows_by_form)
            prompts = [pool.prompts[i] for i in idx]
            z = pool.z[torch.from_numpy(idx)].to(self.device)
        else:
            prompts, images = sample_pairs(self.rngs.data, B, schedule.pixel_size[0], self.layout)
            with autocast(self.device, self.cfg.amp, self.cfg.cpu_bf16):
                z = self.vae.encode(to_model_images(images, self.device))
        grids = [(s.h, s.w) for s in schedule.scales]
        targets = multiscale_targets(z, grids, self.cfg.self_correction, self.cfg.self_correction_scales, self.rngs.torch)
        drop = torch.rand(B, generator=self.rngs.torch) < self.cfg.cfg_dropout
        ids = self.text_encoder.tokenize(prompts)
        return GPTBatch(ids.to(self.device), targets.bits, targets.next_inputs, drop.to(self.device),
                        n_full, min(self.cfg.prefix_scales, len(schedule)))

    def _pool_rows(self, n: int, pool: LatentPool | None = None, rows_by_form=None) -> np.ndarray:
        pool, rows_by_form = (self.pool, self.pool_rows_by_form) if pool is None else (pool, rows_by_form)
        rng = self.rngs.data
        if rows_by_form is None:
            return rng.integers(0, len(pool), n)
        w = np.array(self.cfg.form_weights)
        forms = rng.choice(3, size=n, p=w / w.sum())
        return np.array([rows[rng.integers(len(rows))] for rows in (rows_by_form[f] for f in forms)])

    def update(self, batch: GPTBatch | list[tuple[GPTBatch, ScaleSchedule]], step: int) -> dict[str, float]:
        """One optimizer update on a batch of the run's first schedule, or on [(batch, schedule), ...]."""
        batches = [(batch, self.schedule)] if isinstance(batch, GPTBatch) else batch
        loss, metrics = mixed_gpt_loss(self.model, self.text_encoder, batches, self.cfg.amp, self.cfg.cpu_bf16,
                                       self.cfg.loss_weighting)
        loss.backward()
        lr = lr_at(step, self.cfg.optim)
        metrics["grad_norm"] = clip_and_step(self.optimizer, self.params, lr, self.cfg.optim.grad_clip)
        metrics["lr"] = lr
        return metrics

    def step(self, step: int) -> dict[str, float]:
        batches = [(self.next_batch(), self.schedule)]
        if self.mix_pool is not None:
            batches.append((self.next_mix_batch(), self.mix_schedule))
        return self.update(batches, step)


def as_vae(vae: BSQVAE | str | os.PathLike) -> BSQVAE:
    """A BSQVAE, an export directory's VAE, or a VAE training run's."""
    return vae if isinstance(vae, BSQVAE) else load_vae_source(vae)


def train_transformer(config: GPTTrainConfig, out_dir: str | os.PathLike, steps: int,
                      vae: BSQVAE | str | os.PathLike, resume: bool | str | os.PathLike = False,
                      on_log: Callable[[dict], None] | None = None,
                      on_note: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the transformer + text encoder against a frozen VAE until `steps` updates.

    `vae`: a BSQVAE, or a VAE training checkpoint / run directory (train_vae's output).
    """
    job = GPTJob(config, as_vae(vae))
    return run_job(job, out_dir, steps, resume, config.ckpt_every, config.log_every, on_log, on_note)


# --------------------------------------------------------------------------------------------------
# Export for shipping (the embedded model)
# --------------------------------------------------------------------------------------------------



def export_embedded(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                    dtype: torch.dtype = torch.float16, vae: str | os.PathLike | None = None) -> Path:
    """Write the three weight files (cast to `dtype`) plus model.json from a transformer checkpoint.

    `vae`: ship this VAE (a run of `train vae --decoder-only`) instead of the one in the checkpoint;
    its encoder must equal the checkpoint's bit for bit, so the codes the transformer learnt are
    unchanged and only the decoder differs.

    The files are plain state dicts in safetensors, loadable with stepvar.loading's strict loaders
    (load_model_weights, load_vae_weights) and ToyTextEncoder.load_state_dict.
    An existing `out_dir` is replaced whole or not at all (stepvar.atomic_dir), and model.json
    records each file's SHA-256 so that a mixed directory is refused when loaded.
    """
    ckpt = read_training_checkpoint(checkpoint, "transformer", "export")
    if vae is not None:
        ckpt["modules"]["vae"] = _same_encoder_vae(ckpt["modules"]["vae"], vae)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = ckpt["config"]
    # budgets: the schedules the model was trained on; runs from before mixed resolutions trained one.
    meta = {"arch": cfg["arch"], "vae": cfg["vae"], "text": cfg["text"], "budget": cfg["budget"],
            "budgets": cfg.get("budgets", [cfg["budget"]]),
            "trained_steps": ckpt["step"] + cfg.get("prior_steps", 0), "run_steps": ckpt["step"], "seed": cfg["seed"],
            "layout": cfg.get("layout", "free"), "stepvar_version": ckpt["stepvar_version"],
            "dtype": str(dtype).replace("torch.", ""), "files": EXPORT_FILES}
    with output_lock(out.parent, out.name):
        _check_replaceable(out)
        with atomic_directory(out) as new:
            _write_export(ckpt["modules"], new, dtype, meta)
    return out


def _check_replaceable(out: Path) -> None:
    """An export replaces its directory whole: refuse one that holds anything an export does not write."""
    if not out.is_dir():
        return
    ours = {"model.json", *EXPORT_FILES.values()}
    other = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if other:
        raise ConfigError(f"{out} holds files an export does not write ({', '.join(other[:3])}); an export replaces "
                          "its directory whole, so give an empty or new directory, or an earlier export")


def _write_export(modules: dict, new: Path, dtype: torch.dtype, meta: dict) -> None:
    for name, fname in EXPORT_FILES.items():
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in modules[name].items()}
        save_checkpoint(sd, new / fname, "safetensors")
    (new / "model.json").write_text(json.dumps({**meta, HASH_FIELD: export_hashes(new, EXPORT_FILES)}, indent=2) + "\n")


def _same_encoder_vae(trained_on: dict, path: str | os.PathLike) -> dict:
    new = load_trained_vae(path).state_dict()
    enc = [k for k in trained_on if k.startswith("encoder.")]
    if set(new) != set(trained_on) or not all(torch.equal(new[k], trained_on[k]) for k in enc):
        raise CheckpointError(f"{path}: its encoder differs from the one the transformer was trained on; "
                              "only a decoder-only fine-tune of that VAE can replace it")
    return new
