import json

import numpy as np
import pytest
import torch

import tvm_lut
from schedules import host_target
from tvm_lut.cli import main
from tvm_lut.frontend import from_torch
from tvm_lut.profile import example_inputs, profile_executable, profile_model


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def net_mod():
    return from_torch(_Net().eval(), (torch.zeros(1, 3, 6, 6),))


def test_profile_names_every_kernel_its_rule_and_gflops(net_mod):
    profile, executable = profile_model(net_mod, target=host_target(1), repeat=1)
    names = {f.name.removesuffix("_prepacked") for f in profile.functions}
    report = executable.lut_report
    assert names <= set(report.scheduled) | set(report.tuned) | set(report.kernels) | set(report.unscheduled)
    assert {f.rule for f in profile.functions} <= set(report.scheduled.values())
    assert abs(sum(f.share for f in profile.functions) - 1) < 1e-6
    assert [f.ms for f in profile.functions] == sorted((f.ms for f in profile.functions), reverse=True)
    conv = next(f for f in profile.functions if "conv2d" in f.name)
    assert conv.rule == "Conv2d" and conv.gflops > 0 and conv.calls == 1
    assert "Conv2d" in profile.table() and json.dumps(profile.to_dict())
    # each function also as the model calls it (once per call, in the model's order, caches as the model leaves them)
    assert all(f.in_model_ms > 0 for f in profile.functions) and "as the model calls them" in profile.table()
    assert profile.to_dict()["kernels_in_model_ms"] == pytest.approx(sum(f.in_model_ms for f in profile.functions))
    # and how many threads waited for a CPU, how many CPUs they kept busy, while the whole model was timed (Linux)
    assert profile.model_cpu_wait >= 0 and profile.model_cores > 0 and profile.model_stolen >= 0
    assert f"cpu_wait {profile.model_cpu_wait:.2f}, cores {profile.model_cores:.2f}" in profile.table()
    # one thread (this process's pool): no fork-join to time
    assert profile.model_fork_join_us is None and "fork_join_us" not in profile.table()


def test_profile_needs_a_bytecode_executable(net_mod):
    executable = tvm_lut.compile(net_mod, target=host_target(1))  # compiled VM code reports no calls
    with pytest.raises(ValueError, match="exec_mode='bytecode'"):
        profile_executable(executable, example_inputs(net_mod), repeat=1)


def test_example_inputs_follow_the_signature(net_mod):
    (x,) = example_inputs(net_mod)
    assert x.shape == (1, 3, 6, 6) and x.dtype == np.float32


def test_cli_profile_writes_json(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "fashion-cnn", "--batch", "1", "--threads", "1", "--repeat", "1", "--top", "3",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "share" in text and "more functions" in text
    payload = json.loads(out.read_text())
    assert payload["report"]["unscheduled"] == [] and payload["profile"]["functions"]


def test_cli_profile_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "no-such-model"])
    assert exit_info.value.code == 2 and "unknown model 'no-such-model'" in capsys.readouterr().err


def test_profile_reads_the_clock_it_is_given(net_mod):
    """A clock that jumps a million seconds per reading makes every kernel and the model take over a second (no
    call of this tiny net does): both are timed on it."""
    readings = iter(range(0, 10**12, 10**6))
    profile, _ = profile_model(net_mod, target=host_target(1), repeat=1, clock=lambda: float(next(readings)))
    assert profile.model_ms > 1e3 and all(f.ms > 1e3 for f in profile.functions)


def test_cli_profile_cpu_clock_needs_one_thread(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "fashion-cnn", "--batch", "1", "--threads", "2", "--clock", "cpu"])
    assert exit_info.value.code == 2 and "--clock cpu times one thread only" in capsys.readouterr().err
