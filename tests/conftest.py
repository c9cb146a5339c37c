"""Fixtures several test packages share."""

import pytest


@pytest.fixture(scope="session")
def device_pool():
    """A TVM RPC tracker with two emulated aarch64 devices under one key (`schedules.rpc.emulated_pool`), started
    once for the session and stopped with everything it started; skipped when the device is not installed."""
    from schedules import rpc

    reason = rpc.missing()
    if reason:
        pytest.skip(reason)
    with rpc.emulated_pool(2, threads=1) as tracker:
        yield tracker


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, as the CLI runs torch (the machine's cores are shared); restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def tvm_pool_on_every_core():
    """TVM's thread pool is created once per process and never grows. Sized to every core this process may use
    before any test runs a kernel, it lets each test that compiles for the host run on the cores it asked, in any
    order (otherwise the first parallel kernel sizes it: one thread on two cores when a one-core build comes first)."""
    from schedules import host_target
    from schedules.target import use_runtime_threads

    use_runtime_threads(host_target())
