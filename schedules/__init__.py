"""TensorIR kernels, CPU schedule rules, tensor intrinsics and tuning for tvm-lut (imports only TVM and NumPy)."""
