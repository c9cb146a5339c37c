"""Tuning over TVM's RPC tracker: a short search whose trials run on both emulated devices under one key, records
in the aarch64 target's database, which then compiles a model that runs on the device equal to NumPy."""

import numpy as np
import pytest
import tvm
from tvm import relax

from relay_passes.pipeline import prepare, report_of, tvm_lut_pipeline, without_reports
from schedules.rpc import server_log, upload_library
from schedules.target import resolve_target
from schedules.tuning import TRIAL_PREFIX, open_database, tune

from .test_tuning import _matmul_relu

ARM = resolve_target("aarch64", 1)


def _trials_on(port: int) -> int:
    return sum("load_module" in line and TRIAL_PREFIX in line for line in server_log(port).read_text().splitlines())


@pytest.mark.arm
def test_trials_land_on_both_devices_and_the_database_compiles(device_pool, tmp_path):
    before = {port: _trials_on(port) for port in device_pool.server_ports}
    (result,) = tune(prepare(_matmul_relu(), ARM), ARM, tmp_path, trials_per_task=5, num_trials_per_iter=4,
                     progress=False, tracker=device_pool)
    after = {port: _trials_on(port) for port in device_pool.server_ports}
    assert all(after[port] > before[port] for port in after), f"trials per device before {before}, after {after}"
    assert result.trials >= 2 and result.best_ms is not None
    assert open_database(tmp_path, ARM).get_all_tuning_records()

    with ARM:
        lowered = tvm_lut_pipeline(database=tmp_path, target=ARM)(_matmul_relu())
    executable = tvm.compile(without_reports(lowered), target=ARM, relax_pipeline=None)
    assert report_of(lowered)["already_scheduled"] == [result.name]  # the report rides on the module
    session = device_pool.session()
    vm = relax.VirtualMachine(upload_library(session, executable, ARM), session.cpu())
    x = np.random.default_rng(1).standard_normal((16, 32)).astype("float32")
    weight = np.random.default_rng(0).standard_normal((32, 48)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x, session.cpu())).numpy()
    np.testing.assert_allclose(got, np.maximum(x @ weight, 0), rtol=1e-4, atol=1e-4)
