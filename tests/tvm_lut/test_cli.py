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
    """Every module of benchmarks/ with a `main(argv)` is a benchmark `tvm-lut bench` names (the others are helpers)."""
    from pathlib import Path

    folder = Path(bench.__file__).resolve().parent.parent / "benchmarks"
    entry_points = {p.stem for p in folder.glob("*.py") if "\ndef main(argv" in p.read_text()}
    assert entry_points == set(bench.BENCHMARKS)


def _error(capsys, argv) -> str:
    """The message of a command that must fail as a usage error (status 2, nothing written)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2, argv
    return capsys.readouterr().err


def test_learn_fashion_cnn_quick_then_compile_the_artifact(tmp_path, capsys):
    """Issue 12, (1): `tvm-lut learn fashion-cnn --quick -o OUT` then `tvm-lut compile OUT -o lib.so --json`: every
    PQ table of the bundle replaces its layer, and the library computes what PyTorch's PQ reference computes."""
    import json

    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from tvm_lut.artifact import load_artifact
    from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
    from tvm_lut.pq.reference import pq_forward

    out, library, report_path = tmp_path / "cnn_lut", tmp_path / "cnn.so", tmp_path / "report.json"
    assert cli.main(["learn", "fashion-cnn", "--quick", "--batch", "4", "-o", str(out), "--no-progress"]) == 0
    assert "accuracy on 1000 held-out rows" in capsys.readouterr().out
    artifact = load_artifact(out)
    pq_entries = set(artifact.manifest["bundle"]["entries"]["pq"])
    assert pq_entries == {"conv2", "conv3", "fc1", "fc2"}  # conv1 stays exact in the task's config
    assert cli.main(["compile", str(out), "-o", str(library), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (dense,) = [p for p in report["passes"] if p["pass"] == "LUTDense"]
    assert {entry["entry"] for entry in dense["replaced"]} == pq_entries and dense["unused"] == []
    # no database: the PQ kernels are reported as what they are, not as tuning records
    assert report["tuned"] == [] and {"pq_encode", "pq_lookup"} <= set(report["kernels"].values())

    # the PyTorch PQ model: the stored model's weights, each PQ layer computed by the reference of its table
    import onnx
    from onnx import numpy_helper

    from tvm_lut.models.cnn import FashionCNN

    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
               for init in onnx.load(str(artifact.model_path)).graph.initializer}
    model = FashionCNN().eval()
    model.load_state_dict({name: weights[name] for name in model.state_dict()})
    for name in pq_entries:
        table = artifact.bundle[name]
        model.get_submodule(name).forward = lambda x, table=table: pq_forward(x, table)
    images = torch.from_numpy(load_fashion_mnist("test")[0][:4])
    with torch.no_grad():
        want = model(images).numpy()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(images.numpy())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_compile_builds_the_builtin_cnn(tmp_path, capsys):
    library = tmp_path / "cnn.so"
    assert cli.main(["compile", "fashion-cnn", "--batch", "1", "-o", str(library)]) == 0
    assert library.stat().st_size > 0
    assert "WinogradConv2d: 1 rewritten" in capsys.readouterr().out
    assert cli.main(["compile", "fashion-cnn", "--batch", "1", "--no-winograd", "-o", str(library)]) == 0
    assert "Winograd" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    torch.onnx.export(torch.nn.Linear(16, 8).eval(), (torch.zeros(4, 16),), str(path), input_names=["x"],
                      opset_version=17, dynamo=False)
    return path


def test_learn_an_onnx_file_from_calibration_then_compile(tmp_path, capsys, tiny_onnx):
    """Issue 12, (2) at CI size: an ONNX file, no training code, `--calib` only; the artifact compiles with its PQ
    table replacing the layer, and NN-LUT tables join the same bundle with --nonlinear."""
    import json

    import numpy as np

    from tvm_lut.artifact import load_artifact

    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "lut"
    assert cli.main(["learn", str(tiny_onnx), "--calib", str(tmp_path / "calib.npz"), "--V", "4", "--nonlinear",
                     "--quick", "-o", str(out), "--no-progress"]) == 0
    assert "relative output error k-means" in capsys.readouterr().out
    artifact = load_artifact(out)
    assert artifact.manifest["model"]["format"] == "onnx" and artifact.manifest["source"] == str(tiny_onnx)
    assert len(artifact.manifest["bundle"]["entries"]["pq"]) == 1 and "gelu" in artifact.manifest["bundle"]["entries"]["pwl"]
    assert cli.main(["compile", str(out), "-o", str(tmp_path / "lib.so"), "--json", str(tmp_path / "r.json")]) == 0
    (dense,) = [p for p in json.loads((tmp_path / "r.json").read_text())["passes"] if p["pass"] == "LUTDense"]
    assert [e["entry"] for e in dense["replaced"]] == artifact.manifest["bundle"]["entries"]["pq"]


def test_cli_failure_modes_name_what_is_wrong(tmp_path, capsys, tiny_onnx):
    """Issue 12, (4): unknown model, missing file, wrong input spec, options that do not apply, a bundle for
    another model, an output directory of an older format: status 2, one line naming the problem, nothing written."""
    import numpy as np

    so = str(tmp_path / "x.so")
    assert "unknown model 'resnet'" in _error(capsys, ["compile", "resnet", "-o", so])
    assert "model file 'missing.onnx' does not exist" in _error(capsys, ["learn", "missing.onnx", "-o", so])
    assert "has no input 'input'; its inputs are x" in _error(
        capsys, ["compile", str(tiny_onnx), "--input", "input:4x16", "-o", so])
    assert "input 'x' has the fixed shape 4x16" in _error(
        capsys, ["compile", str(tiny_onnx), "--input", "x:2x16", "-o", so])
    assert "expected NAME:SHAPE[:DTYPE]" in _error(capsys, ["tune", "fashion-cnn", "--input", "x", "--db", so])
    assert "--batch applies to the built-in models" in _error(capsys, ["compile", str(tiny_onnx), "--batch", "2",
                                                                       "-o", so])
    assert "give calibration inputs with --calib" in _error(capsys, ["learn", str(tiny_onnx), "-o", so])
    assert "--calib applies to model files" in _error(capsys, ["learn", "fashion-cnn", "--calib", "c.npz", "-o", so])
    assert "--weights applies to fashion-cnn only" in _error(capsys, ["learn", "minilm-l6", "--weights", "w",
                                                                      "-o", so])
    assert "--checkpoint applies to built-in models" in _error(
        capsys, ["learn", str(tiny_onnx), "--calib", "c.npz", "--checkpoint", "c", "-o", so])
    assert "no bundle file at" in _error(capsys, ["compile", "fashion-cnn", "--bundle", "none.safetensors", "-o", so])
    assert "unrecognized arguments: --out" in _error(capsys, ["learn", "fashion-cnn", "-o", so, "--out", so])
    assert not (tmp_path / "x.so").exists()

    # a bundle learned for another model's weights: every PQ layer reports the mismatch, and no library is written
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "tiny_lut"
    assert cli.main(["learn", str(tiny_onnx), "--calib", str(tmp_path / "calib.npz"), "--quick", "-o", str(out),
                     "--no-progress"]) == 0
    capsys.readouterr()
    message = _error(capsys, ["compile", "fashion-cnn", "--bundle", str(out / "bundle.safetensors"), "-o", so])
    assert "none of the bundle's 1 PQ tables matches a layer of 'fashion-cnn'" in message
    assert "learned for another model" in message and not (tmp_path / "x.so").exists()
    assert "an artifact and holds its own bundle" not in message
    assert "holds its own bundle; --bundle does not apply" in _error(
        capsys, ["compile", str(out), "--bundle", str(out / "bundle.safetensors"), "-o", so])
    assert "fixes its input shapes; --input does not apply" in _error(capsys, ["compile", str(out), "--input",
                                                                               "x:4x16", "-o", so])

    # an output directory from an older format (the files `tvm-lut learn --out` used to write): kept as it was
    old = tmp_path / "old"
    old.mkdir()
    (old / "cnn_pq.safetensors").write_bytes(b"old bundle")
    assert "is not empty and is not a tvm-lut artifact" in _error(
        capsys, ["learn", str(tiny_onnx), "--calib", str(tmp_path / "calib.npz"), "--quick", "-o", str(old)])
    assert [p.name for p in old.iterdir()] == ["cnn_pq.safetensors"]
    (old / "manifest.json").write_text('{"format": "tvm-lut-artifact", "format_version": 0}')
    assert "format version 0, this tvm-lut writes version 1" in _error(
        capsys, ["learn", str(tiny_onnx), "--calib", str(tmp_path / "calib.npz"), "--quick", "-o", str(old)])
    assert "format version 0; this tvm-lut reads version 1" in _error(capsys, ["compile", str(old), "-o", so])


def test_tune_names_the_functions_a_model_has_for_an_unknown_function(tmp_path):
    with pytest.raises(SystemExit, match="^tvm-lut tune: no function nope to tune in this model; it has fused_conv2d"):
        cli.main(["tune", "fashion-cnn", "--batch", "1", "--db", str(tmp_path), "--function", "nope"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, lines", [([], True), (["--no-progress"], False)])
def test_tune_reports_progress_as_lines_in_a_log(flags, lines, tmp_path, capsys, monkeypatch):
    """`tvm-lut tune` hands the search its progress form: plain lines when stderr is a log, none with --no-progress
    (the search itself is stubbed: only the wiring is under test)."""
    from schedules import tuning

    def search(mod, target, root, progress, **_):
        for _task in progress(range(3), desc="tuning", unit="task"):
            pass
        return []

    monkeypatch.setattr(tuning, "tune", search)
    assert cli.main(["tune", "fashion-cnn", "--batch", "1", "--db", str(tmp_path), *flags]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert ("tuning: 3/3 task" in err) == lines, err
