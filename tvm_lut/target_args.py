"""The target and remote-device options every command shares: `--target`, and `--rpc-tracker` / `--rpc-key`.

A command calls `add_target_arguments(parser, rpc=...)` when it builds its parser and `resolve_target(args)` /
`resolve_tracker(args)` in `run`, so `compile`, `tune`, `autotune` and `bench` take the same flags with the same
meaning (`schedules.target.resolve_target`, `schedules.rpc.Tracker`).
"""

import argparse

_TARGET_HELP = ("the CPU to compile for: host (this machine, the default), x86-64-v3 (AVX2), x86-64-v4 (AVX-512), "
                "aarch64 (NEON), or a TVM target as JSON, e.g. '{\"kind\": \"llvm\", \"mtriple\": "
                "\"aarch64-linux-gnu\", \"mcpu\": \"cortex-a72\"}'")


def add_target_arguments(parser: argparse.ArgumentParser, rpc: bool = False) -> None:
    """`--target`; with `rpc`, also `--rpc-tracker HOST:PORT` and `--rpc-key KEY` (measure on remote devices)."""
    parser.add_argument("--target", default="host", help=_TARGET_HELP)
    if rpc:
        parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on the devices of this TVM RPC "
                            "tracker (python -m tvm.exec.rpc_tracker) instead of this machine")
        parser.add_argument("--rpc-key", metavar="KEY", help="the key the devices registered under at the tracker")


def resolve_target(args: argparse.Namespace):
    """The `tvm.target.Target` the options name (`--threads` sets its cores when the command has it)."""
    from schedules.target import resolve_target as resolve

    try:
        return resolve(args.target, getattr(args, "threads", None))
    except ValueError as err:
        raise SystemExit(f"tvm-lut: --target: {err}") from None


def resolve_tracker(args: argparse.Namespace, target=None):
    """The `schedules.rpc.Tracker` of `--rpc-tracker`/`--rpc-key` (None without them), its sessions running the
    target's threads; an error exit when only one is given or the tracker does not answer."""
    address, key = getattr(args, "rpc_tracker", None), getattr(args, "rpc_key", None)
    if address is None and key is None:
        return None
    from schedules.rpc import Tracker
    from schedules.target import num_cores

    try:
        if address is None:
            raise ValueError("--rpc-key needs --rpc-tracker HOST:PORT")
        tracker = Tracker.parse(address, key, threads=num_cores(target) if target is not None else None)
        tracker.check()
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"tvm-lut: {err}") from None
    return tracker
