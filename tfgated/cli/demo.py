"""``python -m tfgated demo``: a two-minute tour, a gated ResNet trains one epoch on real Fashion-MNIST.

``python -m tfgated demo [--examples N] [--epochs E] [--preset NAME]`` builds the
zoo's small layer-gated ResNet, trains it on a few thousand real Fashion-MNIST
images (Debian's ``dataset-fashion-mnist``), re-estimates the batch-norm
statistics, then prints the accuracy, every gate's activation rate on held-out
images and the expected MACs the gates leave.
"""

from __future__ import annotations

import argparse
import time

from tfgated.cli.common import positive_int, run_command

__all__ = ["DEFAULT_PRESET", "PROBE_EXAMPLES", "build_parser", "main", "measure_demo", "run_demo", "train_demo"]

DEFAULT_PRESET = "gumbel_resnet_fashion_mnist"
#: Held-out test images the demo measures on.
PROBE_EXAMPLES = 1000


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tfgated demo", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="zoo preset to train (default: %(default)s)")
    parser.add_argument("--examples", type=positive_int, default=4000, help="training images (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=1, help="epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default: %(default)s)")
    return parser


def train_demo(preset, x_train, y_train, epochs=1, batch_size=64, verbose=1):
    """Load ``preset`` from the zoo, fit it on ``(x_train, y_train)``, re-estimate its batch-norm
    statistics under threshold inference; return ``(model, seconds)``."""
    import tensorflow as tf

    from tfgated.train import recalibrate_batch_norm
    from tfgated.zoo import load

    model = load(preset, weights=None)  # trained here from scratch
    start = time.time()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    # After a few hundred steps the batch-norm moving statistics still lag the
    # weights: re-estimate them on training images under threshold inference.
    batches = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(256)
    recalibrate_batch_norm(model, batches, style="threshold", batches=len(x_train) // 256 or 1)
    return model, time.time() - start


def measure_demo(model, x, y):
    """Accuracy, gate activation rates and dense / expected MACs of ``model`` on ``(x, y)``."""
    import numpy as np

    from tfgated import complexity
    from tfgated.inference import gate_rates

    metrics = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    rates = gate_rates(model, x)
    report = complexity.count(model)
    expected = complexity.expected_macs(model, rates=rates)
    return {
        "accuracy": float(metrics["accuracy"]),
        "gate_rates": {name: float(np.mean(r)) for name, r in rates.items()},
        "mean_activation": float(np.mean(np.concatenate([np.ravel(r) for r in rates.values()]))),
        "dense_macs": float(report.macs),
        "expected_macs": float(expected.expected),
    }


def run_demo(preset=DEFAULT_PRESET, examples=4000, epochs=1, batch_size=64, verbose=1):
    """Train ``preset`` briefly on the first ``examples`` Fashion-MNIST training images; return a dict of
    what was measured on the first :data:`PROBE_EXAMPLES` test images."""
    from tfgated.data import load_fashion_mnist_arrays

    if examples < 1 or epochs < 1:
        raise ValueError(f"Expected examples >= 1 and epochs >= 1. Received: examples={examples}, epochs={epochs}")
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays()
    x_train = x_train[:examples].astype("float32") / 255.0
    y_train = y_train[:examples]
    x_probe = x_test[:PROBE_EXAMPLES].astype("float32") / 255.0
    y_probe = y_test[:PROBE_EXAMPLES]
    model, seconds = train_demo(preset, x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    return {
        "preset": preset,
        "train_examples": int(len(x_train)),
        "train_seconds": seconds,
        "probe_examples": int(len(x_probe)),
        **measure_demo(model, x_probe, y_probe),
    }


def _print_result(result):
    probe = f"{result['probe_examples']:,} test images"
    print(f"\n{result['preset']}: {result['train_examples']} Fashion-MNIST images, "
          f"{result['train_seconds']:.0f} s of training")
    print(f"accuracy on {probe} (threshold inference): {result['accuracy']:.4f}")
    print(f"gate activation rates (threshold inference, {probe}):")
    for name, rate in result["gate_rates"].items():
        print(f"  {name:<28} {rate:6.3f}")
    print(f"mean activation: {result['mean_activation']:.3f}")
    share = result["expected_macs"] / result["dense_macs"]
    print(f"MACs per example: dense {result['dense_macs'] / 1e6:.2f} M, "
          f"expected under the gates {result['expected_macs'] / 1e6:.2f} M ({share:.1%})")


def main(argv=None):
    """``python -m tfgated demo ...``; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)

    def demo():
        _print_result(run_demo(args.preset, args.examples, args.epochs, args.batch_size))
        return 0

    return run_command(demo)
