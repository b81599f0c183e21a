"""`stepvar train vae|gpt|latents|export`: thin adapters over stepvar.training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from stepvar.user_files import check_output_dir

from .console import err, out, run_guarded
from .options import (CkptEveryOpt, CpuBf16Opt, DecayOpt, LROpt, ResumeOpt, RunDirOpt, StepsOpt, TrainBatchOpt,
                      TrainDeviceOpt, TrainSeedOpt, WarmupOpt)
from .safe_print import plain, step_progress

train_app = typer.Typer(no_args_is_help=True, help="Train the project's own small models (the toy world).")


def _note_printer():
    return lambda msg: err.print(f"note: {msg}", highlight=False, markup=False)


def _log_printer(as_json: bool, steps: int | None = None, label: str = "training"):
    """on_log for the trainers: the log lines on stdout, and on a terminal a progress bar on stderr
    (updated with every log record, every 10 updates); nothing extra when piped."""
    bar = step_progress(err, steps, label, enabled=not as_json and steps is not None)

    def on_log(record: dict) -> None:
        if as_json:
            print(json.dumps(record))
        else:
            rest = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step",))
            out.print(f"step {record['step']}: {rest}")
        bar(record["step"])
    return on_log


@train_app.command("vae")
def train_vae_cmd(out_dir: RunDirOpt, steps: StepsOpt = 5000, resume: ResumeOpt = False, seed: TrainSeedOpt = 0, batch: TrainBatchOpt = 16,
                  init_from: Annotated[Optional[Path], typer.Option(help="Start from this VAE run's weights, or an export's (e.g. stepvar/assets/toy).")] = None,
                  object_weight: Annotated[float, typer.Option(help="Extra reconstruction weight on object pixels (1 + this).")] = 0.0,
                  decoder_only: Annotated[bool, typer.Option(help="Train the decoder only (needs --init-from): the codes, and a transformer trained on them, stay valid.")] = False,
                  mix_image_size: Annotated[Optional[int], typer.Option(help="Also crop scenes rendered at this size (e.g. 512), --mix-batch of them per update.")] = None,
                  mix_batch: Annotated[int, typer.Option(help="Crops per update from --mix-image-size scenes.")] = 0,
                  quantize_whole: Annotated[bool, typer.Option(help="With --decoder-only: quantize whole scenes over the schedule generation uses at their size, decode crops of them.")] = False,
                  layout: Annotated[str, typer.Option(help="Scene layout: free or slots (what the transformer's pools use).")] = "free",
                  lr: LROpt = None, warmup: WarmupOpt = None, decay_steps: DecayOpt = None, ckpt_every: CkptEveryOpt = 500,
                  device: TrainDeviceOpt = "auto", cpu_bf16: CpuBf16Opt = False,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Train the toy world's BSQ VAE on rendered scenes."""
    from stepvar.training.common import optim_for_run
    from stepvar.training.train_vae import VAETrainConfig, train_vae

    def body():
        check_output_dir(out_dir)
        cfg = VAETrainConfig(seed=seed, batch_size=batch, device=device, cpu_bf16=cpu_bf16, ckpt_every=ckpt_every,
                             init_from=None if init_from is None else str(init_from), decoder_only=decoder_only,
                             object_weight=object_weight, mix_image_size=mix_image_size, mix_batch=mix_batch,
                             quantize_whole=quantize_whole, layout=layout)
        cfg.optim = optim_for_run(cfg.optim, steps, lr, warmup, decay_steps, out_dir if resume else None)
        res = train_vae(cfg, out_dir, steps, resume="auto" if resume else False,
                        on_log=_log_printer(as_json, steps, "train vae"), on_note=_note_printer())
        out.print(plain(f"VAE checkpoint at step {res.step}: {res.checkpoint}")) if not as_json else None

    run_guarded(body)


