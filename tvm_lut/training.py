"""`tvm_lut.learn(model, calib_batches, config)`: the training stage, dispatched on the config's type.

(This module is not named `learn.py`: importing a submodule `tvm_lut.learn` would rebind the package attribute
`tvm_lut.learn` from the function to the module.)

In the style of torchao's `quantize_(model, config)`: each config type has a handler
`handler(model, calib_batches, config, *, progress) -> Bundle | (Bundle, model)`, registered with
`register_handler(ConfigType)`; a handler that trains weights returns the model its tables belong to as well.
`NonlinearConfig` (NN-LUT tables) is handled here; `PQConfig` (LUT-NN) by `tvm_lut.pq`. A list of configs runs
each handler in turn on the same batches, each on the model the previous one returned, and merges their bundles.

The trained model: `learn(..., return_model=True)` returns `(bundle, model)`, where `model` is the FP32 torch
module whose weights the bundle's PQ fingerprints identify (with `PQConfig(trainable="all")` a trained copy, every
PQ layer back as `nn.Linear` / `nn.Conv2d`; otherwise the model given). Compile that model with the bundle, or
store both with `tvm_lut.artifact.save_artifact`. Without it, `learn` returns the bundle alone, as before.

Batches: a tensor (the model's single input) or a pair `(inputs, labels)`, with inputs a tensor or a tuple of
positional tensors and labels a tensor or None. The model given is never modified.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tvm_lut.bundle import Bundle

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
_HANDLERS: dict[type, Callable] = {}
# Packages whose import registers the handlers of tvm-lut's other config types.
_HANDLER_PACKAGES = ("tvm_lut.pq",)


def register_handler(config_type: type) -> Callable[[Callable], Callable]:
    """Decorator: `fn(model, calib_batches, config, *, progress) -> Bundle` handles configs of `config_type`."""

    def decorator(fn: Callable) -> Callable:
        registered = _HANDLERS.get(config_type)
        if registered is not None and registered.__qualname__ != fn.__qualname__:
            raise TypeError(f"{config_type.__name__} already has the handler {registered.__qualname__}")
        _HANDLERS[config_type] = fn
        return fn

    return decorator


def _handler(config) -> Callable:
    if type(config) not in _HANDLERS:
        for package in _HANDLER_PACKAGES:
            importlib.import_module(package)
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise TypeError(f"no tvm_lut.learn handler for {type(config).__name__}; known configs: {known}")
    return handler


def learn(model, calib_batches, config, *, progress: bool = True, return_model: bool = False):
    """Learn the tables `config` (one config or a list) asks for on `model` and real `calib_batches`: the bundle,
    or `(bundle, model the tables belong to)` with `return_model=True` (module docstring)."""
    configs = list(config) if isinstance(config, (list, tuple)) else [config]
    if not configs:
        raise ValueError("learn needs at least one config (e.g. NonlinearConfig() or PQConfig())")
    handlers = [_handler(c) for c in configs]  # fail on an unknown config before any work
    batches = list(calib_batches)  # every handler iterates them
    if not batches:
        raise ValueError("no calibration batches: tables are learned from real activations")
    bundles = []
    for handler, c in zip(handlers, configs):
        learned = handler(model, batches, c, progress=progress)
        if isinstance(learned, tuple):
            learned, model = learned
        bundles.append(learned)
    bundle = bundles[0].merged(*bundles[1:])
    return (bundle, model) if return_model else bundle


@dataclass(frozen=True)
class NonlinearConfig:
    """NN-LUT tables for a model: `entries` segments per table, for `functions` (default: all five), over
    ranges calibrated at `percentile` with `margin` (see `tvm_lut.calibrate`). JSON round trip with
    `to_json` / `from_json`; `version` guards the format."""

    entries: int = 16
    functions: tuple[str, ...] = ("exp", "gelu", "gelu_tanh", "reciprocal", "rsqrt")
    percentile: float = 99.99
    margin: float = 0.1
    version: int = CONFIG_VERSION

    def __post_init__(self):
        from tvm_lut.functions import FUNCTIONS

        object.__setattr__(self, "functions", tuple(self.functions))
        if self.version != CONFIG_VERSION:
            raise ValueError(f"NonlinearConfig version {self.version} is not supported (this tvm-lut: {CONFIG_VERSION})")
        if not isinstance(self.entries, int) or self.entries < 4:
            raise ValueError(f"entries must be an integer >= 4, got {self.entries!r}")
        unknown = sorted(set(self.functions) - set(FUNCTIONS))
        if unknown or not self.functions:
            raise ValueError(f"functions must be a non-empty subset of {sorted(FUNCTIONS)}; unknown: {unknown}")
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NonlinearConfig":
        fields = json.loads(text)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown NonlinearConfig fields {unknown}")
        return cls(**fields)


@register_handler(NonlinearConfig)
def learn_nonlinear(model, calib_batches: Sequence, config: NonlinearConfig, *, progress: bool = True) -> Bundle:
    """Calibrate each function's range on the model's activations, then fit its table. A function the model
    never calls (or calls where calibration cannot see, e.g. inside scaled_dot_product_attention) gets its
    default range, so the bundle still serves it; the provenance records which ranges were calibrated."""
    from tvm_lut.progress import progress_bar

    from tvm_lut.calibrate import observe_ranges
    from tvm_lut.defaults import fit_platform
    from tvm_lut.functions import get_function
    from tvm_lut.pwl_fit import fit_pwl

    observed = observe_ranges(model, calib_batches, config.percentile, config.margin, progress=progress)
    ranges = {}
    for name in config.functions:
        if name in observed:
            ranges[name] = observed[name].range
        else:
            ranges[name] = get_function(name).default_range
            log.info("%s: the model made no call calibration could see; using the default range %s", name, ranges[name])
    provenance = {"nonlinear_config": json.loads(config.to_json()), **fit_platform(),
                  "ranges": {name: {"range": list(ranges[name]), "calibrated": name in observed,
                                    **({"seen_min": observed[name].minimum, "seen_max": observed[name].maximum,
                                        "seen_count": observed[name].count} if name in observed else {})}
                             for name in config.functions}}
    bundle = Bundle(provenance=provenance)
    for name in progress_bar(config.functions, desc="fitting NN-LUT tables", unit="table", progress=progress):
        bundle.add(name, fit_pwl(name, config.entries, ranges[name]))
    return bundle
