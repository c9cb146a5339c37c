"""PQ tables from calibration data alone, for a model with no training code (an ONNX file or a `.pt2` program).

No labels, no backprop through the model. The model itself is run on the calibration batches (ONNX Runtime for
ONNX, the exported program for `.pt2`) and the input of every dense / conv layer whose weight is a constant is
captured (a uniform sample of at most `fit_rows` rows, the same rows at every run). With `FitSettings.token_mask`
(an input (B, L) such as `attention_mask`) the rows of padding tokens are left out.

Sequential calibration (`FitSettings.sequential`, as GPTQ / AdaRound fit layer after layer): the layers are fitted
in graph order, in stages of the consecutive layers that share one input (query, key and value); each stage's input
X is captured from the model with every layer fitted so far product-quantized (`tvm_lut.pq.onnx_splice` for ONNX,
where a conv stays exact; the PQ reference in the exported program), while its target is the exact model's output
Y = X_exact @ W.T for the same rows. So a layer learns to undo the error its upstream layers made, instead of
fitting activations the deployed model never sees (MiniLM-L6 at V=16, `tvm-lut demo`: NN-LUT + PQ drop 4.4 -> 2.7
points, cosine to FP32 0.55 -> 0.69; one more model run per stage). Without it, X = X_exact. Then, per layer
(before the bias, which is added exactly):

1. centroids by k-means, one codebook per sub-vector of length V (LUT-NN's initialisation);
2. centroids refined by `refine_steps` Adam steps on the output reconstruction error |PQ(X) - Y|^2 / |Y|^2, the
   assignment straight-through and soft in the backward (as in LUT-NN's training, with the table held fixed);
3. the table fitted to reconstruct Y from the hard codes: ridge regression of Y on the one-hot codes, shrunk
   towards the table `centroids @ W` (`ridge` weighs that prior against the data; by default chosen per layer
   from `RIDGE_GRID` by the error on held-out calibration rows: C*K features per output, 1,536 for MiniLM's FFN
   output layer, overfit a few thousand rows at ridge 1), then int8 with per-column scales (`tvm_lut.pq.quantize`). The compiled kernels read centroids and table independently, so a fitted table
   serves as any other; the entry's fingerprint is still the weight's, so `LUTDense` finds it in the graph.

Which layers and what K and V: a `PQConfig` (`include` / `exclude` / `overrides` match the layer names, the ONNX
node names with "/" as "."); its training fields are not used. `CalibrationFitReport` lists every layer replaced
or kept exact (and why) with its relative output error on the calibration rows before and after step 3 (and on
the held-out rows, with the ridge chosen).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tvm_lut.bundle import Bundle
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.kmeans import distance_scores, kmeans
from tvm_lut.pq.quantize import quantize_table
from tvm_lut.pq.reference import im2col, pq_forward
from tvm_lut.pq.table import PQTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    """How the tables are fitted (what to replace, K and V, is the `PQConfig`)."""

    fit_rows: int = 32768  # activation rows sampled per layer (1,024 tweets of MiniLM hold ~34k unpadded tokens)
    refine_steps: int = 0  # Adam steps on the centroids (0: k-means only; 100 changed nothing on MiniLM)
    refine_lr: float = 3e-3
    refine_batch: int = 2048
    # Prior weight in rows: the table leans on centroids @ W where a code was seen few times. None: chosen per layer
    # from RIDGE_GRID by the output error on held-out calibration rows (`holdout` of them), then refitted on all.
    ridge: float | None = None
    holdout: float = 0.2
    temperature: float = 10.0
    sequential: bool = True  # fit on inputs propagated through the fitted upstream layers (module docstring)
    token_mask: str | None = None  # a model input (B, L) whose zeros mark padding: those tokens' rows are not fitted

    def __post_init__(self):
        for name in ("fit_rows", "refine_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.refine_steps < 0 or (self.ridge is not None and self.ridge < 0) or self.refine_lr <= 0 \
                or self.temperature <= 0:
            raise ValueError("FitSettings: refine_steps and ridge must be >= 0, refine_lr and temperature > 0")
        if not 0 < self.holdout < 1:
            raise ValueError(f"FitSettings.holdout must be in (0, 1), got {self.holdout}")


@dataclass
class DenseLayer:
    """A layer of the model with a constant weight, in torch's layout: linear (M, D) or conv2d (O, I, kh, kw)."""

    name: str
    input_name: str  # the tensor that feeds it (an ONNX value name; for a program, the FX node of the call)
    weight: np.ndarray
    bias: np.ndarray | None
    conv: dict | None = None  # kernel_size, stride, padding, dilation
    node: str = ""  # the graph node that computes it (ONNX node name, FX node name)

    @property
    def kind(self) -> str:
        return "linear" if self.conv is None else "conv2d"

    def rows(self, x: np.ndarray, token_mask: np.ndarray | None = None) -> torch.Tensor:
        """The layer's input rows (N, D) from its input tensor; with a `token_mask` of x's leading shape (one row
        per token), only the rows of the tokens it marks (non-zero)."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.conv is None:
            if token_mask is not None and tuple(token_mask.shape) == tuple(x.shape[:-1]):
                return x[torch.from_numpy(np.asarray(token_mask) != 0)]
            return x.reshape(-1, self.weight.shape[1])
        rows, _ = im2col(x, self.conv["kernel_size"], self.conv["stride"], self.conv["padding"],
                         self.conv["dilation"])
        return rows


@dataclass
class CalibrationFitReport:
    """`replaced`: layer -> summary with the relative output error (k-means table, fitted table); `kept`: why not."""

    replaced: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"PQ from calibration: {len(self.replaced)} layers replaced, {len(self.kept)} kept exact"]
        lines += [f"  PQ     {name}: {summary}" for name, summary in self.replaced.items()]
        lines += [f"  exact  {name}: {reason}" for name, reason in self.kept.items()]
        return "\n".join(lines)


# -- finding the layers -------------------------------------------------------------------------------------------
def _node_name(node, index: int) -> str:
    return node.name.strip("/").replace("/", ".") if node.name else f"{node.op_type}_{index}"


def onnx_layers(model) -> tuple[list[DenseLayer], dict[str, str]]:
    """The MatMul / Gemm / Conv nodes of an `onnx.ModelProto` whose weight is an initializer, and the others with
    a reason. The bias is the following `Add` of a 1-D initializer (MatMul) or Gemm's C."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers, kept = [], {}
    for index, node in enumerate(graph.node):
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        name = _node_name(node, index)
        if len(node.input) < 2 or node.input[1] not in inits:
            if node.op_type != "MatMul":
                kept[name] = "its weight is not a constant (initializer)"
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) \
            if len(node.input) > 2 and node.input[2] in inits else None
        if node.op_type == "MatMul":
            if weight.ndim != 2:
                kept[name] = f"a {weight.ndim}-D weight: PQ serves 2-D dense weights"
                continue
            weight = weight.T
            adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
            for add in adds[:1]:
                other = [i for i in add.input if i != node.output[0]]
                if other and other[0] in inits:
                    candidate = numpy_helper.to_array(inits[other[0]]).astype(np.float32)
                    bias = candidate.reshape(-1) if candidate.size == weight.shape[0] else None
            layers.append(DenseLayer(name, node.input[0], weight, bias, node=node.name))
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                kept[name] = "Gemm with transA, alpha or beta: PQ serves x @ W.T + b"
                continue
            layers.append(DenseLayer(name, node.input[0], weight if attrs.get("transB", 0) else weight.T,
                                     None if bias is None else bias.reshape(-1), node=node.name))
        else:
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if attrs.get("group", 1) != 1 or weight.ndim != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                kept[name] = "grouped, non-2-D or auto-padded conv: PQ serves groups=1 with explicit padding"
                continue
            if pads[:2] != pads[2:]:
                kept[name] = f"asymmetric padding {pads}"
                continue
            conv = {"kernel_size": tuple(weight.shape[2:]), "stride": tuple(attrs.get("strides", [1, 1])),
                    "padding": tuple(pads[:2]), "dilation": tuple(attrs.get("dilations", [1, 1]))}
            layers.append(DenseLayer(name, node.input[0], weight, bias, conv, node.name))
    return layers, kept


