"""Latency of a channel-gated model exported dense, unfolded (masked) and folded.

A gated MobileNetV2 (zoo preset ``gumbel_mobilenet_v2_fashion_mnist``, built at
a larger input so latency is not dominated by per-call overhead) gets half of
each expansion gate's channels closed (independent gates, threshold style),
giving a model at roughly half the dense MACs. It is exported to TFLite three
ways and timed at batch 1 in LiteRT (and ONNX Runtime) with the same threads:

* ``dense``:    every gate open (``always_on``), folded to plain layers;
* ``unfolded``: the gated model exported as it is (``fold=False``): every
  channel computed, gates evaluated and closed channels multiplied by zero
  (the masked model: no speedup expected);
* ``folded``:   closed channels physically removed.

Goal: folded latency / dense latency <= 1.25 x (folded MACs / dense MACs).

    python benchmarks/export_latency.py                 # full measurement
    python benchmarks/export_latency.py --smoke         # quick check of the pipeline

Writes ``benchmarks/results/export_latency.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PRESET = "gumbel_mobilenet_v2_fashion_mnist"


def build_model(size, close_fraction=0.5, seed=0, preset=PRESET):
    """The gated ``preset`` at ``size`` x ``size``, with ``close_fraction`` of each expansion gate closed."""
    import keras

    import tfgated
    from tfgated import zoo

    keras.utils.set_random_seed(seed)
    channels = zoo.get_preset(preset)["input_shape"][-1]
    model = zoo.load(preset, weights=None, compile=False, input_shape=(size, size, channels))
    rng = np.random.default_rng(seed)
    for gate in tfgated.gate_layers(model):
        logits = np.full((gate.units,), 4.0, "float32")
        if gate.name.endswith("expand_gate"):
            closed = rng.permutation(gate.units)[: int(round(close_fraction * gate.units))]
            logits[closed] = -4.0
        gate.logits.assign(logits)
    tfgated.set_inference_style(model, "threshold")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=PRESET, help="gated zoo preset (default %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input height/width (default 224)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the files")
    parser.add_argument("--close-fraction", type=float, default=0.5)
    parser.add_argument("--onnx", action="store_true", help="also export and time ONNX files")
    parser.add_argument("--smoke", action="store_true", help="tiny run (input 32, 10 runs): checks the pipeline only")
    parser.add_argument("--out", default=os.path.join(RESULTS, "export_latency"), help="output path without extension")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.runs, args.warmup, args.rounds = 32, 10, 2, 1
        args.out = os.path.join(tempfile.mkdtemp(), "export_latency_smoke")

    from tfgated.export import export, latency
    from tfgated.export.fold import count_macs, fold

    model = build_model(args.size, args.close_fraction, preset=args.preset)
    channels = model.input_shape[-1]
    workdir = tempfile.mkdtemp(prefix="export_latency_")
    x = np.random.default_rng(1).random((64, args.size, args.size, channels)).astype("float32")
    variants = {
        "dense": dict(style="always_on"),
        "unfolded": dict(fold=False),
        "folded": dict(style="threshold"),
    }
    formats = ["tflite"] + (["onnx"] if args.onnx else [])
    files, sidecars = {}, {}
    for fmt in formats:
        for name, kwargs in variants.items():
            path = os.path.join(workdir, f"{name}.{fmt}")
            result = export(model, path, parity_data=x, **kwargs)
            files[(fmt, name)] = path
            sidecars[(fmt, name)] = result.sidecar
            print(f"exported {name}.{fmt}: parity max_abs_diff={result.parity['max_abs_diff']:.2e}")

    dense_macs = count_macs(fold(model, style="always_on"))
    folded_model, report = fold(model, style="threshold", return_report=True)
    folded_macs = count_macs(folded_model)
    mac_ratio = folded_macs / dense_macs
    print(report)

    rows = []
    for fmt in formats:
        paths = [files[(fmt, n)] for n in variants]
        results = latency.bench(paths, threads=args.threads, runs=args.runs, warmup=args.warmup, rounds=args.rounds)
        print(latency.format_table(results))
        for name, r in zip(variants, results):
            rows.append({"variant": name, "format": fmt, **r})

    summary = {}
    for fmt in formats:
        by = {r["variant"]: r for r in rows if r["format"] == fmt}
        latency_ratio = by["folded"]["median_ms"] / by["dense"]["median_ms"]
        summary[fmt] = {
            "latency_ratio_folded_over_dense": latency_ratio,
            "latency_ratio_unfolded_over_dense": by["unfolded"]["median_ms"] / by["dense"]["median_ms"],
            "goal": f"folded/dense latency <= 1.25 x MAC ratio ({1.25 * mac_ratio:.3f})",
            "goal_met": bool(latency_ratio <= 1.25 * mac_ratio),
        }
    payload = {
        "command": "python benchmarks/export_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset,
        "input_shape": [1, args.size, args.size, channels],
        "close_fraction": args.close_fraction,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "smoke": args.smoke,
        "dense_macs": int(dense_macs),
        "folded_macs": int(folded_macs),
        "mac_ratio": mac_ratio,
        "fold_report": report.summary(),
        "results": [{k: v for k, v in r.items() if k != "file"} | {"file": os.path.basename(r["file"])} for r in rows],
        "summary": summary,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from tfgated.io import write_atomic

    write_atomic(args.out + ".json", json.dumps(payload, indent=2) + "\n")
    _plot(rows, mac_ratio, args.out + ".png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}.json and {args.out}.png")


def _plot(rows, mac_ratio, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    formats = sorted({r["format"] for r in rows})
    fig, axes = plt.subplots(1, len(formats), figsize=(5 * len(formats), 4), squeeze=False)
    for ax, fmt in zip(axes[0], formats):
        sub = [r for r in rows if r["format"] == fmt]
        dense = next(r["median_ms"] for r in sub if r["variant"] == "dense")
        ax.bar([r["variant"] for r in sub], [r["median_ms"] for r in sub], color=["gray", "tab:orange", "tab:green"])
        ax.axhline(dense * mac_ratio, ls="--", c="k", lw=1, label=f"dense x MAC ratio ({mac_ratio:.2f})")
        ax.axhline(dense * mac_ratio * 1.25, ls=":", c="r", lw=1, label="goal (1.25 x)")
        ax.set_ylabel("median batch-1 latency (ms)")
        ax.set_title(f"{fmt} ({sub[0]['runtime']}, {sub[0]['threads']} thread(s))")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
