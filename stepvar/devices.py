"""Device and dtype names as users write them, resolved once for the pipeline and the trainers."""

from __future__ import annotations

import torch

from .errors import StepvarError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StepvarError("--device cuda was asked for, but torch sees no CUDA device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise StepvarError(f"unknown --device {device!r}; use auto, cpu or cuda") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise StepvarError(f"unknown --dtype {dtype!r}; use auto, fp32 or bf16")
    return table[dtype]
