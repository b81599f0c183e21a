"""bench and compare: the report schema as documented, incremental rows, FLOP counts, fidelity metrics."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import stepvar.eval.bench as bench_mod
from stepvar.eval.bench import ROW_FIELDS, ROW_REQUIRED, expand_configs, validate_rows
from stepvar.errors import ConfigError
from stepvar.eval.flops import plan_flops, result_flops, rows_per_scale
from stepvar.eval.metrics import latent_cosine, paired_fidelity, psnr, ssim, token_agreement
from stepvar.pruning.registry import make_pruner
from stepvar.sampling import SamplingConfig
from stepvar.schedules import schedule_for
from stepvar_cli.app import app

runner = CliRunner()
DOC = Path(__file__).resolve().parents[1] / "docs" / "bench_schema.md"
TINY = ["--model", "tiny", "--device", "cpu"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def documented_row_types() -> dict[str, str]:
    """The row table of docs/bench_schema.md: field -> 'number|null' style type."""
    text = DOC.read_text(encoding="utf-8").split("## Rows", 1)[1]
    types = {}
    for line in text.splitlines():
        m = re.match(r"\| `([a-z_0-9]+)` \| ([a-z ]+) \|", line)
        if m:
            types[m.group(1)] = m.group(2).strip().replace(" or ", "|")
    return types


def bench_args(out, *extra):
    # fastvar-pos-skip: at 256 px the release's fastvar-skip skips nothing; this one skips the last two scales
    return ["bench", *TINY, "--resolution", "256", "--methods", "dense,stepvar,fastvar-pos-skip", "--keep", "0.5",
            "--repeats", "1", "--warmup", "0", "--out", out, *extra]


# ---- bench ---------------------------------------------------------------------------------------
def test_docs_document_exactly_the_row_fields():
    types = documented_row_types()
    assert types == {k: v[0] for k, v in ROW_FIELDS.items()}
    assert set(ROW_REQUIRED) <= set(types)


def test_bench_report_follows_documented_schema(tmp_path):
    r = run(*bench_args(tmp_path, "--json"))
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)  # --json: the report and nothing else on stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert printed["results"] == report["results"]
    assert report["kind"] == "stepvar-bench" and report["status"] == "complete"
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["dtype"] == "float32"
    assert isinstance(env["threads"], int) and env["threads"] >= 1
    rows = report["results"]
    assert validate_rows(rows, documented_row_types()) == []
    assert [x["label"] for x in rows] == ["dense", "stepvar@0.5", "fastvar-pos-skip"]
    assert all(x["status"] == "ok" and x["resolution"] == 256 and x["measured"] for x in rows)
    dense, stepvar, skip = rows
    assert dense["speedup_vs_dense"] == 1.0 and dense["flop_speedup_bound"] == 1.0 and dense["keep"] is None
    assert stepvar["keep"] == 0.5 and skip["keep"] is None
    for x in rows:
        assert x["speedup_vs_dense"] > 0 and x["latency_s"] > 0 and x["peak_memory_kind"] == "cpu_rss_peak_delta"
        assert x["flops"] == x["flops_transformer"] + x["flops_decode"]
        assert x["flops_transformer"] == sum(x["flops_per_scale"]) + x["flops_conditioning"]
        assert len(x["per_scale_s"]) == len(x["flops_per_scale"]) == len(x["tokens_per_block"]) == 7
    # fewer tokens, fewer FLOPs: pruning and skipping can only raise the bound
    assert 1.0 < stepvar["flop_speedup_bound"] < skip["transformer_flop_speedup_bound"]
    assert skip["skipped_scales"] == [5, 6] and skip["tokens_per_block"][6]["max"] == 0
    assert stepvar["tokens_per_block"][6] == {"grid": "16x16", "dense": 256, "min": 128, "max": 128, "skipped": False}
    with open(tmp_path / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(ROW_FIELDS) and [t["label"] for t in table] == ["dense", "stepvar@0.5", "fastvar-pos-skip"]
    assert "| 256 | stepvar | 0.5 | ok |" in (tmp_path / "report.md").read_text()
    for name in ("latency_vs_resolution", "speedup_vs_keep", "per_scale_time", "per_scale_flops"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 400
    assert not list(tmp_path.glob(".*tmp"))


def _failing_run_once(fail_when):
    real = bench_mod.run_once

    def fake(pipeline, prompts, schedule, pruner, sampling, **kwargs):
        exc = fail_when(schedule, pruner)
        if exc is not None:
            raise exc
        return real(pipeline, prompts, schedule, pruner, sampling, **kwargs)

    return fake


def test_failed_configuration_is_reported_others_kept_exit_3(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_mod, "run_once", _failing_run_once(
        lambda sched, pruner: RuntimeError("boom\nsecond line") if pruner.name == "stepvar" else None))
    r = run(*bench_args(tmp_path))
    assert r.exit_code == 3, r.output
    rows = json.loads((tmp_path / "report.json").read_text())["results"]
    assert [(x["label"], x["status"]) for x in rows] == [
        ("dense", "ok"), ("stepvar@0.5", "failed: RuntimeError: boom"), ("fastvar-pos-skip", "ok")]
    assert rows[1]["latency_s"] is None and rows[2]["speedup_vs_dense"] > 0
    assert validate_rows(rows, documented_row_types()) == []
    assert "failed" in r.stderr


def test_interrupt_keeps_rows_already_measured(tmp_path, monkeypatch):
    # 256 finishes; at 512 dense runs, then Ctrl-C arrives in the next configuration.
    monkeypatch.setattr(bench_mod, "run_once", _failing_run_once(
        lambda sched, pruner: KeyboardInterrupt() if sched.pixel_size == (512, 512) and pruner.name != "dense" else None))
    r = run("bench", *TINY, "--resolution", "256,512", "--methods", "dense,stepvar", "--keep", "0.5",
            "--repeats", "1", "--warmup", "0", "--out", tmp_path)
    assert r.exit_code == 130, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "interrupted"
    got = [(x["resolution"], x["label"], x["status"]) for x in report["results"]]
    assert got == [(256, "dense", "ok"), (256, "stepvar@0.5", "ok"), (512, "dense", "interrupted: 1/1 timed runs")]
    assert (tmp_path / "report.csv").read_text().count("\n") == 4


def test_on_row_is_called_as_rows_are_measured(tiny_pipe, tmp_path):
    seen = []

    def on_row(row):
        in_file = {r["label"]: r["status"] for r in json.loads((tmp_path / "report.json").read_text())["results"]}
        seen.append((row["label"], in_file[row["label"]]))

    report = bench_mod.run_bench(tiny_pipe, [256], ["stepvar"], [0.5, 1.0], repeats=1, warmup=0, on_row=on_row,
                                 out_dir=tmp_path)
    assert seen == [("dense", "ok"), ("stepvar@0.5", "ok"), ("stepvar@1", "ok")]  # on disk when on_row hears of it
    keep1 = report.rows[2]
    assert keep1["label"] == "stepvar@1" and keep1["flop_speedup_bound"] == pytest.approx(1.0)


def test_every_timed_run_is_on_disk_before_the_next_starts(tiny_pipe, tmp_path, monkeypatch):
    # What a SIGKILL at any moment would leave: the file as it stands when the next run begins.
    snapshots, real = [], bench_mod.run_once

    def spy(*args, **kwargs):
        path = tmp_path / "report.json"
        rows = json.loads(path.read_text())["results"] if path.exists() else []
        snapshots.append([(r["label"], r["status"], len(r["latency_runs"])) for r in rows])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_mod, "run_once", spy)
    bench_mod.run_bench(tiny_pipe, [256], ["stepvar"], [0.5], repeats=2, warmup=0, out_dir=tmp_path)
    # Round 1 runs dense then stepvar@0.5; round 2 runs them in reverse order.
    assert snapshots == [
        [],
        [("dense", "partial: 1/2 timed runs", 1)],
        [("dense", "partial: 1/2 timed runs", 1), ("stepvar@0.5", "partial: 1/2 timed runs", 1)],
        [("dense", "partial: 1/2 timed runs", 1), ("stepvar@0.5", "partial: 2/2 timed runs", 2)]]
    final = json.loads((tmp_path / "report.json").read_text())
    assert final["status"] == "complete" and [r["status"] for r in final["results"]] == ["ok", "ok"]
    assert validate_rows(final["results"], documented_row_types()) == []


def test_expand_configs_rules():
    labels = lambda ms, ks=None: [c.label for c in expand_configs(ms, ks)]  # noqa: E731
    assert labels(["stepvar", "fastvar"], [0.3, 0.5]) == ["dense", "stepvar@0.3", "stepvar@0.5", "fastvar"]
    assert labels(["fastvar@0.4", "dense", "stepvar"]) == ["dense", "fastvar@0.4", "stepvar@0.4"]
    assert labels(["stepvar:keep=0.2"], [0.5]) == ["dense", "stepvar:keep=0.2"]
    for bad in (["dense@0.5"], ["nope"], ["fastvar@x"], ["stepvar@1.5"]):
        with pytest.raises(ConfigError):
            expand_configs(bad, None)


@pytest.mark.parametrize("args", [
    ["--resolution", "300"], ["--keep", "0"], ["--methods", "dense,bogus"], ["--repeats", "0"],
    ["--methods", "stepvar:scales=[9]", "--resolution", "256"],
])
def test_bench_bad_input_exit_2_one_line(tmp_path, args):
    out = tmp_path / "o"
    r = run("bench", *TINY, "--out", out, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "Traceback" not in r.output
    assert not (out / "report.json").exists()


def test_flops_only_needs_no_weights():
    r = run("bench", "--model", "infinity-2b", "--flops-only", "--resolution", "1024", "--methods",
            "dense,stepvar,fastvar-skip", "--keep", "0.4", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["results"]
    assert [x["measured"] for x in rows] == [False] * 3 and rows[0]["latency_s"] is None
    assert validate_rows(rows, documented_row_types()) == []
    assert 1.5 < rows[1]["flop_speedup_bound"] < rows[1]["transformer_flop_speedup_bound"]


# ---- FLOPs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,res,batch", [
    ("dense", 256, 1), ("stepvar", 256, 2), ("fastvar", 512, 1), ("fastvar-skip", 768, 1), ("fastvar-pos-skip", 256, 1),
    ("texture-only", 512, 1),
])
def test_plan_flops_equals_counted_flops(tiny_pipe, method, res, batch):
    sched = schedule_for(res)
    prompts = ["a red circle above a square", "x"][:batch]
    sampling = SamplingConfig(seed=0)
    result = tiny_pipe.generate(prompts, sched, make_pruner(method), sampling, decode=False)
    text_len = tiny_pipe.text_encoder.encode(prompts, tiny_pipe.device)[0].shape[1]
    cfg_scales = sampling.per_scale("cfg", len(sched))
    counted = result_flops(tiny_pipe.model.cfg, result.sample, sched, cfg_scales, batch, text_len)
    planned = plan_flops(tiny_pipe.model.cfg, sched, make_pruner(method), rows_per_scale(cfg_scales, batch), text_len, batch)
    assert planned == counted


def test_dense_flops_match_torch_flop_counter(tiny_pipe):
    """With SDPA forced onto its math path every matmul is visible to torch's FLOP counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    sched, prompts = schedule_for(256), ["a red circle", "a much longer prompt with padding"]
    sampling = SamplingConfig(seed=0, cfg=[3.0] * 5 + [1.0] * 2)  # CFG rows dropped for the last two scales
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        result = tiny_pipe.generate(prompts, sched, make_pruner("dense"), sampling, decode=False)
    text_len = tiny_pipe.text_encoder.encode(prompts, tiny_pipe.device)[0].shape[1]
    ours = result_flops(tiny_pipe.model.cfg, result.sample, sched, sampling.per_scale("cfg", 7), 2, text_len)
    assert ours.total == counter.get_total_flops()


