"""`benchmarks.vm_profile`: every kernel of a model with its calls, time and share of the deployed latency."""

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

import tvm_lut
from benchmarks.vm_profile import profile_vm


@tvm.script.ir_module
class TwoKernels:
    @R.function
    def main(x: R.Tensor((64, 64), "float32")):
        with R.dataflow():
            y = R.matmul(x, x)
            z = R.nn.softmax(y, axis=-1)
            w = R.matmul(z, x)
            R.output(w)
        return w


def test_every_kernel_is_timed_and_the_rest_is_vm_overhead():
    bytecode = tvm_lut.compile(TwoKernels, exec_mode="bytecode")
    deployed = tvm_lut.compile(TwoKernels)
    x = tvm.runtime.tensor(np.ones((64, 64), np.float32))
    rows = profile_vm(bytecode, [x], deployed, repeat=3)
    functions = {row["function"]: row for row in rows}
    assert "vm overhead" in functions
    kernels = [row for row in rows if row["function"] != "vm overhead"]
    assert len(kernels) >= 2 and all(row["calls"] >= 1 for row in kernels)  # matmuls and softmax, however fused
    assert all(row["ms"] >= 0 and row["share"] >= 0 for row in rows)
    # shares sum to 1, unless kernels timed warm outrun the whole model (the overhead is then 0, not negative)
    assert sum(row["share"] for row in rows) == pytest.approx(1.0) or functions["vm overhead"]["ms"] == 0
    assert [row["ms"] for row in rows] == sorted((row["ms"] for row in rows), reverse=True)


def test_a_compiled_executable_cannot_be_profiled():
    """Compiled VM code calls kernels directly: the instrument hook sees nothing, so the profile would be empty."""
    with pytest.raises(ValueError, match="bytecode"):
        profile_vm(tvm_lut.compile(TwoKernels), [tvm.runtime.tensor(np.ones((64, 64), np.float32))])
