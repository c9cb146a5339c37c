"""LUT kernels: unscheduled TensorIR compute definitions, scheduled by the CPU rules like every other function.

NN-LUT (`pwl`, `softmax`, `layer_norm`) bakes its tables into the function as constants; `reference` holds their
NumPy semantics. LUT-NN's product-quantization kernels live in `pq_encode` and `pq_lookup`.
"""

from .layer_norm import layer_norm_func
from .pwl import pwl_func
from .pwl_expr import PWLSpec
from .softmax import softmax_func

__all__ = ["PWLSpec", "layer_norm_func", "pwl_func", "softmax_func"]