# ---- compare -------------------------------------------------------------------------------------
def test_compare_one_prompt(tmp_path):
    r = run("compare", *TINY, "--prompt", "a red circle", "--methods", "dense,stepvar,fastvar-pos-skip", "--keep", "0.5",
            "--seed", 3, "--warmup", 0, "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data == json.loads((tmp_path / "report.json").read_text())
    rows = {x["label"]: x for x in data["results"]}
    dense, stepvar, skip = rows["dense"], rows["stepvar@0.5"], rows["fastvar-pos-skip"]
    assert dense["identical"] and dense["psnr_db"] is None and dense["ssim"] == pytest.approx(1.0)
    assert dense["token_agreement"] == [1.0] * 7 and dense["speedup_vs_dense"] == 1.0
    for x in (stepvar, skip):
        assert not x["identical"] and math.isfinite(x["psnr_db"]) and 0 < x["psnr_db"] < 60 and x["ssim"] < 1
        assert x["latent_cosine"] < 1 and x["speedup_vs_dense"] > 0
    # scales before the first pruned one are sampled identically (same seed, same RNG use)
    first = stepvar["pruned_scales"][0]
    assert stepvar["token_agreement"][:first] == [1.0] * first and stepvar["token_agreement_pruned"] < 1
    assert skip["token_agreement"][5:] == [None, None] and skip["skipped_scales"] == [5, 6]
    for x in data["results"]:
        assert (tmp_path / x["image"]).is_file()
    assert {p.name for p in tmp_path.glob("0_*.png")} == {"0_dense.png", "0_stepvar_0.5.png", "0_fastvar-pos-skip.png"}
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] >= 3 * 256 and grid.size[1] > 256
    assert "inf (identical)" in (tmp_path / "report.md").read_text()


