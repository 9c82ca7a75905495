"""``python -m tfgated demo``: a one-minute tour of gating with a shipped gated ResNet on real Fashion-MNIST.

``python -m tfgated demo [--preset NAME] [--epochs E --examples N]`` loads the zoo's
layer-gated ResNet with its shipped weights (trained to close about half of its residual
blocks), then measures on held-out Fashion-MNIST test images (Debian's
``dataset-fashion-mnist``) the same network twice: with every gate open (the dense
network) and under threshold inference (a block runs only where its gate opens). It prints
every gate's activation rate, the MACs the closed gates save and the accuracy kept.
``--epochs E`` first fine-tunes the shipped weights for E epochs on N training images
(batch-norm statistics re-estimated afterwards).
"""

from __future__ import annotations

import argparse
import time

from tfgated.cli.common import add_debug_flag, positive_int, run_command

__all__ = ["DEFAULT_PRESET", "PROBE_EXAMPLES", "build_parser", "main", "measure_demo", "run_demo", "train_demo"]

DEFAULT_PRESET = "gumbel_resnet_fashion_mnist"
#: Held-out test images the demo measures on.
PROBE_EXAMPLES = 1000


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tfgated demo", description=__doc__.splitlines()[0][4:])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="zoo preset with shipped weights (default: %(default)s)")
    parser.add_argument("--epochs", type=_non_negative_int, default=0,
                        help="fine-tuning epochs before measuring (default: %(default)s, the shipped weights as they are)")
    parser.add_argument("--examples", type=positive_int, default=4000,
                        help="training images for --epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    return add_debug_flag(parser)


def _arrays(dataset):
    import numpy as np

    xs, ys = zip(*((np.asarray(x), np.asarray(y)) for x, y in dataset))
    return np.concatenate(xs), np.concatenate(ys).reshape(-1)


def train_demo(preset, train, epochs=1, verbose=1):
    """Load ``preset`` from the zoo (shipped weights); with ``epochs`` > 0 fit it on the dataset
    ``train`` and re-estimate its batch-norm statistics under threshold inference; return
    ``(model, seconds)``."""
    from tfgated.train import recalibrate_batch_norm
    from tfgated.zoo import load

    model = load(preset, weights="default")  # the shipped weights; --epochs fine-tunes them
    start = time.time()
    if epochs > 0:
        model.fit(train, epochs=epochs, verbose=verbose)
        # After a few hundred steps the batch-norm moving statistics still lag the
        # weights: re-estimate them on training images under threshold inference.
        recalibrate_batch_norm(model, train, style="threshold", batches=20)
    return model, time.time() - start


def _measure_style(model, x, y, style):
    import numpy as np

    from tfgated import complexity
    from tfgated.inference import gate_rates, set_inference_style

    set_inference_style(model, style)
    metrics = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    rates = gate_rates(model, x)
    return float(metrics["accuracy"]), {name: float(np.mean(r)) for name, r in rates.items()}, \
        float(complexity.expected_macs(model, rates=rates).expected), rates


def measure_demo(model, x, y):
    """Accuracy, gate activation rates and dense / expected MACs of ``model`` on ``(x, y)`` under
    threshold inference, and the accuracy of the same network with every gate open."""
    import numpy as np

    from tfgated import complexity

    dense_accuracy, _, _, _ = _measure_style(model, x, y, "always_on")
    accuracy, gate_rates, expected, rates = _measure_style(model, x, y, "threshold")
    return {
        "accuracy": accuracy,
        "dense_accuracy": dense_accuracy,
        "gate_rates": gate_rates,
        "closed_gates": sorted(name for name, rate in gate_rates.items() if rate < 0.5),
        "mean_activation": float(np.mean(np.concatenate([np.ravel(r) for r in rates.values()]))),
        "dense_macs": float(complexity.count(model).macs),
        "expected_macs": expected,
    }


def run_demo(preset=DEFAULT_PRESET, examples=4000, epochs=0, batch_size=64, verbose=1):
    """Load ``preset`` with its shipped weights (fine-tuned ``epochs`` on the first ``examples``
    Fashion-MNIST training images when ``epochs`` > 0); return a dict of what was measured on the
    first :data:`PROBE_EXAMPLES` test images (raw pixels: a zoo model normalizes inside its graph)."""
    from tfgated.data import load_dataset

    if examples < 1 or epochs < 0:
        raise ValueError(f"Expected examples >= 1 and epochs >= 0. Received: examples={examples}, epochs={epochs}")
    start = time.time()
    x_probe, y_probe = _arrays(load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0,
                                            limit=PROBE_EXAMPLES, pixels="raw").test)
    train = None
    if epochs > 0:
        train = load_dataset("fashion_mnist", batch_size=batch_size, limit=examples, validation_split=0.0,
                             pixels="raw").train
    model, seconds = train_demo(preset, train, epochs=epochs, verbose=verbose)
    result = {
        "preset": preset,
        "epochs": int(epochs),
        "train_examples": int(examples) if epochs else 0,
        "train_seconds": seconds,
        "probe_examples": int(len(x_probe)),
        **measure_demo(model, x_probe, y_probe),
    }
    result["seconds"] = time.time() - start
    return result


def _print_result(result):
    probe = f"{result['probe_examples']:,} test images"
    if result["epochs"]:
        print(f"\n{result['preset']}: shipped weights fine-tuned {result['epochs']} epoch(s) on "
              f"{result['train_examples']} Fashion-MNIST images, {result['train_seconds']:.0f} s of training")
    else:
        print(f"\n{result['preset']}: shipped weights, measured on {probe}")
    print(f"gate activation rates (threshold inference, {probe}; a gate below 0.5 mostly skips its block):")
    for name, rate in result["gate_rates"].items():
        print(f"  {name:<28} {rate:6.3f}{'   closed' if rate < 0.5 else ''}")
    print(f"mean activation: {result['mean_activation']:.3f}; {len(result['closed_gates'])} of "
          f"{len(result['gate_rates'])} gates closed")
    share = result["expected_macs"] / result["dense_macs"]
    print(f"MACs per example: dense {result['dense_macs'] / 1e6:.2f} M, "
          f"expected under the gates {result['expected_macs'] / 1e6:.2f} M ({share:.1%}; {1 - share:.1%} saved)")
    print(f"accuracy on {probe}: every gate open {result['dense_accuracy']:.4f}, "
          f"threshold inference {result['accuracy']:.4f} ({result['accuracy'] - result['dense_accuracy']:+.4f})")
    print(f"demo took {result['seconds']:.0f} s")


def main(argv=None):
    """``python -m tfgated demo ...``; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)

    def demo():
        _print_result(run_demo(args.preset, args.examples, args.epochs, args.batch_size))
        return 0

    return run_command(demo, debug=args.debug)
