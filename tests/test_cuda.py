"""The GPU path: the same contracts as on the CPU, on a CUDA device (skipped without one).

scripts/gpu_bench.sh runs these (`pytest -m cuda`) before its bench. They use the tiny
random-weight model, so they take seconds.
"""

import numpy as np
import pytest
import torch

from stepvar.pruning.registry import make_pruner
from stepvar.sampling import SamplingConfig, resize_codes

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def gpu_pipe():
    from stepvar.pipeline import load_pipeline

    return load_pipeline("tiny", device="cuda", dtype="fp32")


@pytest.fixture(scope="module")
def bf16_pipe():
    from stepvar.pipeline import load_pipeline

    return load_pipeline("tiny", device="cuda", dtype="bf16")


@pytest.mark.parametrize("name", ["stepvar", "stepvar-plus", "fastvar-pos", "random"])
def test_keep_one_is_dense_bit_exact_on_cuda(gpu_pipe, name):
    sched = gpu_pipe.schedule("0.25M")
    dense = gpu_pipe.generate("a red circle", sched, make_pruner("dense"), SamplingConfig(seed=3))
    r = gpu_pipe.generate("a red circle", sched, make_pruner(name, keep=1.0), SamplingConfig(seed=3))
    assert torch.equal(r.sample.latent_BdHW, dense.sample.latent_BdHW) and np.array_equal(r.images, dense.images)


@pytest.mark.parametrize("pipe_name", ["gpu_pipe", "bf16_pipe"])
def test_tokens_equal_the_plan_with_accelerations_on_cuda(request, pipe_name):
    pipe = request.getfixturevalue(pipe_name)
    sched = pipe.schedule("0.25M")
    for spec in ("stepvar", "fastvar", "fastvar-skip", "stepvar-plus"):
        pruner = make_pruner(spec, cfg_drop_from=-3, skip_last=1)
        r = pipe.generate(["a", "b"], sched, pruner, SamplingConfig(seed=1, cfg=3.0), decode=False)
        assert dict(r.sample.counter.counts) == pruner.active_plan.counts(), spec
        assert r.sample.bits[-1] is None and r.sample.latent_BdHW.device.type == "cuda"


def test_skip_last_is_the_truncated_dense_codes_on_cuda(gpu_pipe):
    sched = gpu_pipe.schedule("0.25M")
    n, (H, W) = len(sched), (sched.last.h, sched.last.w)
    full = gpu_pipe.generate("a red circle", sched, make_pruner("dense"), SamplingConfig(seed=4), decode=False)
    cut = gpu_pipe.generate("a red circle", sched, make_pruner("dense", skip_last=2), SamplingConfig(seed=4), decode=False)
    expected = torch.zeros_like(full.sample.latent_BdHW)
    for b in full.sample.bits[:n - 2]:
        codes = gpu_pipe.codec.bits_to_latent(b)
        expected += codes if codes.shape[-2:] == (H, W) else resize_codes(codes, (H, W))
    assert torch.equal(cut.sample.latent_BdHW, expected)


def test_cfg_drop_from_is_guidance_one_from_that_scale_on_cuda(gpu_pipe):
    sched = gpu_pipe.schedule("0.25M")
    n = len(sched)
    a = gpu_pipe.generate("a red circle", sched, make_pruner("stepvar-plus", cfg_drop_from=5), SamplingConfig(seed=1, cfg=3.0))
    b = gpu_pipe.generate("a red circle", sched, make_pruner("stepvar-plus"),
                          SamplingConfig(seed=1, cfg=[3.0] * 5 + [1.0] * (n - 5)))
    assert torch.equal(a.sample.latent_BdHW, b.sample.latent_BdHW)


def test_bench_rows_report_cuda_peak_memory(gpu_pipe, tmp_path):
    from stepvar.eval.bench import run_bench

    report = run_bench(gpu_pipe, [256], ["dense", "stepvar-plus:cfg_drop_from=-3:skip_last=1"], [0.4], 1, 1, 1, ["x"], 0,
                       out_dir=tmp_path / "b", aspect="1:1", sampling=SamplingConfig(seed=0))
    rows = report.rows
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["peak_memory_kind"] == "cuda_max_allocated" and r["peak_memory_bytes"] > 0 for r in rows)
    assert rows[1]["skip_last"] == 1 and rows[1]["cfg_drop_from"] == 4
