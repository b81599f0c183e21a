"""docs/adding_a_method.md's example method, exactly as written there, through generate,
bench --flops-only and compare, with no other file changed."""

import json
import re
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepvar.pruning import registry
from stepvar_cli.app import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


@pytest.fixture(scope="module")
def example_method():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    module = types.ModuleType("every_nth_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)  # the doc's own text, nothing else
    yield module.EveryNth
    registry.METHODS.pop("every-nth", None)


def test_example_generates(example_method, tmp_path):
    r = CliRunner().invoke(app, ["generate", "--model", "tiny", "--method", "every-nth", "--keep", "0.4",
                                 "--prompt", "a red circle", "--out", str(tmp_path / "a.png"), "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["pruning"]["method"] == "every-nth" and record["pruning"]["keep"] == 0.4
    assert (tmp_path / "a.png").is_file()


def test_example_in_bench_flops_only(example_method):
    r = CliRunner().invoke(app, ["bench", "--model", "infinity-2b", "--resolution", "1024", "--flops-only",
                                 "--methods", "dense,every-nth", "--keep", "0.4", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["label"]: row for row in json.loads(r.stdout)["results"]}
    assert rows["every-nth@0.4"]["flops"] < rows["dense"]["flops"]


def test_example_in_compare(example_method, tmp_path):
    r = CliRunner().invoke(app, ["compare", "--model", "tiny", "--methods", "dense,every-nth", "--keep", "0.4",
                                 "--prompt", "a red circle", "--warmup", "0", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    labels = [row["label"] for row in json.loads(r.stdout)["results"]]
    assert "every-nth@0.4" in labels and (tmp_path / "grid.png").is_file()
