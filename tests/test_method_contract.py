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
    if pruner.plan(sched, len(tiny_pipe.model.blocks)).skipped:
        pytest.skip(f"{name} skips scales by definition: it is never dense")
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=3))
    assert torch.equal(r.sample.latent_BdHW, ref.sample.latent_BdHW)
    assert (r.images == ref.images).all()


@pytest.mark.parametrize("name", METHODS)
def test_tokens_per_block_equal_the_plan(tiny_pipe, name):
    sched = tiny_pipe.schedule("0.06M")
    pruner = make_pruner(name)
    r = tiny_pipe.generate("a red circle", sched, pruner, SamplingConfig(seed=1))
    plan = pruner.plan(sched, len(tiny_pipe.model.blocks))
    assert dict(r.sample.counter.counts) == plan.counts()
    assert {t.si for t in r.sample.timings if t.skipped} == set(plan.skipped)
