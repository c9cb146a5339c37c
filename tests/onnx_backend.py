"""An `onnx.backend.base.Backend` over `tvm_lut.compile` (test helper): ONNX model -> TVM's ONNX importer ->
`tvm_lut.compile` (exact, the CPU rules) -> `relax.VirtualMachine`. `stock=True` builds with stock TVM
(`tvm.compile(mod, target)`) instead, to tell our pipeline's failures from the importer's."""

import numpy as np
import onnx
import tvm
import tvm_ffi
from onnx.backend.base import Backend, BackendRep
from tvm import relax


class TVMLUTRep(BackendRep):
    def __init__(self, executable, outputs: int):
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self.outputs = outputs

    def run(self, inputs, **kwargs):
        result = self.vm["main"](*[tvm.runtime.tensor(np.asarray(x)) for x in inputs])
        return tuple(_flatten(result))[: self.outputs]


def _flatten(value):
    """The VM's result as a flat list of arrays: tensors, shapes (an ONNX Shape output) and scalars."""
    if hasattr(value, "numpy"):
        yield value.numpy()
    elif isinstance(value, (tvm_ffi.Shape, int, float, bool, np.generic)):
        yield np.asarray(value, dtype="int64" if isinstance(value, tvm_ffi.Shape) else None)
    else:
        for item in value:
            yield from _flatten(item)


class TVMLUTBackend(Backend):
    stock = False  # True: stock TVM's build instead of tvm_lut.compile

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs):
        import tvm_lut
        from schedules import host_target
        from tvm_lut.frontend import from_onnx

        super().prepare(model, device, **kwargs)
        mod = from_onnx(model)
        executable = tvm.compile(mod, target=host_target()) if cls.stock else tvm_lut.compile(mod)
        return TVMLUTRep(executable, len(model.graph.output))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


class StockTVMBackend(TVMLUTBackend):
    stock = True
