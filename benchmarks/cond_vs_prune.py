"""Study 3 of issue 24 (first half): conditional against pruned channel gating, the supplement's Table 1.

The Gumbel paper's supplement compares data-dependent channel gates (``Cond``: each input
chooses its channels) with data-independent ones (``Prune``: one learned set of channels for
every input, i.e. learned pruning) at activation targets 0.3, 0.4 and 0.5. This script trains
both kinds on the small gated MobileNetV2 for Fashion-MNIST (``gumbel_mobilenet_v2_fashion_mnist``,
62 gate groups on the expansions and projections, per-batch loss) at each target:

* fine-tuned from the trained dense ``mobilenet_v2_fashion_mnist`` (the authors' advice) with SGD
  0.01, momentum 0.9, cosine decay, for ``--epochs`` epochs on the first ``--limit`` training images;
  Prune gates take their gradients x100 (``benchmarks/gate_polarization.py``: the setting under which
  data-independent gates polarize), Cond gate networks x1 (arm ``cond``) and x30 (arm ``cond_x30``,
  added because at x1 the Cond gates stopped near open, at 86-100% of the MACs); all start open with
  probability 0.9 and weigh the activation loss 10;
* evaluated on the first ``--test-examples`` test images after re-estimating the batch-norm
  statistics under threshold inference (``tfgated.train.recalibrate_batch_norm``): threshold
  top-1, the MACs per image measured from the gates taken, and stochastic top-1 (``--runs``).

The dense model is evaluated the same way (its shipped weights), so every row has its MAC share
and its accuracy change. The claim it checks: at each target, which kind is more accurate, and
at how many MACs; and, at equal MACs, each Cond model against Prune's accuracy interpolated
linearly at the Cond model's MAC share (where Prune's rows span it). A Prune model folds into a smaller graph (``tfgated.export``); a Cond model's
savings need gather-run-scatter or masking at run time (issue 25).

    python benchmarks/cond_vs_prune.py               # 6 configurations, about 35 minutes on 2 cores
    python benchmarks/cond_vs_prune.py --quick       # smoke run, output under runs/

Each configuration keeps a resumable run folder and a row file under ``runs/cond_vs_prune/``.
Writes ``benchmarks/results/cond_vs_prune.json`` and ``cond_vs_prune.png`` (top-1 against MAC share).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from study_runs import resumable_rows, write_result  # noqa: E402

RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")
GATED = "gumbel_mobilenet_v2_fashion_mnist"
DENSE = "mobilenet_v2_fashion_mnist"
KINDS = {"prune": "independent", "cond": "dependent", "cond_x30": "dependent"}
#: The gate-gradient multiplier of each arm: Prune's logits x100; Cond's gate networks x1, and x30 in ``cond_x30``,
#: the arm added because at x1 the Cond gates stopped near open (86-100% of the MACs), too far from Prune's MACs to
#: compare the two at equal cost.
GRADIENT_SCALES = {"prune": 100.0, "cond": 1.0, "cond_x30": 30.0}
COLORS = {"prune": "#1f77b4", "cond": "#d62728", "cond_x30": "#ff7f0e"}
RECIPE = {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9}
#: Both kinds start their gates open with probability 0.9 (the presets: 0.982, where the sigmoid's slope is 0.018) and
#: weigh the activation loss 10: at the presets' settings neither reached its target in the budget (a first run: Prune
#: x500 stopped at activation 0.68 for t=0.3, Cond gates stayed open, 1.000).
GATE_SETTINGS = {"open_probability": 0.9, "weight": 10.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.4, 0.5])
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per configuration (default 2)")
    p.add_argument("--limit", type=int, default=30000, help="first N training images (default 30000; 0: all)")
    p.add_argument("--test-examples", type=int, default=5000, help="first N test images (default 5000)")
    p.add_argument("--runs", type=int, default=3, help="runs of stochastic inference (default 3)")
    p.add_argument("--recalibrate-batches", type=int, default=20,
                   help="batches of 256 training images for the batch-norm statistics (default 20)")
    p.add_argument("--run-dir", default=None, help="default runs/cond_vs_prune[_quick]")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/cond_vs_prune.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 target, 512 images, 1 epoch, 256 test images")
    args = p.parse_args(argv)
    if not all(0.0 < t < 1.0 for t in args.targets):
        p.error(f"targets must lie in (0, 1). Received: {args.targets}")
    if args.quick:
        args.targets, args.limit, args.epochs, args.test_examples = [0.4], 512, 1, 256
        args.runs, args.recalibrate_batches = 2, 2
    name = "cond_vs_prune_quick" if args.quick else "cond_vs_prune"
    args.run_dir = args.run_dir or os.path.join(RUNS, name)
    args.output = args.output or (
        os.path.join(args.run_dir, "cond_vs_prune.json") if args.quick else os.path.join(RESULTS, "cond_vs_prune.json")
    )
    return args


def train_options(kind, target, args):
    """The :class:`tfgated.cli.train.TrainOptions` of one configuration."""
    from tfgated.cli.train import TrainOptions

    gates = {"kind": KINDS[kind], "target": target, **GATE_SETTINGS}
    if GRADIENT_SCALES[kind] != 1.0:
        gates["gradient_scale"] = GRADIENT_SCALES[kind]
    return TrainOptions(limit=args.limit or None, overrides={**RECIPE, "epochs": args.epochs}, gates=gates,
                        init_from=DENSE, verbose=2)


def evaluate(model, test, calibration, args, gated=True):
    """Threshold (and stochastic) top-1 and measured MACs after re-estimating the batch-norm statistics."""
    from tfgated.train import evaluate_model, recalibrate_batch_norm

    style = "threshold" if gated else None
    before = evaluate_model(model, test, style=style, runs=1)["top1"]
    recalibrate_batch_norm(model, calibration, style=style, batches=args.recalibrate_batches)
    result = evaluate_model(model, test, style=style, runs=1)
    row = {"top1": result["top1"], "top1_before_recalibration": before, "macs": float(result["macs"]),
           "dense_macs": float(result["dense_macs"]), "gate_activation": result.get("gate_activation")}
    if gated:
        stochastic = evaluate_model(model, test, style="stochastic", runs=args.runs)
        row["stochastic"] = {"top1": stochastic["top1"], "top1_std": stochastic.get("top1_std"),
                             "macs": float(stochastic["macs"])}
        import tfgated

        tfgated.set_inference_style(model, "threshold")
    return row


def _prune_at(prune_rows, mac_fraction):
    """Prune's top-1 interpolated linearly at ``mac_fraction`` between its rows; None outside their range."""
    line = sorted((r["mac_fraction"], r["top1"]) for r in prune_rows)
    for (m0, a0), (m1, a1) in zip(line, line[1:]):
        if m0 <= mac_fraction <= m1:
            return a0 if m1 == m0 else a0 + (a1 - a0) * (mac_fraction - m0) / (m1 - m0)
    return None