@train_app.command("gpt")
def train_gpt_cmd(out_dir: RunDirOpt, vae: Annotated[Path, typer.Option(help="The VAE (frozen): a VAE run directory or checkpoint, or an export directory such as stepvar/assets/toy.")],
                  steps: StepsOpt = 30000, resume: ResumeOpt = False, seed: TrainSeedOpt = 0, batch: TrainBatchOpt = 16,
                  self_correction: Annotated[float, typer.Option(help="Bitwise self-correction strength (0 = off).")] = 0.0,
                  init_from: Annotated[Optional[Path], typer.Option(help="Start from these weights (an export directory or a transformer run) with a fresh optimiser.")] = None,
                  prefix_batch: Annotated[int, typer.Option(help="Extra rows per update trained on the first --prefix-scales scales only (cheap layout signal).")] = 0,
                  prefix_scales: Annotated[int, typer.Option(help="Scales the prefix rows run.")] = 5,
                  latents: Annotated[Optional[Path], typer.Option(help="Train on this pre-encoded scene pool (`stepvar train latents`) instead of rendering and encoding fresh scenes every step.")] = None,
                  form_weights: Annotated[Optional[str], typer.Option(help="With --latents: shares of the prompt forms single,count,relation, e.g. 0.15,0.3,0.55 (default: the pool's, a third each).")] = None,
                  layout: Annotated[Optional[str], typer.Option(help="Object placement of the scenes: free or slots (default: the pool's, else free).")] = None,
                  loss_weighting: Annotated[str, typer.Option(help="token: every token alike; scale: every scale alike (the coarse scales that decide layout and colour weigh as much as the fine ones).")] = "token",
                  mix_latents: Annotated[Optional[Path], typer.Option(help="A second pool at another resolution (e.g. 512 px beside --latents' 256 px), trained in the same updates; the model learns which resolution a row is.")] = None,
                  mix_batch: Annotated[int, typer.Option(help="Full rows per update from --mix-latents (with --batch, sets the ratio).")] = 0,
                  mix_prefix_batch: Annotated[int, typer.Option(help="Prefix rows per update from --mix-latents.")] = 0,
                  lr: LROpt = None, warmup: WarmupOpt = None, decay_steps: DecayOpt = None, ckpt_every: CkptEveryOpt = 500,
                  device: TrainDeviceOpt = "auto", cpu_bf16: CpuBf16Opt = False,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Train the toy transformer and its grammar text encoder against a frozen VAE."""
    from stepvar.training.common import optim_for_run
    from stepvar.training.train_gpt import GPTTrainConfig, train_transformer

    def body():
        check_output_dir(out_dir)
        cfg = GPTTrainConfig(seed=seed, batch_size=batch, device=device, cpu_bf16=cpu_bf16, self_correction=self_correction,
                             prefix_batch=prefix_batch, prefix_scales=prefix_scales, ckpt_every=ckpt_every,
                             init_from=None if init_from is None else str(init_from),
                             latents=None if latents is None else str(latents),
                             form_weights=_form_weights(form_weights), layout=layout, loss_weighting=loss_weighting,
                             mix_latents=None if mix_latents is None else str(mix_latents), mix_batch=mix_batch,
                             mix_prefix_batch=mix_prefix_batch)
        cfg.optim = optim_for_run(cfg.optim, steps, lr, warmup, decay_steps, out_dir if resume else None)
        res = train_transformer(cfg, out_dir, steps, vae, resume="auto" if resume else False,
                                on_log=_log_printer(as_json, steps, "train gpt"), on_note=_note_printer())
        out.print(plain(f"transformer checkpoint at step {res.step}: {res.checkpoint}")) if not as_json else None

    run_guarded(body)


def _form_weights(text: str | None) -> tuple[float, ...] | None:
    from stepvar.options import parse_float_list

    value = parse_float_list(text, "form-weights")
    return None if value is None else tuple(value if isinstance(value, list) else [value])


def _every(k_step: int, fn):
    """Call fn(k, total) only when k crosses a multiple of k_step, and at the end."""
    last = [0]

    def call(k: int, total: int) -> None:
        if k // k_step > last[0] // k_step or k == total:
            fn(k, total)
        last[0] = k

    return call


@train_app.command("latents")
def latents_cmd(out_file: Annotated[Path, typer.Option("--out", "-o", help="The pool file to write (safetensors).")],
                vae: Annotated[Path, typer.Option(help="The frozen VAE the transformer will train against (as for `train gpt --vae`).")],
                n: Annotated[int, typer.Option(help="Scenes in the pool.")] = 20000, seed: TrainSeedOpt = 1,
                size: Annotated[int, typer.Option(help="Image side in pixels (the schedule's).")] = 256,
                layout: Annotated[str, typer.Option(help="Object placement: free (anywhere) or slots (one jittered arrangement per prompt form).")] = "free",
                device: TrainDeviceOpt = "auto", as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Render and VAE-encode a pool of scenes once, for `train gpt --latents` (about twice the update rate on CPU)."""
    from stepvar.devices import resolve_device
    from stepvar.training.latent_pool import build_latent_pool, save_latent_pool
    from stepvar.training.train_gpt import as_vae

    def body():
        from stepvar.io import check_output_path
        from stepvar.training.latent_pool import check_pool_settings

        check_pool_settings(n, size, layout)
        check_output_path(out_file)
        dev = resolve_device(device)
        pool = build_latent_pool(as_vae(vae).to(dev), n, seed, size, device=dev, layout=layout,
                                 on_progress=None if as_json else _every(2048, lambda k, total: out.print(f"encoded {k}/{total}")))
        save_latent_pool(pool, out_file)
        if as_json:
            out.print_json(data={"path": str(out_file), "scenes": len(pool), "seed": seed, "image_size": size,
                                 "layout": layout, "encoder_sha256": pool.encoder_sha256})
        else:
            out.print(plain(f"{len(pool)} scenes -> {out_file}"))

    run_guarded(body)


@train_app.command("merge-latents")
def merge_latents_cmd(pools: Annotated[list[Path], typer.Argument(help="Pools made by `stepvar train latents` with one VAE, image size and layout.")],
                      out_file: Annotated[Path, typer.Option("--out", "-o", help="The merged pool file to write (safetensors).")],
                      as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Join pools into one (e.g. more scenes at 512 px beside an existing pool), for `train gpt --latents/--mix-latents`."""

    def body():
        from stepvar.io import check_output_path
        from stepvar.training.latent_pool import load_latent_pool, merge_latent_pools, save_latent_pool

        check_output_path(out_file)
        pool = merge_latent_pools([load_latent_pool(p) for p in pools])
        save_latent_pool(pool, out_file)
        if as_json:
            out.print_json(data={"path": str(out_file), "scenes": len(pool), "image_size": pool.image_size,
                                 "layout": pool.layout, "encoder_sha256": pool.encoder_sha256})
        else:
            out.print(plain(f"{len(pool)} scenes -> {out_file}"))

    run_guarded(body)


@train_app.command("export")
def export_cmd(checkpoint: Annotated[Path, typer.Argument(help="A transformer run directory or checkpoint.")],
               out_dir: RunDirOpt,
               vae: Annotated[Optional[Path], typer.Option(help="Ship this decoder-only fine-tune of the run's VAE instead.")] = None) -> None:
    """Write the shippable fp16 weights (transformer, VAE, text encoder) and model.json."""
    from stepvar.training.train_gpt import export_embedded

    def body():
        check_output_dir(out_dir)
        out.print(plain(f"exported to {export_embedded(checkpoint, out_dir, vae=vae)}"))

    run_guarded(body)
