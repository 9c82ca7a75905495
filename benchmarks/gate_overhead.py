"""Training-step time of a gated ResNet against the same network without gates.

Both models are built from the same zoo preset (the second with ``gates=None``),
compiled alike, warmed up, and then timed in alternating rounds in one process,
so both see the same machine load; the reported ratio is the median of the
per-round ratios. Goal (issue 2): gated / dense <= 1.15.

    python benchmarks/gate_overhead.py [--preset gumbel_resnet_fashion_mnist] [--rounds 7] [--steps 20]

Writes ``benchmarks/results/gate_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_steps(model, x, y, steps):
    """Seconds per training step, over ``steps`` calls of ``train_on_batch``."""
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gumbel_resnet_fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", default=os.path.join(RESULTS, "gate_overhead.json"))
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from tfgated import complexity, zoo
    from tfgated.data import load_fashion_mnist_arrays
    from tfgated.io import machine_info, write_atomic

    (x_train, y_train), _ = load_fashion_mnist_arrays()
    x = x_train[: args.batch_size].astype("float32") / 255.0
    y = y_train[: args.batch_size]

    keras.utils.set_random_seed(0)
    models = {"gated": zoo.load(args.preset, weights=None), "dense": zoo.load(args.preset, weights=None, gates=None)}
    for model in models.values():
        for _ in range(5):  # trace and warm up
            model.train_on_batch(x, y)

    times = {name: [] for name in models}
    for round_index in range(args.rounds):
        order = list(models) if round_index % 2 == 0 else list(models)[::-1]
        for name in order:
            times[name].append(time_steps(models[name], x, y, args.steps))
        print(f"round {round_index + 1}/{args.rounds}: "
              + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms/step" for n in models), flush=True)

    median = {name: float(np.median(values)) for name, values in times.items()}
    # Paired per round (both models timed back to back), so load changes cancel.
    round_ratios = [g / d for g, d in zip(times["gated"], times["dense"])]
    ratio = float(np.median(round_ratios))
    result = {
        "command": "python benchmarks/gate_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "seconds_per_step": {name: values for name, values in times.items()},
        "median_seconds_per_step": median,
        "gated_over_dense_per_round": round_ratios,
        "gated_over_dense": ratio,
        "goal": "gated / dense <= 1.15",
        "goal_met": ratio <= 1.15,
        "params": {name: int(complexity.count(m).params) for name, m in models.items()},
        "machine": machine_info(),
    }
    write_atomic(args.output, json.dumps(result, indent=2))  # no trailing newline, as before
    print(f"gated {median['gated'] * 1e3:.1f} ms/step, dense {median['dense'] * 1e3:.1f} ms/step, "
          f"ratio {ratio:.3f} (goal <= 1.15) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
