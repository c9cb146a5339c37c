"""The shared `--target` / `--rpc-tracker` / `--rpc-key` options: every command that takes them, and their errors."""

import argparse
import time

import pytest

from schedules.rpc import CONNECT_SECONDS, free_port
from tvm_lut.cli import build_parser
from tvm_lut.target_args import add_target_arguments, resolve_target, resolve_tracker


@pytest.mark.parametrize("argv", [["compile", "m.onnx", "-o", "x.so"], ["tune", "m.onnx", "--db", "d"],
                                  ["bench", "device"]])
def test_every_command_takes_a_target(argv):
    args = build_parser().parse_args(argv + ["--target", "aarch64"] if argv[0] != "bench" else
                                     ["bench", "--target", "aarch64", "device"])
    assert str(resolve_target(args).attrs["mtriple"]) == "aarch64-linux-gnu"


def test_threads_set_the_cores_of_a_preset():
    args = build_parser().parse_args(["compile", "m.onnx", "-o", "x.so", "--target", "x86-64-v3", "--threads", "3"])
    assert int(resolve_target(args).attrs["num-cores"]) == 3


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_target_arguments(parser, rpc=True)
    return parser.parse_args(list(argv))


def test_a_bad_target_exits_with_the_reason():
    with pytest.raises(SystemExit, match=r"--target: unknown target 'rpi'.*aarch64"):
        resolve_target(_parse("--target", "rpi"))
    with pytest.raises(SystemExit, match="target kind 'llvm'.*'cuda'"):
        resolve_target(_parse("--target", '{"kind": "cuda"}'))


def test_tracker_options_go_together_and_the_tracker_must_answer():
    assert resolve_tracker(_parse()) is None
    with pytest.raises(SystemExit, match="--rpc-key needs --rpc-tracker"):
        resolve_tracker(_parse("--rpc-key", "pi"))
    with pytest.raises(SystemExit, match="--rpc-key"):
        resolve_tracker(_parse("--rpc-tracker", "127.0.0.1:9"))
    started = time.monotonic()
    with pytest.raises(SystemExit, match="cannot reach the RPC tracker"):
        resolve_tracker(_parse("--rpc-tracker", f"127.0.0.1:{free_port()}", "--rpc-key", "pi"))
    assert time.monotonic() - started < 2 * CONNECT_SECONDS
