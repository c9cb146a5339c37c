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
    assert {p.stem for p in folder.glob("*.py")} - {"__init__", "timing", "vm_profile"} == set(bench.BENCHMARKS)  # helpers


def test_learn_cnn_writes_a_bundle_that_matches_its_weights(tmp_path, capsys):
    """`tvm-lut learn cnn` end to end on a small real setting: Fashion-MNIST, a briefly trained CNN, 128 images."""
    from safetensors.torch import load_file, save_file

    from tvm_lut import Bundle, fingerprint
    from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
    from tvm_lut.models.cnn import train_cnn
    from tvm_lut.pq.config import PQConfig

    images, labels = load_fashion_mnist("train")
    weights = tmp_path / "cnn.safetensors"
    save_file(train_cnn(images[:256], labels[:256], epochs=1, progress=False).state_dict(), str(weights))
    config = tmp_path / "pq.json"
    config.write_text(PQConfig(epochs=1, trainable="all").to_json())
    out = tmp_path / "cnn_pq.safetensors"
    assert cli.main(["learn", "cnn", "--out", str(out), "--weights", str(weights), "--config", str(config),
                     "--calib-size", "128", "--learn-size", "128", "--test-size", "200", "--no-progress"]) == 0
    assert "accuracy on held-out data" in capsys.readouterr().out
    bundle = Bundle.load(out)
    trained = load_file(str(out.with_suffix(".model.safetensors")))
    assert set(bundle) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    for name in bundle:
        assert bundle[name].weight_fingerprint == fingerprint(trained[f"{name}.weight"].numpy()), name
    assert bundle.provenance["pq_config"]["trainable"] == "all"


def test_compile_builds_the_builtin_cnn_and_rejects_unknown_models(tmp_path, capsys):
    library = tmp_path / "cnn.so"
    assert cli.main(["compile", "fashion-cnn", "--batch", "1", "-o", str(library)]) == 0
    assert library.stat().st_size > 0
    assert "WinogradConv2d: 1 rewritten" in capsys.readouterr().out
    assert cli.main(["compile", "fashion-cnn", "--batch", "1", "--no-winograd", "-o", str(library)]) == 0
    assert "Winograd" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown model 'resnet'"):
        cli.main(["compile", "resnet", "-o", str(tmp_path / "x.so")])
