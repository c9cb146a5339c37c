"""The output directory of an autotuning run: the learned artifact with `plan.json`, `report.txt`, `plans.png`,
and the run's state.

    OUT_DIR/manifest.json, model.onnx, bundle.safetensors   the artifact (`tvm_lut.artifact`), as `tvm-lut learn -o`
    OUT_DIR/plan.json                                       the plan, a document of the artifact
    OUT_DIR/report.txt, plans.png                           every plan tried, the Pareto plot
    OUT_DIR/autotune-state/                                 what was measured and learned (resume)

`tvm-lut compile OUT_DIR` builds the plan. The artifact is written by `save_artifact`, which replaces the whole
directory: the state folder is moved beside it for that moment and back (a crash in between leaves it at
`.OUT_DIR.autotune-state`, where the next run finds it).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from tvm_lut.autotuning.config import AutotuneConfig
from tvm_lut.autotuning.plot import pareto_front, plot_plans

STATE_DIR = "autotune-state"
PLAN_NAME = "plan.json"
REPORT_NAME = "report.txt"
PLOT_NAME = "plans.png"


def _parked(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.{STATE_DIR}"


def state_dir(out_dir) -> Path:
    """The state folder of `out_dir`, after checking the directory may be used: empty, an artifact, or a run's
    output. Anything else raises before any work is done (save_artifact would refuse it at the end)."""
    from tvm_lut.artifact import MANIFEST

    out_dir = Path(out_dir)
    state = out_dir / STATE_DIR
    if _parked(out_dir).is_dir() and not state.exists():  # a crash while the artifact was written
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(_parked(out_dir), state)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {os.fspath(out_dir)!r} exists and is not a directory")
    if out_dir.is_dir():
        others = {p.name for p in out_dir.iterdir()} - {STATE_DIR, REPORT_NAME, PLOT_NAME}
        if others and MANIFEST not in others:
            raise ValueError(f"output directory {os.fspath(out_dir)!r} is not empty and holds no tvm-lut artifact or "
                             "autotune run; choose another directory")
    return state


def input_specs(model, example_inputs: tuple) -> list:
    """One `InputSpec` per example input, named after the parameters of `model.forward`."""
    from tvm_lut.model_spec import InputSpec

    names = [name for name in inspect.signature(model.forward).parameters][:len(example_inputs)]
    names += [f"input{i}" for i in range(len(names), len(example_inputs))]
    return [InputSpec(name, tuple(int(d) for d in x.shape), str(x.dtype).removeprefix("torch."))
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
    from tvm_lut.artifact import save_artifact
    from tvm_lut.bundle import Bundle

    out_dir = result.out_dir
    provenance = {"autotune_config": json.loads(config.to_json()), "seconds": result.seconds}
    state, parked = out_dir / STATE_DIR, _parked(out_dir)
    if state.is_dir():
        os.replace(state, parked)
    try:
        save_artifact(out_dir, result.model, inputs, result.bundle if result.bundle is not None else Bundle(),
                      source=source, provenance=provenance, extra_json={PLAN_NAME: result.plan.to_dict()})
    finally:
        if parked.is_dir():
            out_dir.mkdir(parents=True, exist_ok=True)
            os.replace(parked, state)
    (out_dir / REPORT_NAME).write_text(report_text(result, config))
    plot_plans(result.trials, out_dir / PLOT_NAME, chosen=result.plan)
    return out_dir
