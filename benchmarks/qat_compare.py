"""Float32 training then rounding against 16-bit quantization-aware training: accuracy and
16-bit MicroNet score.

SIPA trains with weights and activations fake-quantized to 16 bits; rounding a float32-trained
network to float16 afterwards is the cheaper alternative. The network is the pipeline's
``small`` budget's base SIPA network (five MBConv blocks, about 3M MACs), trained from the same
initial weights, the same seed and the same batches in both arms, with that budget's data
(18,000 training images, ``limit`` 20,000, 10% held out, seed 0) and base recipe (SGD 0.05,
Nesterov momentum 0.9, cosine decay, batch 128) for ``--epochs``:

* ``float32_then_rounded``: trained in float32, then every weight rounded to float16;
* ``qat16``: trained with :func:`tfgated.quantization.quantize_model` (weights and activations
  rounded to float16 in the forward pass, straight-through backward), then
  :func:`tfgated.quantization.strip_quantization` (the same float16 weights, float32
  activations, as a float16 TFLite file runs them); ``qat16_forward`` is that network with its
  activations fake-quantized too.

Why not the ``sipa_fashion_mnist`` preset itself: at 25M MACs it trains at about 6 minutes an
epoch on two uncontended cores, and on the shared machine this ran on (load 10 on 2 cores) even
a few hundred fine-tuning steps from its shipped weights did not fit the time there was; the
small network is the one the pipeline trains under ``precision_bits`` 16.

Each is scored on the 10,000 test images (top-1) and at 16 bits with the MicroNet rules
(no pruning here: both arms have the same architecture, so the same score).

    python benchmarks/qat_compare.py [--epochs 3]

Writes ``benchmarks/results/qat_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BUDGET = "small"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "qat_compare.json"))
    return parser.parse_args(argv)


def recipe_for(args, bits):
    from tfgated.cli.pipeline.budgets import BUDGETS
    from tfgated.recipes import Recipe

    return Recipe.from_dict(BUDGETS[BUDGET].base_recipe, epochs=args.epochs, precision_bits=bits)


def data_kwargs():
    from tfgated.cli.pipeline.budgets import BUDGETS

    return {"limit": BUDGETS[BUDGET].limit, "validation_split": BUDGETS[BUDGET].validation_split}


def train(args, bits):
    """The small budget's base network trained ``args.epochs`` at ``bits``; ``(model, CPU seconds)``."""
    import keras

    from tfgated.cli.pipeline.budgets import BUDGETS
    from tfgated.recipes import fit_recipe
    from tfgated.zoo.sipa import build_sipa

    keras.utils.set_random_seed(args.seed)
    recipe = recipe_for(args, bits)
    model = recipe.prepare_model(build_sipa(num_classes=10, input_shape=(28, 28, 1), **BUDGETS[BUDGET].base_arch))
    splits = recipe.datasets("fashion_mnist", seed=args.seed, **data_kwargs())
    start = time.process_time()
    fit_recipe(model, recipe, splits, verbose=2)
    return model, time.process_time() - start


def score(model, test, seconds=None, count=True):
    """Test top-1 and the 16-bit MicroNet numbers of ``model``."""
    import numpy as np

    from tfgated.micronet import micronet_score

    x, y = test
    accuracy = float((np.asarray(model.predict(x, batch_size=256, verbose=0)).argmax(axis=1) == y).mean())
    row = {"test_top1": accuracy}
    if count:
        report = micronet_score(model, bits=16)
        row.update({"micronet_score_16bit": float(report.score), "storage_16bit": float(report.params_storage),
                    "ops_16bit": float(report.ops)})
    if seconds is not None:
        row["train_cpu_seconds"] = round(seconds, 1)
    return row


def test_arrays():
    import numpy as np

    from tfgated.data import load_dataset

    test = load_dataset("fashion_mnist", batch_size=512, seed=0, **data_kwargs()).test
    xs, ys = zip(*[(np.asarray(x), np.asarray(y)) for x, y in test])
    return np.concatenate(xs), np.concatenate(ys).reshape(-1)


def main(argv=None):
    import keras

    from tfgated.quantization import round_weights
    from tfgated.recipes import Recipe

    args = parse_args(argv)
    test = test_arrays()
    rows = {}
    model, seconds = train(args, 32)
    rows["float32_then_rounded"] = score(round_weights(Recipe.finish_model(model), 16), test, seconds)
    qat, seconds = train(args, 16)
    rows["qat16_forward"] = {"test_top1": score(qat, test, count=False)["test_top1"]}
    rows["qat16"] = score(Recipe.finish_model(qat), test, seconds)
    result = {
        "benchmark": "qat_compare",
        "what": f"the {BUDGET} budget's base SIPA network trained {args.epochs} epochs in float32 then rounded to "
                "float16, against 16-bit quantization-aware training; test top-1 and 16-bit MicroNet score",
        "command": " ".join(["python benchmarks/qat_compare.py"] + list(sys.argv[1:] if argv is None else argv)),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, **data_kwargs(),
                     "recipe": recipe_for(args, 16).to_dict()},
        "test_examples": int(len(test[1])),
        "rows": rows,
        "qat_minus_float32_top1": rows["qat16"]["test_top1"] - rows["float32_then_rounded"]["test_top1"],
        "versions": {"keras": keras.__version__},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
