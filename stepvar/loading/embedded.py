"""The embedded-model format: a directory of three safetensors weight files plus model.json.

`stepvar train export` writes it (stepvar.training.train_gpt.export_embedded); inference
reads it here, so loading a shipped model never imports the trainer.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import CheckpointError, StepvarError
from ..models.bsq_vae import BSQVAE, VAEConfig
from ..models.config import InfinityConfig, ModelPreset
from ..models.infinity import Infinity
from ..validate import shown

EXPORT_FILES = {"transformer": "transformer.safetensors", "vae": "vae.safetensors",
                "text_encoder": "text_encoder.safetensors"}

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def load_embedded(directory: str | os.PathLike, device: torch.device | str = "cpu"):
    """(Infinity, BSQVAE, ToyTextEncoder) from an export directory, fp32, eval mode, trained."""
    from safetensors.torch import load_file

    from ..toy.text_encoder import ToyTextConfig, ToyTextEncoder
    from .checkpoints import load_model_weights, load_vae_weights
    from .export_check import check_export_hashes

    d = Path(directory)
    meta = read_export_meta(d)
    check_export_hashes(d, meta, EXPORT_FILES)
    model = Infinity(_export_config(InfinityConfig, meta["arch"], d, "arch"))
    load_model_weights(model, d / EXPORT_FILES["transformer"])
    vae = BSQVAE(_export_config(VAEConfig, meta["vae"], d, "vae"))
    load_vae_weights(vae, d / EXPORT_FILES["vae"])
    # older exports: unmirrored
    text = ToyTextEncoder(_export_config(ToyTextConfig, {"mirror_relations": False, **meta["text"]}, d, "text"))
    text.load_state_dict({k: v.float() for k, v in load_file(str(d / EXPORT_FILES["text_encoder"])).items()})
    text.trained = True
    for m in (model, vae, text):
        m.float().to(device).eval()
    model.init_buffers(device)
    return model, vae, text


def embedded_dir(preset: ModelPreset) -> Path:
    """Where an embedded preset's exported weights live inside the installed package."""
    return ASSETS / preset.name


def read_export_meta(directory: str | os.PathLike) -> dict:
    """An export's model.json, checked: a JSON object with the settings every loader reads, and
    every weight file it names present. A bad export is a one-line error naming what is wrong."""
    from ..user_files import check_regular_file, read_json

    d = Path(directory)
    meta = read_json(d / "model.json", "export file")
    for key in ("arch", "vae", "text"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{shown(d / 'model.json')}: no '{key}' settings (not a `stepvar train export` model.json)")
    if not isinstance(meta.get("trained_steps", 0), int):
        raise CheckpointError(f"{shown(d / 'model.json')}: 'trained_steps' is not an integer")
    for fname in EXPORT_FILES.values():
        check_regular_file(d / fname, "export weights")
    return meta


def _export_config(cls, settings: dict, where: Path, what: str):
    """A config dataclass from model.json's settings; a wrong or unknown field names the file."""
    try:
        return cls(**settings)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{shown(where / 'model.json')}: bad '{what}' settings ({shown(exc, 160)})") from None


def embedded_meta(preset: ModelPreset, directory: str | Path | None = None) -> dict:
    path = Path(directory or embedded_dir(preset)) / "model.json"
    if path.is_file():
        return read_export_meta(path.parent)
    if directory is not None:
        raise StepvarError(f"{shown(directory)}: not an export of {preset.name} (no model.json; "
                           "make one with `stepvar train export`)")
    raise StepvarError(f"{preset.name}: its embedded weights are missing ({path}); reinstall stepvar")


def load_embedded_preset(preset: ModelPreset, directory: str | Path | None = None):
    """(Infinity, BSQVAE, text encoder, model.json) from the package's assets, or from another export
    of the same model (`directory`, e.g. a continued training run); the preset's arch must match."""
    meta = embedded_meta(preset, directory)
    # A field the export's model.json predates counts at its default (e.g. abs_pos_grid 0).
    shipped = asdict(_export_config(InfinityConfig, meta["arch"], Path(directory or embedded_dir(preset)), "arch"))
    declared = asdict(preset.arch)
    # budget_embed may differ: an export trained at more resolutions than the preset declares adds it.
    diff = sorted(k for k in declared if k not in ("name", "description", "budget_embed") and declared[k] != shipped[k])
    if diff:
        where = "embedded weights" if directory is None else f"the export in {directory}"
        raise StepvarError(f"{preset.name}: preset and {where} disagree on {', '.join(diff)}")
    return (*load_embedded(directory or embedded_dir(preset)), meta)
