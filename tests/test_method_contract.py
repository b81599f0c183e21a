"""Every registered method and preset against the pruner contract: keep 1 reproduces dense bit for
bit, and the tokens every block processed are exactly what the method's plan announced."""

import pytest
import torch

from stepvar.pruning.registry import list_methods, make_pruner
from stepvar.sampling import SamplingConfig

METHODS = list_methods()


@pytest.fixture(scope="module")
def dense_reference(tiny_pipe):
    sched = tiny_pipe.schedule("0.06M")
    return sched, tiny_pipe.generate("a red circle", sched, make_pruner("dense"),
                                     SamplingConfig(seed=3))


@pytest.mark.parametrize("name", METHODS)
def test_keep_one_is_dense_bit_exact(tiny_pipe, dense_reference, name):
    sched, ref = dense_reference
    pruner = make_pruner(name, keep=1.0)
    if pruner.resolved_plan(sched, len(tiny_pipe.model.blocks)).skipped:
        pytest.skip(f"{name} skips scales by definition: it is never dense")
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=3))
    assert torch.equal(r.sample.latent_BdHW, ref.sample.latent_BdHW)
    assert (r.images == ref.images).all()


@pytest.mark.parametrize("name", METHODS)
def test_tokens_per_block_equal_the_plan(tiny_pipe, name):
    sched = tiny_pipe.schedule("0.06M")
    pruner = make_pruner(name)
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=1))
    plan = pruner.resolved_plan(sched, len(tiny_pipe.model.blocks))
    assert dict(r.sample.counter.counts) == plan.counts()
    assert {t.si for t in r.sample.timings if t.skipped} == set(plan.skipped)


@pytest.mark.parametrize("name", METHODS)
def test_accelerations_compose_with_every_method(tiny_pipe, name):
    """cfg_drop_from and skip_last on any method: tokens as its plan says, the skipped scales empty,
    the batch halved from the drop on (the conditional rows only)."""
    sched = tiny_pipe.schedule("0.06M")
    n = len(sched)
    pruner = make_pruner(name, cfg_drop_from=-3, skip_last=1)
    rows = []
    orig = pruner.run_scale
    pruner.run_scale = lambda run: rows.append(run.x_BLC.shape[0]) or orig(run)
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=1, cfg=3.0))
    plan = pruner.resolved_plan(sched, len(tiny_pipe.model.blocks))
    assert plan.cfg_drop_from == n - 3 and plan.skip_last == 1 and n - 1 in plan.skipped
    assert dict(r.sample.counter.counts) == plan.counts()
    assert r.sample.bits[-1] is None
    ran = [si for si in range(n) if si not in plan.skipped]
    assert rows == [1 if si >= n - 3 else 2 for si in ran]
