"""A two-minute tour: a gated ResNet trains one epoch on real Fashion-MNIST.

``python -m tfgated demo [--examples N] [--epochs E] [--preset NAME]`` builds the
zoo's small layer-gated ResNet, trains it on a few thousand real Fashion-MNIST
images (Debian's ``dataset-fashion-mnist``), re-estimates the batch-norm
statistics, then prints the accuracy, every gate's activation rate on held-out
images and the expected MACs the gates leave.
"""

from __future__ import annotations

import argparse
import time

DEFAULT_PRESET = "gumbel_resnet_fashion_mnist"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tfgated demo", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="zoo preset to train (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=4000, help="training images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    return parser


def run_demo(preset=DEFAULT_PRESET, examples=4000, epochs=1, batch_size=64, verbose=1):
    """Train ``preset`` briefly on Fashion-MNIST; return a dict of what was measured."""
    import numpy as np
    import tensorflow as tf

    from tfgated import complexity
    from tfgated.data import load_fashion_mnist_arrays
    from tfgated.inference import gate_rates
    from tfgated.train import recalibrate_batch_norm
    from tfgated.zoo import load

    if examples < 1 or epochs < 1:
        raise ValueError(f"Expected examples >= 1 and epochs >= 1. Received: examples={examples}, epochs={epochs}")
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays()
    x_train = x_train[:examples].astype("float32") / 255.0
    y_train = y_train[:examples]
    x_probe = x_test[:1000].astype("float32") / 255.0
    y_probe = y_test[:1000]

    model = load(preset)
    start = time.time()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    # After a few hundred steps the batch-norm moving statistics still lag the
    # weights: re-estimate them on training images under threshold inference.
    batches = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(256)
    recalibrate_batch_norm(model, batches, style="threshold", batches=len(x_train) // 256 or 1)
    seconds = time.time() - start
    metrics = model.evaluate(x_probe, y_probe, batch_size=256, verbose=0, return_dict=True)

    rates = gate_rates(model, x_probe)
    report = complexity.count(model)
    expected = complexity.expected_macs(model, rates=rates)
    return {
        "preset": preset,
        "train_examples": int(len(x_train)),
        "train_seconds": seconds,
        "accuracy": float(metrics["accuracy"]),
        "gate_rates": {name: float(np.mean(r)) for name, r in rates.items()},
        "mean_activation": float(np.mean(np.concatenate([np.ravel(r) for r in rates.values()]))),
        "dense_macs": float(report.macs),
        "expected_macs": float(expected.expected),
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = run_demo(args.preset, args.examples, args.epochs, args.batch_size)
    print(f"\n{result['preset']}: {result['train_examples']} Fashion-MNIST images, "
          f"{result['train_seconds']:.0f} s of training")
    print(f"accuracy on 1,000 test images (threshold inference): {result['accuracy']:.4f}")
    print("gate activation rates (threshold inference, 1,000 test images):")
    for name, rate in result["gate_rates"].items():
        print(f"  {name:<28} {rate:6.3f}")
    print(f"mean activation: {result['mean_activation']:.3f}")
    share = result["expected_macs"] / result["dense_macs"]
    print(f"MACs per example: dense {result['dense_macs'] / 1e6:.2f} M, "
          f"expected under the gates {result['expected_macs'] / 1e6:.2f} M ({share:.1%})")
    return 0
