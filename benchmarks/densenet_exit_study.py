"""The supplement's early-exit claims (Herrmann et al., section 1.2) on the shipped early-exit
DenseNet, inference only (issue 24, study 4).

Section 1.2 trains a DenseNet-BC with a Gumbel exit gate and an intermediate classifier after each
dense block and reports, on CIFAR-10, 94.39% top-1 using 68.4% of the layers against 95.24% for
the network without exits; the gates are meant to send out the examples the exit's classifier
gets right. For ``gumbel_densenet_fashion_mnist_exit`` on the 10,000 test images (raw pixels),
threshold inference (each exit gate taken when its probability exceeds 0.5):

* the share of images leaving at each exit and at the final classifier, and the mean share of
  the dense layers an image runs (an image leaving after block k runs blocks 1..k);
* the routed top-1 and MACs per image against the final classifier on every image (the
  network without exits, as far as one trained jointly can stand for it);
* for each classifier, its top-1 on the images its gate sends out against its top-1 on all
  images (the supplement's claim: higher) and on the images that continue.

    python benchmarks/densenet_exit_study.py [--preset gumbel_densenet_fashion_mnist_exit]

Writes ``benchmarks/results/densenet_exit_study.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PAPER = {"top1": 0.9439, "layers_used": 0.684, "no_exit_top1": 0.9524, "dataset": "CIFAR-10",
         "source": "Herrmann et al., supplement section 1.2 (as quoted in issue 24)"}


def _accuracy(probabilities, labels, mask=None):
    import numpy as np

    right = np.asarray(probabilities).argmax(axis=1) == labels
    if mask is not None:
        right = right[mask]
    return float(right.mean()) if right.size else None


def study(model, images, labels, blocks):
    """The section 1.2 numbers of an early-exit DenseNet ``model`` (threshold inference)."""
    import keras
    import numpy as np

    from tfgated.exits.layers import exit_classifier_outputs, exit_weights
    from tfgated.exits import EarlyExitCombine
    from tfgated.inference import find_layers, set_inference_style

    set_inference_style(model, "threshold")
    exits = exit_classifier_outputs(model)
    final = list(find_layers(model, EarlyExitCombine)[0].input)[-1]
    probe = keras.Model(model.inputs, [g.output for g, _, _ in exits] + [p for _, _, p in exits] + [final, model.outputs[0]])
    values = [np.asarray(v) for v in probe.predict(images, batch_size=256, verbose=0)]
    count = len(exits)
    gates, classifiers, final_probs, routed = values[:count], values[count:2 * count], values[-2], values[-1]
    weights = [np.asarray(w).reshape(-1) > 0.5 for w in exit_weights([g.astype("float32") for g in gates])]
    layers = np.cumsum(blocks) / float(sum(blocks))  # share of dense layers run when leaving after block k
    rows = []
    for k, (leave, probs) in enumerate(zip(weights[:-1], classifiers)):
        rows.append({
            "exit": k + 1, "after_block": k + 1, "share_leaving": float(leave.mean()),
            "layers_used_when_leaving": float(layers[k]),
            "top1_on_images_leaving": _accuracy(probs, labels, leave),
            "top1_on_all_images": _accuracy(probs, labels),
            "top1_on_images_continuing": _accuracy(probs, labels, ~leave),
        })
    rows.append({"exit": "final", "share_leaving": float(weights[-1].mean()), "layers_used_when_leaving": 1.0,
                 "top1_on_images_leaving": _accuracy(final_probs, labels, weights[-1]),
                 "top1_on_all_images": _accuracy(final_probs, labels)})
    layers_used = float(sum(row["share_leaving"] * row["layers_used_when_leaving"] for row in rows))
    sends_out_right = [row["top1_on_images_leaving"] is not None and row["top1_on_images_leaving"] > row["top1_on_all_images"]
                       for row in rows[:-1] if row["share_leaving"] > 0]
    return {"exits": rows, "routed_top1": _accuracy(routed, labels), "no_exit_top1": _accuracy(final_probs, labels),
            "layers_used": layers_used, "gates_send_out_images_their_classifier_gets_right": all(sends_out_right)
            if sends_out_right else None}


def main(argv=None):
    import numpy as np

    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.io import write_json
    from tfgated.train import evaluate_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gumbel_densenet_fashion_mnist_exit")
    parser.add_argument("--out", default=os.path.join(RESULTS, "densenet_exit_study.json"))
    args = parser.parse_args(argv)
    test = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, pixels="raw").test
    pairs = [(np.asarray(x), np.asarray(y).reshape(-1)) for x, y in test]
    images, labels = np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])
    model = zoo.load(args.preset, compile=False)
    blocks = list(zoo.get_preset(args.preset)["arch"].get("blocks", (16, 16, 16)))
    result = study(model, images, labels, blocks)
    evaluated = evaluate_model(model, test, style="threshold", runs=1)
    result["mac_ratio"] = float(evaluated["macs"]) / float(evaluated["dense_macs"])
    result["macs_saved"] = 1.0 - result["mac_ratio"]
    verdict = "reproduced" if (result["gates_send_out_images_their_classifier_gets_right"]
                               and result["no_exit_top1"] - result["routed_top1"] <= PAPER["no_exit_top1"] - PAPER["top1"]
                               and result["layers_used"] <= PAPER["layers_used"] + 0.05) else "not reproduced"
    output = {
        "benchmark": "densenet_exit_study",
        "what": f"{args.preset}: supplement section 1.2 quantities on the 10,000 Fashion-MNIST test images, "
                "threshold inference",
        "command": " ".join(["python benchmarks/densenet_exit_study.py"] + list(sys.argv[1:] if argv is None else argv)),
        "paper": PAPER,
        "blocks": blocks,
        **result,
        "verdict": verdict,
        "verdict_rule": "reproduced when every exit's gate sends out images its classifier gets right more often "
                        "than on all images, the routed top-1 is within the paper's drop (0.85 points) of the final "
                        "classifier's, and the layers used are at most the paper's share + 5 points",
    }
    write_json(args.out, output)
    print(json.dumps({k: output[k] for k in ("routed_top1", "no_exit_top1", "layers_used", "macs_saved", "verdict")},
                     indent=2))
    for row in output["exits"]:
        print(row)


if __name__ == "__main__":
    main()
