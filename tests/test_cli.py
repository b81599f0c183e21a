"""The CLI as scripts use it: exit codes, one-line errors, no partial outputs."""

import json

import pytest
from typer.testing import CliRunner

from stepvar.io import read_png_metadata
from stepvar_cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_writes_png_with_metadata_and_sidecar(tmp_path):
    out = tmp_path / "img.png"
    r = run("generate", "--prompt", "a red circle", "--model", "tiny", "--out", out, "--seed", 3, "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["seed"] == 3 and record["model_status"].startswith("untrained")
    meta = read_png_metadata(out)
    assert meta["prompt"] == "a red circle" and meta["seed"] == "3"
    sidecar = json.loads((tmp_path / "img.json").read_text())
    assert sidecar["pruning"]["method"] == "dense"
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp"))


def test_generate_pruned_jpeg(tmp_path):
    out = tmp_path / "img.jpg"
    r = run("generate", "-p", "x", "-m", "tiny", "-o", out, "--method", "stepvar", "--keep", "0.4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["pruning"]["keep"] == 0.4
    assert out.exists()


@pytest.mark.parametrize("args", [
    ["--prompt", ""],
    ["--prompt", "x", "--model", "no-such-model"],
    ["--prompt", "x", "--resolution", "300"],
    ["--prompt", "x", "--cfg", "-2"],
    ["--prompt", "x", "--tau", "0"],
    ["--prompt", "x", "--method", "stepvar", "--keep", "0"],
    ["--prompt", "x", "--method", "stepvar", "--keep", "1.5"],
    ["--prompt", "x", "--method", "bogus"],
    ["--prompt", "x", "--method", "stepvar", "--keep-per-scale", "12:0.5"],  # 256 px has scales 0..6
    ["--prompt", "x", "--aspect", "banana"],
    ["--prompt", "x", "--size", "12by7"],
])
def test_bad_input_one_line_nonzero_no_output(tmp_path, args):
    out = tmp_path / "o.png"
    r = run("generate", "--model", "tiny", "--out", out, *args)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for target in (tmp_path / "missing-dir" / "o.png", tmp_path / "o.bmp"):
        r = run("generate", "--model", "tiny", "--prompt", "x", "--out", target)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    import os
    if os.geteuid() != 0:  # root can write anywhere, so the permission case needs a normal user
        r = run("generate", "--model", "tiny", "--prompt", "x", "--out", locked / "o.png")
        assert r.exit_code == 2
    assert not (tmp_path / "o.bmp").exists()


def test_models_and_methods_listings():
    r = run("models", "--json")
    assert r.exit_code == 0
    names = {m["name"] for m in json.loads(r.stdout)}
    assert {"infinity-2b", "infinity-8b", "infinity-125m", "infinity-layer24", "tiny"} <= names
    r = run("methods", "--json")
    assert {"stepvar", "fastvar", "fastvar-skip"} <= {m["name"] for m in json.loads(r.stdout)}


def test_inspect_exit_codes(tmp_path):
    from stepvar.loading.checkpoints import save_checkpoint
    from stepvar.models.config import load_model_preset
    from stepvar.models.infinity import Infinity

    sd = Infinity(load_model_preset("tiny").arch).state_dict()
    path = tmp_path / "tiny.pth"
    save_checkpoint(sd, path, "pth-flat")
    ok = run("inspect", path, "--model", "tiny", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    bad = run("inspect", path, "--model", "small-untrained")
    assert bad.exit_code == 3
    missing = run("inspect", tmp_path / "nope.pth")
    assert missing.exit_code == 2 and missing.output.count("\n") == 1


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and "stepvar" in r.stdout


def test_outputs_honour_the_umask(tmp_path):
    import os
    import stat

    out = tmp_path / "m.png"
    assert run("generate", "-p", "x", "-m", "tiny", "-o", out).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_keep_alone_prunes_with_the_recommended_preset(tmp_path):
    from stepvar.pruning.registry import RECOMMENDED_METHOD

    out = tmp_path / "img.png"
    r = run("generate", "-p", "x", "-m", "tiny", "-o", out, "--keep", "0.4", "--json")
    assert r.exit_code == 0, r.output
    pruning = json.loads((tmp_path / "img.json").read_text())["pruning"]
    assert pruning["method"] == RECOMMENDED_METHOD != "dense" and pruning["keep"] == 0.4
    r = run("methods", "--json")
    assert [m["name"] for m in json.loads(r.stdout) if m["recommended"]] == [RECOMMENDED_METHOD]


@pytest.mark.parametrize("extra", [["--keep", "0.4"], ["--keep-per-scale", "5:0.5"], ["--first-scale", "5"]])
def test_dense_with_pruning_options_is_refused(tmp_path, extra):
    r = run("generate", "-p", "x", "-m", "tiny", "-o", tmp_path / "o.png", "--method", "dense", *extra)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "dense" in lines[0], r.output
    assert list(tmp_path.iterdir()) == []