# -- capturing their inputs ---------------------------------------------------------------------------------------
class BatchSample:
    """About `limit` rows over `batches` batches: the same number of random rows from each (cheap: no resampling of
    what is kept, unlike a reservoir, which copies the whole sample at every batch)."""

    def __init__(self, limit: int, batches: int, seed: int):
        self.per_batch = max(1, -(-limit // max(batches, 1)))
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor) -> None:
        if rows.shape[0] > self.per_batch:
            rows = rows[torch.randperm(rows.shape[0], generator=self.gen)[:self.per_batch]]
        self.parts.append(rows.clone())

    @property
    def rows(self) -> torch.Tensor:
        return torch.cat(self.parts)


def _token_mask(batch: dict, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    if name not in batch:
        raise ValueError(f"the token mask {name!r} is not an input of the calibration batches ({sorted(batch)})")
    return np.asarray(batch[name])


Capture = Callable[[dict[str, PQTable], list[DenseLayer]], dict[str, torch.Tensor]]
"""`capture(fitted, wanted)`: the sampled input rows of each `wanted` layer, by layer name, from the model run on
the calibration batches with the layers in `fitted` (layer name -> table) product-quantized."""


class OnnxCapture:
    """Captures of an ONNX model run by ONNX Runtime (a `Capture`); fitted convs stay exact (module docstring)."""

    def __init__(self, path: str | os.PathLike, layers: list[DenseLayer], batches: list[dict], fit_rows: int,
                 threads: int | None = None, seed: int = 0, token_mask: str | None = None):
        import onnx

        self.model = onnx.load(os.fspath(path))
        self.layers = {layer.name: (index, layer) for index, layer in enumerate(layers)}
        self.batches, self.fit_rows, self.threads, self.seed = batches, fit_rows, threads, seed
        self.token_mask = token_mask

    def __call__(self, fitted: dict[str, PQTable], wanted: list[DenseLayer]) -> dict[str, torch.Tensor]:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from tvm_lut.pq.onnx_splice import splice

        spliced = {name: entry for name, entry in fitted.items() if self.layers[name][1].conv is None}
        model = splice(self.model, spliced, {name: self.layers[name][1].node for name in spliced})
        names = list(dict.fromkeys(layer.input_name for layer in wanted))
        del model.graph.output[:]  # only what is captured: ONNX Runtime drops the nodes after it
        model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        samples = {layer.name: BatchSample(self.fit_rows, len(self.batches), self.seed + self.layers[layer.name][0])
                   for layer in wanted}
        for batch in self.batches:
            values = dict(zip(names, session.run(names, batch)))
            for layer in wanted:
                samples[layer.name].add(layer.rows(values[layer.input_name], _token_mask(batch, self.token_mask)))
        return {name: sample.rows for name, sample in samples.items()}


# -- fitting one layer ---------------------------------------------------------------------------------------------
def _one_hot(codes: torch.Tensor, K: int) -> torch.Tensor:
    """(N, C) codes -> (N, C*K) float32 one-hot."""
    num_rows, num_codebooks = codes.shape
    out = torch.zeros(num_rows, num_codebooks * K)
    out.scatter_(1, codes + torch.arange(num_codebooks) * K, 1.0)
    return out


def _codes(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    C, _, V = centroids.shape
    return distance_scores(rows.reshape(-1, C, V).transpose(0, 1), centroids).argmin(-1).T.contiguous()


def _relative_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).pow(2).sum() / target.pow(2).sum().clamp(min=1e-30))


def _refine(rows, target, centroids, table, settings: FitSettings, seed: int) -> torch.Tensor:
    """Adam on the centroids: hard codes forward, soft assignment backward, the table fixed."""
    C, K, V = centroids.shape
    centroids = centroids.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([centroids], lr=settings.refine_lr)
    flat_table = table.reshape(C * K, -1)
    gen = torch.Generator().manual_seed(seed)
    scale = None
    for _ in range(settings.refine_steps):
        pick = torch.randint(rows.shape[0], (min(settings.refine_batch, rows.shape[0]),), generator=gen)
        x, y = rows[pick].reshape(-1, C, V).transpose(0, 1), target[pick]
        dist = distance_scores(x, centroids) + x.pow(2).sum(-1, keepdim=True)  # (C, N, K) squared distances
        if scale is None:
            scale = dist.detach().min(-1).values.mean().clamp(min=1e-12)
        soft = torch.softmax(-dist / scale * settings.temperature, dim=-1)
        hard = F.one_hot(dist.argmin(-1), K).to(soft.dtype)
        assign = hard + soft - soft.detach()  # straight through
        pred = assign.transpose(0, 1).reshape(x.shape[1], C * K) @ flat_table
        loss = (pred - y).pow(2).sum() / y.pow(2).sum().clamp(min=1e-30)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return centroids.detach()


RIDGE_GRID = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0)


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, table0: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_T |one_hot @ T - Y|^2 + ridge |T - table0|^2 from gram = one_hot.T @ one_hot, rhs = one_hot.T @ Y."""
    regularized = gram.clone()
    regularized.diagonal().add_(ridge)
    return torch.linalg.solve(regularized, rhs + ridge * table0)


def _held_out_ridge(one_hot: torch.Tensor, target: torch.Tensor, table0: torch.Tensor, holdout: float,
                    seed: int) -> tuple[float, float]:
    """The ridge of RIDGE_GRID whose table, fitted on all but a random `holdout` of the rows, reconstructs the
    held-out rows best; and that held-out relative error. With C*K one-hot features per output (1536 for
    MiniLM's FFN output layer at V=16) and a few thousand calibration rows, a weak prior overfits."""
    order = torch.randperm(one_hot.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(round(one_hot.shape[0] * holdout)))
    test, train = order[:cut], order[cut:]
    gram = (one_hot[train].T @ one_hot[train]).double()
    rhs = (one_hot[train].T @ target[train]).double()
    errors = {ridge: _relative_error(one_hot[test] @ _ridge_solve(gram, rhs, table0, ridge).float(), target[test])
              for ridge in RIDGE_GRID}
    best = min(errors, key=errors.get)
    return best, errors[best]


def fit_layer(rows: torch.Tensor, weight: np.ndarray, K: int, V: int, settings: FitSettings = FitSettings(),
              kmeans_iters: int = 20, seed: int = 0,
              exact_rows: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Centroids (C, K, V) and float table (C, K, M) for a layer with `weight` (M, D torch layout, flattened) on its
    input `rows` (N, D), reconstructing `exact_rows @ W.T` (the exact model's input for the same rows; default
    `rows`); and the relative output errors of the k-means table and of the fitted one."""
    flat_weight = torch.from_numpy(weight.reshape(weight.shape[0], -1))
    M, D = flat_weight.shape
    if D % V:
        raise ValueError(f"V={V} does not divide the input length {D}")
    if exact_rows is not None and exact_rows.shape != rows.shape:
        raise ValueError(f"exact_rows {tuple(exact_rows.shape)} must match rows {tuple(rows.shape)}")
    C = D // V
    rows = rows.to(torch.float32)
    target = (rows if exact_rows is None else exact_rows.to(torch.float32)) @ flat_weight.T
    centroids = kmeans(rows.reshape(-1, C, V).transpose(0, 1).contiguous(), K, kmeans_iters, seed)

    def prior(cents):  # T0[c, k, :] = W[:, c-th slice] @ centroid[c, k]
        return torch.einsum("ckv,mcv->ckm", cents, flat_weight.reshape(M, C, V))

    errors = {"kmeans": _relative_error(_one_hot(_codes(rows, centroids), K) @ prior(centroids).reshape(C * K, M),
                                        target)}
    if settings.refine_steps:
        centroids = _refine(rows, target, centroids, prior(centroids), settings, seed)
    table0 = prior(centroids).reshape(C * K, M).double()
    one_hot = _one_hot(_codes(rows, centroids), K)
    ridge = settings.ridge
    if ridge is None:
        ridge, errors["held_out"] = _held_out_ridge(one_hot, target, table0, settings.holdout, seed)
        errors["ridge"] = ridge
    gram = (one_hot.T @ one_hot).double()  # counts: exact in float32 below 2^24 rows
    table = _ridge_solve(gram, (one_hot.T @ target).double(), table0, ridge).float()
    errors["fitted"] = _relative_error(one_hot @ table, target)
    return centroids.numpy(), table.reshape(C, K, M).numpy(), errors


def table_entry(layer: DenseLayer, centroids: np.ndarray, table: np.ndarray) -> PQTable:
    """The bundle entry of a fitted layer (int8 table with per-column scales, the weight's fingerprint)."""
    from tvm_lut.bundle import fingerprint

    quantized, scale = quantize_table(table)
    conv = {} if layer.conv is None else {"layer": "conv2d", "in_channels": layer.weight.shape[1], **layer.conv}
    return PQTable(centroids=centroids, table=quantized, scale=scale, bias=layer.bias,
                   weight_fingerprint=fingerprint(layer.weight), **conv)


def _stages(chosen: list[tuple[int, DenseLayer, int, int]]) -> list[list[tuple[int, DenseLayer, int, int]]]:
    """The layers in graph order, grouped into runs of consecutive layers that read the same input."""
    stages: list[list] = []
    for item in chosen:
        if stages and stages[-1][-1][1].input_name == item[1].input_name:
            stages[-1].append(item)
        else:
            stages.append([item])
    return stages


def fit_pq_tables(layers: list[DenseLayer], capture: Capture, config: PQConfig, settings: FitSettings = FitSettings(),
                  kept: dict[str, str] | None = None, progress: bool = True) -> tuple[Bundle, CalibrationFitReport]:
    """Fit every selected layer of `layers` (in graph order) on what `capture` returns (module docstring), and
    return the bundle and the report."""
    from tvm_lut.progress import progress_bar

    report = CalibrationFitReport(kept=dict(kept or {}))
    chosen = []  # (index, layer, K, V)
    for index, layer in enumerate(layers):
        settings_for = config.settings_for(layer.name, layer.kind)
        if not config.selects(layer.name) or settings_for.skip:
            report.kept[layer.name] = "not selected by the config (include/exclude/skip)"
            continue
        kh_kw = int(np.prod(layer.weight.shape[2:])) if layer.conv else 1
        V = settings_for.V if settings_for.V is not None else (4 if kh_kw == 1 else kh_kw)
        D = int(np.prod(layer.weight.shape[1:]))
        if D % V:
            report.kept[layer.name] = f"V={V} does not divide the input length {D}"
            continue
        chosen.append((index, layer, settings_for.K, V))
    if not chosen:
        raise ValueError(f"no layer of the model can be served by PQ with this config:\n{report}")
    exact = capture({}, [layer for _, layer, _, _ in chosen])
    entries: dict[str, PQTable] = {}
    for stage in progress_bar(_stages(chosen), desc="fitting PQ tables", unit="stage", progress=progress):
        wanted = [layer for _, layer, _, _ in stage]
        rows = capture(dict(entries), wanted) if settings.sequential and entries else exact
        for index, layer, K, V in stage:
            centroids, table, errors = fit_layer(rows[layer.name], layer.weight, K, V, settings, config.kmeans_iters,
                                                 config.seed + index, exact_rows=exact[layer.name])
            entries[layer.name] = table_entry(layer, centroids, table)
            report.errors[layer.name] = errors
            held_out = (f" (held-out {errors['held_out']:.4f} at ridge {errors['ridge']:g})"
                        if "held_out" in errors else "")
            report.replaced[layer.name] = (f"{layer.kind} K={K} V={V} C={layer.weight[0].size // V}; relative "
                                           f"output error k-means {errors['kmeans']:.4f} -> fitted "
                                           f"{errors['fitted']:.4f}{held_out}")
    log.info("%s", report)
    provenance = {"pq_config": json.loads(config.to_json()), "pq_fit": "calibration only (tvm_lut.pq.calibration_fit)",
                  "pq_fit_settings": settings.__dict__, "pq_replaced": report.replaced, "pq_kept_exact": report.kept,
                  "torch_version": torch.__version__}
    return Bundle(entries, provenance), report


def learn_from_onnx(path: str | os.PathLike, batches: list[dict], config: PQConfig,
                    settings: FitSettings = FitSettings(), threads: int | None = None,
                    progress: bool = True) -> tuple[Bundle, CalibrationFitReport]:
    """PQ tables for the ONNX model at `path` from calibration `batches` ({input name: array}) alone."""
    import onnx

    layers, kept = onnx_layers(onnx.load(os.fspath(path), load_external_data=False))
    if not layers:
        raise ValueError(f"{os.fspath(path)!r} has no MatMul / Gemm / Conv with a constant weight")
    capture = OnnxCapture(path, layers, batches, settings.fit_rows, threads, config.seed, settings.token_mask)
    return fit_pq_tables(layers, capture, config, settings, kept, progress)


_PT2_TARGETS = {"aten.linear.default": "linear", "aten.conv2d.default": "conv2d"}
_CONV_DEFAULTS = (1, 0, 1, 1)  # aten.conv2d's stride, padding, dilation, groups


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _pt2_layer_name(node) -> str:
    """The module path the exported call came from (`encoder.layer.0.attention.self.query`), else the node name."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else node.name


class Pt2Capture:
    """The linear / conv2d calls with constant weights of a torch.export program (`layers`, `kept` with a reason),
    and captures of the program run on the calibration batches (a `Capture`; a fitted layer computed by the PQ
    reference of its table)."""

    def __init__(self, path: str | os.PathLike, batches: list[dict], fit_rows: int, seed: int = 0,
                 token_mask: str | None = None):
        from tvm_lut.model_spec import load_pt2

        program = load_pt2(path)
        self.module = program.module()
        self.inputs = list(program.graph_signature.user_inputs)
        self.batches, self.fit_rows, self.seed, self.token_mask = batches, fit_rows, seed, token_mask
        fetch = torch.fx.Interpreter(self.module).fetch_attr
        self.layers: list[DenseLayer] = []
        self.kept: dict[str, str] = {}
        for node in self.module.graph.nodes:
            if node.op != "call_function" or str(node.target) not in _PT2_TARGETS:
                continue
            name = _pt2_layer_name(node)
            if node.args[1].op != "get_attr":
                self.kept[name] = "its weight is not a constant of the program"
                continue
            weight, conv = fetch(node.args[1].target).detach().numpy().copy(), None
            if str(node.target) == "aten.conv2d.default":
                given = tuple(node.args[3:7])
                stride, padding, dilation, groups = given + _CONV_DEFAULTS[len(given):]
                if groups != 1 or isinstance(padding, str):
                    self.kept[name] = "grouped conv or string padding: PQ serves groups=1, numeric padding"
                    continue
                conv = {"kernel_size": tuple(weight.shape[2:]), "stride": _pair(stride), "padding": _pair(padding),
                        "dilation": _pair(dilation)}
            bias = node.args[2] if len(node.args) > 2 and node.args[2] is not None else None
            if bias is not None and bias.op != "get_attr":
                self.kept[name] = "its bias is not a constant of the program"
                continue
            bias = None if bias is None else fetch(bias.target).detach().numpy().copy()
            self.layers.append(DenseLayer(name, node.name, weight, bias, conv, node.name))
        self.index = {layer.name: index for index, layer in enumerate(self.layers)}

    def __call__(self, fitted: dict[str, PQTable], wanted: list[DenseLayer]) -> dict[str, torch.Tensor]:
        replaced = {layer.node: fitted[layer.name] for layer in self.layers if layer.name in fitted}
        recorded = {layer.node: layer for layer in wanted}
        samples = {layer.name: BatchSample(self.fit_rows, len(self.batches), self.seed + self.index[layer.name])
                   for layer in wanted}

        class Capture(torch.fx.Interpreter):
            def run_node(self, node):
                if node.name not in replaced and node.name not in recorded:
                    return super().run_node(node)
                args, _ = self.fetch_args_kwargs_from_env(node)
                if node.name in recorded:
                    layer = recorded[node.name]
                    samples[layer.name].add(layer.rows(args[0].detach().numpy(), mask))
                if node.name in replaced:
                    return pq_forward(args[0], replaced[node.name])
                return super().run_node(node)

        interpreter = Capture(self.module)
        with torch.no_grad():
            for batch in self.batches:
                mask = _token_mask(batch, self.token_mask)
                interpreter.run(*(torch.from_numpy(batch[name]) for name in self.inputs))
        return {name: sample.rows for name, sample in samples.items()}


def learn_from_pt2(path: str | os.PathLike, batches: list[dict], config: PQConfig,
                   settings: FitSettings = FitSettings(), progress: bool = True) -> tuple[Bundle, CalibrationFitReport]:
    """PQ tables for the torch.export program at `path` from calibration `batches` alone."""
    capture = Pt2Capture(path, batches, settings.fit_rows, config.seed, settings.token_mask)
    if not capture.layers:
        raise ValueError(f"{os.fspath(path)!r} has no linear / conv2d call with a constant weight")
    return fit_pq_tables(capture.layers, capture, config, settings, capture.kept, progress)
