"""`tvm-lut tune`: tune a model's functions for a CPU into a database that later compiles read.

    tvm-lut tune minilm-l6 --db tuning/ --trials 64          # the built-in MiniLM-L6 (batch 8 x 64 tokens)
    tvm-lut tune minilm-l6 --db tuning/ --target aarch64 --rpc-tracker 127.0.0.1:9190 --rpc-key pi4
    tvm-lut tune fashion-cnn --batch 1 --db tuning/          # the Fashion-MNIST CNN (batch x 1 x 28 x 28)
    tvm-lut tune model.onnx --input x:1x3x224x224 --db tuning/ --nonlinear
    tvm-lut tune OUT_DIR --db tuning/                        # an artifact of `tvm-lut learn`, with its tables
    tvm-lut tune model.pt2 --db tuning/ --function fused_conv2d4_add3_tir_clip2   # one function a profile points at

Interrupt it at any time: every measured trial is already in the database, and running the same command again
continues with what each function still lacks. The model options are `tvm_lut.model_spec`'s, as in every command.
"""

import argparse
import functools

from tvm_lut import model_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_spec.add_build_arguments(parser, "tuning database directory (created; one folder per target)",
                                   db_required=True, rpc=True)
    model_spec.add_progress_argument(parser)
    parser.add_argument("--trials", type=int, default=64, help="measured trials per function, including the "
                        "rules' own schedule (64)")
    parser.add_argument("--function", action="append", dest="functions", metavar="NAME",
                        help="tune only this function, as `tvm-lut profile` names it (repeat; default: all)")
    parser.add_argument("--trials-per-iter", type=int, default=16, help="candidates measured per search round (16)")


def run(args) -> int:
    from relay_passes.pipeline import prepare
    from schedules.tuning import tune
    from tvm_lut.progress import progress_bar
    from tvm_lut.target_args import resolve_tracker

    source, bundle, target = model_spec.build_from_args(args)
    tracker = resolve_tracker(args, target)
    mod = prepare(source.import_module(), target, bundle=bundle, nonlinear=args.nonlinear, winograd=args.winograd)
    try:
        results = tune(mod, target, args.db, trials_per_task=args.trials, num_trials_per_iter=args.trials_per_iter,
                       tracker=tracker, functions=args.functions, progress=functools.partial(progress_bar,
                                                                   progress=model_spec.progress_from_args(args)))
    except ValueError as err:
        raise SystemExit(f"tvm-lut tune: {err}") from None
    for result in results:
        gain = f"{result.rule_ms / result.best_ms:.2f}x vs rules" if result.rule_ms and result.best_ms else ""
        best = f"{result.best_ms:.3f} ms" if result.best_ms is not None else "no valid record"
        print(f"{result.name:60s} {result.trials:4d} trials  best {best}  {gain}")
    return 0
