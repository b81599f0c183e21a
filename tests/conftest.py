import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny random-weight pipeline, built once per test session."""
    from stepvar.pipeline import load_pipeline

    return load_pipeline("tiny", device="cpu")
