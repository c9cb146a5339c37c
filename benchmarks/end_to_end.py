"""Whole-model CPU latency, accuracy and size: PyTorch, ONNX Runtime (fp32, int8) and TVM builds, in one run.

    python -m benchmarks.end_to_end [--models minilm-8x64 minilm-1x64 cnn] [--threads N] [--database DIR]
    python -m benchmarks.end_to_end --models minilm-l6 fashion-cnn     # the CLI's names: minilm-8x64, cnn
        [--bundle minilm=OUT_DIR] [--cnn-weights FP32.safetensors --bundle cnn=OUT_DIR] [--profile N]
        [--bundle minilm=PQ.safetensors --pq-weights minilm=PQ.model.safetensors]     # a bundle file instead
        [--json PATH]

For MiniLM-L6 (batch 8 x 64 and 1 x 64 tokens) and the Fashion-MNIST CNN, each row is one engine on the same inputs
and thread count (`--threads`, TVM's runtime pool included; 1 reads kernel quality on a busy machine): PyTorch fp32,
ONNX Runtime fp32 and int8 (dynamic quantization), stock TVM (its default CPU pipeline, which schedules nothing),
TVM with our schedule rules on the exact model (3x3 convs as Winograd kernels; for a model that has them, also
with every conv direct: `tvm rules direct conv`), with tuning records (`--database`, written by `tvm-lut tune`; only
read here), with NN-LUT (the shipped tables), and with NN-LUT + PQ (`--bundle MODEL=OUT_DIR`, the artifact of
`tvm-lut learn -o OUT_DIR`; its NN-LUT tables, or the shipped ones when it has none), and at N > 1 threads for a
batch that splits into N equal parts, `tvm nn-lut + pq batch parallel`: the same model compiled for one core at
batch / N, its N parts run at once on N threads (`tvm_lut.batch_parallel`: each part's data stays in one core's
caches, so it holds up when the host runs the cores on two dies; its N workers run beside the calling thread, which
waits for them: `threads_ran` N + 1). A bundle fits the weights it
was learned with (`tvm-lut learn` trains them with the tables): the NN-LUT + PQ engines alone run them (an
artifact's model weights, or with a bundle file `--pq-weights MODEL=PATH`), while the others run the FP32 model
(MiniLM's pretrained weights; the CNN trained here for one epoch, or `--cnn-weights`, the FP32 CNN the bundle was
learned from).

Latency is the median of `--repeat` repetitions of >= 0.1 s of calls, taken in turn over the engines (A B C A B C
...; at several threads each repetition starts once the engine before has parked its spinning workers, so every
engine has the cores to itself: `benchmarks.helpers.engines.engine_timings`); `vs_ort_fp32` is ONNX Runtime fp32
latency / this latency (> 1 is faster); `cpu_wait` is how many of the process's threads stood waiting for a CPU
that other processes held, during the engine's repetitions (median; 0 on a quiet machine, so a figure with a high
one is the shared machine's, not the engine's); `threads_ran` the most threads of the process that ran during one
of them (at N threads, N: no other engine's worker ran beside it); `cores` how many CPUs the process's threads kept
busy during them (median; idle workers spin, so about N when the engine's N threads ran side by side, about 1 when
they shared one core, or when the hypervisor ran something else on a CPU: `stolen`, the machine's steal time in
CPUs); `fork_join_us` (at several threads) TVM's pool starting and joining an empty task on every thread right after
each repetition (median): where the host ran the threads' cores (`tvm_lut.timing.fork_join_seconds`; on the 2-vCPU
AMD EPYC guest here 1.0 us on cores sharing an L3, 2.0 us on two dies, where the NN-LUT + PQ model takes twice as
long and ONNX Runtime 12 % longer). Accuracy: MiniLM
embeddings feed a logistic-regression head trained on PyTorch fp32 embeddings of training tweets and scored on
held-out tweets; an engine running other weights (NN-LUT + PQ with `--pq-weights minilm=...`) is another model,
whose head is fitted the same way on its own embeddings of the same training tweets (its accuracy with the FP32
model's head is kept as `accuracy_fp32_head`). The CNN is scored on Fashion-MNIST test images. Size: the file each
engine loads (ONNX file, TVM shared library with its constants, PyTorch parameter bytes). Stock TVM is timed with
one repetition (seconds per call) and not scored (its numerics are those of the exact TVM build).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from .helpers.engines import aligned, batch_parallel_runner, engine_timings, export_onnx, ort_runner, \
    torch_runner, tvm_runner
from .timing import add_common_arguments, format_table, load_average, median_seconds, wait_for_idle_threads, write_json

MODELS = ("minilm-8x64", "minilm-1x64", "cnn")
# The CLI's names for the same cases (`tvm_lut.model_spec.BUILTIN_MODELS`; minilm-l6 at its default 8 x 64 input).
ALIASES = {"minilm-l6": "minilm-8x64", "fashion-cnn": "cnn"}


def minilm_case(batch: int, args):
    """(torch model, example inputs, accuracy function of an encoder) for MiniLM-L6 on tweets."""
    import torch

    from tvm_lut import sentiment
    from tvm_lut.datasets.tweets import load_tweets
    from tvm_lut.models.minilm import load_minilm

    model = load_minilm()
    splits = load_tweets()
    train, test = splits.train.head(args.train_texts), splits.test.head(args.eval_texts)
    train_ids, train_mask = train.tokens(64)
    test_ids, test_mask = test.tokens(64)

    def fit_head(encoder):
        """A head on the live features of `encoder`'s embeddings of the training tweets (`sentiment.DEAD_FEATURE`:
        a constant feature got a weight of 1e30)."""
        features = sentiment.embed(encoder, train_ids, train_mask, batch, desc="head features")
        return sentiment.train_live_head(features, train.labels)

    fp32_head = fit_head(sentiment.torch_encoder(model))

    def score(encoder, own_head: bool = False):
        live, head = fit_head(encoder) if own_head else fp32_head
        embeddings = sentiment.embed(encoder, test_ids, test_mask, batch, desc="scoring")
        return sentiment.accuracy(head, embeddings[:, live], test.labels)

    example_ids, example_mask = splits.test.head(batch).tokens(64)  # held-out tweets, also with --eval-texts 0
    example = (torch.from_numpy(example_ids.copy()), torch.from_numpy(example_mask.copy()))
    return model, example, score


def cnn_case(args):
    """(torch model, example input, accuracy function) for the Fashion-MNIST CNN (trained here for one epoch, or
    `--cnn-weights`)."""
    import torch

    from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
    from tvm_lut.models.cnn import train_cnn

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    if args.cnn_weights is None:
        model = train_cnn(train_x, train_y, epochs=1, seed=0)
    else:
        from safetensors.torch import load_file

        from tvm_lut.models.cnn import FashionCNN

        model = FashionCNN()
        model.load_state_dict(load_file(str(args.cnn_weights)))
        model.eval()
    images, labels = test_x[: args.eval_images], test_y[: args.eval_images]

    def score(encoder):  # the classifier is the CNN's last layer (no head to fit, `own_head` is MiniLM's)
        logits = np.concatenate([encoder(images[i : i + 1]) for i in range(len(images))])
        return float((logits.argmax(1) == labels).mean())

    return model, (torch.from_numpy(images[:1].copy()),), score


def learned(family: str, bundle_path: Path, weights_path: Path | None):
    """(bundle, model with the learned weights or None) of `--bundle MODEL=PATH` (and `--pq-weights`).

    PATH is the artifact directory of `tvm-lut learn -o OUT_DIR` (its bundle; its model's weights, loaded into the
    torch module so every batch size builds, `helpers.onnx_weights`) or a bundle file (with the weights file of
    `--pq-weights`, or the FP32 model's weights when none is given). The bundle gets the shipped NN-LUT tables when
    it holds PQ tables only."""
    from tvm_lut.bundle import Bundle
    from tvm_lut.defaults import default_bundle

    if bundle_path.is_dir():
        from tvm_lut.artifact import load_artifact

        from .helpers.onnx_weights import load_onnx_weights

        artifact = load_artifact(bundle_path)
        if artifact.model_format != "onnx":
            raise SystemExit(f"--bundle {family}={bundle_path}: the artifact's model is {artifact.model_format}; "
                             "this benchmark reads the weights of an ONNX model (what tvm-lut learn writes)")
        bundle, model = artifact.bundle, load_onnx_weights(fresh_model(family), artifact.model_path, artifact.inputs)
    else:
        bundle = Bundle.load(bundle_path)
        model = None if weights_path is None else learned_model(family, weights_path)
    if not any(entry.kind == "pwl" for _, entry in bundle.items()):
        bundle = default_bundle().merged(bundle)
    return bundle, model


def fresh_model(family: str):
    """The torch module of `family` (`minilm` or `cnn`) in eval mode (MiniLM with its pretrained weights)."""
    from tvm_lut.models.cnn import FashionCNN
    from tvm_lut.models.minilm import load_minilm

    return (load_minilm() if family == "minilm" else FashionCNN()).eval()


def learned_model(family: str, path: Path):
    """The model (`minilm` or `cnn`) with the weights a bundle was learned with (`tvm-lut learn` trains them with the
    tables), in eval mode."""
    from safetensors.torch import load_file

    model = fresh_model(family)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def engines(model, example, bundle, args, workdir: Path, bundle_model=None):
    """name -> (callable on numpy inputs, size in bytes): every engine of one model."""
    import torch
    import tvm

    import tvm_lut
    from schedules import host_target
    from schedules.target import use_runtime_threads
    from tvm_lut.frontend import from_torch

    target = host_target(args.threads)
    threads = use_runtime_threads(target)
    torch.set_num_threads(threads)
    onnx_path, int8_path = export_onnx(model, example, workdir)

    def tvm_run(executable, name):
        return tvm_runner(executable, workdir / f"{name}.so")

    yield "pytorch fp32", torch_runner(model), sum(p.numel() * p.element_size() for p in model.parameters())
    yield "ort fp32", ort_runner(onnx_path, threads), onnx_path.stat().st_size
    yield "ort int8", ort_runner(int8_path, threads), int8_path.stat().st_size
    mod = from_torch(model, example)
    yield "tvm stock", *tvm_run(tvm.compile(mod, target=target), "stock")
    rules = tvm_lut.compile(mod, target=target)
    if args.profile:
        print_profile("tvm rules", mod, example, target, args)
    yield "tvm rules", *tvm_run(rules, "rules")
    if any(report["replaced"] for report in rules.lut_report.exact_passes if report["pass"] == "WinogradConv2d"):
        # Winograd convs: the direct ones too (a model without them, MiniLM, has no such row)
        yield "tvm rules direct conv", *tvm_run(tvm_lut.compile(mod, target=target, winograd=False), "direct")
    if args.database is not None:
        yield "tvm tuned", *tvm_run(tvm_lut.compile(mod, target=target, database=args.database), "tuned")
    yield "tvm nn-lut", *tvm_run(tvm_lut.compile(mod, target=target, nonlinear=True), "nnlut")
    if bundle is not None:
        pq_mod = mod if bundle_model is None else from_torch(bundle_model, example)
        executable = tvm_lut.compile(pq_mod, bundle, target=target)
        print(f"  nn-lut + pq: {executable.lut_report}", flush=True)
        if args.profile:
            print_profile("tvm nn-lut + pq", pq_mod, example, target, args, bundle=bundle)
        yield "tvm nn-lut + pq", *tvm_run(executable, "nnlut_pq")
        batch = int(example[0].shape[0])
        if threads > 1 and batch % threads == 0:
            part = tuple(t[: batch // threads] for t in example)
            part_executable = tvm_lut.compile(from_torch(bundle_model or model, part), bundle,
                                              target=host_target(1))
            yield ("tvm nn-lut + pq batch parallel",
                   *batch_parallel_runner(part_executable, threads, workdir / "nnlut_pq_part.so"))


def measure(name: str, args) -> list[dict]:
    if name.startswith("minilm"):
        batch = int(name.split("-")[1].split("x")[0])
        model, example, score = minilm_case(batch, args)
    else:
        model, example, score = cnn_case(args)
    arrays = [aligned(t.numpy()) for t in example]
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        family = name.split("-")[0]
        bundle, bundle_model = None, None
        if family in args.bundle:
            bundle, bundle_model = learned(family, args.bundle[family], args.pq_weights.get(family))
        for engine, run, size in engines(model, example, bundle, args, Path(workdir), bundle_model):
            stock = engine == "tvm stock"
            scored = not stock and args.eval_texts != 0
            row = {"model": name, "engine": engine, "size_mb": size / 1e6, "accuracy": score(run) if scored else None}
            if scored and engine.startswith("tvm nn-lut + pq") and bundle_model is not None and family == "minilm":
                # Other weights than the FP32 model's: a model of its own, whose head is fitted as the FP32 one was.
                row["accuracy_fp32_head"], row["accuracy"] = row["accuracy"], score(run, own_head=True)
            if stock:  # seconds per call: one repetition (once the engines scored before have parked their workers)
                wait_for_idle_threads()
                row["latency_ms"] = 1e3 * median_seconds(lambda: run(*arrays), 1, 0.0)
            else:
                runs[engine] = lambda run=run: run(*arrays)
            rows.append(row)
            fp32_head = row.get("accuracy_fp32_head")
            fp32_head = "" if fp32_head is None else f" (with the FP32 model's head: {fp32_head})"
            print(f"  {name} {engine}: built, accuracy {row['accuracy']}{fp32_head}", flush=True)
        timed = engine_timings(runs, args.threads, args.repeat)
    for row in rows:
        timing = timed.get(row["engine"])
        if timing is not None:
            row["latency_ms"], row["cpu_wait"] = 1e3 * timing.median, timing.median_waiting
            row["threads_ran"], row["cores"] = timing.most_threads_ran, timing.median_cores
            row["stolen"] = timing.median_stolen
            fork_join = timing.median_fork_join
            row["fork_join_us"] = None if fork_join is None else 1e6 * fork_join
            row["fork_join_us_repetitions"] = [None if f is None else 1e6 * f for f in timing.fork_join]
            row["latency_ms_repetitions"] = [1e3 * s for s in timing.seconds]
        row.setdefault("latency_ms", float("nan"))
    baseline = next(r["latency_ms"] for r in rows if r["engine"] == "ort fp32")
    for row in rows:
        row["vs_ort_fp32"] = baseline / row["latency_ms"]
    return rows


def print_profile(engine: str, mod, example, target, args, **compile_options) -> None:
    """The `args.profile` slowest functions of one engine's build (`tvm_lut.profile`): where its time goes."""
    from tvm_lut.profile import profile_model

    profile, _ = profile_model(mod, [t.numpy() for t in example], target=target, repeat=args.repeat,
                               **compile_options)
    print(f"  {engine}, by function:\n{profile.table(args.profile)}", flush=True)


def _model_name(text: str) -> str:
    name = ALIASES.get(text, text)
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}: the models are {', '.join(MODELS)} (or "
                                         f"{', '.join(f'{alias} for {name}' for alias, name in ALIASES.items())})")
    return name


