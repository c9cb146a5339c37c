"""The `tvm-lut` command line: one subcommand per main job.

Each subcommand lives in a module with `add_arguments(parser)` and `run(args) -> int`; this file only parses and
dispatches. Command modules import torch and TVM inside `run`, so that `tvm-lut --help` is instant.
"""

import argparse
import importlib
import sys

# subcommand -> (command module, one-line help)
COMMANDS = {
    "demo": ("tvm_lut.demo", "MiniLM-L6 on real tweets: exact, NN-LUT, NN-LUT + PQ against ONNX Runtime"),
    "compile": ("tvm_lut.compiler", "compile a model for a CPU (--target; schedules, tuning records, LUT tables) to a .so"),
    "tune": ("tvm_lut.tune", "tune a model's functions for a CPU, here or on RPC devices, into a resumable database"),
    "learn": ("tvm_lut.learn_cli", "learn LUT tables for a model and write the artifact compile builds (-o OUT_DIR)"),
    "autotune": ("tvm_lut.autotune_cli", "choose exact or PQ (K, V) per layer under an accuracy budget, resumable"),
    "profile": ("tvm_lut.profile", "where a compiled model's time goes: each function's share, rule and GFLOPS"),
    "bench": ("tvm_lut.bench", "run one of the benchmarks (baseline and result from the same run, as ratios)"),
}


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--out` must not pass for `--output` (an option is spelled one way, or it is an error).
    parser = argparse.ArgumentParser(prog="tvm-lut", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    """Run one command. Bad input (`model_spec.UsageError`, an unreadable artifact or bundle) exits with status 2
    and one line naming what is wrong, as argparse does for a bad option."""
    from tvm_lut.artifact import ArtifactError
    from tvm_lut.bundle import BundleError
    from tvm_lut.model_spec import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    module, _ = COMMANDS[args.command]
    try:
        return importlib.import_module(module).run(args) or 0
    except (UsageError, ArtifactError, BundleError) as err:
        parser.exit(2, f"tvm-lut {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
