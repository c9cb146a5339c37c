"""The architectures of `benchmarks.zoo`: torch modules with random weights and one example input each.

`transformers` builds its models from configurations (no download: weights do not change speed), attention in
its eager form (what both importers see as plain matmuls and softmax); MobileNetV3-Small is written here
(`transformers` has none, and timm needs torchvision, which this project never installs); MiniLM-L6 and the
Fashion-MNIST CNN are the project's own. Every model returns one tensor (the last hidden state, or the output).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

IMAGE = (1, 3, 224, 224)
TOKENS = 128


class LastHiddenState(nn.Module):
    """A `transformers` model that returns its `last_hidden_state` alone (one output for every engine)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs).last_hidden_state


def keep_scale(model: nn.Module) -> nn.Module:
    """Random weights that keep activations at scale through a deep net, and batch norms that do something.

    `transformers` initializes convs with std 0.02: through MobileNetV2's 50 layers with no normalization but
    identity batch norms the output shrinks to 1e-21, and an error relative to it means nothing. Convs and linear
    layers get He (fan-in) weights instead; batch norms random statistics and affine terms near the identity.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.weight.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
    return model


def _vision(config_name: str, model_name: str, **config) -> tuple[nn.Module, tuple]:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**config))
    return LastHiddenState(keep_scale(model)).eval(), (torch.randn(IMAGE),)


def _text(config_name: str, model_name: str, **config) -> tuple[nn.Module, tuple]:
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(attn_implementation="eager", **config)
    model = getattr(transformers, model_name)(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, TOKENS))
    return LastHiddenState(model).eval(), (ids, torch.ones_like(ids))


def _squeeze(channels: int) -> int:
    """MobileNetV3's squeeze width: a quarter of the channels, rounded to a multiple of 8 (never 10% below)."""
    quarter = channels // 4
    value = max(8, (quarter + 4) // 8 * 8)
    return value + 8 if value < 0.9 * quarter else value


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv + ReLU, 1x1 conv + hard sigmoid, the gate multiplied back into the features."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, _squeeze(channels), 1)
        self.fc2 = nn.Conv2d(_squeeze(channels), channels, 1)

    def forward(self, x):
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(gate))))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = None):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (k x k, stride), squeeze-and-excite, project (1x1); a residual when shapes match."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: type, stride: int):
        super().__init__()
        layers = _conv_bn(cin, expanded, 1, act=act) if expanded != cin else []
        layers += _conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act)
        layers += [SqueezeExcite(expanded)] if se else []
        layers += _conv_bn(expanded, cout, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


# MobileNetV3-Small (Howard et al. 2019, table 2): kernel, expanded, out, squeeze-excite, activation, stride.
_SMALL = [(3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
          (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1),
          (5, 240, 40, True, nn.Hardswish, 1), (5, 120, 48, True, nn.Hardswish, 1),
          (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
          (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1)]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small for 1000 classes, as torchvision lays it out (eval mode: dropout is the identity)."""

    def __init__(self):
        super().__init__()
        layers, cin = _conv_bn(3, 16, 3, 2, act=nn.Hardswish), 16
        for kernel, expanded, cout, se, act, stride in _SMALL:
            layers.append(InvertedResidual(cin, kernel, expanded, cout, se, act, stride))
            cin = cout
        layers += _conv_bn(cin, 576, 1, act=nn.Hardswish)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def _mobilenet_v3() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return keep_scale(MobileNetV3Small()).eval(), (torch.randn(IMAGE),)


def _minilm() -> tuple[nn.Module, tuple]:
    from tvm_lut.models.minilm import load_minilm

    ids = torch.randint(0, 30522, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    return load_minilm().eval(), (ids, torch.ones_like(ids))


def _cnn() -> tuple[nn.Module, tuple]:
    from tvm_lut.models.cnn import FashionCNN

    torch.manual_seed(0)
    return FashionCNN().eval(), (torch.randn(1, 1, 28, 28),)


# name -> builder of (model in eval mode, example inputs); batch 1, images 224 px, texts 128 tokens.
MODELS: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "resnet-50": lambda: _vision("ResNetConfig", "ResNetModel"),
    "mobilenet-v2": lambda: _vision("MobileNetV2Config", "MobileNetV2Model"),
    "mobilenet-v3-small": _mobilenet_v3,
    "convnext-tiny": lambda: _vision("ConvNextConfig", "ConvNextModel"),
    "vit-base": lambda: _vision("ViTConfig", "ViTModel"),
    "swin-tiny": lambda: _vision("SwinConfig", "SwinModel"),
    "bert-base": lambda: _text("BertConfig", "BertModel"),
    "distilbert": lambda: _text("DistilBertConfig", "DistilBertModel"),
    "minilm-l6": _minilm,
    "fashion-cnn": _cnn,
}
