"""Training speed of the pipeline's SIPA network on CPU: Keras' batch norm against the fused kernel,
and the old fake quantization (``x + stop_gradient(rounded - x)``) against the custom gradient.

Profiling a training step of the ``small`` budget's searched network (batch 128, two cores)
showed half of the operator time in batch norm's element-wise operations (Keras 3 computes batch
norm with ``keras.ops``; TensorFlow's fused kernel makes one pass) and, under 16-bit
quantization-aware training, a share in the straight-through rounding of every activation.
Four variants with the same initial weights, each trained with ``model.fit`` on the same
in-memory batches (what the pipeline's training does, without the input pipeline; the first
step of every ``fit`` call is left out of the timing, see :class:`StepTimer`):

* ``keras_bn_float32`` -- the plain network (Keras' ``BatchNormalization``);
* ``fused_float32`` -- :func:`tfgated.fused_norm.use_fused_batch_norm` of it;
* ``keras_bn_qat16_stop_gradient`` -- :func:`tfgated.quantization.quantize_model` of the plain
  network with the rounding written as ``x + stop_gradient(rounded - x)`` (tfgated before this
  change);
* ``fused_qat16`` -- :meth:`tfgated.recipes.Recipe.prepare_model` at ``precision_bits=16`` (fused
  batch norm, rounding with a custom gradient): what the pipeline trains now.

After warm-up the variants run one epoch each in alternating rounds in one process (order
rotated every round), so they see the same machine load; reported: milliseconds per training
image (median over rounds) and the median per-round ratio against the old 16-bit variant.

    python benchmarks/training_speed.py [--rounds 5] [--images 2560]

Writes ``benchmarks/results/training_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCH = 128
SUMMARY = os.path.join(RESULTS, "pipeline_small_summary.json")


def searched_arch():
    """The architecture the committed small-budget pipeline run searched and trained."""
    with open(SUMMARY, encoding="utf-8") as f:
        return json.load(f)["stages"]["search"]["arch"]


def stop_gradient_fake_quantize(x, bits=16):
    """tfgated's fake quantization before the custom gradient (same values and gradient)."""
    import keras
    from keras import ops

    from tfgated import quantization

    if quantization.check_bits(bits) == 32 or keras.backend.standardize_dtype(x.dtype) not in ("float32", "float64"):
        return x
    rounded = ops.cast(ops.cast(x, "float16"), x.dtype)
    return x + ops.stop_gradient(rounded - x)


@contextlib.contextmanager
def old_fake_quantize(active):
    """While tracing, ``tfgated.quantization`` rounds the old way (when ``active``)."""
    from tfgated import quantization

    current = quantization.fake_quantize
    if active:
        quantization.fake_quantize = stop_gradient_fake_quantize
    try:
        yield
    finally:
        quantization.fake_quantize = current


def variants(arch):
    """``{name: compiled model}`` with equal initial weights."""
    import keras

    from tfgated.fused_norm import use_fused_batch_norm
    from tfgated.quantization import quantize_model
    from tfgated.recipes import Recipe
    from tfgated.zoo.sipa import build_sipa

    def build():
        keras.utils.set_random_seed(0)
        return build_sipa(num_classes=10, input_shape=(28, 28, 1), **arch)

    models = {
        "keras_bn_float32": build(),
        "fused_float32": use_fused_batch_norm(build()),
        "keras_bn_qat16_stop_gradient": quantize_model(build(), bits=16),
        "fused_qat16": Recipe(precision_bits=16).prepare_model(build()),
    }
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return models


class StepTimer:
    """Keras callback: the wall time of every training step after the first of a ``fit`` call
    (the first waits for the input pipeline; with several models alternating it sometimes
    stalls for seconds, a fixed cost per ``fit`` call that a long training does not pay)."""

    def __new__(cls):
        import keras

        class _StepTimer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds, self._start = [], None

            def on_train_batch_begin(self, batch, logs=None):
                self._start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if batch > 0:
                    self.seconds.append(time.perf_counter() - self._start)

        return _StepTimer()


def time_rounds(models, x, y, rounds):
    """Per-round milliseconds per training image of every model (steps after the first of the
    round), order rotated every round."""
    names = list(models)
    for name, model in models.items():  # warm-up: trace (the old rounding for its variant) and first steps
        with old_fake_quantize(name.endswith("stop_gradient")):
            model.fit(x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timer = StepTimer()
            models[name].fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            times[name].append(1000 * sum(timer.seconds) / (BATCH * len(timer.seconds)))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()), flush=True)
    return times


def main(argv=None):
    import keras
    import numpy as np

    from tfgated.data import load_dataset
    from tfgated.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=20 * BATCH)
    parser.add_argument("--out", default=os.path.join(RESULTS, "training_speed.json"))
    args = parser.parse_args(argv)
    splits = load_dataset("fashion_mnist", batch_size=BATCH, limit=args.images, validation_split=0.0, seed=0)
    batches = [(np.asarray(a), np.asarray(b)) for a, b in splits.train]
    x, y = np.concatenate([a for a, _ in batches]), np.concatenate([b for _, b in batches]).reshape(-1)
    models = variants(searched_arch())
    times = time_rounds(models, x, y, args.rounds)
    old = "keras_bn_qat16_stop_gradient"
    result = {
        "benchmark": "training_speed",
        "what": "model.fit milliseconds per training image of the small budget's searched SIPA network "
                f"({SUMMARY.split(os.sep)[-1]}), batch {BATCH}, {len(x)} Fashion-MNIST images per round, CPU",
        "command": " ".join(["python benchmarks/training_speed.py"] + list(sys.argv[1:] if argv is None else argv)),
        "arch": searched_arch(),
        "rounds": args.rounds,
        "median_ms_per_image": {name: statistics.median(t) for name, t in times.items()},
        "median_ratio_vs_old_qat16": {
            name: statistics.median(a / b for a, b in zip(t, times[old])) for name, t in times.items()
        },
        "ms_per_image_per_round": times,
        "versions": {"keras": keras.__version__},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("median_ms_per_image", "median_ratio_vs_old_qat16")}, indent=2))


if __name__ == "__main__":
    main()
