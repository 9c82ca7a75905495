"""Batch norm after short training: a gated ResNet fitted with plain ``model.fit`` on few steps.

The zoo's gated ResNet (``gumbel_resnet_fashion_mnist``, fresh weights, compiled by
``zoo.load`` with its recipe's schedule over the run) is fitted on the first 1,400
real Fashion-MNIST training images at batch 64 (22 steps per epoch). Measured: the
training accuracy ``fit`` reports in its last epoch, then top-1 under threshold
inference on the training images and on the first 1,400 test images, before and after
``tfgated.recalibrate_batch_norm`` (22 training batches, gates thresholded).

    python benchmarks/bn_recalibration.py [--epochs 10] [--seeds 0 1]

Writes ``benchmarks/results/bn_recalibration.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run(preset, examples, batch_size, epochs, seed):
    """One seed: accuracies before and after recalibration."""
    import keras

    import tfgated
    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.recipes import steps_per_epoch

    keras.utils.set_random_seed(seed)
    splits = load_dataset("fashion_mnist", batch_size=batch_size, limit=examples, validation_split=0.0, seed=seed)
    steps = steps_per_epoch(splits.train)
    model = zoo.load(preset, weights=None, epochs=epochs, steps_per_epoch=steps)
    start = time.time()
    history = model.fit(splits.train, epochs=epochs, verbose=0)
    seconds = time.time() - start
    tfgated.set_inference_style(model, "threshold")

    def top1(dataset):
        return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])

    before = {"train": top1(splits.train), "test": top1(splits.test)}
    used = tfgated.recalibrate_batch_norm(model, splits.train, style="threshold", batches=steps)
    after = {"train": top1(splits.train), "test": top1(splits.test)}
    row = {
        "seed": seed,
        "steps_per_epoch": steps,
        "fit_seconds": seconds,
        "train_accuracy_during_fit": float(history.history["accuracy"][-1]),
        "threshold_top1_before": before,
        "recalibration_batches": used,
        "threshold_top1_after": after,
    }
    print(row, flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gumbel_resnet_fashion_mnist")
    parser.add_argument("--examples", type=int, default=1400, help="training (and test) images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default=os.path.join(RESULTS, "bn_recalibration.json"))
    args = parser.parse_args(argv)

    from tfgated.io import machine_info, write_json

    rows = [run(args.preset, args.examples, args.batch_size, args.epochs, seed) for seed in args.seeds]
    result = {
        "what": ("gated model fitted with plain model.fit on few steps: top-1 under threshold inference "
                 "before and after tfgated.recalibrate_batch_norm"),
        "preset": args.preset,
        "examples": args.examples,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "runs": rows,
        "machine": machine_info(),
    }
    write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
