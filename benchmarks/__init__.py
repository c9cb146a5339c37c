"""Benchmarks of tvm-lut: each prints its baseline beside its result from the same run (`python -m benchmarks.X`)."""
