"""Batch-1 latency of an exported SIPA early-exit model against its measured mean MACs.

Issue goal (export): for early exit at batch 1, the mean latency over the test set tracks
the measured mean MACs the way folded channel gates do: early-exit latency / no-exit latency
<= 1.25 x (mean MACs / no-exit MACs), i.e. at least 80% of the ideal saving.

Steps (each finished one is kept under ``--run-dir``, so a killed run resumes):

1. the model: ``--model FILE.keras`` (a two-output ``[main, exit]`` model, or a single-output
   network that gets SIPA's exit head after block ``--after``), or else the zoo preset
   ``sipa_fashion_mnist`` trained here for ``--epochs`` on ``--limit`` images;
2. the exit head trained with the main network frozen (soft smoothing, ``--exit-epochs``);
3. the threshold calibrated on the validation split for ``--exit-ratio`` (default 0.5; or
   ``--max-drop`` for an accuracy drop);
4. four files: the main network alone and the early-exit model, each as TFLite (the exit as an
   ``IF``: the rest runs only for examples that continue) and ONNX (masked: both paths run);
5. every file run on the same ``--examples`` real test images one at a time, interleaved over
   ``--rounds``, 1 thread; the mean over the images is the file's latency on that data.

The latency ratio is compared with the MAC ratio measured by the split inference
(:class:`tfgated.exits.EarlyExitModel`) on the same images.

    python benchmarks/export_early_exit.py                  # about 10 minutes on 2 cores
    python benchmarks/export_early_exit.py --quick          # smoke run, output under runs/

Writes ``benchmarks/results/export_early_exit.json`` and ``.png``.
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
IDEAL_FRACTION = 0.8  # the latency ratio may be at most 1 / 0.8 = 1.25 x the MAC ratio


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a trained .keras model ([main, exit] or single output)")
    p.add_argument("--preset", default="sipa_fashion_mnist", help="zoo preset trained here without --model")
    p.add_argument("--after", type=int, default=4, help="MBConv block the exit follows (default 4, SIPA's)")
    p.add_argument("--epochs", type=int, default=2, help="epochs for the base model without --model (default 2)")
    p.add_argument("--exit-epochs", type=int, default=2, help="epochs for the exit head (default 2)")
    p.add_argument("--limit", type=int, default=12000, help="images per split used for training (default 12000)")
    calibration = p.add_mutually_exclusive_group()
    calibration.add_argument("--exit-ratio", type=float, default=None, help="target exit ratio (default 0.5)")
    calibration.add_argument("--max-drop", type=float, default=None, help="allowed accuracy drop (fraction)")
    p.add_argument("--examples", type=int, default=1000, help="test images timed per file (default 1000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="default runs/export_early_exit[_quick]")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/export_early_exit.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,200 images, 1 epoch, 100 timed images")
    args = p.parse_args(argv)
    if args.exit_ratio is None and args.max_drop is None:
        args.exit_ratio = 0.5
    if args.exit_ratio is not None and not 0.0 < args.exit_ratio <= 1.0:
        p.error(f"--exit-ratio must be in (0, 1]. Received: {args.exit_ratio}")
    if args.quick:
        args.limit, args.epochs, args.exit_epochs = min(args.limit, 1200), 1, 1
        args.examples, args.rounds = min(args.examples, 100), 1
    name = "export_early_exit_quick" if args.quick else "export_early_exit"
    args.run_dir = args.run_dir or os.path.join(RUNS, name)
    args.output = args.output or (
        os.path.join(args.run_dir, "export_early_exit.json") if args.quick else os.path.join(RESULTS, "export_early_exit.json")
    )
    return args


def exit_model(args, keras, ee, splits):
    """The trained two-output model, from the run folder, --model, or trained here."""
    from tfgated.io import load_model, save_model

    import tfgated.zoo as zoo

    path = os.path.join(args.run_dir, "exit_model.keras")
    if os.path.exists(path):
        print(f"Loading the trained exit model from {path}", flush=True)
        return load_model(path, compile=True)
    if args.model:
        model = load_model(args.model, compile=True)
        if len(model.outputs) == 2:
            save_model(model, path)
            return model
    else:
        model = zoo.load(args.preset, weights=None)
        print(f"Training {args.preset} for {args.epochs} epoch(s) on {args.limit} images", flush=True)
        model.fit(splits.train, validation_data=splits.validation, epochs=args.epochs, verbose=2)
    with_exit = ee.attach_exit(model, args.after)
    print(f"Training the exit head after block {args.after} for {args.exit_epochs} epoch(s)", flush=True)
    ee.train_exit(with_exit, splits.train, splits.validation, epochs=args.exit_epochs, verbose=2)
    save_model(with_exit, path)
    return with_exit


def collect(dataset):
    import numpy as np

    xs, ys = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels, values, colors = [], [], []
    for runtime in ("litert", "onnxruntime"):
        r = result["runtimes"][runtime]
        labels += [f"{runtime}\nno exit", f"{runtime}\nearly exit ({r['form']})"]
        values += [1.0, r["latency_ratio"]]
        colors += ["#888888", "#1f77b4" if r["form"] == "conditional" else "#ff7f0e"]
    ax.bar(range(len(values)), values, color=colors)
    mac = result["mac_ratio"]
    ax.axhline(mac, color="k", linestyle="--", linewidth=1, label=f"mean MACs / no-exit MACs = {mac:.3f}")
    ax.axhline(mac / IDEAL_FRACTION, color="r", linestyle=":", linewidth=1, label=f"goal: <= {mac / IDEAL_FRACTION:.3f}")
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("mean batch-1 latency / no exit")
    ax.set_title(f"Early exit after block {result['after']}: {result['exit_ratio']:.1%} of {result['examples']} test images exit", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.set_ylim(0, max(1.25, max(values) + 0.15) + 0.25)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def replot(json_path):
    """Redraw the PNG of a finished run from its JSON."""
    with open(json_path) as f:
        plot(json.load(f), os.path.splitext(json_path)[0] + ".png")


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    from tfgated import exits as ee
    from tfgated.data import load_dataset
    from tfgated.export import export, export_early_exit, measure_inputs
    from tfgated.io import machine_info, write_json

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.run_dir, exist_ok=True)
    started = time.time()
    splits = load_dataset("fashion_mnist", batch_size=128, limit=args.limit, seed=args.seed, validation_split=0.1, pixels="raw")
    model = exit_model(args, keras, ee, splits)

    val_x, val_y = collect(splits.validation)
    main_val, exit_val = model.predict(val_x, batch_size=256, verbose=0)
    calibration = ee.calibrate_threshold(
        exit_val, main_val, val_y, max_accuracy_drop=args.max_drop, target_exit_ratio=args.exit_ratio
    )
    threshold = float(calibration.threshold)
    print(f"Threshold {threshold:.4f} (validation: exit ratio {calibration.exit_ratio:.3f})", flush=True)

    full = load_dataset("fashion_mnist", batch_size=256, shuffle_buffer=0, validation_split=0.1, pixels="raw")
    test_x, test_y = collect(full.test)
    test_x, test_y = test_x[: args.examples], test_y[: args.examples]
    split = ee.EarlyExitModel(model, threshold)
    measured = split.predict(test_x, labels=test_y)
    main_model = keras.Model(model.inputs, model.outputs[0], name=f"{model.name}_main")
    main_acc = float(np.mean(main_model.predict(test_x, batch_size=256, verbose=0).argmax(1) == test_y))

    files = {}
    parity_x = test_x[:200]
    for runtime, ext in (("litert", "tflite"), ("onnxruntime", "onnx")):
        main_path = os.path.join(args.run_dir, f"main.{ext}")
        exit_path = os.path.join(args.run_dir, f"early_exit.{ext}")
        export(main_model, main_path, parity_data=parity_x)
        result = export_early_exit(model, exit_path, threshold, parity_data=parity_x)
        files[runtime] = {"main": main_path, "exit": exit_path, "form": result.sidecar["early_exit"]["form"],
                          "parity": result.parity}

    timings = {rt: {"main": [], "exit": []} for rt in files}
    outputs = {}
    for r in range(args.rounds):
        for runtime, f in files.items():
            for kind in ("main", "exit"):
                t = measure_inputs(f[kind], test_x, threads=args.threads, warmup=20)
                timings[runtime][kind].append(t["mean_ms"])
                outputs[(runtime, kind)] = t.pop("outputs")
                print(f"round {r + 1}/{args.rounds} {runtime:12s} {kind:5s}: mean {t['mean_ms']:.3f} ms "
                      f"(median {t['median_ms']:.3f})", flush=True)

    macs = split.macs
    mac_ratio = measured.mean_macs / macs["main"]
    runtimes = {}
    for runtime, f in files.items():
        main_ms = float(np.median(timings[runtime]["main"]))
        exit_ms = float(np.median(timings[runtime]["exit"]))
        ratio = exit_ms / main_ms
        runtimes[runtime] = {
            "form": f["form"],
            "main_mean_ms": main_ms,
            "early_exit_mean_ms": exit_ms,
            "round_means_ms": timings[runtime],
            "latency_ratio": ratio,
            "goal_latency_ratio": mac_ratio / IDEAL_FRACTION,
            "share_of_ideal_saving": (1 - ratio) / (1 - mac_ratio) if mac_ratio < 1 else None,
            "met": bool(ratio <= mac_ratio / IDEAL_FRACTION),
            "accuracy_file": float(np.mean(outputs[(runtime, "exit")].argmax(1) == test_y)),
            "parity": f["parity"],
            "files": {k: os.path.relpath(f[k], os.path.dirname(HERE)) for k in ("main", "exit")},
        }
    result = {
        "benchmark": "export_early_exit",
        "command": "python benchmarks/export_early_exit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "model": model.name,
        "after": args.after,
        "threshold": threshold,
        "calibration": {"exit_ratio": calibration.exit_ratio, "criterion": "exit_ratio" if args.exit_ratio else "max_drop",
                        "target": args.exit_ratio if args.exit_ratio else args.max_drop},
        "examples": int(len(test_x)),
        "exit_ratio": measured.exit_ratio,
        "accuracy_early_exit": measured.accuracy,
        "accuracy_no_exit": main_acc,
        "macs": {k: int(v) for k, v in macs.items()},
        "mean_macs": measured.mean_macs,
        "mac_ratio": mac_ratio,
        "runtimes": runtimes,
        "threads": args.threads,
        "rounds": args.rounds,
        "goal": "early-exit latency / no-exit latency <= 1.25 x mean MACs / no-exit MACs (TFLite conditional form)",
        "met": runtimes["litert"]["met"],
        "seconds_total": time.time() - started,
        "machine": machine_info(),
    }
    write_json(args.output, result, sort_keys=True)
    png = os.path.splitext(args.output)[0] + ".png"
    plot(result, png)
    print(json.dumps({k: result[k] for k in ("threshold", "exit_ratio", "mac_ratio", "met")}, indent=2))
    for runtime, r in runtimes.items():
        print(f"{runtime}: no exit {r['main_mean_ms']:.3f} ms, early exit ({r['form']}) {r['early_exit_mean_ms']:.3f} ms, "
              f"ratio {r['latency_ratio']:.3f} (MAC ratio {mac_ratio:.3f}, goal <= {r['goal_latency_ratio']:.3f})")
    print(f"Wrote {args.output} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
