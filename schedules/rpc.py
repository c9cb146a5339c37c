"""Remote devices over TVM's RPC: the emulated aarch64 device, and any pool of boards behind an RPC tracker.

`scripts/arm_device.sh install` puts qemu-user, an arm64 sysroot with Python 3.11 and the aarch64 TVM wheels in
`device_home()`. `emulated_device()` starts the runtime's RPC server under emulation (unless one is already
listening on the port), connects, and stops what it started on exit. `start_tracker()` and
`start_server(tracker=..., key=...)` build a pool as TVM users run one: devices register with a tracker under a key
and clients ask the tracker for any free one (`Tracker`). The same path serves a real board. Timings under
emulation mean nothing; results do.

`python -m schedules.rpc [--pool N]` serves in the foreground (for interactive use).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import rpc

from .target import CROSS_COMPILERS, PRESETS, resolve_target

ARM_TARGET = resolve_target(PRESETS["aarch64"])
CROSS_COMPILER = CROSS_COMPILERS["aarch64"]
DEFAULT_PORT = 9190
STARTUP_SECONDS = 180  # importing TVM under qemu takes ~15 s on a quiet machine, much longer on a busy one
# A session on a slow board or under qemu: loading a model's library takes a minute there, and MiniLM 8x64 runs
# ~1.5 min a call under qemu (TVM's default, 10 s, fails every measurement).
SESSION_SECONDS = 1800
CONNECT_SECONDS = 10  # reaching the tracker itself


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


def serving_port(port: int) -> int:
    """`port`, unless a process holds it without serving there (the worker of a server whose run was killed keeps
    its listening socket and never answers): then a free port, with a warning, so the device still starts."""
    if _listening(port):
        return port
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT holds nothing
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    spare = free_port()
    warnings.warn(f"port {port} is held by a process that does not serve RPC (an orphaned server worker? "
                  f"`ss -ltnp | grep {port}`); the emulated device starts on port {spare}", RuntimeWarning,
                  stacklevel=3)
    return spare


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_log(port: int) -> Path:
    """Where the emulated server on `port` writes its log (one `load_module` line per module it ran)."""
    return device_home() / f"server-{port}.log"


def start_server(port: int | None = None, tracker: str | None = None, key: str | None = None) -> subprocess.Popen:
    """Start the aarch64 RPC server under qemu and wait until it listens; the caller stops it (`stop_server`).

    With `tracker` ("HOST:PORT") and `key` it registers there, as one device of the pool under `key`.
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    port = port or device_port()
    home = device_home()
    env = dict(os.environ, QEMU_LD_PREFIX=str(home / "sysroot"), PYTHONPATH=str(home / "site-packages"))
    pool = ["--tracker", tracker, "--key", key] if tracker else []
    log = open(server_log(port), "wb")  # noqa: SIM115 (handed to the child)
    server = subprocess.Popen(
        [str(home / "sysroot" / "usr" / "bin" / "python3.11"), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 1), *pool], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the server forks workers that must stop with it
    _wait_listening(server, port, f"the aarch64 RPC server did not start; see {server_log(port)}")
    return server


def start_tracker(port: int | None = None) -> subprocess.Popen:
    """Start TVM's RPC tracker on 127.0.0.1:`port` (this machine's Python) and wait until it listens."""
    import sys

    port = port or free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1), "--silent"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_listening(tracker, port, f"the RPC tracker did not start on port {port}")
    return tracker