def _model_path(text: str) -> tuple[str, Path]:
    model, sep, path = text.partition("=")
    model = {"minilm-l6": "minilm", "fashion-cnn": "cnn"}.get(model, model)
    if not sep or model not in ("minilm", "cnn") or not path:
        raise argparse.ArgumentTypeError(f"expected minilm=PATH or cnn=PATH (or minilm-l6=, fashion-cnn=), "
                                         f"got {text!r}")
    return model, Path(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", nargs="+", type=_model_name, default=list(MODELS), metavar="MODEL",
                        help=f"{', '.join(MODELS)}, or the CLI's names {', '.join(ALIASES)} (default: all)")
    parser.add_argument("--threads", type=int,
                        help="threads for every engine (default: the cores this process may use)")
    parser.add_argument("--database", "--db", help="tuning database of `tvm-lut tune` (adds the 'tvm tuned' rows)")
    parser.add_argument("--bundle", action="append", default=[], metavar="MODEL=PATH", type=_model_path,
                        help="`tvm-lut learn` artifact directory (OUT_DIR), or a PQ bundle file, for minilm or cnn "
                        "(adds the 'tvm nn-lut + pq' rows)")
    parser.add_argument("--pq-weights", action="append", default=[], metavar="MODEL=PATH", type=_model_path,
                        help="weights a bundle file was learned with (<bundle>.model.safetensors; NN-LUT + PQ engine "
                        "only; an artifact directory holds its own)")
    parser.add_argument("--cnn-weights", type=Path, help="FP32 CNN weights (the CNN a bundle was learned from)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also print the N slowest functions of "
                        "the 'tvm rules' and 'tvm nn-lut + pq' builds, with their rules and GFLOPS (tvm-lut profile)")
    parser.add_argument("--train-texts", type=int, default=1000, help="tweets for the MiniLM head (1000)")
    parser.add_argument("--eval-texts", type=int, default=500, help="held-out tweets scored (500; 0: no accuracy)")
    parser.add_argument("--eval-images", type=int, default=2000, help="Fashion-MNIST test images scored (2000)")
    args = parser.parse_args(argv)
    args.bundle, args.pq_weights = dict(args.bundle), dict(args.pq_weights)
    if set(args.pq_weights) - set(args.bundle):
        parser.error(f"--pq-weights for {', '.join(sorted(set(args.pq_weights) - set(args.bundle)))} needs --bundle")
    for family, path in args.bundle.items():
        if path.is_dir() and family in args.pq_weights:
            parser.error(f"--bundle {family}={path} is an artifact directory, which holds its weights; "
                         f"--pq-weights {family}= does not apply")
        if not path.exists():
            parser.error(f"--bundle {family}={path}: no such file or directory")

    from schedules import host_target

    rows = [row for name in args.models for row in measure(name, args)]
    print(f"target {host_target(args.threads)}; median of {args.repeat}; vs_ort_fp32 > 1 means faster than ONNX Runtime "
          f"fp32; cpu_wait: this process's threads waiting for a CPU other processes held (median; 0 on a quiet "
          f"machine); threads_ran: the most threads of the process that ran during one of the engine's "
          f"repetitions; cores: the CPUs its threads kept busy (median); stolen: CPUs the hypervisor took (median); "
          f"fork_join_us: TVM's pool starting and joining after each repetition (median; ~2x on two dies); "
          f"load average {load_average()}")
    print(format_table(rows, ["model", "engine", "latency_ms", "vs_ort_fp32", "accuracy", "size_mb", "cpu_wait",
                              "threads_ran", "cores", "stolen", "fork_join_us"]))
    write_json(args.json and Path(args.json), {"target": str(host_target(args.threads)), "load_average": load_average(),
                                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
