"""`tvm-lut tune`: tune a model's functions for a CPU into a database that later compiles read.

    tvm-lut tune minilm-l6 --db tuning/ --trials 64          # the built-in MiniLM-L6 (batch 8 x 64 tokens)
    tvm-lut tune minilm-l6 --db tuning/ --target aarch64 --rpc-tracker 127.0.0.1:9190 --rpc-key pi4
    tvm-lut tune fashion-cnn --batch 1 --db tuning/          # the Fashion-MNIST CNN (batch x 1 x 28 x 28)
    tvm-lut tune model.onnx --db tuning/ --trials 32 --nonlinear

Interrupt it at any time: every measured trial is already in the database, and running the same command again
continues with what each function still lacks. `import_model` is shared with `tvm-lut compile`.
"""

import argparse

BUILTIN_MODELS = ("minilm-l6", "fashion-cnn")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=f"an ONNX file, or a built-in model: {', '.join(BUILTIN_MODELS)}")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the built-in model (8)")
    parser.add_argument("--length", type=int, default=64, help="sequence length of the built-in model (64)")
    parser.add_argument("--bundle", help="a LUT bundle (.safetensors): compile with its tables")
    parser.add_argument("--nonlinear", action="store_true", help="NN-LUT with the shipped tables (no bundle)")
    parser.add_argument("--threads", type=int, help="threads of the target (default: the cores this process may use)")
    parser.add_argument("--no-winograd", dest="winograd", action="store_false",
                        help="keep 3x3 convs direct (default: Winograd F(2x2, 3x3) kernels, relay_passes.WinogradConv2d)")


def import_model(spec: str, batch: int = 8, length: int = 64):
    """A Relax module for a built-in model name or an ONNX path (static shapes; `length` only for MiniLM).

    The functions to tune depend on shapes, not on weights: the CNN's are those of any trained `FashionCNN`.
    """
    from tvm_lut.frontend import from_onnx, from_torch

    if spec in BUILTIN_MODELS:
        import torch

        if spec == "fashion-cnn":
            from tvm_lut.models.cnn import FashionCNN

            return from_torch(FashionCNN().eval(), (torch.zeros((batch, 1, 28, 28)),))
        from tvm_lut.models.minilm import load_minilm

        ids = torch.zeros((batch, length), dtype=torch.int64)
        return from_torch(load_minilm(), (ids, torch.ones_like(ids)))
    if not spec.endswith(".onnx"):
        raise SystemExit(f"unknown model {spec!r}: give an .onnx file or one of {', '.join(BUILTIN_MODELS)}")
    return from_onnx(spec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut.target_args import add_target_arguments

    add_model_arguments(parser)
    add_target_arguments(parser, rpc=True)
    parser.add_argument("--db", required=True, help="tuning database directory (created; one folder per target)")
    parser.add_argument("--trials", type=int, default=64, help="measured trials per function, including the "
                        "rules' own schedule (64)")
    parser.add_argument("--trials-per-iter", type=int, default=16, help="candidates measured per search round (16)")


def run(args) -> int:
    from relay_passes.pipeline import prepare
    from schedules.tuning import tune
    from tvm_lut.bundle import Bundle
    from tvm_lut.target_args import resolve_target, resolve_tracker

    target = resolve_target(args)
    tracker = resolve_tracker(args, target)
    bundle = Bundle.load(args.bundle) if args.bundle else None
    mod = prepare(import_model(args.model, args.batch, args.length), target, bundle=bundle, nonlinear=args.nonlinear,
                  winograd=args.winograd)
    try:
        results = tune(mod, target, args.db, trials_per_task=args.trials, num_trials_per_iter=args.trials_per_iter,
                       tracker=tracker)
    except ValueError as err:
        raise SystemExit(f"tvm-lut tune: {err}") from None
    for result in results:
        gain = f"{result.rule_ms / result.best_ms:.2f}x vs rules" if result.rule_ms and result.best_ms else ""
        best = f"{result.best_ms:.3f} ms" if result.best_ms is not None else "no valid record"
        print(f"{result.name:60s} {result.trials:4d} trials  best {best}  {gain}")
    return 0
