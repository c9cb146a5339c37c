"""`tvm-lut autotune`: choose exact or PQ (K, V) per layer of a built-in model under an accuracy budget, from
latencies measured on this CPU, and write the learned result to an output directory.

    tvm-lut autotune fashion-cnn --max-drop 1.0 -o cnn_auto/            # points of test accuracy
    tvm-lut autotune fashion-cnn --max-drop 1.0 --quick -o cnn_auto/    # CI-sized: small data, few choices
    tvm-lut autotune minilm-l6 --max-drop 1.0 --db tuning/ -o minilm_auto/
    tvm-lut compile cnn_auto/ -o cnn.so --json report.json              # build the plan

The metric is the held-out accuracy in percent (Fashion-MNIST test images; held-out tweets for MiniLM-L6 with the
task's logistic head), so `--max-drop 1.0` is one point. Interrupted, the same command continues from what
OUT_DIR holds. `OUT_DIR/plan.json` is the plan, `report.txt` the table of every plan tried, `plans.png` the plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

MODELS = ("fashion-cnn", "minilm-l6")
# --quick: CI-sized data and search space (one K, the two V LUT-NN uses), one learning epoch, two trials.
QUICK = {"fashion-cnn": {"train_images": 2000, "calib_size": 256, "learn_size": 512, "test_size": 500},
         "minilm-l6": {"head_size": 300, "calib_size": 32, "learn_size": 64, "test_size": 64}}
QUICK_SPACE = {"K": (16,), "V": (4, 9), "max_trials": 2}
# The sensitivity proxy per model when no --config names one. The CNN's task loss ranks the single-layer drops best
# (Spearman 0.98 against 0.86 for the output error, 55 choices); MiniLM's costs a forward of the calibration set
# per choice (370 choices: 20-40 min on the shared 2-core machine even from each layer onward), so it reads the
# Fisher-weighted output error (one backward pass), which ranks its choices like the task loss (see README).
TASK_PROXY = {"fashion-cnn": "task_loss", "minilm-l6": "fisher"}
# Where the trials start (`AutotuneConfig.start`) when no --config names it. On the CNN learning recovers little of a
# k-means drop, so the k-means-calibrated plan is the right first trial (tutorial 04). On MiniLM it recovers almost
# all: the fastest k-means plan dropped 42.6 points, the calibrated first trial (19 PQ layers, mostly K=16 V=2) ran
# 76-78 ms against 19-21 ms for uniform K=16 V=16, which keeps the budget once learned (85.3 -> 85.1 %); so MiniLM
# starts from the fastest plan and repairs by measurement.
TASK_START = {"fashion-cnn": "calibrated", "minilm-l6": "fastest"}
FULL = {"fashion-cnn": {"train_images": 60000, "calib_size": 2048, "learn_size": 10000, "test_size": 10000},
        "minilm-l6": {"head_size": 1500, "calib_size": 256, "learn_size": 8192, "test_size": 1000}}
# MiniLM-L6 trials learn on 8,192 tweets for 2 epochs (MINILM_PQ's). Fast plans need it: the fastest plan of the
# latency table scored 78.1 % after 1 epoch on 4,096 tweets and 82.9 % after 2 (exact 85.3 %), uniform K=16 V=16
# 80.6 % after 1 epoch; on 8,192 tweets for 2 epochs uniform K=16 V=32 scored 88.0 % (1,319 s, both cores at
# nice 15 beside other jobs). A step costs 0.76 s with torch on both cores against 1.63 s on one (machine alone), and
# the teacher's outputs are kept after the first epoch (`TeacherTargets`): so the data is doubled. See README.
MINILM_TRIAL_EPOCHS = 2


@dataclasses.dataclass
class TaskSetup:
    """Everything `tvm_lut.autotune` needs for a built-in model; `eval_fn` is accuracy in percent."""

    model: object
    calib: list
    learn: list
    test: list
    example_inputs: tuple
    learning: object  # PQConfig

    def eval_fn(self, model) -> float:
        from tvm_lut.pq.tasks import accuracy

        return 100.0 * accuracy(model, self.test)


def task_setup(name: str, quick: bool = False, batch: int | None = None, length: int = 64, weights=None,
               epochs: int | None = None, progress: bool = True, train_epochs: int | None = None,
               **sizes) -> TaskSetup:
    """The model, data and learning settings of a built-in model (`MODELS`); `sizes` override the defaults.
    fashion-cnn without `weights` is trained here for `train_epochs` (default 5; 1 with `quick`). `epochs`: of
    learning per trial (default: fashion-cnn 1, minilm-l6 `MINILM_TRIAL_EPOCHS`)."""
    import numpy as np
    import torch

    from tvm_lut.pq.tasks import CNN_PQ, MINILM_PQ, _image_batches, minilm_task

    sizes = {**(QUICK if quick else FULL)[name], **{k: v for k, v in sizes.items() if v is not None}}
    if name == "fashion-cnn":
        from safetensors.torch import load_file

        from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
        from tvm_lut.models.cnn import FashionCNN, train_cnn

        images, labels = load_fashion_mnist("train")
        test_images, test_labels = load_fashion_mnist("test")
        if weights is not None:
            model = FashionCNN()
            model.load_state_dict(load_file(str(weights)))
        else:
            count = sizes["train_images"]
            model = train_cnn(images[:count], labels[:count], epochs=train_epochs or (1 if quick else 5),
                              progress=progress)
        # calibration from the end of the training split, learning from its start: they never overlap
        calib_rows = slice(len(images) - sizes["calib_size"], len(images))
        example = (torch.zeros((batch or 1, 1, 28, 28)),)
        learning = dataclasses.replace(CNN_PQ, epochs=epochs or 1)
        return TaskSetup(model.eval(), _image_batches(images[calib_rows], labels[calib_rows], 256),
                         _image_batches(images[:sizes["learn_size"]], labels[:sizes["learn_size"]], 128),
                         _image_batches(test_images[:sizes["test_size"]], test_labels[:sizes["test_size"]], 1000),
                         example, learning)
    if name != "minilm-l6":
        raise SystemExit(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    task = minilm_task(progress=progress, **{k: sizes[k] for k in ("head_size", "calib_size", "learn_size",
                                                                   "test_size")})
    ids = torch.from_numpy(np.ones((batch or 8, length), np.int64))
    return TaskSetup(task.model, task.calib, task.learn, task.test, (ids, torch.ones_like(ids)),
                     dataclasses.replace(MINILM_PQ, epochs=epochs or MINILM_TRIAL_EPOCHS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut.model_spec import add_db_argument, add_output_argument, add_progress_argument, add_threads_argument
    from tvm_lut.autotuning.config import STARTS
    from tvm_lut.target_args import add_target_arguments

    parser.add_argument("model", choices=MODELS, help="the built-in model (its task brings data and a metric)")
    add_output_argument(parser, "output directory: the artifact (`tvm-lut compile OUT_DIR` builds it) with plan.json, "
                        "report.txt, plans.png; the same directory resumes an interrupted run")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="allowed accuracy drop against the exact model, in points (1.0)")
    parser.add_argument("--relative", action="store_true",
                        help="--max-drop is a fraction of the exact model's accuracy (0.01 = 1 %%)")
    parser.add_argument("--max-trials", type=int, help="plans learned and evaluated at most (4; --quick 2)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS", help="start no new trial after this")
    parser.add_argument("--start", choices=STARTS,
                        help="the first trial: the k-means-calibrated plan at the budget, or the fastest plan, "
                        "repaired by measurement (fashion-cnn calibrated, minilm-l6 fastest)")
    parser.add_argument("--config", type=Path, help="an AutotuneConfig as JSON (the flags above override it)")
    parser.add_argument("--pq-config", type=Path,
                        help="how centroids are learned, a PQConfig as JSON (default: the task's measured settings)")
    parser.add_argument("--epochs", type=int, help="learning epochs per trial (fashion-cnn 1, minilm-l6 2)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: small data, K=16 and V in {4, 9}, 2 trials")
    parser.add_argument("--weights", type=Path, help="fashion-cnn: FP32 weights (safetensors) instead of training")
    for size in ("calib", "learn", "test"):
        parser.add_argument(f"--{size}-size", type=int, help=f"{size} rows (images or tweets; task default if unset)")
    parser.add_argument("--batch", type=int, help="batch the latency is measured at (fashion-cnn 1, minilm-l6 8)")
    parser.add_argument("--length", type=int, default=64, help="minilm-l6: tokens per sequence (64)")
    add_db_argument(parser, "tuning database: its records time the exact layers, and it caches the latency table "
                    "(per target)")
    parser.add_argument("--tune-trials", type=int, metavar="N",
                        help="then tune the chosen plan's functions into --db, N trials each")
    add_threads_argument(parser)
    add_target_arguments(parser, rpc=True)
    add_progress_argument(parser)


def autotune_config(args):
    """The AutotuneConfig of the command line: --config, then --quick's space, then the flags."""
    from tvm_lut.autotuning.config import AutotuneConfig

    config = (AutotuneConfig.from_json(args.config.read_text()) if args.config
              else AutotuneConfig(proxy=TASK_PROXY[args.model], start=TASK_START[args.model]))
    if args.quick:
        config = dataclasses.replace(config, **QUICK_SPACE)
    flags = {"max_drop": args.max_drop, "max_trials": args.max_trials, "time_limit_s": args.time_limit,
             "start": args.start}
    if args.relative:
        flags["drop_kind"] = "relative"
    return dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    import torch

    from tvm_lut.autotuning.driver import autotune
    from tvm_lut.autotuning.output import state_dir
    from tvm_lut.model_spec import progress_from_args, threads_from_args
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.target_args import resolve_target, resolve_tracker

    if args.tune_trials is not None and args.db is None:
        raise SystemExit("tvm-lut autotune: --tune-trials needs --db (the tuning database to write)")
    try:
        config = autotune_config(args)
    except ValueError as err:
        raise SystemExit(f"tvm-lut autotune: bad configuration: {err}") from None
    threads = threads_from_args(args)
    progress = progress_from_args(args)
    torch.set_num_threads(threads)
    target = resolve_target(args)
    tracker = resolve_tracker(args, target)
    try:
        state_dir(args.output)  # before any work: a directory the result may not go to
    except ValueError as err:
        raise SystemExit(f"tvm-lut autotune: {err}") from None
    setup = task_setup(args.model, args.quick, args.batch, args.length, args.weights, args.epochs, progress,
                       calib_size=args.calib_size, learn_size=args.learn_size, test_size=args.test_size)
    learning = PQConfig.from_json(args.pq_config.read_text()) if args.pq_config else setup.learning
    result = autotune(setup.model, setup.calib, setup.eval_fn, config, target, args.db,
                      example_inputs=setup.example_inputs, learning=learning, learn_batches=setup.learn,
                      out_dir=args.output, source=args.model, progress=progress, tracker=tracker)
    print(result.plan.table())
    print("wall time by part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if args.tune_trials is not None and result.bundle is not None:
        _tune_plan(result, setup.example_inputs, target, args.db, args.tune_trials, tracker, progress)
    print(f"wrote {args.output} (plan.json, report.txt, plans.png)")
    return 0


def _tune_plan(result, example_inputs, target, db, trials: int, tracker=None, progress: bool = True) -> None:
    """MetaSchedule tuning of the chosen plan's functions (the PQ kernels carry their own schedule)."""
    from relay_passes.pipeline import prepare
    from schedules.tuning import tune
    from tvm_lut.frontend import from_torch
    from tvm_lut.progress import progress_bar

    mod = prepare(from_torch(result.model, example_inputs), target, bundle=result.bundle)
    for task in tune(mod, target, db, trials_per_task=trials, tracker=tracker,
                     progress=functools.partial(progress_bar, progress=progress)):
        print(f"tuned {task.name}: {task.trials} trials, best {task.best_ms} ms")
