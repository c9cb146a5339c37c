"""The NN-LUT accuracy experiment: MiniLM-L6 on held-out tweets, exact vs GELU / Softmax / LayerNorm on tables.

One function serves the `tvm-lut demo` command and `benchmarks/nonlinear_accuracy.py`:

1. embed the training tweets with the FP32 PyTorch encoder and train the sentiment head on them (once);
2. learn the NN-LUT tables with `tvm_lut.learn(model, calib_batches, NonlinearConfig(...))`, their ranges
   calibrated on the activations of real calibration tweets;
3. import the encoder (torch.export) and compile it twice with `tvm_lut.compile`: without a bundle (exact) and
   with the learned bundle (the `LUTNonlinear` pass replaces every op it can serve, and reports the rest);
4. embed the held-out test tweets with PyTorch, TVM exact and TVM LUT; apply the same head to all three.

Accuracy differences are therefore the encoder's alone. The held-out tweets are never used for learning.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from tvm_lut.sentiment import accuracy, batch_latency_ms, cosines, embed, torch_encoder, train_head, vm_encoder

ENCODERS = ("pytorch_fp32", "tvm_exact", "tvm_lut")
LABELS = {"pytorch_fp32": "PyTorch FP32", "tvm_exact": "TVM exact", "tvm_lut": "TVM LUT"}
# The targets of the experiment (issue 2): what "the tables cost no accuracy" means here.
MAX_ACCURACY_DROP_POINTS = 0.3
MIN_MEAN_COSINE = 0.999


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of the experiment. `n_calib` tweets calibrate the table ranges; `entries` segments per table."""

    n_test: int = 1000
    n_train: int = 1000
    n_calib: int = 64
    batch_size: int = 8
    length: int = 64
    entries: int = 16
    latency_repeats: int = 5

    def __post_init__(self):
        for name in ("n_test", "n_train", "n_calib", "batch_size", "length", "entries", "latency_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_test < self.batch_size:
            raise ValueError(f"n_test ({self.n_test}) must be at least batch_size ({self.batch_size}): the model is "
                             "compiled for full batches")


@dataclasses.dataclass(frozen=True)
class EncoderResult:
    """One encoder on the held-out set; cosines and differences are against the PyTorch FP32 embeddings."""

    name: str
    accuracy: float
    mean_cosine: float
    min_cosine: float
    max_abs_diff: float
    latency_ms: float


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    config: ExperimentConfig
    encoders: dict[str, EncoderResult]
    lut_report: dict  # the LUTNonlinear pass report (`PassReport.to_dict()`): replaced and kept-exact ops
    tables: dict[str, dict]  # per learned table: entries, input range, scaling
    seconds: dict[str, float]  # wall time of each step

    @property
    def accuracy_drop_points(self) -> float:
        """FP32 accuracy minus LUT accuracy, in percentage points (positive = the LUT model is worse)."""
        return 100.0 * (self.encoders["pytorch_fp32"].accuracy - self.encoders["tvm_lut"].accuracy)

    def replaced_counts(self) -> dict[str, int]:
        return _count(self.lut_report.get("replaced", []))

    def kept_counts(self) -> dict[str, int]:
        return _count(self.lut_report.get("kept", []))

    @property
    def meets_targets(self) -> bool:
        lut = self.encoders["tvm_lut"]
        return self.accuracy_drop_points <= MAX_ACCURACY_DROP_POINTS and lut.mean_cosine >= MIN_MEAN_COSINE

    def summary(self) -> str:
        """The result as a plain-text table with the targets, what was replaced and kept, and the tables."""
        c = self.config
        exact_ms = self.encoders["tvm_exact"].latency_ms
        lines = [
            f"MiniLM-L6 sentiment, {c.n_test} held-out tweets, {c.length} tokens; one logistic-regression head "
            f"trained on {c.n_train} FP32 training embeddings",
            f"{'encoder':<13} {'accuracy':>9} {'cosine to FP32 mean / min':>26} {'max |diff|':>10} "
            f"{f'ms per {c.batch_size}x{c.length} batch':>20} {'vs TVM exact':>12}",
        ]
        for name in ENCODERS:
            r = self.encoders[name]
            lines.append(
                f"{LABELS[name]:<13} {100 * r.accuracy:>8.2f}% {r.mean_cosine:>15.6f} / {r.min_cosine:.6f} "
                f"{r.max_abs_diff:>10.2e} {r.latency_ms:>20.1f} {exact_ms / r.latency_ms:>11.2f}x"
            )
        lut = self.encoders["tvm_lut"]
        verdict = "met" if self.meets_targets else "MISSED"
        lines.append(
            f"targets {verdict}: accuracy drop {self.accuracy_drop_points:+.2f} points (<= {MAX_ACCURACY_DROP_POINTS}), "
            f"mean cosine {lut.mean_cosine:.6f} (>= {MIN_MEAN_COSINE})"
        )
        replaced = ", ".join(f"{n} {op}" for op, n in self.replaced_counts().items()) or "nothing"
        kept = ", ".join(f"{n} {op}" for op, n in self.kept_counts().items()) or "none"
        lines.append(f"replaced by LUT kernels: {replaced}; kept exact: {kept}")
        lines += [f"  kept exact {e['op']} ({e['form']}): {e['reason']}" for e in self.lut_report.get("kept", [])]
        lines.append(f"unscheduled functions: {', '.join(self.lut_report.get('unscheduled', [])) or 'none'}")
        for name, t in self.tables.items():
            lo, hi = t["input_range"]
            origin = "calibrated" if t["calibrated"] else "default range"
            lines.append(f"table {name:<10} {t['entries']} entries on [{lo:.4g}, {hi:.4g}] ({origin}, scaling {t['scaling']})")
        lines.append("seconds: " + ", ".join(f"{step} {sec:.0f}" for step, sec in self.seconds.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["meets_targets"] = self.meets_targets
        out["accuracy_drop_points"] = self.accuracy_drop_points
        out["replaced_counts"] = self.replaced_counts()
        out["kept_counts"] = self.kept_counts()
        return out


def _count(entries: list[dict]) -> dict[str, int]:
    return dict(Counter(entry["op"] for entry in entries))


def calibration_batches(ids: np.ndarray, mask: np.ndarray, batch_size: int) -> list:
    """Token batches in the training stage's convention: `((input_ids, attention_mask), None)`, no labels."""
    import torch

    return [
        ((torch.from_numpy(ids[i : i + batch_size]), torch.from_numpy(mask[i : i + batch_size])), None)
        for i in range(0, len(ids), batch_size)
    ]


def run_experiment(
    config: ExperimentConfig = ExperimentConfig(),
    *,
    model=None,
    splits=None,
    target=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExperimentResult:
    """Run the experiment (module docstring). `model` / `splits` default to MiniLM-L6 and the tweet split;
    `target` to `tvm_lut.compile`'s default (this CPU)."""
    import torch

    import tvm_lut
    from tvm_lut.frontend import from_torch
    from tvm_lut.training import NonlinearConfig

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        log(f"[{name}] {seconds[name]:.1f} s")

    if model is None:
        from tvm_lut.models import load_minilm

        model = load_minilm()
    if splits is None:
        from tvm_lut.datasets import load_tweets

        splits = load_tweets()
    test, train, calib = (
        splits.test.head(config.n_test),
        splits.train.head(config.n_train),
        splits.calibration.head(config.n_calib),
    )
    test_ids, test_mask = test.tokens(config.length)
    step("load")

    fp32 = torch_encoder(model)
    train_ids, train_mask = train.tokens(config.length)
    head = train_head(
        embed(fp32, train_ids, train_mask, config.batch_size, "train embeddings (PyTorch)", progress), train.labels
    )
    step("head")

    calib_ids, calib_mask = calib.tokens(config.length)
    bundle = tvm_lut.learn(
        model,
        calibration_batches(calib_ids, calib_mask, config.batch_size),
        NonlinearConfig(entries=config.entries),
        progress=progress,
    )
    step("learn tables")

    example = (torch.from_numpy(test_ids[: config.batch_size]), torch.from_numpy(test_mask[: config.batch_size]))
    mod = from_torch(model, example)
    encoders = {"pytorch_fp32": fp32, "tvm_exact": vm_encoder(tvm_lut.compile(mod, target=target))}
    lut_executable = tvm_lut.compile(mod, bundle=bundle, target=target)
    encoders["tvm_lut"] = vm_encoder(lut_executable)
    step("import + compile")

    embeddings = {
        name: embed(encoder, test_ids, test_mask, config.batch_size, f"test embeddings ({name})", progress)
        for name, encoder in encoders.items()
    }
    step("evaluate")

    reference = embeddings["pytorch_fp32"]
    results = {}
    for name, encoder in encoders.items():
        cos = cosines(reference, embeddings[name])
        results[name] = EncoderResult(
            name=name,
            accuracy=accuracy(head, embeddings[name], test.labels),
            mean_cosine=float(np.mean(cos)),
            min_cosine=float(np.min(cos)),
            max_abs_diff=float(np.max(np.abs(reference - embeddings[name]))),
            latency_ms=batch_latency_ms(encoder, test_ids, test_mask, config.batch_size, config.latency_repeats),
        )
    step("latency")

    return ExperimentResult(
        config=config,
        encoders=results,
        lut_report=_pass_report(lut_executable),
        tables=_describe_tables(bundle),
        seconds=seconds,
    )


def _pass_report(executable) -> dict:
    """The LUTNonlinear report of a `tvm_lut.compile` run (JSON-ready), plus the functions left unscheduled."""
    report = executable.lut_report
    passes = [entry for entry in report.passes if entry["pass"] == "LUTNonlinear"]
    if len(passes) != 1:
        raise RuntimeError(f"expected one LUTNonlinear run in the compile report, found {len(passes)}")
    return {**passes[0], "unscheduled": list(report.unscheduled)}


def _describe_tables(bundle) -> dict[str, dict]:
    """Per table: entries, scaling, fitted range, and whether calibration saw the function (from the provenance)."""
    ranges = bundle.provenance.get("ranges", {})
    out = {}
    for name, table in bundle.items():
        out[name] = {"entries": table.entries, "scaling": table.scaling, "input_range": list(table.input_range),
                     "calibrated": ranges.get(name, {}).get("calibrated")}
    return out
