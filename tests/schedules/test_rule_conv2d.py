import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from tvm import relax, te, topi
from tvm.target import Target
from tvm.target.codegen import target_has_features

from relay_passes.pipeline import prepare
from schedules.rules import Conv2d, default_rules
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled

RNG = np.random.default_rng(5)


def _conv_ref(x, w, stride, padding, dilation):
    """NCHW direct convolution in NumPy: pad, take the dilated windows, contract over (ci, kh, kw)."""
    _, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    windows = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[..., ::dilation, ::dilation]
    windows = windows[:, :, ::stride, ::stride]
    return np.einsum("nchwyx,ocyx->nohw", windows, w, optimize=True).astype(np.float32)


def _conv_bias_relu(shape, co, k, stride=1, padding=0, dilation=1, epilogue=True, hardswish=False):
    x = te.placeholder(shape, name="x")
    w = te.placeholder((co, shape[1], k, k), name="w")
    out = topi.nn.conv2d_nchw(x, w, stride, padding, dilation)
    if not epilogue:
        return te.create_prim_func([x, w, out])
    b = te.placeholder((1, co, 1, 1), name="b")
    out = topi.add(out, b)
    if hardswish:  # MobileNetV3's: x * relu6(x + 3) / 6
        out = topi.multiply(out, topi.divide(topi.clip(topi.add(out, 3.0), 0.0, 6.0), 6.0))
    else:
        out = topi.nn.relu(out)
    return te.create_prim_func([x, w, b, out])


# (input NCHW, output channels, kernel, stride, padding, dilation): the CNN's layers, then odd shapes, strides,
# dilation, batches, 1x1 windows and a single input channel (dlight drops its unit axis).
CASES = [
    ((1, 1, 28, 28), 32, 3, 1, 1, 1),
    ((1, 32, 14, 14), 64, 3, 1, 1, 1),
    ((1, 64, 7, 7), 64, 1, 1, 0, 1),
    ((2, 3, 9, 11), 5, 3, 2, 1, 1),
    ((1, 4, 10, 13), 24, 3, 1, 2, 2),
    ((3, 5, 8, 9), 7, 1, 1, 0, 1),
    ((2, 6, 5, 17), 12, 5, 1, 2, 1),
]


@pytest.mark.parametrize("shape, co, k, stride, padding, dilation", CASES)
def test_conv_bias_relu_matches_numpy(shape, co, k, stride, padding, dilation):
    func = _conv_bias_relu(shape, co, k, stride, padding, dilation)
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], k, k), dtype="float32")
    b = RNG.standard_normal((1, co, 1, 1), dtype="float32")
    expected = np.maximum(_conv_ref(x, w, stride, padding, dilation) + b, 0)
    np.testing.assert_allclose(run(scheduled(Conv2d(), func), x, w, b), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, co, k, stride, padding, dilation", [CASES[2], CASES[4]])
def test_conv_hardswish_matches_numpy_and_divides_by_a_product(shape, co, k, stride, padding, dilation):
    func = scheduled(Conv2d(), _conv_bias_relu(shape, co, k, stride, padding, dilation, hardswish=True))
    assert "/ T.float32(6.0)" not in func.script()
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], k, k), dtype="float32")
    b = RNG.standard_normal((1, co, 1, 1), dtype="float32")
    y = _conv_ref(x, w, stride, padding, dilation) + b
    np.testing.assert_allclose(run(func, x, w, b), y * np.clip(y + 3, 0, 6) / 6, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, co, k, stride, padding, dilation", CASES[1:4])
def test_conv_without_epilogue_propagates_nan_and_inf(shape, co, k, stride, padding, dilation):
    x = RNG.standard_normal(shape, dtype="float32") * 1e3
    x[0, 0, 1, 2], x[-1, -1, -1, -1] = np.nan, np.inf
    w = RNG.standard_normal((co, shape[1], k, k), dtype="float32")
    with np.errstate(invalid="ignore"):
        expected = _conv_ref(x, w, stride, padding, dilation)
    out = run(scheduled(Conv2d(), _conv_bias_relu(shape, co, k, stride, padding, dilation, epilogue=False)), x, w)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)
    assert np.isnan(out).any()


