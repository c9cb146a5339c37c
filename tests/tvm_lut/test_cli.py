"""The `tvm-lut` command line: every subcommand parses, and bad input gets argparse's error, not a traceback."""

import pytest

from tvm_lut import bench, cli


def test_every_command_has_a_parser_and_a_runner():
    parser = cli.build_parser()
    for name, (module, _) in cli.COMMANDS.items():
        command = __import__(module, fromlist=["run"])
        assert callable(command.run) and callable(command.add_arguments), name
    assert parser.parse_args(["bench", "nonlinear", "--repeat", "3"]).args == ["--repeat", "3"]


def test_bench_rejects_an_unknown_benchmark(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "no_such_benchmark"])
    assert "invalid choice" in capsys.readouterr().err


def test_bench_names_are_the_benchmark_modules():
    from pathlib import Path

    folder = Path(bench.__file__).resolve().parent.parent / "benchmarks"
    assert {p.stem for p in folder.glob("*.py")} - {"__init__", "timing"} == set(bench.BENCHMARKS)
