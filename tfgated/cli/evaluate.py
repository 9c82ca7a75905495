"""``python -m tfgated evaluate``: a model or zoo preset under a gate inference style.

Reports top-1/top-5 accuracy, mean gate activation and measured MACs (from the gate values
actually taken on the data; :func:`tfgated.train.evaluate_model`); for
``stochastic``/``ensemble`` the mean and standard deviation over ``--runs`` repetitions.
``--bn-recalibrate`` first re-estimates the batch-norm moving statistics with the gates in
that style (:func:`tfgated.train.recalibrate_batch_norm`); ``--save`` keeps the model so
evaluated as a ``.keras`` file. A run folder is evaluated on the data settings its run
trained with (its ``config.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfgated.cli.common import add_debug_flag, add_style_argument, positive_int, run_command
from tfgated.inference import ENSEMBLES, STYLES

__all__ = ["build_parser", "main"]


def build_parser():
    """The arguments of ``python -m tfgated evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m tfgated evaluate", description="Evaluate a model under a gate inference style."
    )
    p.add_argument("--model", required=True, help="a .keras file, a run folder, or a zoo preset name")
    p.add_argument("--weights", default="default",
                   help="for a preset: 'default' (its shipped weights; refused when it has none), "
                        "'none' (a fresh, random model) or a weights file")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_style_argument(p, STYLES, default="threshold", help="inference style of the gates (default: threshold)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--samples", type=positive_int, default=5, help="passes of the ensemble style")
    p.add_argument("--ensemble", choices=ENSEMBLES, default="vote",
                   help="how the ensemble style combines its passes: vote (majority of their top-1, the "
                        "paper's; default) or mean (their mean softmax)")
    p.add_argument("--runs", type=positive_int, default=5, help="repetitions of stochastic/ensemble")
    p.add_argument("--bn-recalibrate", action="store_true", help="re-estimate BN statistics under --style first")
    p.add_argument("--recalibrate-batches", type=positive_int, default=20)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="save the evaluated model as a .keras file (with --bn-recalibrate: its new statistics)")
    p.add_argument("--seed", type=int, default=42,
                   help="seeds the gate noise of stochastic/ensemble: the same seed gives the same numbers")
    return add_debug_flag(p)


def _model_and_splits(args):
    """``(model, dataset name, splits)``: a model file (with its run's data settings when
    ``--model`` is a run folder) or a preset (built for the dataset's shape and classes)."""
    from tfgated import zoo
    from tfgated.cli.train import is_model_path
    from tfgated.data import load_dataset
    from tfgated.io import load_model
    from tfgated.train import check_dataset, run_config
    from tfgated.zoo.inputs import model_pixels

    config, model = {}, None
    if is_model_path(args.model):
        if os.path.isdir(args.model):
            config = run_config(args.model)  # evaluate with the data settings the run trained with
        model = load_model(args.model)
        dataset = args.dataset or config.get("dataset") or "fashion_mnist"
        pixels = model_pixels(model)
    else:
        preset = zoo.get_preset(args.model)
        dataset = args.dataset or preset.get("dataset") or "fashion_mnist"
        pixels = "raw" if preset.get("input") else "normalized"
    check_dataset(dataset)
    splits = load_dataset(
        dataset,
        data_dir=args.data_dir or config.get("data_dir"),
        batch_size=args.batch_size,
        limit=args.limit if args.limit is not None else config.get("limit"),
        validation_split=config.get("validation_split", 0.1),
        seed=config.get("seed", 42),
        shuffle_buffer=0,
        pixels=pixels,
    )
    if model is None:
        weights = None if args.weights == "none" else args.weights
        if weights is None:
            print(f"note: evaluating {args.model!r} with fresh, random weights (--weights none)", file=sys.stderr)
        model = zoo.load(
            args.model, weights=weights, compile=False,
            input_shape=splits.info.input_shape, num_classes=splits.info.num_classes,
        )
    return model, dataset, splits


def _evaluate(args):
    import keras

    from tfgated.inference import gate_layers, reset_gate_noise
    from tfgated.io import json_default, save_model, write_json
    from tfgated.train import evaluate_model, recalibrate_batch_norm

    if args.save and not args.save.endswith(".keras"):
        raise ValueError(f"Expected --save to name a .keras file. Received: {args.save!r}")
    keras.utils.set_random_seed(args.seed)
    model, dataset, splits = _model_and_splits(args)
    if gate_layers(model):
        reset_gate_noise(model, args.seed)  # stochastic/ensemble: reproducible across processes
    data = splits.test if args.split == "test" else splits.validation
    if data is None:
        raise ValueError("No validation split for this data configuration; use --split test.")
    recalibrated = 0
    if args.bn_recalibrate:
        recalibrated = recalibrate_batch_norm(
            model, splits.train, style=args.style if gate_layers(model) else None,
            batches=args.recalibrate_batches, samples=args.samples,
        )
    result = evaluate_model(model, data, style=args.style, runs=args.runs, samples=args.samples, threshold=args.threshold,
                            ensemble=args.ensemble)
    result.update({"model": args.model, "dataset": dataset, "split": args.split, "bn_recalibrated_batches": recalibrated})
    print(json.dumps(result, indent=2, sort_keys=True, default=json_default))
    if args.json:
        write_json(args.json, result, sort_keys=True, default=json_default)
    if args.save:
        save_model(model, args.save)
        print(f"Saved the evaluated model to {args.save}", file=sys.stderr, flush=True)
    return 0


def main(argv=None):
    """Entry point of ``python -m tfgated evaluate``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _evaluate(args), debug=args.debug)