def test_channels_vectorized_rows_parallel_window_unrolled():
    kinds = loop_kinds(scheduled(Conv2d(), _conv_bias_relu((1, 32, 14, 14), 64, 3, padding=1)))
    assert {"parallel", "vectorized", "unroll"} <= kinds


AVX2 = Target({"kind": "llvm", "mcpu": "znver3"})
AVX512 = Target({"kind": "llvm", "mcpu": "znver4"})


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("shape, co, k, stride, padding, dilation", CASES[:4])
def test_the_tile_form_follows_the_target_and_the_input_channels(target, shape, co, k, stride, padding, dilation):
    """AVX-512 takes row tiles for one input channel read with stride 1 along the width (no repacked weight); every
    other conv takes channel blocks, whose weight repacking is marked for the pipeline to fold; both compute the
    conv (run where this CPU can run the target's code)."""
    func = scheduled(Conv2d(), _conv_bias_relu(shape, co, k, stride, padding, dilation), target)
    row_form = target is AVX512 and shape[1] == 1 and stride == 1
    assert ("w_global" in func.script()) == (not row_form)
    assert ("layout_rewrite_preproc" in func.script()) == (not row_form)
    if not target_has_features(["avx512f"], TARGET) and target is AVX512:
        return
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], k, k), dtype="float32")
    b = RNG.standard_normal((1, co, 1, 1), dtype="float32")
    expected = np.maximum(_conv_ref(x, w, stride, padding, dilation) + b, 0)
    np.testing.assert_allclose(run(func, x, w, b, target=target), expected, rtol=1e-4, atol=1e-4)


