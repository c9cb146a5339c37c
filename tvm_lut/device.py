"""Run a whole model built for a target on a device over TVM's RPC, and check it against this machine's build.

`check_on_device(model, example, target, tracker, engine)` builds the model twice from the same Relax module, for
the host and for `target`, runs the host build here and the target build on a device of `tracker`'s pool
(uploaded, cross-linked: the device needs only TVM's runtime), and returns both outputs, their relative difference
and the latency measured on the device. Engines: `exact`, `nnlut` (the shipped NN-LUT tables) and `nnlut+pq`
(NN-LUT + LUT-NN product quantization with k-means centroids, `kmeans_pq_bundle`: no training, the kernels and
their numerics are what is checked).

The relative difference is `max |device - host| / max |host|`. Exact and NN-LUT builds differ only by float
rounding (other vector widths, other instruction orders): `EXACT_TOLERANCE`. A PQ build encodes each sub-vector by
its nearest centroid; a near tie can resolve differently under other rounding and change a code, so a PQ build
gets `PQ_TOLERANCE`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ENGINES = ("exact", "nnlut", "nnlut+pq")
EXACT_TOLERANCE = 1e-4
PQ_TOLERANCE = 1e-2


@dataclasses.dataclass
class DeviceCheck:
    """One engine's outputs here and on the device, how far apart they are, and the device latency."""

    engine: str
    host: list[np.ndarray]
    device: list[np.ndarray]
    relative_difference: float
    tolerance: float
    device_ms: float

    @property
    def ok(self) -> bool:
        return bool(self.relative_difference <= self.tolerance)


def model_and_inputs(name: str, batch: int, length: int = 64, seed: int = 0):
    """A built-in model (`tvm_lut.model_spec.builtin_model`: "minilm-l6" with token ids and mask of `batch` x
    `length`; "fashion-cnn", its random weights seeded, with `batch` random images) as (torch model, example
    tensors)."""
    import torch

    from tvm_lut.model_spec import BUILTIN_MODELS, builtin_model

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(BUILTIN_MODELS)}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the CNN's random weights
    model = builtin_model(name)
    if name == "fashion-cnn":
        return model, (torch.randn((batch, 1, 28, 28), generator=generator),)
    ids = torch.randint(1000, 20000, (batch, length), generator=generator)
    return model, (ids, torch.ones_like(ids))


def kmeans_pq_bundle(model, example: tuple, config=None):
    """The shipped NN-LUT tables and one PQ entry per layer LUT-NN can serve in `model`, its centroids by k-means on
    the layer's inputs for `example` (no centroid training)."""
    import copy

    from tvm_lut.bundle import Bundle
    from tvm_lut.defaults import default_bundle
    from tvm_lut.pq.calibrate import init_centroids
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.handler import export_tables
    from tvm_lut.pq.swap import quantize_

    config = config or PQConfig()
    student = copy.deepcopy(model)
    quantize_(student, config)
    init_centroids(student, [(tuple(example), None)], config, progress=False)
    return Bundle({**dict(default_bundle().items()), **dict(export_tables(student).items())})


def build(mod, target, engine: str, bundle=None):
    """The `tvm_lut.compile` build of `mod` for `target` as `engine` (`bundle`: the PQ one for `nnlut+pq`)."""
    from tvm_lut.compiler import compile as compile_model

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine == "nnlut+pq" and bundle is None:
        raise ValueError("the nnlut+pq engine needs a bundle with PQ entries (kmeans_pq_bundle)")
    return compile_model(mod, bundle if engine == "nnlut+pq" else None, target, nonlinear=engine != "exact")


def run_here(executable, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    return _numpy(vm["main"](*[tvm.runtime.tensor(a) for a in inputs]))


def run_on_device(session, executable, target, inputs: list[np.ndarray], repeat: int = 3):
    """The outputs of `executable` on the device of `session`, and its median latency there in milliseconds."""
    import tvm
    from tvm import relax

    from schedules.rpc import upload_library

    device = session.cpu()
    vm = relax.VirtualMachine(upload_library(session, executable, target), device)
    args = [tvm.runtime.tensor(a, device) for a in inputs]
    outputs = _numpy(vm["main"](*args))
    timer = vm.time_evaluator("main", device, number=1, repeat=repeat)
    return outputs, 1e3 * float(np.median(timer(*args).results))


def check_on_device(mod, inputs: list[np.ndarray], target, tracker, engine: str = "exact", bundle=None,
                    repeat: int = 3) -> DeviceCheck:
    """`engine`'s build of `mod` on a device of `tracker` against the host's build (see the module docstring)."""
    from schedules.target import resolve_target

    host = run_here(build(mod, resolve_target("host"), engine, bundle), inputs)
    on_target = build(mod, target, engine, bundle)
    session = tracker.session()
    device, device_ms = run_on_device(session, on_target, target, inputs, repeat)
    scale = max(float(np.max(np.abs(h))) for h in host) or 1.0
    difference = max(float(np.max(np.abs(d - h))) for d, h in zip(device, host)) / scale
    tolerance = PQ_TOLERANCE if engine == "nnlut+pq" else EXACT_TOLERANCE
    return DeviceCheck(engine, host, device, difference, tolerance, device_ms)


def _numpy(outputs) -> list[np.ndarray]:
    return [outputs.numpy()] if hasattr(outputs, "numpy") else [o.numpy() for o in outputs]
