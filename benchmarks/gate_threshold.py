"""Threshold inference at tau = 0.5 against tau = 0.8 on every shipped gated Fashion-MNIST preset
(issue 24, study 3; inference only).

The supplement of Herrmann et al. (Table 1) compares gating thresholds: a gate is taken when its
open probability exceeds tau. A higher tau closes every gate whose probability lies between 0.5
and tau, so it trades accuracy for MACs; where gates are polarized (probabilities near 0 or 1)
the two thresholds give the same network. For each preset with shipped weights and gates
(layer gates, channel gates, exit gates), on the 10,000 test images fed as raw pixels:
test top-1, the share of gate elements taken and the measured MACs per image
(:func:`tfgated.train.evaluate_model`, threshold style) at every ``--thresholds`` value; the
absolute difference of the gate activations at the first and last threshold is the share of gate
decisions that the thresholds take differently (gates with an open probability between them).

    python benchmarks/gate_threshold.py [--thresholds 0.5 0.8] [--limit N]

Writes ``benchmarks/results/gate_threshold.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def gated_presets():
    """Shipped Fashion-MNIST presets with weights and gates, in the zoo's order."""
    from tfgated import zoo

    return [name for name in zoo.list_models("*fashion_mnist*")
            if zoo.weights_status(name) == "available" and zoo.get_preset(name).get("gates")]


def main(argv=None):
    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.io import write_json
    from tfgated.train import evaluate_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--limit", type=int, default=None, help="images per split (default: all; the test split "
                        "has 10,000)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "gate_threshold.json"))
    args = parser.parse_args(argv)
    test = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, pixels="raw",
                        limit=args.limit).test
    rows = []
    for name in gated_presets():
        model = zoo.load(name, compile=False)
        row = {"preset": name, "by_threshold": {}}
        for tau in args.thresholds:
            result = evaluate_model(model, test, style="threshold", threshold=tau, runs=1)
            row["by_threshold"][f"{tau:g}"] = {
                "top1": float(result["top1"]), "gate_activation": float(result["gate_activation"]),
                "mac_ratio": float(result["macs"]) / float(result["dense_macs"]),
            }
        first, last = (row["by_threshold"][f"{t:g}"] for t in (args.thresholds[0], args.thresholds[-1]))
        row["decisions_changed"] = abs(first["gate_activation"] - last["gate_activation"])
        row["top1_change"] = last["top1"] - first["top1"]
        row["mac_ratio_change"] = last["mac_ratio"] - first["mac_ratio"]
        print(name, json.dumps(row["by_threshold"]), flush=True)
        rows.append(row)
    result = {
        "benchmark": "gate_threshold",
        "what": "threshold inference of every shipped gated Fashion-MNIST preset at each tau: test top-1, "
                "gate activation and MACs per image over dense (raw-pixel test images)",
        "command": " ".join(["python benchmarks/gate_threshold.py"] + list(sys.argv[1:] if argv is None else argv)),
        "paper": "Herrmann et al., supplement Table 1 compares thresholds 0.5 and 0.8 (its numbers could not be "
                 "read here; see zoo/papers.py)",
        "thresholds": args.thresholds,
        "rows": rows,
    }
    write_json(args.out, result)
    plot(result, os.path.splitext(args.out)[0] + ".png")


def plot(result, path):
    """Top-1 against MAC ratio, one arrow per preset from the first threshold to the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, last = (f"{t:g}" for t in (result["thresholds"][0], result["thresholds"][-1]))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for row in result["rows"]:
        a, b = row["by_threshold"][first], row["by_threshold"][last]
        ax.annotate("", xy=(b["mac_ratio"], b["top1"]), xytext=(a["mac_ratio"], a["top1"]),
                    arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        ax.plot([a["mac_ratio"]], [a["top1"]], "o", color="tab:blue", ms=4)
        ax.annotate(row["preset"].replace("gumbel_", "").replace("_fashion_mnist", ""), (a["mac_ratio"], a["top1"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("MACs per image / dense")
    ax.set_ylabel("test top-1")
    ax.set_title(f"Threshold inference: tau {first} (dot) -> tau {last} (arrow head)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
