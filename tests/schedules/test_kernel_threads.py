"""The hand-scheduled kernels split over threads: the same results at 3 threads as the NumPy references, on sizes
whose parallel tasks do not divide evenly (the test process runs TVM's pool at one thread, so this runs in a
subprocess with three)."""

import numpy as np

from tests.fresh_process import fresh_python

THREADS = 3


def check_at_threads():
    """Every split kernel on uneven sizes against its reference; run with a pool of THREADS threads."""
    import tvm

    from schedules import host_target, layer_norm_func, softmax_func
    from schedules.target import override_params
    from schedules.kernels.pq_encode import Im2col, pq_encode_reference
    from schedules.kernels.pq_lookup import pq_lookup_reference
    from schedules.kernels.reference import layer_norm_reference, softmax_reference

    from .kernel_harness import EDGE_VALUES, EXP, RECIPROCAL, RSQRT, assert_matches, run_kernel
    from .pq_harness import DOT_LOOKUP, INTRIN, run_encode, run_lookup, run_lookup_dot

    tvm.get_global_func("runtime.config_threadpool")(1, THREADS)
    target = host_target(THREADS)  # a target of several cores: the kernels keep their parallel loops
    assert tvm.get_global_func("runtime.NumThreads")() == THREADS
    rng = np.random.default_rng(3)
    if INTRIN is not None:
        # One row block of 64 (its codebooks in 3 ranges: 2 + 2 + 1, 3 + 3 + 1), two (4 + 3 each), three (one each)
        for rows, codebooks, sub_len in ((1, 5, 16), (45, 7, 16), (100, 7, 9), (130, 3, 4)):
            cents = rng.standard_normal((codebooks, 16, sub_len)).astype(np.float32)
            x = rng.standard_normal((rows, codebooks * sub_len)).astype(np.float32)
            x.flat[:len(EDGE_VALUES)] = EDGE_VALUES
            want = pq_encode_reference(x, cents)
            np.testing.assert_array_equal(run_encode(x, cents, lanes=64, threads=THREADS), want)
            if DOT_LOOKUP and sub_len == 16:  # C = 5, 7: padded codebooks in the dot layout
                np.testing.assert_array_equal(run_encode(x, cents, lanes=64, dot=True, threads=THREADS), want)
        conv = Im2col((1, 3, 7, 5), (3, 3), padding=(1, 1, 1, 1))  # 35 rows: one block, 3 codebooks of V = 9
        cents = rng.standard_normal((3, 16, 9)).astype(np.float32)
        image = rng.standard_normal(conv.input_shape).astype(np.float32)
        codes = run_encode(image, cents, source=conv, threads=THREADS)
        np.testing.assert_array_equal(codes, run_encode(image, cents, source=conv))
        codes, table = rng.integers(0, 16, (45, 7)), rng.integers(-128, 128, (7, 16, 48)).astype(np.int8)
        want = pq_lookup_reference(codes, table, 1.0, None)  # exact sums (the epilogue's FMA rounds once)
        np.testing.assert_array_equal(run_lookup(codes, table, 1.0, None), want)
        np.testing.assert_array_equal(run_lookup(codes, table, 1.0, None, split_outputs=True), want)
        if DOT_LOOKUP:  # 3 row groups, a part per thread; and the row parts of 2 threads run by 3
            np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None, threads=THREADS), want)
            np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None, threads=2), want)
            # 3 output tiles, one per thread
            np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None, split_outputs=True), want)
    scores = (rng.standard_normal((3, 5, 7, 64)) * 4).astype(np.float32)
    scores.flat[:len(EDGE_VALUES)] = EDGE_VALUES
    rows = rng.standard_normal((5, 7, 48)).astype(np.float32)
    rows.flat[:len(EDGE_VALUES)] = EDGE_VALUES
    gamma, beta = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    with override_params(min_parallel_work=0):  # these small sizes would otherwise run serial
        assert_matches(run_kernel(softmax_func(EXP, RECIPROCAL, scores.shape, -1), scores, target=target),
                       softmax_reference(EXP, RECIPROCAL, scores, -1))
        assert_matches(run_kernel(layer_norm_func(RSQRT, rows.shape, [-1]), rows, gamma, beta, target=target),
                       layer_norm_reference(RSQRT, rows, [-1], 1e-5, gamma, beta))
    print("ok")


def test_kernels_split_over_threads_match_their_references():
    code = "from tests.schedules.test_kernel_threads import check_at_threads; check_at_threads()"
    result = fresh_python(code, timeout=600, TVM_NUM_THREADS=str(THREADS))
    assert result.returncode == 0 and result.stdout.split()[-1:] == ["ok"], result.stderr[-4000:]
