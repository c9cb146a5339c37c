"""`AutotuneConfig`: what the per-layer autotuner may choose, and the accuracy and time budget it must keep.

*What* is chosen lives here (which layers, which K and V, the budget); *how* centroids are learned stays in
`tvm_lut.pq.PQConfig`, as INC keeps its tuning space apart from its accuracy criterion. Frozen, JSON round trip,
a `version` like `PQConfig`.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, fields

CONFIG_VERSION = 1
DROP_KINDS = ("absolute", "relative")
PROXIES = ("task_loss", "output_error", "fisher")
STARTS = ("calibrated", "fastest")
# The lookup kernels hold one codebook's K table rows in a 16-byte shuffle register (`relay_passes.LUTDense`).
KERNEL_MAX_K = 16


@dataclass(frozen=True)
class AutotuneConfig:
    """The search space and the budget.

    - `K`: centroids per codebook to try (the kernels serve K <= 16; 8 halves the encode work and the table).
    - `V`: sub-vector lengths to try; a layer gets those that divide its input row (`in_features`, or a conv's
      I*kh*kw patch, whose order makes V = kh*kw one channel's patch). Exact is always a candidate.
    - `include` / `exclude`: globs over module names; other layers stay exact.
    - `max_drop`: the metric drop allowed against the exact model, in the metric's own units (`drop_kind`
      "absolute": `eval_fn` in percent and 1.0 is one point) or as a fraction of the exact model's metric
      ("relative": 0.01 is 1 %). `eval_fn` is higher-is-better.
    - `max_trials`: plans learned and evaluated at most (each learns centroids, the expensive part);
      `time_limit_s`: no new trial starts after this many seconds (None: no limit).
    - `proxy`: the sensitivity the solver reads, "task_loss" (loss increase on calibration data when only that
      layer is PQ with k-means centroids), "output_error" (that layer's relative output error) or "fisher" (the
      output error weighted by the loss gradient's square per output channel: no forward pass per choice).
    - `start`: where the trials start. "calibrated": the solver's plan at the budget, the proxy scaled to metric
      points by k-means plans (cautious: right when learning recovers little, as on the Fashion-MNIST CNN);
      "fastest": the fastest plan of the latency table, then, over the budget, the layers that measurably hurt the
      learned model move to safer choices (right when learning recovers most of the k-means drop, as on MiniLM,
      where the fastest k-means plan dropped 42.6 points and the calibrated start was 4x slower than uniform V=16).
    - `resolution`: steps of the predicted-drop axis in the solver's dynamic program.
    """

    K: tuple[int, ...] = (8, 16)
    V: tuple[int, ...] = (2, 4, 8, 9, 16, 32)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_drop: float = 1.0
    drop_kind: str = "absolute"
    max_trials: int = 4
    time_limit_s: float | None = None
    proxy: str = "task_loss"
    start: str = "calibrated"
    resolution: int = 400
    version: int = CONFIG_VERSION

    def __post_init__(self):
        for name in ("K", "V", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.version != CONFIG_VERSION:
            raise ValueError(f"AutotuneConfig version {self.version} is not {CONFIG_VERSION}, the one this tvm-lut reads")
        if not self.K or any(not isinstance(k, int) or not 2 <= k <= KERNEL_MAX_K for k in self.K):
            raise ValueError(f"AutotuneConfig.K must be ints in [2, {KERNEL_MAX_K}] (the lookup kernels hold K table "
                             f"rows in one shuffle register), got {self.K!r}")
        if not self.V or any(not isinstance(v, int) or v < 1 for v in self.V):
            raise ValueError(f"AutotuneConfig.V must be positive ints, got {self.V!r}")
        if not isinstance(self.max_drop, (int, float)) or not math.isfinite(self.max_drop) or self.max_drop < 0:
            raise ValueError(f"AutotuneConfig.max_drop must be a finite number >= 0, got {self.max_drop!r}")
        if self.drop_kind not in DROP_KINDS:
            raise ValueError(f"AutotuneConfig.drop_kind must be one of {DROP_KINDS}, got {self.drop_kind!r}")
        if self.drop_kind == "relative" and self.max_drop >= 1:
            raise ValueError(f"AutotuneConfig.max_drop {self.max_drop} is relative (a fraction of the metric): "
                             "give it below 1, e.g. 0.01 for 1 %")
        if not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ValueError(f"AutotuneConfig.max_trials must be an int >= 1, got {self.max_trials!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"AutotuneConfig.time_limit_s must be > 0 or None, got {self.time_limit_s!r}")
        if self.proxy not in PROXIES:
            raise ValueError(f"AutotuneConfig.proxy must be one of {PROXIES}, got {self.proxy!r}")
        if self.start not in STARTS:
            raise ValueError(f"AutotuneConfig.start must be one of {STARTS}, got {self.start!r}")
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"AutotuneConfig.resolution must be an int >= 1, got {self.resolution!r}")

    def selects(self, name: str) -> bool:
        """Whether the layer called `name` may become PQ."""
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    def allowed_drop(self, exact_metric: float) -> float:
        """The budget in the metric's units, given the exact model's metric."""
        return self.max_drop if self.drop_kind == "absolute" else self.max_drop * abs(exact_metric)

    # -- JSON ----------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AutotuneConfig":
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"AutotuneConfig JSON must be an object, got {type(raw).__name__}")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"AutotuneConfig JSON has unknown fields {sorted(unknown)}")
        return cls(**raw)