def test_fits_the_conv_relax_legalizes_and_comes_before_reduction():
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 14, 14), "float32"))
    weight = relax.const(RNG.standard_normal((64, 32, 3, 3), dtype="float32"))
    bias = relax.const(RNG.standard_normal((1, 64, 1, 1), dtype="float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            conv = builder.emit(relax.op.add(relax.op.nn.conv2d(x, weight, padding=1), bias))
            out = builder.emit_output(builder.emit(relax.op.nn.relu(conv)))
        builder.emit_func_output(out)
    module = prepare(builder.get(), TARGET, winograd=False)  # the direct conv, as legalized
    (func,) = [f for f in module.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert Conv2d().apply(func, TARGET, False) is not None
    names = [type(rule).__name__ for rule in default_rules()]
    assert names.index("Conv2d") < names.index("Reduction")


def _conv_module(weight_as_input: bool):
    """Relax conv + bias + ReLU whose weight is a constant (as imported models have it) or a parameter."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 14, 14), "float32"))
    w = relax.Var("w", relax.TensorType((64, 32, 3, 3), "float32"))
    weight = RNG.standard_normal((64, 32, 3, 3), dtype="float32")
    bias = RNG.standard_normal((1, 64, 1, 1), dtype="float32")
    with builder.function("main", [x, w] if weight_as_input else [x]):
        with builder.dataflow():
            conv = relax.op.nn.conv2d(x, w if weight_as_input else relax.const(weight), padding=1)
            out = builder.emit_output(builder.emit(relax.op.nn.relu(relax.op.add(conv, relax.const(bias)))))
        builder.emit_func_output(out)
    return builder.get(), weight, bias


@pytest.mark.parametrize("weight_as_input", [False, True], ids=["constant weight", "weight at run time"])
def test_the_pipeline_repacks_a_constant_weight_once_at_compile_time(weight_as_input):
    mod, weight, bias = _conv_module(weight_as_input)
    pipeline = relax.get_pipeline("tvm_lut", target=TARGET, winograd=False)  # the direct conv, not Winograd
    executable = tvm.compile(mod, target=TARGET, relax_pipeline=pipeline)
    calls = executable.as_text().split("@main:")[1].split("\n\n")[0]
    assert "_prepacked" in calls
    assert ("_weight_prepack" in calls) == weight_as_input
    x = RNG.standard_normal((1, 32, 14, 14), dtype="float32")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(x)] + ([tvm.runtime.tensor(weight)] if weight_as_input else [])
    expected = np.maximum(_conv_ref(x, weight, 1, 1, 1) + bias, 0)
    np.testing.assert_allclose(vm["main"](*args).numpy(), expected, rtol=1e-4, atol=1e-4)


def _not_convs():
    x, y = te.placeholder((8, 16), name="x"), te.placeholder((16, 4), name="y")
    r = te.reduce_axis((0, 16), "r")
    yield te.create_prim_func([x, y, te.compute((8, 4), lambda i, j: te.sum(x[i, r] * y[r, j], axis=r))])
    yield te.create_prim_func([x, topi.nn.softmax(x)])
    yield te.create_prim_func([x, topi.nn.relu(x)])
    image = te.placeholder((1, 4, 8, 8), name="image")
    yield te.create_prim_func([image, topi.nn.pool2d(image, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max")])
    depthwise = te.placeholder((4, 1, 3, 3), name="depthwise")
    yield te.create_prim_func([image, depthwise, topi.nn.depthwise_conv2d_nchw(image, depthwise, 1, 1, 1)])
    nhwc, hwio = te.placeholder((1, 8, 8, 4), name="nhwc"), te.placeholder((3, 3, 4, 6), name="hwio")
    yield te.create_prim_func([nhwc, hwio, topi.nn.conv2d_nhwc(nhwc, hwio, 1, 1, 1)])


@pytest.mark.parametrize("func", list(_not_convs()), ids=["matmul", "softmax", "relu", "pool", "depthwise", "nhwc"])
def test_returns_none_on_other_functions(func):
    assert Conv2d().apply(func, TARGET, False) is None


@pytest.mark.parametrize("shape, co, k, stride, pad", [((1, 8, 9, 9), 16, 1, 1, (0, 0, 1, 1)),
                                                        ((2, 4, 10, 10), 8, 3, 2, (1, 1, 2, 2))])
def test_conv_with_the_next_layers_padding_fused_writes_the_border(shape, co, k, stride, pad):
    """MobileNetV2's TF-style padding fuses into the previous conv: the output is larger than the conv's, and its
    border (zeros) must be written too, not only what the conv's tiles cover."""
    x = te.placeholder(shape, name="x")
    w = te.placeholder((co, shape[1], k, k), name="w")
    b = te.placeholder((1, co, 1, 1), name="b")
    conv = topi.clip(topi.add(topi.nn.conv2d_nchw(x, w, stride, 0, 1), b), 0.0, 6.0)
    padded = topi.nn.pad(conv, (0, 0, pad[0], pad[1]), (0, 0, pad[2], pad[3]))
    func = scheduled(Conv2d(), te.create_prim_func([x, w, b, padded]))
    data = RNG.standard_normal(shape, dtype="float32")
    weight = RNG.standard_normal((co, shape[1], k, k), dtype="float32")
    bias = RNG.standard_normal((1, co, 1, 1), dtype="float32")
    inner = np.clip(_conv_ref(data, weight, stride, 0, 1) + bias, 0, 6)
    expected = np.pad(inner, ((0, 0), (0, 0), (pad[0], pad[2]), (pad[1], pad[3])))
    out = func.params[-1]
    result = tvm.runtime.tensor(np.full([int(d) for d in out.shape], np.nan, dtype="float32"))  # stale memory
    from tests.schedules.rule_harness import build

    build(func)["main"](*[tvm.runtime.tensor(a) for a in (data, weight, bias)], result)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-4)
