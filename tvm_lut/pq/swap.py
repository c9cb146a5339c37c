"""`quantize_(model, PQConfig())`: swap `nn.Linear` / `nn.Conv2d` for PQ layers in place, torchao style.

Every candidate layer is either replaced or kept exact with the reason in the returned `SwapReport`: grouped or
depthwise convs, non-zero padding modes, string padding, a V that does not divide the input length, layers the
config excludes or skips, and `nn.MultiheadAttention`'s `out_proj` (read as a raw weight, not called).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.layers import PQConv2d, PQLayer, PQLinear

log = logging.getLogger(__name__)


@dataclass
class SwapReport:
    """`replaced`: module name -> "linear K=16 V=8"-style summary; `kept`: module name -> why it stays exact."""

    replaced: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"PQ swap: {len(self.replaced)} layers replaced, {len(self.kept)} kept exact"]
        lines += [f"  PQ     {name}: {summary}" for name, summary in self.replaced.items()]
        lines += [f"  exact  {name}: {reason}" for name, reason in self.kept.items()]
        return "\n".join(lines)


def _conv_problem(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels == conv.out_channels else "grouped"
        return f"{kind} conv (groups={conv.groups}): each group is a separate small product; kept exact"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: im2col patches assume zero padding"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}: give the padding as numbers to use PQ"
    return None


def _default_conv_v(conv: nn.Conv2d) -> int:
    """LUT-NN's choice: one channel's k x k patch (V=9 for 3x3); 4 channels for a 1x1 conv."""
    kh, kw = conv.kernel_size
    return 4 if kh * kw == 1 else kh * kw


def _candidates(model: nn.Module):
    """(name, module, parent, attribute) for every Linear / Conv2d, with the reason it cannot be served."""
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if not isinstance(child, (nn.Linear, nn.Conv2d)) or isinstance(child, PQLayer):
                continue
            name = f"{parent_name}.{attr}" if parent_name else attr
            problem = None
            if isinstance(parent, nn.MultiheadAttention):
                problem = "nn.MultiheadAttention reads out_proj.weight directly; the layer is never called"
            elif isinstance(child, nn.Conv2d):
                problem = _conv_problem(child)
            yield name, child, parent, attr, problem


def quantize_(model: nn.Module, config: PQConfig) -> SwapReport:
    """Replace the selected layers of `model` in place by `PQLinear` / `PQConv2d` (centroids not yet set)."""
    if not isinstance(config, PQConfig):
        raise TypeError(f"quantize_ expects a PQConfig, got {type(config).__name__}")
    report = SwapReport()
    for name, module, parent, attr, problem in list(_candidates(model)):
        layer = "linear" if isinstance(module, nn.Linear) else "conv2d"
        settings = config.settings_for(name, layer)
        if not config.selects(name) or settings.skip:
            report.kept[name] = "not selected by the config (include/exclude/skip)"
            continue
        if problem is not None:
            report.kept[name] = problem
            continue
        sub_len = settings.V if settings.V is not None else _default_conv_v(module)
        in_features = module.weight[0].numel()
        if in_features % sub_len:
            report.kept[name] = f"V={sub_len} does not divide the input length {in_features}"
            continue
        cls = PQLinear if layer == "linear" else PQConv2d
        setattr(parent, attr, cls(module, settings.K, sub_len, config.temperature_logit_init, config.input_gradient))
        report.replaced[name] = f"{layer} K={settings.K} V={sub_len} C={in_features // sub_len}"
    for name, reason in report.kept.items():
        log.info("PQ keeps %s exact: %s", name, reason)
    return report


def pq_layers(model: nn.Module) -> dict[str, PQLayer]:
    """The PQ layers of a swapped model by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, PQLayer)}


def unswap_(model: nn.Module) -> nn.Module:
    """Put exact `nn.Linear` / `nn.Conv2d` back in place of every PQ layer, sharing its (possibly trained)
    weight and bias: the FP32 graph to import and compile with the bundle (its weights carry the fingerprints)."""
    for name, layer in list(pq_layers(model).items()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(layer, PQLinear):
            exact = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        else:
            exact = nn.Conv2d(layer.weight.shape[1], layer.weight.shape[0], layer.kernel_size, layer.stride,
                              layer.padding, layer.dilation, bias=layer.bias is not None)
        exact.weight, exact.bias = layer.weight, layer.bias
        setattr(parent, attr, exact)
    return model