def _wait_listening(process: subprocess.Popen, port: int, failure: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(failure)
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server (or tracker) and the workers it forked (its whole process group)."""
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
    port = serving_port(port or device_port())
    server = None if _listening(port) else start_server(port)
    try:
        yield rpc.connect("127.0.0.1", port, session_timeout=600)
    finally:
        if server is not None:
            stop_server(server)


@contextlib.contextmanager
def emulated_pool(devices: int = 2, key: str = "aarch64-emulated", threads: int | None = None):
    """A tracker on a free port with `devices` emulated aarch64 servers registered under `key`; yields the
    `Tracker` (sessions on `threads` threads; its servers' ports in `Tracker.server_ports`) and stops everything
    it started on exit."""
    started = []
    try:
        tracker_port = free_port()
        started.append(start_tracker(tracker_port))
        ports = []
        for _ in range(devices):
            ports.append(free_port())
            started.append(start_server(ports[-1], tracker=f"127.0.0.1:{tracker_port}", key=key))
        tracker = Tracker("127.0.0.1", tracker_port, key, threads=threads, server_ports=tuple(ports))
        tracker.wait_for_devices(devices)
        yield tracker
    finally:
        for process in reversed(started):
            stop_server(process)


@dataclasses.dataclass(frozen=True)
class Tracker:
    """A pool of devices behind TVM's RPC tracker, asked for by `key` (every device under one key is alike).

    `threads`: the thread count each session's runtime is set to (TVM's RPC never sets it; a device's runtime
    would take half its logical CPUs). `session_seconds`: how long one session may last (`SESSION_SECONDS`).
    """

    host: str
    port: int
    key: str
    threads: int | None = None
    session_seconds: float = SESSION_SECONDS
    server_ports: tuple[int, ...] = ()  # the emulated servers `emulated_pool` started, for their logs

    @classmethod
    def parse(cls, address: str, key: str, **kwargs) -> "Tracker":
        """From "HOST:PORT" (as `--rpc-tracker` takes it) and a key."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--rpc-tracker must be HOST:PORT, got {address!r}")
        if not key:
            raise ValueError("an RPC tracker needs the key its devices registered under (--rpc-key)")
        return cls(host, int(port), key, **kwargs)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def summary(self) -> dict:
        """The tracker's summary; RuntimeError naming the address if it does not answer in `CONNECT_SECONDS`."""
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(CONNECT_SECONDS)
        try:
            socket.create_connection((self.host, self.port)).close()  # TVM's client retries a refusal for 60 s
            client = rpc.connect_tracker(self.host, self.port)
            try:
                return client.summary()
            finally:
                client.close()
        except (OSError, RuntimeError) as err:
            raise RuntimeError(f"cannot reach the RPC tracker at {self.address} within {CONNECT_SECONDS} s "
                               f"({err}); start one with `python -m tvm.exec.rpc_tracker --host {self.host} "
                               f"--port {self.port}`") from None
        finally:
            socket.setdefaulttimeout(previous)

    def check(self) -> int:
        """The number of devices under the key; RuntimeError if the tracker is unreachable or has none."""
        summary = self.summary()
        count = sum(1 for server in summary.get("server_info", []) if _server_key(server) == self.key)
        if count == 0:
            keys = sorted({_server_key(server) for server in summary.get("server_info", [])})
            raise RuntimeError(f"the RPC tracker at {self.address} has no device under key {self.key!r} "
                               f"(keys there: {', '.join(keys) or 'none'})")
        return count

    def wait_for_devices(self, count: int, seconds: float = STARTUP_SECONDS) -> None:
        """Until `count` devices registered under the key (a server registers a moment after it listens)."""
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(RuntimeError):
                if self.check() >= count:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} devices registered under {self.key!r} at {self.address}")
            time.sleep(0.5)

    def session(self):
        """An RPC session on a free device of the pool, its runtime set to `threads` threads."""
        self.check()
        session = rpc.connect_tracker(self.host, self.port).request(self.key, priority=1,
                                                                    session_timeout=self.session_seconds)
        set_remote_threads(session, self.threads)
        return session


def _server_key(server: dict) -> str:
    """A tracker summary lists a server's key as "server:KEY"."""
    return str(server.get("key", "")).partition(":")[2]


def set_remote_threads(session, threads: int | None) -> None:
    """Size the device runtime's thread pool (TVM's RPC runner never does)."""
    if threads:
        session.get_function("runtime.config_threadpool")(1, int(threads))


def upload_library(session, lib, target: tvm.target.Target):
    """Export `lib` (built for `target`, cross-linked if need be), upload it and load it on the device."""
    from .target import export_library

    # A fresh name per upload: overwriting a library the server has loaded crashes it.
    name = f"lib_{uuid.uuid4().hex}.so"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        export_library(lib, path, target)
        session.upload(path)
    return session.load_module(name)


def run_remote(session, mod: tvm.IRModule, func_name: str, arrays: list[np.ndarray],
               target: tvm.target.Target = ARM_TARGET) -> list[np.ndarray]:
    """Compile `mod` for `target`, run `func_name` on the device with `arrays` (outputs included, written in
    place), and return every array as the device left it."""
    remote_mod = upload_library(session, tvm.compile(mod, target=target), target)
    device = session.cpu()
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
    remote_mod[func_name](*tensors)
    return [t.numpy() for t in tensors]


def _interrupt(*_):
    raise KeyboardInterrupt


def _serve(argv=None) -> None:
    """`python -m schedules.rpc`: one emulated device on `device_port()`, or with `--pool N` a tracker and N devices
    under `--key`, until Ctrl-C or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m schedules.rpc", description=_serve.__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, metavar="N", help="a tracker on a free port with N emulated devices")
    parser.add_argument("--key", default="aarch64-emulated", help="the devices' key at the tracker")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop what was started on `kill` too
    if args.pool:
        with emulated_pool(args.pool, args.key) as tracker:
            logs = ", ".join(str(server_log(port)) for port in tracker.server_ports)
            print(f"tracker {tracker.address}, {args.pool} devices under key {args.key!r} (logs: {logs}); "
                  "Ctrl-C stops them", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return
    server = start_server()
    print(f"serving the emulated aarch64 device on 127.0.0.1:{device_port()} (Ctrl-C stops it)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        stop_server(server)


if __name__ == "__main__":
    _serve()