def claims(rows):
    """Per Cond arm: at each target, is it more accurate than Prune (threshold inference), and at what MAC
    share; and against Prune's accuracy interpolated at the Cond model's own MAC share (equal MACs)."""
    by = {(r["kind"], r["target"]): r for r in rows if r["kind"] != "dense"}
    prune_rows = [r for r in rows if r["kind"] == "prune"]
    result = {}
    for arm in (k for k in KINDS if k != "prune"):
        pairs, equal = [], []
        for target in sorted({t for _, t in by}):
            cond, prune = by.get((arm, target)), by.get(("prune", target))
            if cond and prune:
                pairs.append({"target": target,
                              "cond": {"top1": cond["top1"], "mac_fraction": cond["mac_fraction"]},
                              "prune": {"top1": prune["top1"], "mac_fraction": prune["mac_fraction"]},
                              "cond_better": bool(cond["top1"] > prune["top1"])})
            if cond:
                at = _prune_at(prune_rows, cond["mac_fraction"])
                if at is not None:
                    equal.append({"target": target, "mac_fraction": cond["mac_fraction"], "cond": cond["top1"],
                                  "prune_interpolated": at, "cond_better": bool(cond["top1"] > at)})
        if not pairs:
            continue
        key = "cond_beats_prune" if arm == "cond" else f"{arm}_beats_prune"
        result[key] = {"pairs": pairs, "wins": sum(p["cond_better"] for p in pairs), "of": len(pairs)}
        result[key.replace("beats_prune", "beats_prune_at_equal_macs")] = {
            "pairs": equal, "wins": sum(p["cond_better"] for p in equal), "of": len(equal)}
    return result


