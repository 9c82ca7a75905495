"""Layer gating on Fashion-MNIST: Ind/Dep x PB/PG at t = 0.4 and 0.6 on the small gated ResNet.

The analog of the Gumbel paper's supplement Figures 3 and 5-8 and Table 2, at a budget sized
for 2 CPU cores. For each of the eight presets ``gumbel_resnet_fashion_mnist_{ind,dep}_{pb,pg}_t{0.4,0.6}``
it trains the preset's recipe for ``--epochs`` on the first ``--limit`` training images
(``tfgated.cli.train.train``, one resumable run folder per configuration), then evaluates on the first
``--test-examples`` test images:

* threshold, always-on, stochastic (mean and std over 5 runs) and ensemble of 5 (5 runs) top-1;
* mean gate activation (threshold inference) and measured MACs;
* polarization: the share of gates whose activation rate over the test images, with the gates
  sampled as in training (stochastic inference), is below 1% or above 99%. Under threshold
  inference a data-independent gate is always exactly open or closed, so threshold rates would
  call every Ind gate polarized; sampled rates are its open probability. Threshold rates are
  kept beside them (``threshold_gate_rates``).

Budget note: a data-independent gate starts at logit 4 and Adam moves a logit by at most about
the learning rate (2e-3) per step, so Ind gates need thousands of steps to close; at a few
epochs they stay open. ``--kinds dep`` runs the four data-dependent configurations, whose gate
networks reach their targets within a few epochs; the full recipe (15 epochs) is the budget
for all eight. At a few epochs, ``--ind-open-probability`` (a lower starting probability, so a
gate can cross 0.5 within the steps it has) and ``--ind-loss-weight`` (the activation loss
outweighs the task's pull on the gate) change the Ind presets' gate settings; every row records
the settings it trained with.

``--merge FILE`` keeps the rows of an earlier result file for the configurations this run does
not train, so the two halves can run in separate sessions and still share one table, one set of
claims and one figure (each row keeps the command that produced it). ``--reevaluate`` evaluates
finished configurations again with this script's evaluation: from their run folders, and merged
rows from the zoo weights their preset ships (the study's own models), so every row is measured
the same way.

The paper's claims it tests, each reported as true/false with the numbers behind it:
per-batch beats per-gate at equal target (same kind); threshold beats stochastic; the ensemble is
best of the stochastic styles (and matches or beats threshold); gates polarize.

    python benchmarks/layer_gating.py --kinds dep        # about 40 minutes on 2 cores
    python benchmarks/layer_gating.py --kinds ind --ind-open-probability 0.75 --ind-loss-weight 10 \
        --merge benchmarks/results/layer_gating.json    # the Ind half, added to the Dep rows
    python benchmarks/layer_gating.py                    # all eight: about 80 minutes
    python benchmarks/layer_gating.py --quick            # smoke run, output under runs/

Writes ``benchmarks/results/layer_gating.json`` and ``layer_gating.png`` (accuracy against
activation, one marker per configuration and inference style).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")
KINDS = ("ind", "dep")
LOSSES = ("pb", "pg")
TARGETS = (0.4, 0.6)
POLAR_LOW, POLAR_HIGH = 0.01, 0.99


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs per configuration (default 5)")
    p.add_argument("--limit", type=int, default=0, help="first N training images (default 0: all 60,000)")
    p.add_argument("--test-examples", type=int, default=5000, help="first N test images (default 5000)")
    p.add_argument("--runs", type=int, default=5, help="repetitions of stochastic and ensemble (default 5)")
    p.add_argument("--samples", type=int, default=5, help="passes per ensemble prediction (default 5)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    p.add_argument("--targets", nargs="+", type=float, choices=TARGETS, default=list(TARGETS))
    p.add_argument("--ind-open-probability", type=float, default=None,
                   help="starting open probability of the Ind gates (default: the preset's)")
    p.add_argument("--ind-loss-weight", type=float, default=None,
                   help="activation loss weight of the Ind presets (default: the preset's)")
    p.add_argument("--merge", default=None,
                   help="an earlier result JSON whose rows fill in the configurations not run here")
    p.add_argument("--reevaluate", action="store_true",
                   help="evaluate finished configurations again (run folders; merged rows from the zoo weights)")
    p.add_argument("--run-dir", default=None, help="default runs/layer_gating[_quick]")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/layer_gating.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 600 images, 1 epoch, 2 runs, output under runs/")
    args = p.parse_args(argv)
    if args.ind_open_probability is not None and not 0.0 < args.ind_open_probability < 1.0:
        p.error(f"--ind-open-probability must lie in (0, 1). Received: {args.ind_open_probability}")
    if args.ind_loss_weight is not None and args.ind_loss_weight <= 0:
        p.error(f"--ind-loss-weight must be positive. Received: {args.ind_loss_weight}")
    if args.merge and not os.path.exists(args.merge):
        p.error(f"--merge: no result file at {args.merge!r}")
    if args.quick:
        args.limit, args.epochs, args.test_examples = min(args.limit or 600, 600), 1, min(args.test_examples, 300)
        args.runs, args.samples = 2, 2
    name = "layer_gating_quick" if args.quick else "layer_gating"
    args.run_dir = args.run_dir or os.path.join(RUNS, name)
    args.output = args.output or (
        os.path.join(args.run_dir, "layer_gating.json") if args.quick else os.path.join(RESULTS, "layer_gating.json")
    )
    return args


def preset_name(kind, loss, target):
    return f"gumbel_resnet_fashion_mnist_{kind}_{loss}_t{target}"


def gate_settings(kind, args):
    """The gate settings that replace the preset's for ``kind`` (empty: the preset's own)."""
    settings = {}
    if kind == "ind":
        if args.ind_open_probability is not None:
            settings["open_probability"] = args.ind_open_probability
        if args.ind_loss_weight is not None:
            settings["weight"] = args.ind_loss_weight
    return settings


def merged_rows(path, configs, test=None, args=None):
    """Rows of an earlier result file whose configuration is not among ``configs``.

    With ``test`` (``--reevaluate``) a row whose preset ships zoo weights is evaluated again
    from them; ``evaluated_from`` says where its numbers come from.
    """
    from tfgated import zoo

    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)
    rows = []
    for row in earlier["rows"]:
        if (row["kind"], row["loss"], row["target"]) in configs:
            continue
        row = {"command": earlier.get("command"), "epochs": earlier.get("epochs"), **row}
        if test is not None and zoo.weights_status(row["preset"]) == "available":
            model = zoo.load(row["preset"], weights="default", compile=False)
            row.update(evaluate_config(model, test, args), evaluated_from=f"zoo weights of {row['preset']}")
            print(f"re-evaluated {row['preset']} from its zoo weights: threshold {row['threshold']['top1']:.4f}",
                  flush=True)
        rows.append(row)
    return rows


def polarized_share(rates):
    """Share of gates whose open rate is below 1% or above 99% (``POLAR_LOW``, ``POLAR_HIGH``)."""
    import numpy as np

    rates = np.asarray(rates)
    return float(np.mean((rates < POLAR_LOW) | (rates > POLAR_HIGH)))


def first_test_images(examples):
    """The first ``examples`` Fashion-MNIST test images as raw pixels, in batches of 256."""
    from tfgated.data import load_dataset

    test = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, pixels="raw").test
    return test.unbatch().take(examples).batch(256)


def evaluate_config(model, test, args):
    """Every inference style, activation and polarization of one trained model."""
    import numpy as np

    from tfgated.inference import STYLES, gate_rates, set_inference_style
    from tfgated.train import evaluate_model

    row = {}
    for style in STYLES:
        row[style] = evaluate_model(model, test, style=style, runs=args.runs, samples=args.samples)
        row[style].pop("per_run", None)
    x = np.concatenate([np.asarray(b[0]) for b in test])
    rates = {}
    for style in ("threshold", "stochastic"):
        set_inference_style(model, style)
        rates[style] = np.concatenate([np.ravel(v) for v in gate_rates(model, x).values()])
    set_inference_style(model, "threshold")
    row["gates"] = int(rates["stochastic"].size)
    row["gate_rates"] = rates["stochastic"].tolist()
    row["threshold_gate_rates"] = rates["threshold"].tolist()
    row["polarized_share"] = polarized_share(rates["stochastic"])
    return row


def claims(rows):
    """The paper's four claims, checked on the rows."""
    by = {(r["kind"], r["loss"], r["target"]): r for r in rows}
    pb_vs_pg = []
    for (kind, loss, target), r in by.items():
        other = by.get((kind, "pg", target))
        if loss == "pb" and other:
            pb_vs_pg.append({
                "kind": kind, "target": target,
                "pb": {"top1": r["threshold"]["top1"], "activation": r["threshold"]["gate_activation"]},
                "pg": {"top1": other["threshold"]["top1"], "activation": other["threshold"]["gate_activation"]},
                "pb_better": bool(r["threshold"]["top1"] > other["threshold"]["top1"]),
            })
    threshold_vs_stochastic = [bool(r["threshold"]["top1"] > r["stochastic"]["top1"]) for r in rows]
    ensemble_best_stochastic = [bool(r["ensemble"]["top1"] >= r["stochastic"]["top1"]) for r in rows]
    ensemble_vs_threshold = [bool(r["ensemble"]["top1"] >= r["threshold"]["top1"]) for r in rows]
    polarized = [r["polarized_share"] for r in rows]
    return {
        "per_batch_beats_per_gate": {"pairs": pb_vs_pg, "wins": sum(p["pb_better"] for p in pb_vs_pg), "of": len(pb_vs_pg)},
        "threshold_beats_stochastic": {"wins": sum(threshold_vs_stochastic), "of": len(rows)},
        "ensemble_beats_stochastic": {"wins": sum(ensemble_best_stochastic), "of": len(rows)},
        "ensemble_at_least_threshold": {"wins": sum(ensemble_vs_threshold), "of": len(rows)},
        "polarization": {"mean_share": float(sum(polarized) / len(polarized)) if polarized else None,
                         "rule": f"share of gates with test activation rate < {POLAR_LOW} or > {POLAR_HIGH}"},
    }


