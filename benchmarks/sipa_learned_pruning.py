"""Study 9 of issue 24: learned channel pruning on the SIPA Fashion-MNIST network, against magnitude pruning.

``sipa_fashion_mnist_gated`` puts independent (data-independent) Gumbel gates, 8 channels each, on
the expanded channels of every MBConv block, after the depthwise activation: a closed gate zeroes
its channels into squeeze-and-excitation and the projection, so folding
(:func:`tfgated.export.fold`) removes them from the expansion, the depthwise convolution, SE and the
projection. Two phases, both ``python -m tfgated train`` runs (:func:`tfgated.cli.train.train`):

1. **gates** (the preset's recipe): warm-started from the shipped dense ``sipa_fashion_mnist``
   (the Gumbel authors' advice), SGD 0.01 with cosine decay for 6 epochs, the gates' gradients x200
   (what ``benchmarks/gate_polarization.py`` found makes data-independent gates polarize: large
   gate steps), per-batch activation loss weighing 10 with its target a fraction (0.5) of the gated
   MACs (``target_measure="macs"``);
2. **fine-tune**: the gates frozen (``gradient_scale=0``, activation loss weight 0) and the network
   trained ``--fine-tune-epochs`` more around the learned selection, SGD 0.01 cosine again. The
   gates end the first phase far from polarized, so frozen gates still sample other channels in
   training than threshold inference keeps;
3. **hardened fine-tune**: the same, after each gate's logit is set to +-10 by its threshold
   decision (the folded network is unchanged, the training samples now equal it).

Each phase is scored on the full test split under threshold inference: top-1, the share of
polarized gates (open probability < 1% or > 99%), the MACs per image counted from the gates
taken, and the MACs of the folded model (plain Keras layers; its outputs are compared with the
gated model's on 512 test images). The magnitude-pruning rows are read from the committed
``sipa_prune_long.json`` (50% of the kernel weights zero after 4 epochs of fine-tuning) and
``sipa_prune_ft20.json`` (the shipped ``sipa_fashion_mnist_pruned``, 20 epochs): unstructured
zeros, which a dense runtime still multiplies (their MACs stay 100%).

The issue's goal: the learned model within 0.5 points of magnitude pruning at 50% of the MACs,
the MACs really removed by folding.

    python benchmarks/sipa_learned_pruning.py              # three phases: about 2.5 hours on 2 cores
    python benchmarks/sipa_learned_pruning.py --gates-model runs/train_sipa_fashion_mnist_gated_mac50/model.keras
    python benchmarks/sipa_learned_pruning.py --quick      # smoke run, output under runs/

Writes ``benchmarks/results/sipa_learned_pruning.json`` and ``.png`` (top-1 against the share of MACs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")

from study_runs import write_result  # noqa: E402

GATED = "sipa_fashion_mnist_gated"
DENSE = "sipa_fashion_mnist"
POLAR_LOW, POLAR_HIGH = 0.01, 0.99
GOAL_MAC_FRACTION = 0.5
GOAL_POINTS = 0.5
MAGNITUDE_FILES = (("sipa_prune_long.json", "magnitude 50%, 4 epochs"),
                   ("sipa_prune_ft20.json", "magnitude 50%, 20 epochs (sipa_fashion_mnist_pruned)"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gates-model", default=None,
                   help="a finished gate phase's model.keras (default: train it under --run-dir/gates)")
    p.add_argument("--fine-tune-epochs", type=int, default=6, help="epochs of the frozen-gate fine-tune (default 6)")
    p.add_argument("--fine-tune-lr", type=float, default=0.01, help="its initial learning rate (default 0.01)")
    p.add_argument("--parity-examples", type=int, default=512, help="test images of the fold parity check")
    p.add_argument("--run-dir", default=None, help="default runs/sipa_learned_pruning[_quick]")
    p.add_argument("--output", default=None, help="default benchmarks/results/sipa_learned_pruning.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 512 training images, 1 epoch per phase")
    args = p.parse_args(argv)
    if args.fine_tune_epochs < 1:
        p.error("--fine-tune-epochs must be >= 1")
    suffix = "_quick" if args.quick else ""
    args.run_dir = args.run_dir or os.path.join(RUNS, "sipa_learned_pruning" + suffix)
    args.output = args.output or (os.path.join(args.run_dir, "sipa_learned_pruning.json") if args.quick
                                  else os.path.join(RESULTS, "sipa_learned_pruning.json"))
    if args.quick:
        args.fine_tune_epochs, args.parity_examples = 1, 64
    return args


def _train(folder, args, **options):
    from tfgated.cli.train import TrainOptions, train

    if args.quick:
        options["limit"] = 512
        options.setdefault("overrides", {})["epochs"] = 1
    train(GATED, folder, TrainOptions(verbose=2, **options))
    return os.path.join(folder, "model.keras")


def gate_phase(args):
    if args.gates_model:
        return args.gates_model
    return _train(os.path.join(args.run_dir, "gates"), args, init_from=DENSE)


def hardened(gates_model, args):
    """``gates_model`` with every gate's logit set to +-10 by its threshold decision, saved beside
    the run folders: the same folded network, but training samples it (almost) deterministically."""
    import tfgated
    from tfgated.io import load_model, save_model

    path = os.path.join(args.run_dir, "gates_hardened.keras")
    if not os.path.exists(path):
        model = load_model(gates_model, compile=False)
        tfgated.harden_gates(model)  # what `python -m tfgated train --harden-gates` does
        save_model(model, path)
    return path


def fine_tune_phase(gates_model, args, name="fine_tune"):
    from tfgated.cli.train import FROZEN_GATES  # what the fine-tunes change in the gate settings

    overrides = {"epochs": args.fine_tune_epochs, "learning_rate": args.fine_tune_lr}
    return _train(os.path.join(args.run_dir, name), args, init_from=gates_model, gates=dict(FROZEN_GATES),
                  overrides=overrides)


def _run_epochs(model_path):
    """The epochs of the run that wrote ``model_path`` (its folder's ``config.json``)."""
    with open(os.path.join(os.path.dirname(model_path), "config.json"), encoding="utf-8") as f:
        return json.load(f)["recipe"]["epochs"]


def polarized_share(model):
    import numpy as np

    import tfgated

    p = np.concatenate([np.ravel(g.probabilities()) for g in tfgated.gate_layers(model)])
    return float(np.mean((p < POLAR_LOW) | (p > POLAR_HIGH))), int(p.size)


def score(model_path, test, parity_images):
    """Threshold top-1, measured and folded MACs, polarization and fold parity of one gated model."""
    import numpy as np

    import tfgated
    from tfgated.export.fold import fold
    from tfgated.io import load_model
    from tfgated.train import evaluate_model

    model = load_model(model_path, compile=False)
    result = evaluate_model(model, test, style="threshold", runs=1)
    tfgated.set_inference_style(model, "threshold")
    folded, report = fold(model, style="threshold", return_report=True)
    gap = float(np.max(np.abs(folded.predict(parity_images, verbose=0) - model.predict(parity_images, verbose=0))))
    share, gates = polarized_share(model)
    return {"model": os.path.relpath(model_path, os.path.dirname(HERE)), "top1": result["top1"],
            "top5": result["top5"], "gate_activation": result["gate_activation"], "gates": gates,
            "polarized_share": share, "macs": float(result["macs"]), "dense_macs": float(result["dense_macs"]),
            "folded_macs": float(report.macs_after), "channels_removed": int(sum(report.channels_removed.values())),
            "fold_max_abs_diff": gap}


def magnitude_rows():
    rows = []
    for name, label in MAGNITUDE_FILES:
        with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
            table = json.load(f)["tables"]["global_normalized"]
        last = table[-1]
        rows.append({"config": label, "source": f"benchmarks/results/{name}", "top1": last["test_accuracy"],
                     "sparsity": last["sparsity"], "mac_fraction": 1.0, "folded_mac_fraction": 1.0})
    return rows


def claims(rows):
    """The goal, checked on the most accurate learned row: MACs after folding <= 50% (+2 points of
    slack) and top-1 within 0.5 points of the shipped magnitude-pruned model."""
    reference = next(r for r in rows if r["config"].startswith("magnitude 50%, 20"))
    best = max((r for r in rows if "phase" in r), key=lambda r: r["top1"])
    macs_ok = bool(best["folded_mac_fraction"] <= GOAL_MAC_FRACTION + 0.02)
    gap = 100 * (reference["top1"] - best["top1"])
    met = bool(macs_ok and gap <= GOAL_POINTS)
    return {
        "goal": f"learned channel pruning at <= {GOAL_MAC_FRACTION:.0%} of the MACs (folded, +2 points of slack) "
                f"within {GOAL_POINTS} points of magnitude pruning at 50% ({reference['top1']:.4f})",
        "best_learned": {"config": best["config"], "top1": best["top1"],
                         "folded_mac_fraction": best["folded_mac_fraction"]},
        "magnitude_top1": reference["top1"],
        "gap_points": round(gap, 2),
        "macs_goal_met": macs_ok,
        "goal_met": met,
        "verdict": "reproduced" if met else "not reproduced",
    }


def table(rows):
    lines = ["| model | top-1 | MACs counted | MACs after folding | polarized gates | fold max abs diff |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        polar = f"{r['polarized_share']:.0%} of {r['gates']}" if "polarized_share" in r else "-"
        diff = f"{r['fold_max_abs_diff']:.1e}" if "fold_max_abs_diff" in r else "-"
        lines.append(f"| {r['config']} | {r['top1']:.4f} | {r['mac_fraction']:.1%} | {r['folded_mac_fraction']:.1%} "
                     f"| {polar} | {diff} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        learned = "phase" in r
        ax.scatter([r["folded_mac_fraction"]], [r["top1"]], marker="o" if learned else "s",
                   color="#1f77b4" if learned else ("black" if r["config"] == "dense parent" else "#d62728"))
        ax.annotate(r["config"], (r["folded_mac_fraction"], r["top1"]), fontsize=6, xytext=(4, -8),
                    textcoords="offset points")
    ax.set_xlabel("MACs per image after folding / dense MACs")
    ax.set_ylabel("test top-1 (threshold inference)")
    ax.set_title("SIPA Fashion-MNIST: learned channel pruning (blue) vs magnitude pruning (red)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from tfgated import zoo
    from tfgated.cli.train import FROZEN_GATES
    from tfgated.data import load_dataset
    from tfgated.data.fashion_mnist import load_fashion_mnist_arrays
    from tfgated.io import machine_info
    from tfgated.train import evaluate_model

    started = time.time()
    command = "python benchmarks/sipa_learned_pruning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    os.makedirs(args.run_dir, exist_ok=True)
    test = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, pixels="raw",
                        limit=2000 if args.quick else None).test
    parity_images = load_fashion_mnist_arrays()[1][0][: args.parity_examples]

    gates_model = gate_phase(args)
    fine_tuned = fine_tune_phase(gates_model, args)
    fine_tuned_hard = fine_tune_phase(hardened(gates_model, args), args, name="fine_tune_hardened")
    dense = evaluate_model(zoo.load(DENSE, weights="default", compile=False), test, style=None, runs=1)
    rows = [{"config": "dense parent", "top1": dense["top1"], "macs": float(dense["macs"]),
             "mac_fraction": 1.0, "folded_mac_fraction": 1.0}]
    labels = {"gates": "learned: gates, {} epochs", "fine_tune": "learned: + frozen-gate fine-tune, {} epochs",
              "fine_tune_hardened": "learned: + hardened frozen-gate fine-tune, {} epochs"}
    for phase, path in (("gates", gates_model), ("fine_tune", fine_tuned), ("fine_tune_hardened", fine_tuned_hard)):
        epochs = _run_epochs(path)
        row = {"config": labels[phase].format(epochs), "phase": phase, "epochs": epochs,
               **score(path, test, parity_images)}
        row["mac_fraction"] = row["macs"] / row["dense_macs"]
        row["folded_mac_fraction"] = row["folded_macs"] / row["dense_macs"]
        rows.append(row)
        print(f"{row['config']}: top-1 {row['top1']:.4f} at {row['folded_mac_fraction']:.1%} of the MACs folded",
              flush=True)
    rows += magnitude_rows()
    result = {
        "benchmark": "sipa_learned_pruning",
        "command": command,
        "quick": args.quick,
        "preset": GATED,
        "warm_start_from": DENSE,
        "gate_settings": zoo.get_preset(GATED)["gates"],
        "fine_tune": {"epochs": args.fine_tune_epochs, "learning_rate": args.fine_tune_lr, "gates": FROZEN_GATES},
        "test_examples": 2000 if args.quick else 10000,
        "paper": {"source": "Lee et al. (SIPA), Sec. 2.3: magnitude pruning to 50% then 64% kept accuracy; "
                            "Herrmann et al.: Ind (Prune) channel gates as learned pruning",
                  "claim": "learned structured pruning matches magnitude pruning's accuracy at half the MACs"},
        "rows": rows,
        "claims": claims(rows),
        "table_markdown": table(rows),
        "seconds_total": time.time() - started,
        "machine": machine_info(),
    }
    write_result(result, args.output, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
