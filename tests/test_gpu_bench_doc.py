"""scripts/gpu_bench_doc.py: the page gpu_bench.sh writes, from real records of a CPU run (its GPU
figures cannot be produced here; the layout and the reading of the records can)."""

import json

from conftest import load_script
from typer.testing import CliRunner

from stepvar_cli.app import app


def test_offload_table_reads_generate_records_and_says_which_run_failed(tmp_path):
    runner = CliRunner()
    for mode in ("none", "model"):  # text-encoder left out: its run "failed"
        r = runner.invoke(app, ["generate", "--model", "tiny", "--device", "cpu", "-p", "a red circle", "--offload", mode,
                                "--out", str(tmp_path / f"offload_{mode}.png"), "--json"])
        assert r.exit_code == 0, r.output
    doc = load_script("gpu_bench_doc")
    records = doc.read_offload_records(tmp_path)
    assert records["text-encoder"] is None and records["model"]["offload"] == "model"
    rows = {line.split("|")[1].strip(): line for line in doc.offload_table(records) if line.startswith("| ")}
    assert set(rows) == {"--offload", "none", "text-encoder", "model"}
    assert "no record" in rows["text-encoder"]
    kv = records["none"]["memory"]["kv_cache_bytes"]
    assert f"| {kv / 2**20:,.0f} |" in rows["none"]
    # on a CPU there is no GPU peak: a dash, never a made-up zero
    assert rows["model"].split("|")[2].strip() == "-"
    assert json.loads((tmp_path / "offload_model.json").read_text())["memory"]["peak_gpu_memory_bytes"] is None
