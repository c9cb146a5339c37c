"""PQ layers: forward equals the reference inference of their exported table; the STE gradients are LUT-NN's."""

import numpy as np
import pytest
import torch
from torch import nn

from tvm_lut.pq.layers import PQConv2d, PQLinear, fake_quantize_table
from tvm_lut.pq.reference import pq_forward


def linear_layer(seed=0, dtype=torch.float32, V=4):
    torch.manual_seed(seed)
    layer = PQLinear(nn.Linear(12, 5), K=16, V=V, temperature_logit=0.5).to(dtype)
    with torch.no_grad():
        layer.centroids.normal_()
        layer.distance_scale.fill_(2.5)
    return layer


def test_eval_forward_matches_reference_of_exported_table():
    layer = linear_layer()
    x = torch.randn(3, 7, 12)
    with torch.no_grad():
        y = layer(x)
    np.testing.assert_allclose(y.numpy(), pq_forward(x, layer.to_table()).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Conv2d(8, 6, 1, bias=False)])
def test_conv_forward_matches_reference(conv):
    torch.manual_seed(1)
    V = 9 if conv.kernel_size == (3, 3) else 4
    layer = PQConv2d(conv, K=16, V=V)
    with torch.no_grad():
        layer.centroids.normal_()
    x = torch.randn(2, conv.in_channels, 7, 6)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == conv(x).shape
    np.testing.assert_allclose(y.numpy(), pq_forward(x, layer.to_table()).numpy(), rtol=1e-5, atol=1e-5)


def test_training_forward_value_is_the_hard_lookup():
    layer = linear_layer()
    x = torch.randn(9, 12)
    with torch.no_grad():
        hard = layer(x)
    torch.testing.assert_close(layer(x), hard)


def explicit_ste(layer, x):
    """LUT-NN's formulation, dense: `(soft - (soft - hard).detach()) @ fake_quant(table)`."""
    subs = x.reshape(-1, layer.C, layer.V).transpose(0, 1)
    dist = ((subs[:, :, None, :] - layer.centroids[:, None]) ** 2).sum(-1)
    soft = torch.softmax(-dist * layer.temperature / layer.distance_scale, -1)
    hard = nn.functional.one_hot(dist.argmin(-1), layer.K).to(x.dtype)
    assign = (soft - (soft - hard).detach()).transpose(0, 1).reshape(x.shape[0], -1)
    weight = layer.weight.reshape(-1, layer.C, layer.V)
    table = fake_quantize_table(torch.einsum("ckv,mcv->ckm", layer.centroids, weight))
    return assign @ table.reshape(layer.C * layer.K, -1) + layer.bias


def test_gradients_equal_lut_nn_dense_formulation():
    layer = linear_layer(dtype=torch.float64)
    x = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(6, 5, dtype=torch.float64)
    params = [x, layer.centroids, layer.temperature_logit]
    ours = torch.autograd.grad((layer(x) * grad_out).sum(), params)
    theirs = torch.autograd.grad((explicit_ste(layer, x) * grad_out).sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert ours[2].abs() > 0 and ours[0].abs().sum() > 0


def test_exact_input_gradient_is_the_exact_layers():
    """input_gradient="exact": the input gets `grad_out @ W`; centroids, weight and temperature get what the soft
    estimator gives them; the forward value is unchanged."""
    soft = linear_layer(dtype=torch.float64)
    exact = linear_layer(dtype=torch.float64)
    exact.input_gradient = "exact"
    x = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(exact(x), soft(x))
    grads = {}
    for name, layer in (("soft", soft), ("exact", exact)):
        params = [x, layer.centroids, layer.weight, layer.temperature_logit]
        grads[name] = torch.autograd.grad((layer(x) * grad_out).sum(), params)
    torch.testing.assert_close(grads["exact"][0], grad_out @ exact.weight.detach())
    for a, b in zip(grads["exact"][1:], grads["soft"][1:]):
        torch.testing.assert_close(a, b)


def test_soft_path_gradient_matches_finite_differences():
    """Input and temperature reach the loss only through the soft path: their STE gradient is the exact
    gradient of `softmax(-dist * t) @ table` with the (fixed) quantized table, checked by central differences."""
    layer = linear_layer(seed=3, dtype=torch.float64)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        weight = layer.weight.reshape(-1, layer.C, layer.V)
        table = fake_quantize_table(torch.einsum("ckv,mcv->ckm", layer.centroids, weight)).reshape(-1, 5)

    def soft_surrogate(inputs, logit):
        subs = inputs.reshape(-1, layer.C, layer.V).transpose(0, 1)
        dist = ((subs[:, :, None, :] - layer.centroids.detach()[:, None]) ** 2).sum(-1)
        t = nn.functional.softplus(logit) + 1
        soft = torch.softmax(-dist * t / layer.distance_scale, -1).transpose(0, 1).reshape(inputs.shape[0], -1)
        return float(((soft @ table) * grad_out).sum())

    grad_x, grad_t = torch.autograd.grad((layer(x) * grad_out).sum(), [x, layer.temperature_logit])
    eps = 1e-6
    logit = layer.temperature_logit.detach()
    fd_t = (soft_surrogate(x.detach(), logit + eps) - soft_surrogate(x.detach(), logit - eps)) / (2 * eps)
    np.testing.assert_allclose(grad_t.item(), fd_t, rtol=1e-5, atol=1e-8)
    fd_x = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=torch.float64)
        step[i] = eps
        step = step.reshape(x.shape)
        fd_x.view(-1)[i] = (soft_surrogate(x.detach() + step, logit) - soft_surrogate(x.detach() - step, logit)) / (2 * eps)
    np.testing.assert_allclose(grad_x.numpy(), fd_x.numpy(), rtol=1e-5, atol=1e-8)


def test_fake_quantization_is_straight_through():
    table = torch.randn(3, 4, 5, requires_grad=True)
    quantized = fake_quantize_table(table)
    assert len(torch.unique(quantized.detach())) <= 255
    quantized.sum().backward()
    torch.testing.assert_close(table.grad, torch.ones_like(table))


def test_calibration_mode_is_exact_and_samples_rows():
    linear = nn.Linear(8, 3)
    layer = PQLinear(linear, K=4, V=2)
    layer.start_calibration(max_rows=10, seed=0)
    x = torch.randn(25, 8)
    torch.testing.assert_close(layer(x), linear(x))
    assert layer.calibrating.rows.shape == (10, 8)
    layer.finish_calibration(iters=5, seed=0)
    assert layer.calibrating is None and torch.isfinite(layer.centroids).all()
    assert layer.distance_scale > 0


def test_misuse():
    with pytest.raises(ValueError, match="does not divide"):
        PQLinear(nn.Linear(10, 3), K=16, V=4)
    with pytest.raises(ValueError, match="groups=1"):
        PQConv2d(nn.Conv2d(4, 4, 3, groups=2), K=16, V=9)
    with pytest.raises(ValueError, match="input_gradient must be one of"):
        PQLinear(nn.Linear(8, 3), K=4, V=2, input_gradient="hard")
    layer = PQLinear(nn.Linear(8, 3), K=4, V=2)
    with pytest.raises(RuntimeError, match="no calibration rows"):
        layer.finish_calibration(iters=5, seed=0)
