"""Compile a PrimFunc before and after a schedule rule and run both on the same inputs (test helper)."""

import numpy as np
import tvm

from schedules import host_target

TARGET = host_target()


def build(func: tvm.tirx.PrimFunc, target=TARGET):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)


def run(func: tvm.tirx.PrimFunc, *inputs: np.ndarray, target=TARGET) -> np.ndarray:
    """Run `func` on `inputs`; its last parameter is the output buffer."""
    out = func.params[-1]
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], dtype=str(out.dtype)))
    build(func, target)["main"](*[tvm.runtime.tensor(x) for x in inputs], result)
    return result.numpy()


def scheduled(rule, func: tvm.tirx.PrimFunc, target=TARGET) -> tvm.tirx.PrimFunc:
    sch = rule.apply(func, target, False)
    assert sch is not None, f"{type(rule).__name__} did not fit"
    return sch.mod["main"]


def loop_kinds(func: tvm.tirx.PrimFunc) -> set[str]:
    """The loop kinds `func` uses besides serial: a subset of {'parallel', 'vectorized', 'unroll'}."""
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}
