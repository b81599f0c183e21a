"""HART through the CLI: bench --flops-only, inspect, and the one-line refusals of generate."""

import json

import pytest
from typer.testing import CliRunner

from stepvar_cli.app import app

from test_hart_loading import _write_release

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_bench_flops_only_0p7b():
    r = run("bench", "--model", "hart-0.7b", "--resolution", 1024, "--flops-only", "--methods", "dense,stepvar,fastvar",
            "--keep", 0.4, "--json")
    assert r.exit_code == 0, r.output
    rows = {x["method"]: x for x in json.loads(r.stdout)["flops"]}
    assert list(rows) == ["dense", "stepvar@0.4", "fastvar"]  # fastvar keeps its HART release ratios
    assert rows["stepvar@0.4"]["bound_total"] > 1.5 and rows["fastvar"]["bound_total"] > 1.5
    assert rows["stepvar@0.4"]["published"].startswith("1.4x") and rows["fastvar"]["published"].startswith("1.5x")


def test_inspect_release_folder(tmp_path):
    _write_release(tmp_path / "ok")
    assert run("inspect", tmp_path / "ok", "--model", "hart-0.7b").exit_code == 0
    _write_release(tmp_path / "bad", reshape="decoder_norm.weight")
    r = run("inspect", tmp_path / "bad", "--model", "hart-0.7b", "--json")
    assert r.exit_code == 3 and any("decoder_norm.weight" in p for p in json.loads(r.stdout)["problems"])
    _write_release(tmp_path / "notok", tokenizer=False)
    r = run("inspect", tmp_path / "notok", "--model", "hart-0.7b")
    assert r.exit_code == 2 and "tokenizer folder not found" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--resolution", 512], "1024 px only"),
    (["--method", "fastvar-skip"], "no HART configuration"),
    (["--tau", 0.5], "do not apply"),
])
def test_generate_refusals_are_one_line(tmp_path, args, needle):
    out = tmp_path / "a.png"
    r = run("generate", "--model", "hart-tiny", "--prompt", "a red apple", "--out", out, *args)
    assert r.exit_code == 2 and needle in r.output and not out.exists()


def test_generate_0p7b_without_weights_names_the_download(tmp_path):
    r = run("generate", "--model", "hart-0.7b", "--prompt", "a red apple", "--out", tmp_path / "a.png")
    assert r.exit_code == 2 and "hart-0.7b-1024px" in r.output


@pytest.mark.slow
def test_generate_hart_tiny_1024(tmp_path):
    out = tmp_path / "a.png"
    r = run("generate", "--model", "hart-tiny", "--prompt", "a red apple", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["resolution"] == [1024, 1024] and record["status"].startswith("untrained") and out.exists()
