"""`PQLinear` and `PQConv2d`: drop-in replacements of `nn.Linear` / `nn.Conv2d` that compute with PQ.

Forward (training and eval): each input sub-vector takes its nearest centroid (hard argmin), and the output is the
sum of the chosen rows of the table `T = centroids x weight slices`, fake-quantized to int8 with the overflow-safe
per-column scales of `tvm_lut.pq.quantize` (what the compiled kernel computes, up to float rounding).

Backward (LUT-NN's straight-through estimator): the hard one-hot is replaced in the gradient by the soft
assignment `softmax(-dist / s * t)`, with the learned inverse temperature `t = softplus(logit) + 1` and `s` the
layer's mean squared k-means error (without it, post-ReLU activations of size 10 make every softmax one-hot and
no gradient reaches the layers upstream); the int8 rounding passes gradients straight through. With
`input_gradient="exact"` the input instead gets the exact layer's gradient `grad_out @ W` (the straight-through
estimator of VQ-VAE: the quantized row stands for the row), and the soft assignment trains only the centroids and
the temperature: the layers upstream learn as in the FP32 model, where the soft path gives them little
gradient once the assignment is nearly one-hot. Trainable: `centroids` and `temperature_logit` (the weight and bias are the
original layer's parameters, trained only with `PQConfig.trainable = "all"`).

Before the centroids are initialised a layer is in `calibrating` mode: it computes exactly and records a uniform
sample of its input rows for k-means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvm_lut.pq.config import INPUT_GRADIENTS
from tvm_lut.pq.kmeans import distance_scores, kmeans
from tvm_lut.pq.quantize import overflow_safe_scale
from tvm_lut.pq.reference import im2col, rows_to_image
from tvm_lut.pq.table import PQTable


def fake_quantize_table(table: torch.Tensor) -> torch.Tensor:
    """int8 rounding of a float table (C, K, M) with per-column scales in the forward, identity in the backward."""
    scale = torch.from_numpy(overflow_safe_scale(table.detach().abs().amax(dim=1).cpu().numpy())).to(table.device)
    quantized = torch.clamp(torch.round(table / scale), -127, 127) * scale
    return table + (quantized - table).detach()


class StraightThroughLinear(torch.autograd.Function):
    """Adds zero in the forward; in the backward, `x` gets the gradient it would get from `x @ matrix`, i.e.
    `grad_out @ matrix.T`, without the dense forward matmul.

    The soft path: `x` the soft assignment (N, C*K), `matrix` the table; with the hard lookup this equals LUT-NN's
    `(soft - (soft - hard).detach()) @ table` in value and in every gradient. The exact input gradient: `x` the
    input rows (N, D), `matrix` the weight transposed (D, M).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(matrix)
        return x.new_zeros(x.shape[0], matrix.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (matrix,) = ctx.saved_tensors
        return grad_out @ matrix.T, None


class RowSample:
    """A uniform sample of at most `limit` rows from a stream: each row draws a random key, the lowest keys stay."""

    def __init__(self, limit: int, seed: int):
        self.limit = limit
        self.gen = torch.Generator().manual_seed(seed)
        self.rows = None
        self.keys = None

    def add(self, rows: torch.Tensor) -> None:
        keys = torch.rand(rows.shape[0], generator=self.gen)
        if self.rows is not None:
            rows, keys = torch.cat([self.rows, rows]), torch.cat([self.keys, keys])
        if rows.shape[0] > self.limit:
            keep = keys.topk(self.limit, largest=False).indices
            rows, keys = rows[keep], keys[keep]
        self.rows, self.keys = rows, keys


class PQLayer(nn.Module):
    """What PQLinear and PQConv2d share: centroids, temperature, the PQ matmul of input rows (N, D) -> (N, M)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, K: int, V: int, temperature_logit: float,
                 input_gradient: str = "soft"):
        super().__init__()
        if input_gradient not in INPUT_GRADIENTS:
            raise ValueError(f"input_gradient must be one of {INPUT_GRADIENTS}, got {input_gradient!r}")
        self.input_gradient = input_gradient
        in_features = weight[0].numel()
        if in_features % V:
            raise ValueError(f"sub-vector length V={V} does not divide the input length {in_features}")
        self.weight = weight
        self.bias = bias
        self.K, self.V, self.C = K, V, in_features // V
        self.centroids = nn.Parameter(torch.zeros(self.C, K, V))
        self.temperature_logit = nn.Parameter(torch.tensor(float(temperature_logit)))
        # Distances in the soft assignment are divided by this (the mean k-means error on calibration rows), so
        # one temperature suits layers of any activation scale; 1 until calibrated.
        self.register_buffer("distance_scale", torch.tensor(1.0))
        self.calibrating: RowSample | None = None

    @property
    def temperature(self) -> torch.Tensor:
        """The inverse temperature t >= 1 of the soft assignment."""
        return F.softplus(self.temperature_logit) + 1

    def start_calibration(self, max_rows: int, seed: int) -> None:
        self.calibrating = RowSample(max_rows, seed)

    def finish_calibration(self, iters: int, seed: int) -> None:
        """k-means on the recorded rows, one codebook per sub-vector position; leaves calibrating mode."""
        sample, self.calibrating = self.calibrating, None
        if sample is None or sample.rows is None:
            raise RuntimeError("no calibration rows reached this layer: the calibration batches never ran it")
        points = sample.rows.reshape(-1, self.C, self.V).transpose(0, 1)
        with torch.no_grad():
            self.centroids.copy_(kmeans(points, self.K, iters, seed))
            nearest = distance_scores(points, self.centroids).min(-1).values + (points * points).sum(-1)
            self.distance_scale.fill_(max(float(nearest.clamp(min=0).mean()), 1e-12))

    def pq_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """PQ of rows (N, D) -> (N, M), bias included; exact while calibrating."""
        flat_weight = self.weight.reshape(self.weight.shape[0], -1)
        if self.calibrating is not None:
            self.calibrating.add(rows.detach().to(torch.float32))
            return F.linear(rows, flat_weight, self.bias)
        num_rows = rows.shape[0]
        subs = rows.reshape(num_rows, self.C, self.V).transpose(0, 1)  # (C, N, V)
        exact_input = self.input_gradient == "exact"
        scores = distance_scores(subs.detach() if exact_input else subs, self.centroids)
        codes = scores.argmin(-1)  # (C, N)
        table = fake_quantize_table(torch.einsum("ckv,mcv->ckm", self.centroids, flat_weight.reshape(-1, self.C, self.V)))
        flat_table = table.reshape(self.C * self.K, -1)
        offsets = torch.arange(self.C, device=codes.device)[:, None] * self.K
        out = F.embedding_bag((codes + offsets).T, flat_table, mode="sum")  # the hard lookup; its table gradient
        if torch.is_grad_enabled():
            soft = torch.softmax(-scores * (self.temperature / self.distance_scale), dim=-1)
            out = out + StraightThroughLinear.apply(soft.transpose(0, 1).reshape(num_rows, -1), flat_table.detach())
            if exact_input:  # grad_out @ W to the input
                out = out + StraightThroughLinear.apply(rows, flat_weight.detach().T)
        return out if self.bias is None else out + self.bias

    def _table_kwargs(self) -> dict:
        return {}

    def to_table(self) -> PQTable:
        """The layer as a bundle entry (fingerprint of the weight it replaces, int8 table, centroids, bias)."""
        bias = None if self.bias is None else self.bias.detach().cpu().numpy()
        return PQTable.from_weight(self.centroids.detach().cpu().numpy(), self.weight.detach().cpu().numpy(), bias,
                                   **self._table_kwargs())


class PQLinear(PQLayer):
    """`nn.Linear` computed by product quantization; inputs (..., D) -> (..., M)."""

    def __init__(self, linear: nn.Linear, K: int, V: int, temperature_logit: float = 10.0,
                 input_gradient: str = "soft"):
        super().__init__(linear.weight, linear.bias, K, V, temperature_logit, input_gradient)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pq_rows(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, K={self.K}, V={self.V}"


class PQConv2d(PQLayer):
    """`nn.Conv2d` (groups=1, zero padding) as PQ over im2col patches in the weight's (I, kh, kw) order."""

    def __init__(self, conv: nn.Conv2d, K: int, V: int, temperature_logit: float = 10.0,
                 input_gradient: str = "soft"):
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("PQConv2d needs groups=1, padding_mode='zeros' and numeric padding")
        super().__init__(conv.weight, conv.bias, K, V, temperature_logit, input_gradient)
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, out_hw = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)
        return rows_to_image(self.pq_rows(rows), x.shape[0], out_hw)

    def _table_kwargs(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation}

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.K}, V={self.V}")
