"""`stepvar generate` with an InfinityStar model: outputs, one-line errors (exit 2), nothing written on error."""

import json

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from stepvar_cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args,needle", [
    (["--model", "infinitystar-tiny", "--frames", "18"], "allowed"),
    (["--model", "infinitystar-tiny", "--frames", "17", "--out", "{tmp}/a.png"], "go to an .mp4"),
    (["--model", "infinitystar-tiny", "--duration", "7"], "allowed"),
    (["--model", "infinitystar-tiny", "--frames", "17", "--duration", "1"], "not both"),
    (["--model", "infinitystar-tiny", "--first-scale", "30"], "outside this schedule"),
    (["--model", "infinitystar-tiny", "--resolution", "720"], "generates at 256"),
    (["--model", "infinitystar-tiny", "--tau", "a"], "--tau"),
    (["--model", "infinitystar-8b", "--frames", "17"], "needs --weights"),
    (["--model", "tiny", "--frames", "17"], "are for video models"),
])
def test_bad_video_requests_exit_2_and_write_nothing(tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "clip.mp4")]
    r = run("generate", "--prompt", "a red car", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and len(r.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # the full-width random VAE: seconds alone, minutes on a shared 2-core machine
def test_one_frame_video_model_writes_png_and_sidecar(tmp_path):
    out = tmp_path / "frame.png"
    r = run("generate", "--prompt", "a red car", "--model", "infinitystar-tiny", "--frames", "1", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["model_status"].startswith("untrained") and record["frames"] == 1
    assert iio.imread(out).shape == (256, 256, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.json", "frame.png"]


@pytest.mark.slow
def test_17_frame_mp4(tmp_path):
    out = tmp_path / "clip.mp4"
    r = run("generate", "--model", "infinitystar-tiny", "--prompt", "a red car", "--frames", "17", "--out", out)
    assert r.exit_code == 0, r.output
    assert iio.imread(out).shape == (17, 256, 256, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4", "clip.poster.png"]


def test_models_lists_the_video_presets():
    r = run("models", "--json")
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert rows["infinitystar-8b"]["needs"] == ["weights", "vae", "text-encoder"]
    assert rows["infinitystar-tiny"]["needs"] == [] and "untrained" in rows["infinitystar-tiny"]["description"]
