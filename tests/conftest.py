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


def official_copy(name: str) -> Path | None:
    """Where an exported copy of an official repository lies, for the parity tests.

    The official code is never part of this project: a parity test runs only where the user
    exported the repositories into one folder (fastvar/, infinity/, hart/, infinitystar/) and
    named it in STEPVAR_OFFICIAL_CODE; elsewhere, CI included, it is skipped."""
    root = os.environ.get("STEPVAR_OFFICIAL_CODE")
    return Path(root) / name if root else None
