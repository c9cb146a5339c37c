"""The output directory of an autotuning run: the learned artifact, `plan.json`, `report.txt` and `plans.png`.

The artifact (the model with the plan's tables, its manifest) is the one `tvm-lut learn -o OUT_DIR` writes, so
`tvm-lut compile OUT_DIR` builds the plan; `plan.json` travels inside it as an extra JSON document.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from tvm_lut.autotuning.config import AutotuneConfig
from tvm_lut.autotuning.plot import pareto_front, plot_plans

PLAN_NAME = "plan.json"
REPORT_NAME = "report.txt"
PLOT_NAME = "plans.png"


@dataclass(frozen=True)
class _InputSpec:
    """Stand-in for `tvm_lut.artifact.InputSpec` until that module is on main."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def input_specs(model, example_inputs: tuple) -> list:
    """One input spec per example input, named after the parameters of `model.forward`."""
    names = [name for name in inspect.signature(model.forward).parameters][:len(example_inputs)]
    names += [f"input{i}" for i in range(len(names), len(example_inputs))]
    return [_InputSpec(name, tuple(int(d) for d in x.shape), str(x.dtype).removeprefix("torch."))
            for name, x in zip(names, example_inputs)]


def report_text(result, config: AutotuneConfig) -> str:
    """The chosen plan's table, every plan tried (Pareto front marked) and the wall time by part."""
    lines = ["chosen plan", result.plan.table(), "", "plans tried (summed layer latency, metric, drop)"]
    points = [(plan.latency_us, plan.metric) for plan in result.trials]
    front = set(pareto_front(points))
    for index, plan in enumerate(result.trials):
        marks = ("Pareto " if index in front else "") + ("within budget" if plan.drop <= plan.budget else "over budget")
        lines.append(f"  {index + 1}. {plan.latency_us:9.1f} us  metric {plan.metric:.4g}  drop {plan.drop:.4g}  "
                     f"{len(plan.pq_layers)} PQ  ({marks})")
    if not result.trials:
        lines.append("  none")
    lines += ["", "k-means plans evaluated to scale the proxy (proxy sum -> measured drop)"]
    lines += [f"  {entry['proxy']:.4g} -> {entry['drop']:.4g}" for entry in result.calibration]
    lines += ["", "wall time by part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())]
    if result.kept:
        lines += ["", "layers kept exact without a choice"] + [f"  {k}: {v}" for k, v in result.kept.items()]
    lines += ["", f"config {config.to_json()}"]
    return "\n".join(lines) + "\n"


def write_output(result, config: AutotuneConfig, inputs, source: str) -> Path:
    """Write the artifact of `result` (with plan.json), the report and the plot into `result.out_dir`."""
    out_dir = result.out_dir
    provenance = {"autotune_config": json.loads(config.to_json()), "seconds": result.seconds}
    _save_artifact(out_dir, result.model, inputs, result.bundle, source=source, provenance=provenance,
                   extra_json={"plan": result.plan.to_dict()})
    (out_dir / PLAN_NAME).write_text(result.plan.to_json())
    (out_dir / REPORT_NAME).write_text(report_text(result, config))
    plot_plans(result.trials, out_dir / PLOT_NAME)
    return out_dir


def _save_artifact(out_dir, model, inputs, bundle, *, source: str, provenance: dict | None = None,
                   extra_json: dict[str, dict] | None = None) -> Path:
    """Stand-in for `tvm_lut.artifact.save_artifact` (same signature) until that module is on main: the model's
    weights, the bundle, a manifest and the extra JSON documents."""
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out_dir / "model.safetensors"))
    if bundle is not None:
        bundle.save(out_dir / "bundle.safetensors")
    for name, document in (extra_json or {}).items():
        (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    manifest = {"format": "tvm-lut-artifact", "format_version": 1, "source": source,
                "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in inputs],
                "provenance": provenance or {}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
