"""The embedded-model format: a directory of three safetensors weight files plus model.json.

`stepvar train export` writes it (stepvar.training.train_gpt.export_embedded); inference
reads it here, so loading a shipped model never imports the trainer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import StepvarError
from ..models.bsq_vae import BSQVAE, VAEConfig
from ..models.config import InfinityConfig, ModelPreset
from ..models.infinity import Infinity

EXPORT_FILES = {"transformer": "transformer.safetensors", "vae": "vae.safetensors",
                "text_encoder": "text_encoder.safetensors"}

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def load_embedded(directory: str | os.PathLike, device: torch.device | str = "cpu"):
    """(Infinity, BSQVAE, ToyTextEncoder) from an export directory, fp32, eval mode, trained."""
    from safetensors.torch import load_file

    from ..toy.text_encoder import ToyTextConfig, ToyTextEncoder
    from .checkpoints import load_model_weights, load_vae_weights

    d = Path(directory)
    meta = json.loads((d / "model.json").read_text())
    arch = InfinityConfig(**meta["arch"])
    model = Infinity(arch)
    load_model_weights(model, d / EXPORT_FILES["transformer"])
    vae = BSQVAE(VAEConfig(**meta["vae"]))
    load_vae_weights(vae, d / EXPORT_FILES["vae"])
    text = ToyTextEncoder(ToyTextConfig(**{"mirror_relations": False, **meta["text"]}))  # older exports: unmirrored
    text.load_state_dict({k: v.float() for k, v in load_file(str(d / EXPORT_FILES["text_encoder"])).items()})
    text.trained = True
    for m in (model, vae, text):
        m.float().to(device).eval()
    model.init_buffers(device)
    return model, vae, text


def embedded_dir(preset: ModelPreset) -> Path:
    """Where an embedded preset's exported weights live inside the installed package."""
    return ASSETS / preset.name


def embedded_meta(preset: ModelPreset, directory: str | Path | None = None) -> dict:
    path = Path(directory or embedded_dir(preset)) / "model.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        if directory is not None:
            raise StepvarError(f"{directory}: not an export of {preset.name} (no model.json; "
                               "make one with `stepvar train export`)") from None
        raise StepvarError(f"{preset.name}: its embedded weights are missing ({path}); reinstall stepvar") from None


def load_embedded_preset(preset: ModelPreset, directory: str | Path | None = None):
    """(Infinity, BSQVAE, text encoder, model.json) from the package's assets, or from another export
    of the same model (`directory`, e.g. a continued training run); the preset's arch must match."""
    meta = embedded_meta(preset, directory)
    # A field the export's model.json predates counts at its default (e.g. abs_pos_grid 0).
    shipped, declared = asdict(InfinityConfig(**meta["arch"])), asdict(preset.arch)
    # budget_embed may differ: an export trained at more resolutions than the preset declares adds it.
    diff = sorted(k for k in declared if k not in ("name", "description", "budget_embed") and declared[k] != shipped[k])
    if diff:
        where = "embedded weights" if directory is None else f"the export in {directory}"
        raise StepvarError(f"{preset.name}: preset and {where} disagree on {', '.join(diff)}")
    return (*load_embedded(directory or embedded_dir(preset)), meta)
