"""`schedules.rpc` without a device: what decides where the emulated device serves."""

import socket

import pytest

from schedules.rpc import serving_port


def test_a_port_held_without_serving_gives_way_to_a_free_one():
    """A killed run's server worker keeps the device port bound and never answers: the emulated device then starts
    on a free port (with a warning) instead of failing with "cannot bind"."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.warns(RuntimeWarning, match=f"port {port} is held by a process that does not serve RPC"):
            spare = serving_port(port)
        assert spare != port
    with socket.socket() as serving:
        serving.bind(("127.0.0.1", 0))
        serving.listen()
        assert serving_port(serving.getsockname()[1]) == serving.getsockname()[1]
    assert serving_port(port) == port  # released: free again
