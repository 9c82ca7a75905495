"""Train the exit head of the zoo preset ``sipa_fashion_mnist_exit`` on the shipped backbone.

SIPA's Accelerating step on the shipped ``sipa_fashion_mnist`` weights: the preset's network
(the same MBConv blocks, SIPA's exit head after block 4) gets the backbone's weights by layer
name, then only the exit head is trained (:func:`tfgated.exits.train_exit`: soft smoothing loss,
Adam with cosine decay, 16-bit fake quantization as the preset's recipe). The backbone is
frozen *including* its batch-norm statistics (``update_main_statistics=False``), so the main
output of the preset is exactly ``sipa_fashion_mnist``'s and every difference between the two
presets is the exit's. (The reference re-estimates the statistics while training the head;
``docs/deviations.md`` says why the preset does not.)

    python benchmarks/train_sipa_exit.py                       # 8 epochs, about 8 min on 2 cores
    python benchmarks/train_sipa_exit.py --epochs 1 --limit 2000 --output runs/exit_smoke.keras

Writes the two-output model (``[main, exit]``) to ``--output`` (atomically), ready for
``python -m tfgated.zoo.ship_weights sipa_fashion_mnist_exit runs/train_sipa_exit/model.keras``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(os.path.dirname(HERE), "runs")
PRESET, BACKBONE = "sipa_fashion_mnist_exit", "sipa_fashion_mnist"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="exit-head epochs (default 8)")
    p.add_argument("--limit", type=int, default=None, help="first N training images only (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(RUNS, "train_sipa_exit", "model.keras"))
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1. Received: {args.epochs}")
    return args


def copy_backbone(source, target):
    """Assign every weight of ``source``'s layers to ``target``'s layer of the same name; the
    names of ``target``'s layers that got nothing (its exit head) are returned."""
    by_name = {layer.name: layer for layer in source.layers}
    untouched = []
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            untouched.append(layer.name)
            continue
        for mine, theirs in zip(layer.weights, by_name[layer.name].weights, strict=True):
            mine.assign(theirs)
    return untouched


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(HERE))
    import keras

    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.exits import train_exit
    from tfgated.io import save_model

    keras.utils.set_random_seed(args.seed)
    recipe = zoo.get_preset(PRESET)["recipe"]
    backbone = zoo.load(BACKBONE, compile=False)
    model = zoo.load(PRESET, weights=None, compile=False)
    head = copy_backbone(backbone, model)
    print(f"backbone weights from {BACKBONE}; trained here: {', '.join(head)}", flush=True)
    splits = load_dataset("fashion_mnist", batch_size=recipe["batch_size"], pixels="raw", seed=42, limit=args.limit)
    start = time.perf_counter()
    train_exit(model, splits.train, splits.validation, epochs=args.epochs, loss="softsmoothing",
               update_main_statistics=False, bits=recipe.get("precision_bits", 32), verbose=2)
    print(f"exit head trained in {time.perf_counter() - start:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_model(model, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
