"""Client side of the emulated aarch64 device: run kernels compiled for ARM on a real aarch64 TVM runtime.

`scripts/arm_device.sh install` puts qemu-user, an arm64 sysroot with Python 3.11 and the aarch64 TVM wheels in
`device_home()`. `emulated_device()` starts the runtime's RPC server under emulation (unless one is already
listening on the port), connects, and stops what it started on exit. The same RPC path serves a real board:
point `connect` at it. Timings under emulation mean nothing; results do.

`python -m schedules.rpc` serves in the foreground (for interactive use).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import tvm
from tvm import rpc

ARM_TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
CROSS_COMPILER = "aarch64-linux-gnu-gcc"
DEFAULT_PORT = 9190
STARTUP_SECONDS = 180  # importing TVM under qemu takes ~15 s on a quiet machine, much longer on a busy one


def device_home() -> Path:
    return Path(os.environ.get("TVM_LUT_ARM_HOME", Path.home() / ".cache" / "tvm-lut" / "arm64"))


def device_port() -> int:
    return int(os.environ.get("TVM_LUT_ARM_PORT", DEFAULT_PORT))


def missing() -> str | None:
    """Why the emulated device cannot run here, or None when it can."""
    home = device_home()
    if not (home / "sysroot" / "usr" / "bin" / "python3.11").exists() or not (home / "site-packages" / "tvm").is_dir():
        return f"the emulated aarch64 device is not installed in {home} (run scripts/arm_device.sh install)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-user binfmt for aarch64 is not registered (run scripts/arm_device.sh install)"
    if subprocess.run(["which", CROSS_COMPILER], capture_output=True).returncode != 0:
        return f"the cross compiler {CROSS_COMPILER} is missing (run scripts/arm_device.sh install)"
    return None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_server(port: int | None = None) -> subprocess.Popen:
    """Start the aarch64 RPC server under qemu and wait until it listens; the caller terminates it."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    port = port or device_port()
    home = device_home()
    env = dict(os.environ, QEMU_LD_PREFIX=str(home / "sysroot"), PYTHONPATH=str(home / "site-packages"))
    log = open(home / "server.log", "wb")  # noqa: SIM115 (handed to the child)
    server = subprocess.Popen(
        [str(home / "sysroot" / "usr" / "bin" / "python3.11"), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 1)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the server forks workers that must stop with it
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _listening(port):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"the aarch64 RPC server did not start; see {home / 'server.log'}")
        time.sleep(0.5)
    return server


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server and the workers it forked (its whole process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextlib.contextmanager
def emulated_device(port: int | None = None):
    """An RPC session on the emulated aarch64 device (started here unless one already listens on `port`)."""
    port = port or device_port()
    server = None if _listening(port) else start_server(port)
    try:
        yield rpc.connect("127.0.0.1", port, session_timeout=600)
    finally:
        if server is not None:
            stop_server(server)


def run_remote(session, mod: tvm.IRModule, func_name: str, arrays: list[np.ndarray],
               target: tvm.target.Target = ARM_TARGET) -> list[np.ndarray]:
    """Compile `mod` for `target`, run `func_name` on the device with `arrays` (outputs included, written in
    place), and return every array as the device left it."""
    from tvm.support.cc import cross_compiler

    lib = tvm.compile(mod, target=target)
    # A fresh name per upload: overwriting a library the server has loaded crashes it.
    name = f"kernels_{uuid.uuid4().hex}.so"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        lib.export_library(path, fcompile=cross_compiler(CROSS_COMPILER))
        session.upload(path)
    remote_mod = session.load_module(name)
    device = session.cpu()
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
    remote_mod[func_name](*tensors)
    return [t.numpy() for t in tensors]


if __name__ == "__main__":
    server = start_server()
    print(f"serving the emulated aarch64 device on 127.0.0.1:{device_port()} (Ctrl-C stops it)")
    try:
        server.wait()
    except KeyboardInterrupt:
        stop_server(server)
