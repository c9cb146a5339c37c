"""Per-layer autotuning: exact or PQ (K, V) for every layer under an accuracy budget, from latencies measured on
the target. `tvm_lut.autotune` (the driver) runs the stages; one concept per module:
`config` (AutotuneConfig), `layers` (what may be chosen per layer), `latency` (the measured table and its cache),
`sensitivity` (per-layer proxies of the drop), `solver` (the knapsack), `plan` (plan.json), `plot`, `output`
(the output directory), `driver`.

(The package is `autotuning`, not `autotune`: a submodule named `autotune` would replace the function
`tvm_lut.autotune` on the package, as `compiler` and `training` avoid for `compile` and `learn`.)
"""
