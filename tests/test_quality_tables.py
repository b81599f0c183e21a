"""The quality-table renderer: compare and bench joined by configuration, the recommended preset as A, the grid."""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from stepvar.errors import StepvarError
from stepvar.eval.quality_tables import (bench_rows_by_label, default_grid_prompts, grid_labels, main_table,
                                         paired_table, quality_markdown)
from stepvar_cli.app import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real compare and bench on the tiny random model, laid out as scripts/quality_tables.sh writes them."""
    out = tmp_path_factory.mktemp("q")
    prompts = out / "p.txt"
    prompts.write_text("a red circle\nthree green squares\na blue circle left of a red square\n")
    methods = "dense,stepvar-plus@0.4,stepvar@0.4,random@0.4,stepvar@0.5"
    tiny = ["--model", "tiny", "--device", "cpu"]
    r = CliRunner().invoke(app, ["compare", *tiny, "--prompts", str(prompts), "--methods", methods, "--warmup", "0",
                                 "--out", str(out / "compare")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["bench", *tiny, "--methods", methods, "--repeats", "1", "--warmup", "0",
                                 "--out", str(out / "bench")])
    assert r.exit_code == 0, r.output
    return out


def _load(run_dir):
    return (json.loads((run_dir / "compare" / "report.json").read_text()),
            json.loads((run_dir / "bench" / "report.json").read_text()))


def _cells(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_main_table_joins_compare_and_bench_by_label(run_dir):
    compare, bench = _load(run_dir)
    rows = {c[0]: c for c in _cells(main_table(compare, bench))}
    assert list(rows) == ["dense", "stepvar-plus@0.4", "stepvar@0.4", "random@0.4", "stepvar@0.5"]
    timed = {r["label"]: r for r in bench["results"]}
    summary = {s["label"]: s for s in compare["summary"]}
    for label, cells in rows.items():
        assert cells[-3:] == [f"{timed[label][k]:.2f}" for k in
                              ("transformer_speedup_vs_dense", "speedup_vs_dense", "transformer_flop_speedup_bound")]
        assert cells[1] == f"{summary[label]['score']['mean']:.3f}"
        assert cells[7] == f"{summary[label]['stray']['mean']:.3f}" and cells[8] == f"{summary[label]['stray_blobs']['mean']:.3f}"
    assert rows["dense"][9] == "identical"
    # counting is exercised by one prompt of three: its column is that image's verdict
    count_row = next(r for r in compare["results"] if r["label"] == "stepvar@0.4" and r["prompt_index"] == 1)
    assert rows["stepvar@0.4"][4] == f"{float(count_row['score_categories']['counting']):.3f}"


def test_paired_table_puts_the_recommended_preset_first(run_dir):
    compare, _ = _load(run_dir)
    cells = _cells(paired_table(compare))
    assert [(c[0], c[1]) for c in cells] == [("stepvar-plus@0.4", "stepvar@0.4"), ("stepvar-plus@0.4", "random@0.4")]
    psnr = {(r["label"], r["prompt_index"]): r["psnr_db"] for r in compare["results"]}
    diffs = [psnr["stepvar-plus@0.4", i] - psnr["random@0.4", i] for i in range(3)]
    assert cells[1][2].startswith(f"{sum(diffs) / 3:+.2f}")
    # the pair as compare wrote it had random first? flip it and the table must not change
    flipped = json.loads(json.dumps(compare))
    for p in flipped["paired"]:
        p["a"], p["b"] = p["b"], p["a"]
        for m in ("psnr_db", "ssim", "score"):
            d = p[m]
            d["mean_diff"] = None if d["mean_diff"] is None else -d["mean_diff"]
            d["a_higher"], d["b_higher"] = d["b_higher"], d["a_higher"]
    assert paired_table(flipped) == paired_table(compare)


def test_bench_with_two_resolutions_is_refused():
    rows = [{"label": "dense", "resolution": r, "status": "ok"} for r in (256, 512)]
    with pytest.raises(StepvarError, match="several resolutions"):
        bench_rows_by_label({"results": rows})


def test_default_grid_prompts_cover_the_forms():
    prompts = ["a red circle", "a blue square", "two red circles", "a red circle above a blue square",
               "a green circle left of a red square", "a yellow triangle below a blue circle"]
    assert default_grid_prompts(prompts) == [0, 2, 3, 4]


def test_grid_columns_are_the_keep_and_the_configurations_without_one():
    configs = ["dense", "stepvar@0.3", "stepvar@0.4", "fastvar:skip_last=2@0.4", "stepvar@0.45", "fastvar-skip",
               "fastvar-skip:cfg_drop_from=-3"]
    assert grid_labels(configs, 0.4) == ["dense", "stepvar@0.4", "fastvar:skip_last=2@0.4", "fastvar-skip",
                                         "fastvar-skip:cfg_drop_from=-3"]


def test_render_script_writes_tables_and_grid(run_dir):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_quality
    finally:
        sys.path.pop(0)
    assert render_quality.main([str(run_dir), "--title", "tiny", "--command", "echo hi"]) == 0
    text = (run_dir / "quality.md").read_text()
    assert text.startswith("## tiny") and "echo hi" in text and "Paired against `stepvar-plus`" in text
    compare, bench = _load(run_dir)
    assert quality_markdown(compare, bench, "tiny", "echo hi") == text
    with Image.open(run_dir / "grid_keep0.4.png") as grid:  # 3 prompts x (dense + 3 configurations at 0.4)
        assert grid.size[0] >= 4 * 64 and grid.size[1] >= 3 * 64
    assert render_quality.main([str(run_dir / "missing")]) == 2