def _settings_label(row):
    """`` (p0=0.75, w=10)`` for a row whose gate settings differ from its preset's."""
    names = {"open_probability": "p0", "weight": "w"}
    settings = row.get("gate_settings") or {}
    if not settings:
        return ""
    return " (" + ", ".join(f"{names.get(k, k)}={v:g}" for k, v in sorted(settings.items())) + ")"


def table(rows):
    lines = [
        "| config | activation | threshold | always-on | stochastic (5) | ensemble of 5 | polarized |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, e = r["stochastic"], r["ensemble"]
        lines.append(
            f"| {r['kind'].capitalize()}-{r['loss'].upper()} t={r['target']}{_settings_label(r)} "
            f"| {r['threshold']['gate_activation']:.3f} "
            f"| {r['threshold']['top1']:.4f} | {r['always_on']['top1']:.4f} "
            f"| {s['top1']:.4f} +- {s.get('top1_std', 0):.4f} | {e['top1']:.4f} +- {e.get('top1_std', 0):.4f} "
            f"| {r['polarized_share']:.0%} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    markers = {"threshold": "o", "stochastic": "x", "ensemble": "^"}
    colors = {("ind", "pb"): "#1f77b4", ("ind", "pg"): "#aec7e8", ("dep", "pb"): "#d62728", ("dep", "pg"): "#ff9896"}
    for r in rows:
        color = colors[(r["kind"], r["loss"])]
        for mode, marker in markers.items():
            ax.scatter(r["threshold"]["gate_activation"], r[mode]["top1"], marker=marker, color=color,
                       label=f"{r['kind'].capitalize()}-{r['loss'].upper()} {mode}")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=6, ncol=2)
    ax.set_xlabel("mean gate activation (threshold inference)")
    ax.set_ylabel("test top-1")
    ax.set_title("Accuracy against activation", fontsize=9)
    for r in (r for r in rows if "gate_rates" in r):  # rows merged from older files may lack them
        bx.hist(r["gate_rates"], bins=20, range=(0, 1), histtype="step", color=colors[(r["kind"], r["loss"])],
                label=f"{r['kind'].capitalize()}-{r['loss'].upper()} t={r['target']}")
    bx.set_xlabel("per-gate activation rate on test images")
    bx.set_ylabel("gates")
    bx.set_title("Polarization", fontsize=9)
    bx.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from tfgated.io import machine_info, write_json
    from tfgated.cli.train import TrainOptions, train
    from tfgated.io import load_model

    os.makedirs(args.run_dir, exist_ok=True)
    started = time.time()
    test = first_test_images(args.test_examples)
    rows = []
    configs = [(k, l, t) for k in args.kinds for l in args.losses for t in args.targets]
    command = "python benchmarks/layer_gating.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for i, (kind, loss, target) in enumerate(configs):
        name = preset_name(kind, loss, target)
        run_dir = os.path.join(args.run_dir, name)
        row_path = os.path.join(run_dir, "layer_gating_row.json")
        if os.path.exists(row_path):
            with open(row_path) as f:
                row = json.load(f)
            if args.reevaluate:
                row.update(evaluate_config(load_model(run_dir), test, args), evaluated_from=run_dir)
                write_json(row_path, row)
                print(f"[{i + 1}/{len(configs)}] {name}: re-evaluated from {run_dir}", flush=True)
            else:
                print(f"[{i + 1}/{len(configs)}] {name}: loaded from {row_path}", flush=True)
            rows.append(row)
            continue
        images = args.limit or "all"
        print(f"[{i + 1}/{len(configs)}] {name}: training {args.epochs} epoch(s) on {images} training images", flush=True)
        t0 = time.time()
        settings = gate_settings(kind, args)
        options = TrainOptions(limit=args.limit or None, overrides={"epochs": args.epochs},
                               gates=settings or None, verbose=2)
        metrics = train(name, run_dir, options)
        model = load_model(run_dir)
        row = {"preset": name, "kind": kind, "loss": loss, "target": target, "gate_settings": settings,
               "command": command, "epochs": args.epochs,
               "train_seconds": metrics.get("train_seconds"), **evaluate_config(model, test, args)}
        row["seconds"] = time.time() - t0
        write_json(row_path, row)
        rows.append(row)
        print(f"[{i + 1}/{len(configs)}] {name}: threshold {row['threshold']['top1']:.4f} at activation "
              f"{row['threshold']['gate_activation']:.3f}, stochastic {row['stochastic']['top1']:.4f}, "
              f"ensemble {row['ensemble']['top1']:.4f}, polarized {row['polarized_share']:.0%}", flush=True)

    if args.merge:
        earlier = merged_rows(args.merge, configs, test if args.reevaluate else None, args)
        print(f"Merged {len(earlier)} row(s) from {args.merge}", flush=True)
        rows = earlier + rows
    result = {
        "benchmark": "layer_gating",
        "command": command,
        "quick": args.quick,
        "epochs": args.epochs,
        "train_images": args.limit or "all (54,000 after the validation split)",
        "test_examples": args.test_examples,
        "runs": args.runs,
        "samples": args.samples,
        "rows": rows,
        "claims": claims(rows),
        "table_markdown": table(rows),
        "seconds_total": time.time() - started,
        "machine": machine_info(),
    }
    write_json(args.output, result, sort_keys=True)
    png = os.path.splitext(args.output)[0] + ".png"
    plot(rows, png)
    print(result["table_markdown"])
    print(json.dumps(result["claims"], indent=2))
    print(f"Wrote {args.output} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