def table(rows):
    lines = ["| model | target | gate activation | MACs (share of dense) | top-1 (threshold) | stochastic |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        activation = "-" if r["gate_activation"] is None else f"{r['gate_activation']:.3f}"
        stochastic = f"{r['stochastic']['top1']:.4f}" if "stochastic" in r else "-"
        target = "-" if r["target"] is None else f"{r['target']:g}"
        lines.append(f"| {r['kind']} | {target} | {activation} | {r['macs'] / 1e6:.2f}M ({r['mac_fraction']:.1%}) "
                     f"| {r['top1']:.4f} | {stochastic} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in COLORS.items():
        line = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["mac_fraction"])
        ax.plot([r["mac_fraction"] for r in line], [r["top1"] for r in line], "o-", color=color,
                label=f"{kind.capitalize()} ({KINDS[kind]} gates, gradients x{GRADIENT_SCALES[kind]:g})")
        for r in line:
            ax.annotate(f"t={r['target']:g}", (r["mac_fraction"], r["top1"]), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")
    dense = next(r for r in rows if r["kind"] == "dense")
    ax.scatter([1.0], [dense["top1"]], marker="s", color="black", label="dense")
    ax.set_xlabel("MACs per image / dense MACs (threshold inference)")
    ax.set_ylabel("test top-1")
    ax.set_title("Channel gating on MobileNetV2, Fashion-MNIST", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def train_point(point, folder, test, calibration, args):
    """Fine-tune one configuration in ``folder`` and evaluate it: its row."""
    from tfgated.cli.train import train
    from tfgated.io import load_model

    kind, target = point
    t0 = time.time()
    options = train_options(kind, target, args)
    metrics = train(GATED, folder, options)
    row = {"config": f"{kind}_t{target:g}", "kind": kind, "target": target, "gate_settings": options.gates,
           "train_seconds": metrics.get("train_seconds"), **evaluate(load_model(folder), test, calibration, args)}
    row["seconds"] = time.time() - t0
    return row


def main(argv=None):
    args = parse_args(argv)
    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.io import machine_info

    os.makedirs(args.run_dir, exist_ok=True)
    started = time.time()
    command = "python benchmarks/cond_vs_prune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    test = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, limit=args.test_examples, pixels="raw").test
    calibration = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, validation_split=0.0, pixels="raw",
                               limit=256 * args.recalibrate_batches).train
    dense = {"kind": "dense", "target": None, "preset": DENSE,
             **evaluate(zoo.load(DENSE, weights="default"), test, calibration, args, gated=False)}
    points = [(kind, target) for target in args.targets for kind in KINDS]
    rows = [dense] + resumable_rows(
        points, lambda point: f"{point[0]}_t{point[1]:g}", args.run_dir, "cond_vs_prune_row.json",
        lambda point, folder: train_point(point, folder, test, calibration, args),
        lambda row: f"top-1 {row['top1']:.4f} at {row['macs'] / row['dense_macs']:.1%} of the MACs")
    for r in rows:
        r["mac_fraction"] = r["macs"] / dense["macs"]
        r["accuracy_change_points"] = 100.0 * (r["top1"] - dense["top1"])

    result = {
        "benchmark": "cond_vs_prune",
        "command": command,
        "quick": args.quick,
        "preset": GATED,
        "warm_start_from": DENSE,
        "recipe_overrides": RECIPE,
        "gradient_scales": GRADIENT_SCALES,
        "gate_settings": GATE_SETTINGS,
        "epochs": args.epochs,
        "train_images": args.limit or "all (54,000 after the validation split)",
        "test_examples": args.test_examples,
        "runs": args.runs,
        "recalibrate_batches": args.recalibrate_batches,
        "paper": {"source": "Herrmann et al., supplement Table 1 (ResNet-50 on ImageNet, channel gates, Cond "
                            "against Prune at targets .3/.4/.5)",
                  "numbers": "not quoted: the table's values could not be read from the copy available here"},
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
