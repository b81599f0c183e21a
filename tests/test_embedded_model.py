"""The shipped toy model: it loads from the installed package, is small, deterministic, and the default."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stepvar.models.config import load_model_preset
from stepvar.loading.embedded import embedded_dir
from stepvar.pipeline import DEFAULT_MODEL, load_pipeline
from stepvar.pruning.registry import make_pruner
from stepvar.sampling import SamplingConfig
from stepvar.toy.evaluator import score
from stepvar_cli.app import app

PRESET = load_model_preset("toy")


@pytest.fixture(scope="module")
def toy_pipe():
    return load_pipeline("toy", device="cpu")


def test_toy_is_the_default_model():
    assert DEFAULT_MODEL == "toy" and PRESET.embedded


def test_shipped_files_are_small_and_complete():
    d = embedded_dir(PRESET)
    meta = json.loads((d / "model.json").read_text())
    total = sum(f.stat().st_size for f in d.iterdir())
    assert total <= 25 * 2**20, total
    assert all((d / f).is_file() for f in meta["files"].values())
    assert meta["trained_steps"] > 0


def test_loads_trained_from_the_package(toy_pipe):
    assert toy_pipe.trained and toy_pipe.status == "trained"
    assert toy_pipe.sources["weights"].startswith("embedded")
    assert toy_pipe.schedule().pixel_size == (256, 256)


def test_another_export_of_the_model_loads_with_weights(tmp_path):
    import shutil

    from stepvar.errors import StepvarError

    copy = shutil.copytree(embedded_dir(PRESET), tmp_path / "export")
    pipe = load_pipeline("toy", weights=copy, device="cpu")
    assert pipe.trained and pipe.sources["weights"].startswith(f"export {copy}")
    with pytest.raises(StepvarError, match="no model.json"):
        load_pipeline("toy", weights=tmp_path, device="cpu")
    with pytest.raises(StepvarError, match="do not apply"):
        load_pipeline("toy", vae=copy, device="cpu")


def test_generation_is_deterministic(toy_pipe):
    prompts = ["two blue circles"]
    a = toy_pipe.generate(prompts, sampling=SamplingConfig(seed=5)).images
    b = toy_pipe.generate(prompts, sampling=SamplingConfig(seed=5)).images
    c = toy_pipe.generate(prompts, sampling=SamplingConfig(seed=6)).images
    assert a.shape == (1, 256, 256, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_keep_one_reproduces_dense_on_the_trained_model(toy_pipe):
    s = SamplingConfig(seed=1)
    dense = toy_pipe.generate(["a yellow triangle"], sampling=s).images
    full = toy_pipe.generate(["a yellow triangle"], sampling=s, pruner=make_pruner("stepvar", keep=1.0)).images
    assert np.array_equal(dense, full)


def test_the_issue_example_looks_right(toy_pipe):
    """The model draws what the README's first command asks for (seed 0, the preset's sampling, as the CLI)."""
    sampling = SamplingConfig.for_model(PRESET.sampling, seed=0)
    img = toy_pipe.generate(["a red circle above a blue square"], sampling=sampling).images[0]
    verdicts = score(img, "a red circle above a blue square")
    assert verdicts["overall"], verdicts


def test_cli_uses_the_presets_sampling_defaults(tmp_path):
    r = CliRunner().invoke(app, ["generate", "--prompt", "a green square", "--out", str(tmp_path / "g.png"), "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["model"] == "toy" and record["model_status"] == "trained"
    assert record["sampling"]["cfg"] == PRESET.sampling["cfg"] and record["sampling"]["tau"] == PRESET.sampling["tau"]


def test_unknown_word_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(app, ["generate", "--prompt", "a purple elephant", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "circle" in lines[0], r.output
    assert list(tmp_path.iterdir()) == []