def test_compare_prompt_file_mean_and_std(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red circle\n\na blue square\n")
    out = tmp_path / "out"
    r = run("compare", *TINY, "--prompts", prompts, "--methods", "stepvar,random", "--warmup", 0, "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    assert len(data["results"]) == 6
    # the paired table: stepvar@0.4 vs random@0.4 on the same two prompts, recomputed from the rows
    (pair,) = data["paired"]
    psnr = {(x["label"], x["prompt_index"]): x["psnr_db"] for x in data["results"]}
    diffs = [psnr["stepvar@0.4", i] - psnr["random@0.4", i] for i in (0, 1)]
    assert (pair["a"], pair["b"], pair["psnr_db"]["n"]) == ("stepvar@0.4", "random@0.4", 2)
    assert pair["psnr_db"]["mean_diff"] == pytest.approx(sum(diffs) / 2)
    assert "Paired" in (out / "report.md").read_text() and "paired over the same prompts" in r.stdout
    summary = {s["label"]: s for s in data["summary"]}
    assert summary["dense"]["psnr_db"]["n_identical"] == 2 and summary["dense"]["ssim"]["mean"] == pytest.approx(1.0)
    s = summary["stepvar@0.4"]
    assert s["n"] == 2 and s["psnr_db"]["n"] == 2 and s["psnr_db"]["std"] >= 0 and math.isfinite(s["psnr_db"]["mean"])
    assert "mean ± std over 2 prompts" in r.stdout and "± " in (out / "report.md").read_text()
    # toy-world prompts get the evaluator's verdict on the very image that was saved
    from stepvar.toy.evaluator import STRAY_BLOB_MIN_AREA, detect, parse, score, stray_detections

    for x in data["results"]:
        with Image.open(out / x["image"]) as im:
            image = np.asarray(im.convert("RGB"))
        verdicts = score(image, x["prompt"])
        assert x["score"] == float(verdicts.pop("overall")) and x["score_categories"] == verdicts
        assert x["stray_objects"] == len(stray_detections(detect(image), parse(x["prompt"])))
        assert x["stray_blobs"] == len(stray_detections(detect(image, STRAY_BLOB_MIN_AREA), parse(x["prompt"])))
    assert summary["dense"]["score"]["n"] == 2 and "score" in (out / "report.md").read_text()
    for label, s in summary.items():  # the stray share and category means, recomputed from the rows
        rows = [x for x in data["results"] if x["label"] == label]
        assert s["stray"]["mean"] == pytest.approx(np.mean([x["stray_objects"] > 0 for x in rows]))
        assert s["stray_blobs"]["mean"] == pytest.approx(np.mean([x["stray_blobs"] > 0 for x in rows]))
        assert s["score_categories"]["colors"]["mean"] == pytest.approx(np.mean([x["score_categories"]["colors"] for x in rows]))
    assert "stray" in (out / "report.md").read_text()


def test_compare_leaves_prompts_outside_the_toy_grammar_unscored(tmp_path):
    r = run("compare", *TINY, "--prompt", "a lighthouse at dawn", "--methods", "stepvar", "--warmup", 0,
            "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert all(x["score"] is None and x["score_categories"] is None and x["stray_objects"] is None
               and x["stray_blobs"] is None for x in data["results"])
    assert all(s["stray"]["n"] == 0 and s["score_categories"] == {} for s in data["summary"])


def test_compare_needs_one_prompt_source(tmp_path):
    r = run("compare", *TINY, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--prompt" in r.output


# ---- metrics -------------------------------------------------------------------------------------
def test_psnr_and_ssim_sanity():
    rng = np.random.default_rng(0)
    a = rng.integers(20, 235, size=(64, 64, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    b = a + np.uint8(10)  # MSE exactly 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    noisy = np.clip(a.astype(int) + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    very = np.clip(a.astype(int) + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert 1 > ssim(a, noisy) > ssim(a, very) > -1
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert psnr(a, noisy) > psnr(a, very)
    with pytest.raises(ValueError):
        psnr(a, a[:32])


def test_token_agreement_and_latent_cosine():
    x = torch.zeros(1, 2, 2, 4, dtype=torch.bool)
    y = x.clone()
    y[0, 0, 0] = True  # 4 of 16 bits differ
    assert token_agreement(x, y) == 0.75 and token_agreement(x, None) is None
    z = torch.randn(2, 3, 4, 4)
    assert latent_cosine(z, z) == pytest.approx(1.0) and latent_cosine(z, -z) == pytest.approx(-1.0)


def test_paired_fidelity_of_identical_runs(tiny_pipe):
    a = tiny_pipe.generate("a red circle", sampling=SamplingConfig(seed=5))
    f = paired_fidelity(a, a, [4, 5, 6])
    assert f["psnr_db"] == math.inf and f["identical"] and f["ssim"] == pytest.approx(1.0)
    assert f["token_agreement_pruned"] == 1.0 and f["latent_cosine"] == pytest.approx(1.0)


def test_paired_difference_brute_force():
    from stepvar.eval.paired import paired_comparisons, paired_difference

    def row(label, i, psnr, keep=0.4, status="ok", method="m"):
        return {"label": label, "prompt_index": i, "psnr_db": psnr, "ssim": None, "score": None, "keep": keep,
                "status": status, "method": method}

    rows = [row("a", 0, 20.0), row("b", 0, 18.0), row("a", 1, 21.0), row("b", 1, 22.0),
            row("a", 2, None), row("b", 2, 15.0),              # identical to dense: infinite PSNR, drops out
            row("a", 3, 30.0), row("b", 3, 10.0, status="failed: x"),  # b failed: drops out
            row("a", 4, 25.0),                                  # b never ran it
            row("c", 0, 5.0, keep=0.5), row("dense", 0, None, keep=None, method="dense")]
    d = paired_difference(rows, "a", "b", "psnr_db")
    diffs = [2.0, -1.0]
    mean = sum(diffs) / 2
    se = (sum((x - mean) ** 2 for x in diffs) / 1) ** 0.5 / 2 ** 0.5
    assert d == {"mean_diff": pytest.approx(mean), "se": pytest.approx(se), "a_higher": 1, "b_higher": 1, "n": 2}
    assert paired_difference(rows, "a", "b", "ssim") == {"mean_diff": None, "se": None, "a_higher": 0,
                                                         "b_higher": 0, "n": 0}
    pairs = paired_comparisons(rows, ["dense", "a", "b", "c"])  # c has another keep, dense is the reference
    assert [(p["a"], p["b"], p["keep"]) for p in pairs] == [("a", "b", 0.4)]


def test_bench_without_decode_times_text_and_loop_only(tiny_pipe, tmp_path):
    """--no-decode: no decode time or FLOPs, the setting and a note in the report, loop times as usual."""
    rep = bench_mod.run_bench(tiny_pipe, [256], ["stepvar"], [0.5], repeats=1, warmup=0, out_dir=tmp_path, decode=False)
    assert rep.settings["decode"] is False and any("--no-decode" in n for n in rep.notes)
    for row in rep.rows:
        assert row["flops_decode"] == 0 and row["flops"] == row["flops_transformer"]
        assert row["decode_s"] < 0.05 * row["transformer_s"] and row["transformer_speedup_vs_dense"] is not None
    with_decode = bench_mod.run_bench(tiny_pipe, [256], ["stepvar"], [0.5], repeats=1, warmup=0)
    assert all(r["flops_decode"] > 0 for r in with_decode.rows) and with_decode.settings["decode"] is True


def test_compare_and_bench_say_when_a_skip_removes_all_pruning(tmp_path):
    # stepvar-plus prunes only the last grid; skip_last=1 skips it, so it runs as dense:skip_last=1
    r = run("compare", *TINY, "--prompt", "a red circle", "--methods", "dense,stepvar-plus:skip_last=1@0.4",
            "--warmup", 0, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert r.output.count("prunes nothing here") == 1
    row = json.loads((tmp_path / "c" / "report.json").read_text())["results"][1]
    assert row["pruned_scales"] == [] and row["skipped_scales"] == [6]
    r = run("bench", *TINY, "--resolution", "256", "--methods", "dense,stepvar-plus:skip_last=1@0.4,stepvar@0.4",
            "--flops-only", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    notes = json.loads((tmp_path / "b" / "report.json").read_text())["notes"]
    assert [n for n in notes if "prunes nothing here" in n] == [
        "stepvar-plus:skip_last=1 prunes nothing here: skip_last=1 skips every scale it prunes (6), so it runs "
        "as dense with the skip (at 256 px)"]
