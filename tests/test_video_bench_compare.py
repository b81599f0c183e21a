"""bench and compare with video models: FLOP rows and bounds for the 8B settings, a measured same-run
timing and a compare (per-frame fidelity, temporal consistency, side-by-side MP4) on small random parts."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stepvar.eval.video_bench import flop_rows, measure
from stepvar.eval.video_compare import frame_fidelity, run_video_compare, side_by_side, temporal_agreement
from stepvar.video_sampling import StarSampling
from stepvar_cli.app import app


pytestmark = pytest.mark.usefixtures("one_thread")


def test_flop_rows_720p_and_480p():
    rows = {r.method: r for r in flop_rows("infinitystar-8b", "720p", 81, ["dense", "stepvar", "fastvar"], [0.4])}
    assert list(rows) == ["dense", "stepvar@0.4", "fastvar"]
    assert rows["dense"].pflop == pytest.approx(9.26, abs=0.005) and rows["dense"].bound == 1.0
    assert rows["stepvar@0.4"].pruned_scales == [27, 28, 29]  # the last three scales of the video clip
    assert rows["stepvar@0.4"].bound == pytest.approx(2.28, abs=0.005)
    assert 1.0 < rows["fastvar"].bound < rows["stepvar@0.4"].bound  # fastvar keeps 0.6 and 3 + 4 of 36 layers dense
    assert "2.01x" in rows["fastvar"].published and "1.4x" in rows["stepvar@0.4"].published
    r480 = {r.method: r for r in flop_rows("infinitystar-8b", "480p", 81, ["stepvar"], [0.4])}
    assert r480["stepvar@0.4"].bound == pytest.approx(2.12, abs=0.005)


def test_bench_flops_only_cli_prints_the_rows():
    r = CliRunner().invoke(app, ["bench", "--model", "infinitystar-8b", "--resolution", "720p", "--flops-only",
                                 "--methods", "dense,stepvar,fastvar", "--keep", "0.4"])
    assert r.exit_code == 0, r.output
    assert "9,259" in r.stdout and "2.28x" in r.stdout and "stepvar@0.4" in r.stdout


def test_measured_same_run_timing(small_pipe):
    text = small_pipe.encode_prompt("a red car", 1)
    rows = measure(small_pipe.model, small_pipe.schedule(17), text, ["stepvar"], [0.4], repeats=1,
                   sampling=StarSampling(seed=0), warmup=0)
    assert [r.method for r in rows] == ["dense", "stepvar@0.4"]
    assert rows[0].speedup == 1.0 and rows[1].token_passes < rows[0].token_passes
    assert all(r.seconds[0] > 0 and r.cpu_seconds[0] > 0 for r in rows)


def test_temporal_agreement_and_frame_fidelity():
    g = np.random.default_rng(0)
    ref = g.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    assert temporal_agreement(ref, ref) == pytest.approx(1.0)
    brighter = np.clip(ref.astype(int) + 3, 0, 255).astype(np.uint8)  # same motion, offset in value
    still = np.repeat(ref[:1], 5, axis=0)
    assert temporal_agreement(still, still) == 1.0
    flicker = ref.copy()
    flicker[2] = 255 - flicker[2]
    assert temporal_agreement(flicker, ref) < temporal_agreement(brighter, ref) <= 1.0
    a = ref[1:].astype(np.float64) - ref[:-1]
    b = flicker[1:].astype(np.float64) - flicker[:-1]
    expected = float((a[1:] * b[1:]).sum() / np.sqrt((a[1:] ** 2).sum() * (b[1:] ** 2).sum()))
    assert temporal_agreement(flicker, ref) == pytest.approx(expected)  # frames 0 -> 1 left out
    p, s = frame_fidelity(ref, ref)
    assert p == [None] * 5 and s == pytest.approx([1.0] * 5)
    sbs = side_by_side([ref, flicker], ["dense", "x"])
    assert sbs.shape == (5, 8 + 16, 16, 3) and (sbs[:, 16:, :8] == ref).all()


@pytest.mark.slow  # two 17-frame decodes and MP4s: about 20 s on the shared 2-core machine
def test_compare_video_writes_the_report_and_mp4s(small_pipe, tmp_path):
    out = tmp_path / "cmp"
    report = run_video_compare(small_pipe, "a red car", 17, ["dense", "stepvar"], [0.4], StarSampling(seed=0), out)
    dense, sv = report.rows
    assert dense["identical"] and dense["temporal_agreement"] == pytest.approx(1.0) and dense["flops_bound"] == 1.0
    assert len(sv["psnr_per_frame"]) == len(sv["ssim_per_frame"]) == 17
    assert sv["token_passes"] < dense["token_passes"] and sv["flops_bound"] > 1.0
    assert sv["peak_kv_bytes"] > 0 and sv["temporal_agreement"] is not None
    assert sorted(p.name for p in out.iterdir()) == ["dense.mp4", "report.json", "side_by_side.mp4", "stepvar@0.4.mp4"]
    video = iio.imread(out / "side_by_side.mp4")
    assert video.shape == (17, 256 + 16, 512, 3)
