"""TensorIR kernels, CPU schedule rules, tensor intrinsics and tuning for tvm-lut (imports only TVM and NumPy)."""

from .apply import ApplyCPUSchedules, RuleFailureWarning, ScheduleReport, UnscheduledWarning
from .target import host_target
from .kernels import PWLSpec, layer_norm_func, pwl_func, softmax_func

__all__ = ["ApplyCPUSchedules", "PWLSpec", "RuleFailureWarning", "ScheduleReport", "UnscheduledWarning", "host_target",
           "layer_norm_func", "pwl_func", "softmax_func"]
