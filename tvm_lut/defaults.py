"""The default NN-LUT tables shipped in the package, for models with no training code at hand.

`relay_passes.LUTNonlinear()` uses them when no bundle is given: 16-entry tables of every registered function
over its generic default range (`tvm_lut.functions`), learned by the same trainer as calibrated tables.
Regenerate them with `python -m tvm_lut.defaults` (about 10 s); `--check` refits and compares without writing.

The fit is deterministic on one platform (float64, one thread, fixed seed), so a refit reproduces the shipped
file bit for bit when the torch build, CPU capability and CPU match those recorded in its provenance. Elsewhere,
float64 kernels may round differently and the optimizer, which has many near-equal optima, can end elsewhere;
there a refit is only required to be as accurate (every table within its function's threshold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvm_lut.bundle import Bundle

DEFAULT_TABLES_PATH = Path(__file__).with_name("default_tables.safetensors")
DEFAULT_ENTRIES = 16


def default_bundle() -> Bundle:
    """The shipped default tables (a fresh Bundle each call; the file is a few kilobytes)."""
    return Bundle.load(DEFAULT_TABLES_PATH)


def fit_platform() -> dict[str, str]:
    """What a bit-for-bit reproduction of a fit needs to share: the torch build, its CPU kernels and the CPU
    (an Intel and an AMD CPU with the same capability ran different kernels and fitted different tables)."""
    import platform

    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": _cpu_model() or platform.machine()}


def _cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def fit_default_bundle(progress: bool = True) -> Bundle:
    """Fit the default tables now (what `python -m tvm_lut.defaults` writes)."""
    from tvm_lut.progress import progress_bar

    from tvm_lut.functions import FUNCTIONS
    from tvm_lut.pwl_fit import fit_pwl

    bundle = Bundle(provenance={"generator": "python -m tvm_lut.defaults", "entries": DEFAULT_ENTRIES,
                                **fit_platform()})
    for name in progress_bar(sorted(FUNCTIONS), desc="fitting default tables", unit="table", progress=progress):
        bundle.add(name, fit_pwl(name, DEFAULT_ENTRIES))
    return bundle


def plot_errors(bundle: Bundle, path: Path) -> None:
    """One panel per table: its error (in the measure that matters) over its range, breakpoints marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from tvm_lut.functions import get_function

    fig, axes = plt.subplots(1, len(bundle), figsize=(4 * len(bundle), 3), squeeze=False)
    for ax, name in zip(axes[0], bundle):
        table, spec = bundle[name], get_function(name)
        x = np.linspace(*table.input_range, 20001).astype(np.float32)
        exact = spec.exact(torch.from_numpy(x.astype(np.float64))).numpy()
        error = table(x) - exact
        ax.plot(x, error / np.abs(exact) if spec.measure == "relative" else error, lw=0.8)
        for breakpoint in table.breakpoints:
            ax.axvline(breakpoint, color="0.85", lw=0.5, zorder=0)
        ax.set_title(f"{name} ({table.entries} entries)")
        ax.set_xlabel("x")
        ax.set_ylabel(f"{spec.measure} error")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from tvm_lut.functions import measure_error

    parser = argparse.ArgumentParser(prog="python -m tvm_lut.defaults", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_TABLES_PATH, help="where to write the tables")
    parser.add_argument("--check", action="store_true", help="refit and compare with the shipped file, write nothing")
    parser.add_argument("--plot", type=Path, help="also save a figure of each table's error over its range")
    args = parser.parse_args(argv)

    bundle = fit_default_bundle()
    reports = [measure_error(bundle[name]) for name in bundle]
    print("\n".join(str(report) for report in reports))
    if args.plot:
        plot_errors(bundle, args.plot)
        print(f"wrote {args.plot}")
    if not all(report.passed for report in reports):
        print("some tables miss their threshold; nothing written", file=sys.stderr)
        return 1
    if args.check:
        shipped = default_bundle()
        same = list(shipped) == list(bundle) and all(shipped[name] == bundle[name] for name in bundle)
        print(f"refit {'matches' if same else 'differs from'} {DEFAULT_TABLES_PATH} bit for bit "
              f"(shipped: {shipped.provenance}; now: {fit_platform()})")
        return 0 if same else 1
    bundle.save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
