"""BatchParallel: parts of a batch on their own threads give the whole batch's outputs, and misuse fails clearly."""

import os

import numpy as np
import pytest
import torch
import tvm

import tvm_lut
from schedules import host_target
from tvm_lut.batch_parallel import BatchParallel
from tvm_lut.frontend import from_torch


class TwoHeads(torch.nn.Module):
    """Rows never meet; two outputs, the first input integer ids through an embedding."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 24)
        self.dense = torch.nn.Linear(24, 16)

    def forward(self, ids, scale):
        hidden = torch.nn.functional.gelu(self.dense(self.embed(ids))) * scale
        return hidden.mean(dim=1), hidden.sum(dim=1)


def _inputs(batch: int):
    generator = torch.Generator().manual_seed(batch)
    return (torch.randint(0, 32, (batch, 5), generator=generator),
            torch.rand(batch, 1, 16, generator=generator) + 0.5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TwoHeads().eval()


@pytest.fixture(scope="module")
def part_executable(model):
    """The model compiled at a part's batch (2) for one core."""
    return tvm_lut.compile(from_torch(model, _inputs(2)), target=host_target(1))


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_parts_give_the_whole_batch(model, part_executable, parts):
    ids, scale = _inputs(2 * parts)
    with torch.no_grad():
        expected = [t.numpy() for t in model(ids, scale)]
    with BatchParallel(part_executable, parts) as run:
        for _ in range(2):  # the workers serve more than one call
            mean, total = run(ids.numpy(), scale.numpy())
            np.testing.assert_allclose(mean, expected[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(total, expected[1], rtol=1e-5, atol=1e-5)


def test_the_callers_pool_keeps_its_threads(part_executable):
    threads = tvm.get_global_func("runtime.NumThreads")
    before = threads()
    with BatchParallel(part_executable, 2):
        assert threads() == before


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="thread affinities are Linux's")
def test_each_worker_runs_on_a_cpu_of_its_own(part_executable):
    """Set after TVM configures the worker's pool (which, without TVM_BIND_THREADS=0, binds it to the first core):
    one CPU each, round robin over those the process may use; `pin=False`: all of them."""
    allowed = sorted(os.sched_getaffinity(0))
    with BatchParallel(part_executable, 3) as run:
        assert run.cpus == [{allowed[i % len(allowed)]} for i in range(3)]
        assert [os.sched_getaffinity(worker.native_id) for worker in run._workers] == run.cpus
    with BatchParallel(part_executable, 2, pin=False) as run:
        assert run.cpus == [set(allowed)] * 2
        assert [os.sched_getaffinity(worker.native_id) for worker in run._workers] == run.cpus


def test_misuse_is_a_clear_error(part_executable):
    ids, scale = _inputs(4)
    with pytest.raises(ValueError, match="parts must be a positive int"):
        BatchParallel(part_executable, 0)
    with BatchParallel(part_executable, 2) as run:
        with pytest.raises(ValueError, match="a batch of 3 does not split into 2 equal parts"):
            run(ids.numpy()[:3], scale.numpy()[:3])
        with pytest.raises(ValueError, match="inputs disagree on the batch"):
            run(ids.numpy(), scale.numpy()[:2])
        with pytest.raises(ValueError, match="every input needs a batch axis"):
            run(np.int64(3), scale.numpy())
        with pytest.raises(Exception, match="(?i)shape|dtype|mismatch|expect"):  # the VM's own error, from a part
            run(ids.numpy()[:, :4], scale.numpy())
        mean, _ = run(ids.numpy(), scale.numpy())  # a failed call leaves the workers serving
        assert mean.shape == (4, 16)
    with pytest.raises(RuntimeError, match="closed"):
        run(ids.numpy(), scale.numpy())


def test_an_unknown_function_fails_at_construction(part_executable):
    with pytest.raises(Exception, match="no_such_function"):
        BatchParallel(part_executable, 2, function="no_such_function")
