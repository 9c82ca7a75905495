"""Train the small gated ResNet preset on Fashion-MNIST within a CPU time budget.

Goal (threshold inference, test split): top-1 accuracy >= 0.92 with mean gate
activation <= 0.6, trained within 45 minutes on 2 CPU cores.

    python benchmarks/train_fashion_mnist.py                 # full run
    python benchmarks/train_fashion_mnist.py --epochs 12 --budget-min 45
    python benchmarks/train_fashion_mnist.py --quick         # smoke run: 600 images, 1 epoch
    python benchmarks/train_fashion_mnist.py --model resnet_fashion_mnist --name train_fashion_mnist_dense

It uses ``tfgated.cli.train.train`` (the ``python -m tfgated train`` machinery): a
run folder under ``runs/`` with per-epoch BackupAndRestore, so a killed run
resumes where it stopped. A time-budget callback stops training when the next
epoch would end past ``--budget-min`` (the elapsed time of earlier, killed
attempts is not counted). After training the model is also evaluated
``always_on`` and ``ensemble`` (5 runs) for context.

Writes ``benchmarks/results/train_fashion_mnist.json`` and PNG plots
(``--quick``: under ``runs/train_fashion_mnist_quick/`` only, so a smoke run
never overwrites real results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")
PRESET = "gumbel_resnet_fashion_mnist"
GOAL_ACCURACY = 0.92
GOAL_ACTIVATION = 0.6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=PRESET, help="zoo preset (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset recipe's")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--budget-min", type=float, default=45.0, help="training time budget in minutes")
    p.add_argument("--anneal-target", nargs=3, type=float, metavar=("START", "END", "EPOCHS"), default=None)
    p.add_argument("--set", action="append", default=[], metavar="SWITCH=VALUE", help="recipe switch override")
    p.add_argument(
        "--gate", action="append", default=[], metavar="SETTING=VALUE",
        help="gate setting override of a gated preset, e.g. --gate weight=10 --gate open_probability=0.9",
    )
    p.add_argument(
        "--init-from", default=None, metavar="MODEL",
        help="warm start from a .keras file or a zoo preset's shipped weights (same-named layers)",
    )
    p.add_argument("--run-dir", default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 600 images, 1 epoch")
    p.add_argument("--verbose", default="auto")
    p.add_argument(
        "--name", default="train_fashion_mnist",
        help="stem of the result files under benchmarks/results/ and of the run folder (default: %(default)s)",
    )
    args = p.parse_args(argv)

    import keras

    from tfgated.data import load_dataset
    from tfgated.io import machine_info, write_json
    from tfgated.cli.common import parse_key_values
    from tfgated.cli.train import TrainOptions, parse_sets, train
    from tfgated.io import load_model
    from tfgated.train import evaluate_model

    overrides = parse_sets(args.set)
    gate_overrides = parse_key_values(args.gate, "--gate") or None
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    limit = None
    if args.quick:
        overrides.setdefault("epochs", 1)
        overrides.setdefault("batch_size", 64)
        limit = 600
    run_dir = args.run_dir or os.path.join(RUNS, f"{args.name}_quick" if args.quick else args.name)
    out_dir = run_dir if args.quick else RESULTS
    os.makedirs(out_dir, exist_ok=True)

    budget_s = args.budget_min * 60.0

    class TimeBudget(keras.callbacks.Callback):
        """Stop when the next epoch would end past the budget."""

        def on_train_begin(self, logs=None):
            self.start = time.time()
            self.stopped_at = None

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.time() - self.start
            per_epoch = elapsed / (epoch + 1 - getattr(self, "first_epoch", 0))
            if elapsed + per_epoch > budget_s:
                self.stopped_at = epoch + 1
                self.model.stop_training = True
                print(f"Time budget: stopping after epoch {epoch + 1} ({elapsed / 60:.1f} min).", flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            if not hasattr(self, "first_epoch"):
                self.first_epoch = epoch

    budget = TimeBudget()
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    start = time.time()
    options = TrainOptions(limit=limit, overrides=overrides, anneal=args.anneal_target, verbose=verbose,
                           gates=gate_overrides, init_from=args.init_from)
    metrics = train(args.model, run_dir, options, callbacks=[budget])
    wall = time.time() - start

    model = load_model(run_dir)
    test = load_dataset("fashion_mnist", batch_size=256, limit=limit, shuffle_buffer=0, pixels="raw").test
    extra = {
        "always_on": evaluate_model(model, test, style="always_on", runs=1),
        "ensemble": evaluate_model(model, test, style="ensemble", runs=1 if args.quick else 5, samples=5),
    }
    threshold = metrics["test"]
    # The goal is the gated ResNet's (any of its gate settings); a dense baseline or another
    # family (the DenseNet with exits, SIPA) has none here.
    has_goal = threshold.get("gate_activation") is not None and args.model.startswith(PRESET)
    result = {
        "benchmark": "train_fashion_mnist",
        "model": args.model,
        "quick": args.quick,
        "recipe": metrics["recipe"],
        "anneal_target": args.anneal_target,
        "gate_overrides": gate_overrides,
        "init_from": args.init_from,
        "threshold": threshold,
        "always_on": extra["always_on"],
        "ensemble": extra["ensemble"],
        "train_seconds": metrics.get("train_seconds"),
        "wall_seconds_this_invocation": wall,
        "stopped_by_budget_after_epoch": getattr(budget, "stopped_at", None),
        "budget_minutes": args.budget_min,
        "goal": None if not has_goal else {
            "accuracy": GOAL_ACCURACY,
            "max_activation": GOAL_ACTIVATION,
            "minutes": args.budget_min,
            "met": bool(
                threshold["top1"] >= GOAL_ACCURACY
                and threshold.get("gate_activation", 1.0) <= GOAL_ACTIVATION
                and (metrics.get("train_seconds") or 0) <= budget_s
            ),
        },
        "machine": machine_info(),
        "run_dir": os.path.relpath(run_dir, os.path.dirname(HERE)),
    }

    path = os.path.join(out_dir, f"{args.name}.json")
    write_json(path, result, sort_keys=True)
    for name in ("history.png", "gate_rates.png", "polarization.png"):
        src = os.path.join(run_dir, name)
        if os.path.exists(src) and os.path.abspath(out_dir) != os.path.abspath(run_dir):
            shutil.copyfile(src, os.path.join(out_dir, f"{args.name}_{name}"))
    print(json.dumps({"threshold": threshold, "goal": result["goal"]}, indent=2))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
