"""Ensemble inference: the authors' majority vote against the mean softmax, on the same passes.

The Gumbel paper's ensemble (the authors' ``test_inference.py``) runs ``samples`` stochastic
passes and takes the most frequent top-1 class (``scipy.stats.mode``; top-5: the five classes
most often in the passes' top-5 lists); tfgated used to average the passes' softmax. For each
shipped gated Fashion-MNIST preset this script draws ``--samples`` stochastic passes over the
first ``--examples`` test images, ``--runs`` times (gate noise seeded with the run number), and
scores the *same* passes both ways (:func:`tfgated.inference.vote_shares`, the mean), so the
difference is the combination alone. No training.

    python benchmarks/ensemble_vote.py                 # 3 presets x 5 runs x 5 passes, 2,000 images
"""

import argparse
import os
import sys

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRESETS = ("gumbel_resnet_fashion_mnist", "gumbel_resnet_fashion_mnist_dep_pg_t0.4", "gumbel_mobilenet_v2_fashion_mnist")


def _top_k(scores, labels, k):
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def measure(preset, images, labels, runs, samples, batch_size):
    """Per-run top-1/top-5 of vote and mean over the same ``samples`` stochastic passes."""
    import keras

    import tfgated
    from tfgated import zoo
    from tfgated.inference import vote_shares

    model = zoo.load(preset)  # the shipped weights
    tfgated.set_inference_style(model, "stochastic")
    per_run = []
    for run in range(runs):
        tfgated.reset_gate_noise(model, run)
        passes = [np.asarray(model.predict(images, batch_size=batch_size, verbose=0), "float64") for _ in range(samples)]
        mean = np.mean(passes, axis=0)
        votes, votes5 = vote_shares(passes), vote_shares(passes, 5)
        per_run.append({
            "vote_top1": _top_k(votes, labels, 1), "mean_top1": _top_k(mean, labels, 1),
            "vote_top5": _top_k(votes5, labels, 5), "mean_top5": _top_k(mean, labels, 5),
            "single_pass_top1": _top_k(passes[0], labels, 1),
            "disagreeing_examples": int(np.sum(votes.argmax(1) != mean.argmax(1))),
        })
        print(preset, run, per_run[-1], flush=True)
    keras.backend.clear_session()
    row = {"preset": preset, "per_run": per_run}
    for key in per_run[0]:
        values = np.array([r[key] for r in per_run], dtype="float64")
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--examples", type=int, default=2000, help="first test images")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5, help="stochastic passes per ensemble")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--output", default=os.path.join(RESULTS, "ensemble_vote.json"))
    args = parser.parse_args(argv)

    from tfgated.data import load_fashion_mnist_arrays
    from tfgated.io import machine_info, write_json

    _, (images, labels) = load_fashion_mnist_arrays()
    images = np.asarray(images[: args.examples], "float32")  # raw pixels: zoo models normalize inside
    labels = np.asarray(labels[: args.examples], "int64")
    rows = [measure(p, images, labels, args.runs, args.samples, args.batch_size) for p in args.presets]
    write_json(args.output, {
        "benchmark": "ensemble_vote",
        "what": "ensemble of stochastic passes: majority vote (the authors') vs mean softmax, scored on the same passes",
        "command": "python benchmarks/ensemble_vote.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "examples": int(len(labels)),
        "runs": args.runs,
        "samples": args.samples,
        "rows": rows,
        "machine": machine_info(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
