import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny random-weight pipeline, built once per test session."""
    from stepvar.pipeline import load_pipeline

    return load_pipeline("tiny", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is many times faster than two on a busy machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_pipe():
    """InfinityStar-tiny's schedule with a narrow model and VAE (same code paths, a fraction of the compute)."""
    from dataclasses import replace

    from stepvar.loading.infinitystar import load_video_vae
    from stepvar.models.infinitystar import InfinityStar, init_random_, star_preset
    from stepvar.models.video_vae import VideoVAEConfig
    from stepvar.text import HashTextEncoder
    from stepvar.video_pipeline import VideoPipeline
    from stepvar.video_schedules import RESOLUTIONS

    cfg = replace(star_preset("infinitystar-tiny"), name="small", width=64, heads=2, kv_heads=1, depth=2,
                  block_chunks=1, text_channels=32)
    model = init_random_(InfinityStar(cfg), seed=1).eval()
    vae, _ = load_video_vae(None, cfg=VideoVAEConfig(block_out_channels=(8, 16, 16, 16, 16)))
    return VideoPipeline("small", model, vae, HashTextEncoder(32), RESOLUTIONS["256"], torch.device("cpu"), False)


def official_copy(name: str) -> Path | None:
    """Where an exported copy of an official repository lies, for the parity tests.

    The official code is never part of this project: a parity test runs only where the user
    exported the repositories into one folder (fastvar/, infinity/, hart/, infinitystar/) and
    named it in STEPVAR_OFFICIAL_CODE; elsewhere, CI included, it is skipped."""
    root = os.environ.get("STEPVAR_OFFICIAL_CODE")
    return Path(root) / name if root else None


def load_script(name: str):
    """scripts/NAME.py imported as a module (the scripts are not a package), for tests of their functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
