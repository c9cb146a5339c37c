"""Relax passes of tvm-lut.

The package keeps the name `relay_passes` that its users asked for, but TVM >= 0.20 has no Relay: every pass here
is a Relax pass (`tvm.ir.transform.Pass` over a Relax `IRModule`), usable in any Relax pipeline.
"""

from relay_passes.fold_batch_norm import FoldBatchNorm
from relay_passes.fold_pad_into_conv import FoldPadIntoConv
from relay_passes.fuse_layout_into_matmul import FuseLayoutIntoMatmul
from relay_passes.lut_dense import LUTDense
from relay_passes.lut_nonlinear import LUTNonlinear
from relay_passes.report import KeptExact, PassReport, Replaced
from relay_passes.winograd_conv2d import WinogradConv2d

__all__ = ["FoldBatchNorm", "FoldPadIntoConv", "FuseLayoutIntoMatmul", "KeptExact", "LUTDense", "LUTNonlinear", "PassReport", "Replaced", "WinogradConv2d"]
