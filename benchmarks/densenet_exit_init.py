"""Warm start for the DenseNet with Gumbel early exits: trained trunk, trained exit classifiers.

Trained from scratch, ``gumbel_densenet_fashion_mnist_exit`` closed both exits within its
first epoch and never reopened them (``benchmarks/results/train_densenet_fashion_mnist_exit.json``):
an exit classifier that is still random gets almost every example it receives wrong, so the
straight-through gradient shuts its gate, and a shut exit's classifier gets no more examples
to learn from. This script prepares the start that avoids that, in three steps:

1. build the preset (its current exit-gate network), copy every layer but the exit gates from
   a trained model of the same architecture (``--trunk``: the run that collapsed has a good
   trunk and final classifier);
2. train the exit classifiers on every example (:func:`tfgated.exits.fit_exit_classifiers`), on
   the trunk's training split (the seed and validation fraction its run recorded): by default with
   deep supervision (the whole network on the summed cross-entropy of all classifiers), with
   ``--frozen-trunk`` as linear probes of the frozen trunk (one epoch of that reached only
   0.38 and 0.60 validation accuracy at the two exits of the collapsed run's trunk);
   With ``--trunk none`` the network starts from random weights and step 2 is the whole of its
   training (deep supervision from scratch, ``--epochs`` of them, with ``--lr`` and
   ``--cosine``);
3. save the model; train it with the preset's gates, e.g.::

    python benchmarks/densenet_exit_init.py
    python benchmarks/train_fashion_mnist.py --model gumbel_densenet_fashion_mnist_exit \\
        --init-from runs/densenet_exit_init.keras --name train_densenet_fashion_mnist_exit_warm \\
        --epochs 5 --lr 0.01 --set cosine_decay=true

Prints each classifier's last-epoch accuracy and loss and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PRESET = "gumbel_densenet_fashion_mnist_exit"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trunk", default=os.path.join("runs", "train_densenet_fashion_mnist_exit", "model.keras"),
                   help="trained .keras model of the preset's architecture, or 'none' to start from "
                        "random weights (default: %(default)s)")
    p.add_argument("--output", default=os.path.join("runs", "densenet_exit_init.keras"))
    p.add_argument("--epochs", type=int, default=2, help="epochs of exit-classifier training (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--cosine", action="store_true", help="cosine-decay the learning rate to 0 over the epochs")
    p.add_argument("--frozen-trunk", action="store_true", help="train only the exit classifiers (linear probes)")
    p.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "densenet_exit_init.json"),
                   help="result file (default: %(default)s)")
    args = p.parse_args(argv)
    scratch = args.trunk.lower() == "none"
    if scratch and args.frozen_trunk:
        p.error("--frozen-trunk needs a trained --trunk: a random trunk has no features to probe")
    if not scratch and not os.path.exists(args.trunk):
        p.error(f"--trunk {args.trunk!r} does not exist: train the preset first (see the DenseNet-exit row of docs/benchmarks.md)")

    import keras

    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.exits import exit_gate_layers, fit_exit_classifiers
    from tfgated.io import load_model, machine_info, save_model, write_json
    from tfgated.train import held_out_split, transfer_weights

    keras.utils.set_random_seed(42)
    model = zoo.build(PRESET)
    if not scratch:
        trunk = load_model(args.trunk)
        gates = [gate.name for gate in exit_gate_layers(model)]
        copied, skipped = transfer_weights(trunk, model, exclude=gates)
        print(f"Copied {len(copied)} layers from {args.trunk}; fresh: {sorted(skipped)}", flush=True)
    # the trunk's own validation split; from scratch the one train_fashion_mnist.py uses
    seed, fraction = held_out_split(None if scratch else args.trunk, default_seed=42)
    splits = load_dataset("fashion_mnist", batch_size=128, validation_split=fraction, seed=seed, limit=args.limit,
                          pixels="raw")
    learning_rate = args.lr
    if args.cosine:
        steps = int(splits.train.cardinality()) * args.epochs
        learning_rate = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps))
    history = fit_exit_classifiers(model, splits.train, splits.validation, epochs=args.epochs,
                                   train_trunk=not args.frozen_trunk, optimizer=keras.optimizers.Adam(learning_rate),
                                   verbose=2)
    save_model(model, args.output)
    last = {key: round(float(values[-1]), 4) for key, values in history.history.items()}
    result = {
        "benchmark": "densenet_exit_init",
        "command": "python benchmarks/densenet_exit_init.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "trunk": args.trunk,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "cosine": args.cosine,
        "validation": {"seed": seed, "fraction": fraction},
        "train_trunk": not args.frozen_trunk,
        "limit": args.limit,
        "last_epoch": last,
        "output": args.output,
        "machine": machine_info(),
    }
    write_json(args.json, result, sort_keys=True)
    print(json.dumps({"last_epoch": last, "output": args.output}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
