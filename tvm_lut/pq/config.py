"""`PQConfig`: which layers become product quantization, with what K and V, and how centroids are learned.

One frozen, JSON-serializable dataclass in the style of torchao's `quantize_(model, config)`. Per-layer
overrides are keyed by module name or a glob over names (`"encoder.layer.*.output.dense"`); the last matching
pattern wins, and `{"skip": true}` keeps a layer exact.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field, fields, replace

CONFIG_VERSION = 2
TABLE_DTYPES = ("int8",)
TRAINABLE = ("centroids", "all")
LR_SCHEDULES = ("constant", "cosine")
INPUT_GRADIENTS = ("soft", "exact")
# The per-layer keys an override may set.
OVERRIDE_KEYS = ("K", "V", "skip")


@dataclass(frozen=True)
class LayerSettings:
    """What one layer gets: K centroids per codebook, sub-vector length V (None: LUT-NN's default for it)."""

    K: int
    V: int | None
    skip: bool = False

    def __post_init__(self):
        if not isinstance(self.K, int) or not 1 <= self.K <= 256:
            raise ValueError(f"K must be an int in [1, 256] (codes are one byte), got {self.K!r}")
        if self.V is not None and (not isinstance(self.V, int) or self.V < 1):
            raise ValueError(f"V must be a positive int, got {self.V!r}")


@dataclass(frozen=True)
class PQConfig:
    """LUT-NN settings.

    - `K`: centroids per codebook (16 -> 4-bit codes). `V`: sub-vector length of `nn.Linear` inputs.
      `conv_V`: of conv im2col patches; None is LUT-NN's choice, kh*kw for a k x k conv (one channel's patch) and
      4 for a 1x1 conv.
    - `include` / `exclude`: globs over module names; a layer is swapped if it matches an include and no exclude.
    - `overrides`: `{name or glob: {"K": .., "V": .., "skip": ..}}`.
    - Learning: `epochs` over the batches given, Adam with `lr` for centroids and `temperature_lr` for the
      inverse temperature `t = softplus(logit) + 1`, `logit` starting at `temperature_logit_init` (LUT-NN: 10 for
      BERT). `input_gradient`: what a PQ layer's input gets in the backward, "soft" (LUT-NN: the gradient of the
      soft assignment) or "exact" (the exact layer's `grad_out @ W`, straight through the quantization).
      `trainable="all"` also trains every other parameter (weights, biases, norms) at `weight_lr`:
      pretrained weights need a far smaller step than centroids (1e-5..1e-4 for a transformer).
      Loss = `task_weight` * task loss (cross entropy, when labels are given) + `distill_weight` * KL to the
      FP32 model's softened outputs at `distill_temperature` + `feature_weight` * the relative squared error
      `|s - t|^2 / |t|^2` of the outputs of the modules named by the globs `feature_distill` (LUT-NN's
      intermediate distillation: a sentence embedding says far more than two logits).
    - Schedule: the learning rates rise linearly over the first `warmup_steps` steps, then stay (`lr_schedule`
      "constant") or follow a cosine to zero at the last step ("cosine").
    - k-means: `kmeans_iters` Lloyd steps on at most `kmeans_rows` activation rows per layer.
    """

    K: int = 16
    V: int = 32
    conv_V: int | None = None
    table_dtype: str = "int8"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    epochs: int = 1
    lr: float = 1e-3
    temperature_lr: float = 1e-1
    temperature_logit_init: float = 10.0
    input_gradient: str = "soft"
    trainable: str = "centroids"
    weight_lr: float = 1e-4
    task_weight: float = 1.0
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    feature_distill: tuple[str, ...] = ()
    feature_weight: float = 1.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    kmeans_iters: int = 20
    kmeans_rows: int = 4096
    seed: int = 0
    version: int = CONFIG_VERSION

    def __post_init__(self):
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "feature_distill", tuple(self.feature_distill))
        if self.version != CONFIG_VERSION:
            raise ValueError(f"PQConfig version {self.version} is not {CONFIG_VERSION}, the one this tvm-lut reads")
        for name in ("K", "V", "epochs", "kmeans_iters", "kmeans_rows", "warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name in ("epochs", "warmup_steps") else 1):
                raise ValueError(f"PQConfig.{name} must be a positive int, got {value!r}")
        LayerSettings(self.K, self.V)  # the shared range checks
        if self.conv_V is not None and (not isinstance(self.conv_V, int) or self.conv_V < 1):
            raise ValueError(f"PQConfig.conv_V must be a positive int or None, got {self.conv_V!r}")
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(f"PQConfig.table_dtype {self.table_dtype!r}: the kernels read {TABLE_DTYPES} tables")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"PQConfig.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        for name in ("lr", "temperature_lr", "weight_lr", "distill_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PQConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.input_gradient not in INPUT_GRADIENTS:
            raise ValueError(f"PQConfig.input_gradient must be one of {INPUT_GRADIENTS}, got {self.input_gradient!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"PQConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        weights = (self.task_weight, self.distill_weight, self.feature_weight)
        if min(weights) < 0 or sum(weights[:2 + bool(self.feature_distill)]) == 0:
            raise ValueError("PQConfig.task_weight, distill_weight and feature_weight must be >= 0 and not all 0")
        for pattern, override in self.overrides.items():
            unknown = set(override) - set(OVERRIDE_KEYS)
            if unknown:
                raise ValueError(f"PQConfig.overrides[{pattern!r}]: unknown keys {sorted(unknown)} "
                                 f"(allowed: {OVERRIDE_KEYS})")

    def selects(self, name: str) -> bool:
        """Whether `include` / `exclude` pick the module called `name`."""
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    def settings_for(self, name: str, layer: str) -> LayerSettings:
        """K and V for module `name` of kind `layer` ("linear" or "conv2d"), after overrides."""
        settings = LayerSettings(self.K, self.V if layer == "linear" else self.conv_V)
        for pattern, override in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                settings = replace(settings, **override)
        return settings

    # -- JSON ----------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PQConfig":
        """A config written by `to_json`; version 1 (no `weight_lr`) reads as it ran: weights at `lr`."""
        raw = json.loads(text)
        if raw.get("version") == 1 and "weight_lr" not in raw:
            raw = {**raw, "version": CONFIG_VERSION, "weight_lr": raw.get("lr", cls.lr)}
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"PQConfig JSON has unknown fields {sorted(unknown)}")
        return cls(**raw)
