"""The latency table: each choice of a layer compiled alone and timed once, cached per target and layer shape (a
second run measures nothing), and a PQ choice the target cannot serve recorded with its reason."""

import pytest
import tvm

from schedules import host_target
from schedules.intrin import lookup_intrin
from tvm_lut.autotuning import latency
from tvm_lut.autotuning.layers import EXACT, Choice, LayerSpec
from tvm_lut.autotuning.latency import LatencyTable, cache_path

TARGET = host_target(1)
SPEC = LayerSpec("fc", "linear", (16, 32), (4, 32), True)
TWIN = LayerSpec("other.fc", "linear", (16, 32), (4, 32), True)  # same shapes, another name


@pytest.mark.skipif(lookup_intrin(TARGET) is None, reason="this CPU has no lookup intrinsic")
def test_measured_once_then_cached_per_target_and_shape(tmp_path, monkeypatch):
    choices = {"fc": [EXACT, Choice(8, 4)], "other.fc": [EXACT, Choice(8, 4)]}
    path = cache_path(tmp_path / "db", TARGET, None)
    assert path.parent.parent == tmp_path / "db"  # inside the tuning database, in the target's folder
    table = LatencyTable(TARGET, path)
    assert table.measure([SPEC, TWIN], choices, TARGET, progress=False) == 2  # the twin shares the measurements
    assert table.get(SPEC, EXACT) > 0 and table.get(TWIN, Choice(8, 4)) > 0

    def fail(*_args):
        raise AssertionError("a cached latency was measured again")

    monkeypatch.setattr(latency, "measure_choices", fail)
    again = LatencyTable(TARGET, path)
    assert again.measure([SPEC, TWIN], choices, TARGET, progress=False) == 0
    assert again.get(SPEC, Choice(8, 4)) == table.get(SPEC, Choice(8, 4))


def test_a_cache_of_another_target_is_refused(tmp_path):
    path = tmp_path / "latency.json"
    LatencyTable(TARGET, path).record(SPEC, EXACT, 3.0)
    other = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 1})
    with pytest.raises(ValueError, match="holds latencies of target"):
        LatencyTable(other, path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="tvm-lut-autotune-latency"):
        LatencyTable(TARGET, path)


def test_a_target_without_lookups_records_pq_as_not_served(tmp_path):
    plain = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 1})  # SSE2 only: no lookup intrinsic
    table = LatencyTable(plain, tmp_path / "latency.json")
    table.measure([SPEC], {"fc": [Choice(16, 8)]}, plain, progress=False)
    assert table.get(SPEC, Choice(16, 8)) is None
    assert "no lookup intrinsic" in table.reason(SPEC, Choice(16, 8))


def test_a_target_that_does_not_run_here_needs_a_device(tmp_path):
    from schedules.target import resolve_target

    arm = resolve_target("aarch64", 1)
    with pytest.raises(ValueError, match="does not run on this machine"):
        LatencyTable(arm, tmp_path / "latency.json").measure([SPEC], {"fc": [EXACT]}, arm, progress=False)


@pytest.mark.arm
def test_latencies_of_an_aarch64_target_are_measured_on_the_device(device_pool, tmp_path):
    """The latency table of a target that is not the host, timed on the tracker's device: the exact layer, and a
    K=8 PQ choice built with NEON `tbl` lookups."""
    from schedules.target import resolve_target

    arm = resolve_target("aarch64", 1)
    table = LatencyTable(arm, tmp_path / "latency.json")
    table.measure([SPEC], {"fc": [EXACT, Choice(8, 4)]}, arm, progress=False, tracker=device_pool)
    assert table.get(SPEC, EXACT) > 0 and table.get(SPEC, Choice(8, 4)) > 0


@pytest.mark.skipif(lookup_intrin(TARGET) is None, reason="this CPU has no lookup intrinsic")
def test_whole_models_are_compiled_and_timed_together():
    """`measure_models` (the guard's timer): a model with and without its PQ table, each compiled as a user would,
    one median per variant (no speed is asserted)."""
    import torch

    module = latency.layer_module(SPEC)
    bundle = latency.candidate_bundle(SPEC, module, Choice(8, 4))
    times = latency.measure_models({"exact": (module, None), "plan": (module, bundle)}, (torch.zeros(4, 32),),
                                   TARGET, rounds=1)
    assert set(times) == {"exact", "plan"} and all(us > 0 for us in times.values())
