"""Training-step time of a magnitude-pruned CNN against the same CNN dense, beside tfmot's.

A 95K-parameter CNN (Fashion-MNIST shape, batch 128) is trained with ``model.fit``
dense and pruned to 50% (``prune_low_magnitude(model, pruning_schedule=
ConstantSparsity(0.5, begin_step=0))`` + ``UpdatePruningStep()``). Both are warmed
up, then timed in alternating rounds in one process (order flipped every round),
so both see the same machine load. Reported for wall-clock and process CPU time:
the median of the per-round ratios pruned / dense and the ratio of the fastest
rounds. Goal (issue 20): <= 1.03.

Beside it, when ``tf_keras`` and ``tensorflow-model-optimization`` import, the
same CNN in ``tf_keras`` dense and pruned by tfmot, timed the same way; and, to
show what the mask constraint saves, the pruned Keras 3 model with the old
behaviour added back (``apply_masks()`` after every batch).

    python benchmarks/pruning_overhead.py [--rounds 21] [--steps 30]

Writes ``benchmarks/results/pruning_overhead.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SPARSITY = 0.5


def cnn_layers(layers):
    """The benchmark CNN (about 96K parameters) from a layers module (Keras 3 or tf_keras)."""
    return [
        layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(48, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ]


def keras3_models():
    """``{"dense", "pruned", "pruned_apply_every_batch"}``: (model, callbacks) with equal initial weights."""
    import warnings

    import keras

    from tfgated.pruning import ConstantSparsity, UpdatePruningStep, get_pruning_state, prune_low_magnitude

    class ApplyMasksEveryBatch(keras.callbacks.Callback):
        """The behaviour before issue 20: kernel.assign(kernel * mask) after every batch."""

        def on_train_batch_end(self, batch, logs=None):
            get_pruning_state(self.model).apply_masks()

    def build():
        keras.utils.set_random_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input_shape= on a layer: shared with tf_keras
            model = keras.Sequential(cnn_layers(keras.layers))
        return model

    def compiled(model):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    schedule = ConstantSparsity(SPARSITY, begin_step=0)
    pruned = compiled(prune_low_magnitude(build(), pruning_schedule=schedule))
    legacy = compiled(prune_low_magnitude(build(), pruning_schedule=ConstantSparsity(SPARSITY, begin_step=0)))
    return {
        "dense": (compiled(build()), []),
        "pruned": (pruned, [UpdatePruningStep()]),
        "pruned_apply_every_batch": (legacy, [UpdatePruningStep(), ApplyMasksEveryBatch()]),
    }


def tfmot_models():
    """``{"tfmot_dense", "tfmot_pruned"}`` in tf_keras, or raises ImportError."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def build():
        tf_keras.utils.set_random_seed(0)
        return tf_keras.Sequential(cnn_layers(tf_keras.layers))

    def compiled(model):
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(build(), pruning_schedule=schedule)
    return {
        "tfmot_dense": (compiled(build()), []),
        "tfmot_pruned": (compiled(pruned), [tfmot.sparsity.keras.UpdatePruningStep()]),
    }, {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__}


def time_fit(model, callbacks, x, y, batch_size):
    """``(wall, cpu)`` seconds per training step of one ``fit`` epoch over ``x``.

    The CPU time (all threads of this process) is what other load on a shared
    machine disturbs least; the wall time is what a user waits.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    steps = len(x) // batch_size
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def _ratios(times, pairs):
    median = {f"{n}/{b}": statistics.median(a / c for a, c in zip(times[n], times[b])) for n, b in pairs}
    fastest = {f"{n}/{b}": min(times[n]) / min(times[b]) for n, b in pairs}
    return {"median_of_round_ratios": median, "fastest_rounds": fastest}


def measure(models, pairs, x, y, args):
    """Per-round wall and CPU step times of every model, and their (model / base) ratios."""
    for model, callbacks in models.values():
        time_fit(model, callbacks, x[: 5 * args.batch_size], y[: 5 * args.batch_size], args.batch_size)  # trace
    names = list(models)
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            w, c = time_fit(*models[name], x, y, args.batch_size)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"round {r + 1}/{args.rounds} (wall / cpu ms): "
              + ", ".join(f"{n} {wall[n][-1] * 1e3:.1f} / {cpu[n][-1] * 1e3:.1f}" for n in names), flush=True)
    return {"wall": wall, "cpu": cpu}, {"cpu": _ratios(cpu, pairs), "wall": _ratios(wall, pairs)}


def sparsity_of(models):
    import numpy as np

    out = {}
    for name, (model, _) in models.items():
        kernels = [np.asarray(w) for w in model.trainable_weights if len(w.shape) > 1]
        out[name] = float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed fit")
    parser.add_argument("--skip-tfmot", action="store_true")
    parser.add_argument("--output", default=os.path.join(RESULTS, "pruning_overhead.json"))
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from tfgated.io import machine_info, write_json

    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)

    models = keras3_models()
    params = int(models["dense"][0].count_params())
    pairs = [("pruned", "dense"), ("pruned_apply_every_batch", "dense")]
    versions, tfmot_error = {"keras": keras.__version__}, None
    if not args.skip_tfmot:
        try:
            tfmot, tfmot_versions = tfmot_models()
            models.update(tfmot)
            versions.update(tfmot_versions)
            pairs.append(("tfmot_pruned", "tfmot_dense"))
        except Exception as error:  # noqa: BLE001 - any failure to import/build tfmot is reported, not fatal
            tfmot_error = f"{type(error).__name__}: {error}"
            print(f"tfmot not measured: {tfmot_error}", file=sys.stderr)
    times, ratios = measure(models, pairs, x, y, args)
    result = {
        "what": "training step time, pruned / dense, 50% sparsity, model.fit, same process, alternating rounds",
        "goal": "pruned/dense <= 1.03 (issue 20)",
        "model": {"layers": "Conv32-Pool-Conv64-Pool-Dense48-Dense10", "input": [28, 28, 1], "parameters": params},
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "ratios": ratios,
        "note": ("shared 2-core machine: per-round wall times swing by 2x or more with other load, so the "
                 "process CPU time (all threads) is the steadier figure; median of per-round ratios (order "
                 "flipped every round) and ratio of the fastest rounds, for both clocks"),
        "median_step_ms": {clock: {n: statistics.median(t) * 1e3 for n, t in per.items()}
                           for clock, per in times.items()},
        "step_ms_per_round": {clock: {n: [round(v * 1e3, 3) for v in t] for n, t in per.items()}
                              for clock, per in times.items()},
        "sparsity_after": sparsity_of(models),
        "tfmot_error": tfmot_error,
        "versions": versions,
        "machine": machine_info(),
    }
    write_json(args.output, result)
    for clock, kinds in ratios.items():
        for kind, values in kinds.items():
            print(clock, kind, {k: round(v, 4) for k, v in values.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
