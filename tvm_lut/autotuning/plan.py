"""`Plan`: one choice per layer (exact, or PQ with K and V), the latencies behind it, and what it scored.

`plan.json` in the output directory: `{"format": "tvm-lut-autotune-plan", "version": 1, "target", "budget",
"exact_metric", "metric", "layers": [...]}`, one entry per layer in call order with `name`, `kind`, `choice`
("exact" or "pq"), `K`, `V` (null when exact), `exact_us`, `chosen_us` (measured alone on the target) and
`sensitivity` (the proxies of the chosen PQ choice, zeros when exact). The result's plan also carries
`whole_model`: `{"exact_us", "plan_us"}`, the compiled exact model and the compiled plan timed taking turns in one
process, and `restored`: the layers that whole-model measurement sent back to exact (`guard`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from tvm_lut.autotuning.layers import EXACT, Choice
from tvm_lut.pq.config import PQConfig

PLAN_FORMAT = "tvm-lut-autotune-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str
    choice: Choice
    exact_us: float
    chosen_us: float
    sensitivity: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "choice": "exact" if self.choice.exact else "pq",
                "K": self.choice.K, "V": self.choice.V, "exact_us": self.exact_us, "chosen_us": self.chosen_us,
                "sensitivity": dict(self.sensitivity)}

    @classmethod
    def from_dict(cls, raw: dict) -> "LayerPlan":
        if raw.get("choice") not in ("exact", "pq"):
            raise ValueError(f"plan layer {raw.get('name')!r}: choice must be 'exact' or 'pq', got {raw.get('choice')!r}")
        choice = EXACT if raw["choice"] == "exact" else Choice(int(raw["K"]), int(raw["V"]))
        return cls(raw["name"], raw["kind"], choice, float(raw["exact_us"]), float(raw["chosen_us"]),
                   dict(raw.get("sensitivity", {})))


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    target: str = ""
    budget: float | None = None  # allowed drop, in the metric's units
    exact_metric: float | None = None
    metric: float | None = None  # the learned plan's `eval_fn`, None until evaluated
    whole_exact_us: float | None = None  # the compiled exact model, timed beside the compiled plan (`guard`)
    whole_us: float | None = None  # the compiled plan, same run
    restored: tuple[str, ...] = ()  # layers whose PQ form did not pay in the whole model (`guard`)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "restored", tuple(self.restored))
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"a plan names each layer once, got {names}")

    @property
    def choices(self) -> dict[str, Choice]:
        return {layer.name: layer.choice for layer in self.layers}

    @property
    def pq_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.choice.exact]

    @property
    def latency_us(self) -> float:
        """The summed latency of the chosen layers, each measured alone."""
        return sum(layer.chosen_us for layer in self.layers)

    @property
    def exact_us(self) -> float:
        return sum(layer.exact_us for layer in self.layers)

    @property
    def drop(self) -> float | None:
        return None if self.metric is None or self.exact_metric is None else self.exact_metric - self.metric

    def with_metric(self, metric: float) -> "Plan":
        return dataclasses.replace(self, metric=float(metric))

    def learning_config(self, base: PQConfig) -> PQConfig:
        """`base` (how centroids are learned) restricted to this plan's PQ layers, each with its K and V."""
        if not self.pq_layers:
            raise ValueError("the plan keeps every layer exact: nothing to learn")
        overrides = {layer.name: {"K": layer.choice.K, "V": layer.choice.V}
                     for layer in self.layers if not layer.choice.exact}
        return dataclasses.replace(base, include=tuple(overrides), exclude=(), overrides=overrides)

    def table(self) -> str:
        """The plan as an aligned text table, one row per layer, then the totals."""
        rows = [(layer.name, layer.choice.label, f"{layer.exact_us:.1f}", f"{layer.chosen_us:.1f}",
                 f"{layer.sensitivity.get('task_loss', 0.0):.4g}", f"{layer.sensitivity.get('output_error', 0.0):.4g}",
                 f"{layer.sensitivity.get('fisher', 0.0):.4g}")
                for layer in self.layers]
        rows.append(("total", f"{len(self.pq_layers)} PQ", f"{self.exact_us:.1f}", f"{self.latency_us:.1f}", "", "", ""))
        header = ("layer", "choice", "exact us", "chosen us", "d task loss", "output err", "fisher")
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
        if self.metric is not None:
            lines.append(f"metric {self.metric:.4g} (exact {self.exact_metric:.4g}, drop {self.drop:.4g}, "
                         f"budget {self.budget:.4g})")
        if self.whole_us is not None:
            lines.append(f"whole model, compiled and timed together: exact {self.whole_exact_us:.1f} us, plan "
                         f"{self.whole_us:.1f} us ({self.whole_exact_us / self.whole_us:.2f}x)")
        if self.restored:
            lines.append(f"restored to exact by whole-model measurement: {', '.join(self.restored)}")
        return "\n".join(lines)

    # -- JSON ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "target": self.target, "budget": self.budget,
                "exact_metric": self.exact_metric, "metric": self.metric,
                "whole_model": (None if self.whole_us is None
                                else {"exact_us": self.whole_exact_us, "plan_us": self.whole_us}),
                "restored": list(self.restored), "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, raw: dict) -> "Plan":
        if raw.get("format") != PLAN_FORMAT or raw.get("version") != PLAN_VERSION:
            raise ValueError(f"not a version-{PLAN_VERSION} {PLAN_FORMAT} document "
                             f"(format {raw.get('format')!r}, version {raw.get('version')!r})")
        whole = raw.get("whole_model") or {}
        return cls(tuple(LayerPlan.from_dict(layer) for layer in raw["layers"]), raw.get("target", ""),
                   raw.get("budget"), raw.get("exact_metric"), raw.get("metric"), whole.get("exact_us"),
                   whole.get("plan_us"), tuple(raw.get("restored", ())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))
