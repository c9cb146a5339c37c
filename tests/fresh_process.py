"""Checks run in a new Python process: TVM's thread pool is created once per process, and pytest's own process
holds the threads earlier tests' runtimes left (ONNX Runtime, TVM, torch), one of which may wait for a CPU for
seconds on a loaded machine (a CI run once failed so): "nothing else of this process runs" holds only in a fresh
interpreter."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Defines `spin(seconds)`: a thread that stays runnable for `seconds`, as a runtime's worker spins after a call.
SPIN = """
import threading, time
def spin(seconds):
    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker
"""


def fresh_python(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` in a new interpreter at the repository's root, without the caller's thread-count variables
    (`TVM_NUM_THREADS`, `OMP_NUM_THREADS`) unless `env` sets them."""
    environment = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=ROOT)


def printed_by(code: str) -> list[str]:
    """The words `code` printed, run after `SPIN` in a fresh interpreter; fails with its stderr if it raised."""
    result = fresh_python(SPIN + code)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.split()
