"""Training-step time of 16-bit quantization-aware training on CPU: fake quantization against
Keras' mixed precision, both against float32.

The network is the ``small`` pipeline budget's base SIPA network (Fashion-MNIST shape, batch
128). Three variants with the same initial weights, each trained with ``train_on_batch`` (SGD):

* ``float32`` -- the plain model;
* ``fake_quant`` -- :func:`tfgated.quantization.quantize_model` (weights and activations
  rounded to float16 in the forward pass, float32 arithmetic, straight-through backward);
* ``mixed_float16`` -- the same network built under the ``mixed_float16`` dtype policy
  (float16 arithmetic, float32 variables, loss scaling).

After warm-up the variants are timed in alternating rounds in one process (order rotated every
round) so they see the same machine load; reported: the median step time and the median of the
per-round ratios against float32. "Same result": on one batch of test images and the same
weights, the largest difference of the softmax outputs from the float32 model's and the
top-1 agreement with the fake-quantized model's.

    python benchmarks/qat_step_time.py [--rounds 7] [--steps 10]

Writes ``benchmarks/results/qat_step_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCH = 128


def build(policy=None):
    """The ``small`` budget's base network under ``policy`` (``None``: float32)."""
    import keras

    from tfgated.cli.pipeline.budgets import BUDGETS
    from tfgated.zoo.sipa import build_sipa

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy or "float32")
    try:
        return build_sipa(num_classes=10, input_shape=(28, 28, 1), **BUDGETS["small"].base_arch)
    finally:
        keras.config.set_dtype_policy(previous)


def variants():
    """``{name: compiled model}`` with equal initial weights."""
    import keras
    import numpy as np

    from tfgated.quantization import quantize_model

    keras.utils.set_random_seed(0)
    plain = build()
    # the builder zero-initializes the classifier (uniform outputs at the start): small random values
    # instead, so that the outputs, and the "same result" comparison, depend on every layer
    rng = np.random.default_rng(0)
    weights = [rng.normal(0.0, 0.05, w.shape).astype(w.dtype) if not w.any() else w for w in plain.get_weights()]
    plain.set_weights(weights)
    mixed = build("mixed_float16")
    mixed.set_weights(weights)
    twin = build()
    twin.set_weights(weights)
    models = {"float32": plain, "fake_quant": quantize_model(twin, bits=16), "mixed_float16": mixed}
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    return models


def same_result(models, x):
    """Softmax differences from float32 and top-1 agreement with the fake-quantized model."""
    import numpy as np

    probs = {name: np.asarray(m.predict(x, batch_size=BATCH, verbose=0), dtype="float32") for name, m in models.items()}
    top = {name: p.argmax(axis=1) for name, p in probs.items()}
    return {
        name: {
            "max_abs_diff_vs_float32": float(np.abs(p - probs["float32"]).max()),
            "top1_agreement_vs_fake_quant": float((top[name] == top["fake_quant"]).mean()),
        }
        for name, p in probs.items()
    }


def time_rounds(models, x, y, rounds, steps):
    """Per-round mean step time (ms) of every model, order rotated every round."""
    names = list(models)
    for model in models.values():  # warm-up: trace and first steps
        for _ in range(3):
            model.train_on_batch(x, y)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                models[name].train_on_batch(x, y)
            times[name].append(1000 * (time.perf_counter() - start) / steps)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()), flush=True)
    return times


def main(argv=None):
    import keras
    import numpy as np

    from tfgated.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(RESULTS, "qat_step_time.json"))
    args = parser.parse_args(argv)
    splits = load_dataset("fashion_mnist", batch_size=BATCH, limit=2 * BATCH, validation_split=0.0, seed=0)
    x, y = next(iter(splits.train))
    x, y = np.asarray(x), np.asarray(y)
    models = variants()
    agreement = same_result(models, np.asarray(next(iter(splits.test))[0]))
    times = time_rounds(models, x, y, args.rounds, args.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: statistics.median(a / b for a, b in zip(t, times["float32"])) for name, t in times.items()}
    result = {
        "benchmark": "qat_step_time",
        "what": "train_on_batch step time of the small budget's base SIPA network, batch 128, CPU",
        "command": " ".join(["python benchmarks/qat_step_time.py"] + list(sys.argv[1:] if argv is None else argv)),
        "params": int(models["float32"].count_params()),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "median_step_ms": median,
        "median_ratio_vs_float32": ratios,
        "step_ms_per_round": times,
        "same_result": agreement,
        "versions": {"keras": keras.__version__},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("median_step_ms", "median_ratio_vs_float32", "same_result")}, indent=2))


if __name__ == "__main__":
    main()
