"""The layers the autotuner chooses for: every `nn.Linear` / `nn.Conv2d` that PQ can serve, with the shape it
runs at, and the choices (exact, or PQ with K and V) open to it.

A layer is described by shapes only (`LayerSpec`): its latency depends on them, not on the weights, so latencies
measured for one model serve every layer of that shape, in any model (the latency cache is keyed by `key()`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from tvm_lut.autotuning.config import AutotuneConfig

KINDS = ("linear", "conv2d")


@dataclass(frozen=True, order=True)
class Choice:
    """Exact (`K` and `V` None) or product quantization with K centroids of sub-vectors of length V."""

    K: int | None = None
    V: int | None = None

    def __post_init__(self):
        if (self.K is None) != (self.V is None):
            raise ValueError(f"a choice is exact (no K, no V) or PQ (both), got K={self.K}, V={self.V}")

    @property
    def exact(self) -> bool:
        return self.K is None

    @property
    def label(self) -> str:
        return "exact" if self.exact else f"pq K={self.K} V={self.V}"

    @classmethod
    def from_label(cls, label: str) -> "Choice":
        if label == "exact":
            return cls()
        try:
            kind, k, v = label.split()
            if kind != "pq" or not k.startswith("K=") or not v.startswith("V="):
                raise ValueError
            return cls(int(k[2:]), int(v[2:]))
        except ValueError:
            raise ValueError(f"not a choice label: {label!r} (expected 'exact' or 'pq K=.. V=..')") from None


EXACT = Choice()


@dataclass(frozen=True)
class LayerSpec:
    """One layer as it runs: `weight_shape` in the torch layout, `input_shape` of the tensor it is called on."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    bias: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"layer {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("weight_shape", "input_shape", "stride", "padding", "dilation"):
            object.__setattr__(self, name, tuple(int(d) for d in getattr(self, name)))

    @property
    def in_features(self) -> int:
        """The length D of one input row: `in_features`, or a conv's I*kh*kw im2col patch."""
        return math.prod(self.weight_shape[1:])

    def key(self) -> str:
        """The shape signature latencies are cached under (not the name: equal layers share measurements)."""
        geometry = f" s{list(self.stride)} p{list(self.padding)} d{list(self.dilation)}" if self.kind == "conv2d" else ""
        return (f"{self.kind} w{list(self.weight_shape)} x{list(self.input_shape)} "
                f"{'bias' if self.bias else 'nobias'}{geometry}")

    def choices(self, config: AutotuneConfig) -> list[Choice]:
        """Exact first, then every (K, V) of the config whose V divides the input row."""
        return [EXACT] + [Choice(k, v) for k in sorted(set(config.K)) for v in sorted(set(config.V))
                          if self.in_features % v == 0]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "weight_shape": list(self.weight_shape),
                "input_shape": list(self.input_shape), "bias": self.bias, "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation)}

    @classmethod
    def from_dict(cls, raw: dict) -> "LayerSpec":
        return cls(**raw)


def find_layers(model, example_inputs: tuple, config: AutotuneConfig) -> tuple[list[LayerSpec], dict[str, str]]:
    """The layers of `model` that PQ can serve and `config` selects, in call order, with the input shape each is
    called on for `example_inputs` (the deployment shape); and the others, module name -> why it stays exact.

    What PQ serves is asked of `tvm_lut.pq.quantize_` itself (on a copy, with V = 1, which divides every row), so
    the tuner and the trainer never disagree.
    """
    import torch
    from torch import nn

    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.swap import quantize_

    report = quantize_(copy.deepcopy(model), PQConfig(V=1, conv_V=1, include=config.include,
                                                      exclude=config.exclude))
    shapes: dict[str, tuple[int, ...]] = {}
    modules = {name: m for name, m in model.named_modules() if name in report.replaced}

    def record(name):
        def hook(_module, args):
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: the inputs stay as they are
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    kept = dict(report.kept)
    specs = []
    for name in shapes:  # call order
        module = modules[name]
        conv = isinstance(module, nn.Conv2d)
        geometry = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation} if conv else {}
        specs.append(LayerSpec(name, "conv2d" if conv else "linear", tuple(module.weight.shape), shapes[name],
                               module.bias is not None, **geometry))
    for name in modules.keys() - shapes.keys():
        kept[name] = "never called on the example inputs"
    return specs, kept
