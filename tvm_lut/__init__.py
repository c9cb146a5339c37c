"""tvm-lut: run neural networks on table lookups with Apache TVM.

The training stage (NN-LUT piecewise-linear tables, LUT-NN product quantization), the table bundle, and the
facade that compiles a model with the Relax passes (`relay_passes`) and kernels (`schedules`).

Names are imported lazily so that `import tvm_lut` stays cheap (torch and TVM load on first use).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "PWLTable": "tvm_lut.pwl",
    "fit_pwl": "tvm_lut.pwl_fit",
    "fit_pwl_net": "tvm_lut.pwl_fit",
    "PWLNet": "tvm_lut.pwl_fit",
    "measure_error": "tvm_lut.functions",
    "ErrorReport": "tvm_lut.functions",
    "Bundle": "tvm_lut.bundle",
    "BundleError": "tvm_lut.bundle",
    "fingerprint": "tvm_lut.bundle",
    "PQTable": "tvm_lut.pq.table",
    "learn": "tvm_lut.training",
    "NonlinearConfig": "tvm_lut.training",
    "register_handler": "tvm_lut.training",
    "calibrate_ranges": "tvm_lut.calibrate",
    "default_bundle": "tvm_lut.defaults",
    "LUTMode": "tvm_lut.emulate",
    "compile": "tvm_lut.compiler",
    "BatchParallel": "tvm_lut.batch_parallel",
    "autotune": "tvm_lut.autotuning.driver",
    "AutotuneConfig": "tvm_lut.autotuning.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tvm_lut' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
