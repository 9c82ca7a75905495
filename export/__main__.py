"""Command line: ``python -m tfgated.export``.

Export::

    python -m tfgated.export --tflite MODEL -o out.tflite [--fp16 | --int8 ...]
    python -m tfgated.export --onnx MODEL -o out.onnx

``MODEL`` is a ``.keras`` file or a zoo preset name. A two-output early-exit model
(``[main, exit]``, see ``tfgated.exits``) needs ``--exit-threshold``; its file then
stops early (TFLite at batch 1: the rest of the network sits in an ``IF`` branch)::

    python -m tfgated.export --tflite exit_model.keras --exit-threshold 0.9 -o model.tflite

A model with Gumbel exit gates (``tfgated.exits``) exports with each exit as an ``IF`` the same
way, its gates deciding in threshold style (``--mode``), with no threshold argument.

Latency::

    python -m tfgated.export bench a.tflite b.onnx --threads 1 --runs 200 [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys

FASHION_MNIST_DIR = os.environ.get("TFGATED_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _export_parser():
    p = argparse.ArgumentParser(
        prog="python -m tfgated.export",
        description=(
            "Fold the gates of a tfgated model into plain layers and write TFLite or ONNX, "
            "with a parity check in the real runtime and a JSON sidecar (<output>.json). "
            "Use 'python -m tfgated.export bench FILE ...' to measure latency."
        ),
    )
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--tflite", metavar="MODEL", help="export MODEL (a .keras file or a zoo preset name) to TFLite")
    fmt.add_argument("--onnx", metavar="MODEL", help="export MODEL (a .keras file or a zoo preset name) to ONNX")
    p.add_argument("-o", "--output", required=True, help="output file (.tflite or .onnx), written atomically")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--fp16", action="store_true", help="TFLite with float16 weights (top-1 agreement >= 99.5%% checked)")
    q.add_argument("--int8", action="store_true", help="TFLite int8 post-training quantization (parity reported only)")
    p.add_argument(
        "--representative-data",
        default="fashion_mnist",
        metavar="fashion_mnist|FILE.npy",
        help="calibration inputs for --int8: real Fashion-MNIST test images resized to the model input, "
        "or a .npy array of inputs (default: fashion_mnist)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch size of the exported signature (default 1)")
    p.add_argument(
        "--mode",
        choices=["threshold", "always_on"],
        default=None,
        help="inference style of the gates to export (default: the model's own style)",
    )
    p.add_argument("--no-fold", action="store_true", help="export the gated model as is (masks computed at run time)")
    p.add_argument("--fold-batchnorm", action="store_true", help="also fold batch norms into the preceding convolutions")
    p.add_argument(
        "--no-conditional",
        action="store_true",
        help="keep data-dependent residual gates in masked form even at batch size 1 (TFLite)",
    )
    p.add_argument(
        "--exit-threshold",
        type=float,
        default=None,
        metavar="T",
        help="for a two-output early-exit model [main, exit]: an example exits when its maximum exit "
        "probability is above T; the file then runs the rest of the network only for the others",
    )
    p.add_argument(
        "--exit-form",
        choices=["conditional", "masked"],
        default=None,
        help="early exit as a conditional (TFLite at batch 1, the default there) or masked "
        "(both paths run, tf.where selects; the only form for ONNX)",
    )
    p.add_argument("--threads", type=int, default=None, help="runtime threads used by the parity check")
    p.add_argument("--no-check", action="store_true", help="write the file even if the parity check fails")
    p.add_argument("--input-shape", default=None, help="for zoo presets: input shape as H,W,C (e.g. 64,64,3)")
    p.add_argument("--class-names", default=None, help="comma-separated class names recorded in the sidecar")
    return p


def _bench_parser():
    p = argparse.ArgumentParser(
        prog="python -m tfgated.export bench",
        description="Batch-1 latency of exported .tflite (LiteRT) and .onnx (ONNX Runtime) files side by side.",
    )
    p.add_argument("files", nargs="+", help=".tflite / .onnx files")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per file; the median is reported (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the files (default 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def load_model(spec, input_shape=None):
    """A Keras model from a ``.keras`` file or a zoo preset name."""
    import keras

    import tfgated  # noqa: F401  (registers the gate layers)

    if spec.endswith(".keras") or os.path.sep in spec:
        if not os.path.exists(spec):
            raise FileNotFoundError(f"No such model file: {spec!r}")
        return keras.saving.load_model(spec, safe_mode=True, compile=False)
    from tfgated import zoo

    kwargs = {"compile": False}
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    return zoo.load(spec, **kwargs)


def fashion_mnist_inputs(shape, n=200):
    """``n`` real Fashion-MNIST test images in [0, 1], resized/tiled to ``shape`` (H, W, C)."""
    import numpy as np

    path = os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Fashion-MNIST not found at {path!r} (set TFGATED_FASHION_MNIST_DIR)")
    with gzip.open(path, "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n].astype("float32") / 255.0
    h, w, c = shape
    if (h, w) != (28, 28):
        import tensorflow as tf

        x = tf.image.resize(x, (h, w)).numpy()
    if c != 1:
        x = np.repeat(x, c, axis=-1)
    return x.astype("float32")


def _representative(option, shape):
    import numpy as np

    if option == "fashion_mnist":
        return fashion_mnist_inputs(shape)
    if not os.path.exists(option):
        raise FileNotFoundError(f"Expected 'fashion_mnist' or a .npy file. Received: {option!r}")
    x = np.load(option).astype("float32")
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"Expected representative data of shape (N, {', '.join(map(str, shape))}). Received: {x.shape}")
    return x


def main_export(argv):
    args = _export_parser().parse_args(argv)
    from tfgated.export import writers

    input_shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    model = load_model(args.tflite or args.onnx, input_shape)
    fmt = "tflite" if args.tflite else "onnx"
    quantization = "float16" if args.fp16 else "int8" if args.int8 else "float32"
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    representative = _representative(args.representative_data, shape) if args.int8 else None
    if len(model.outputs) == 2 or args.exit_threshold is not None:
        return _main_export_early_exit(args, model, fmt, quantization, shape)
    from tfgated.exits import exit_gate_layers

    if exit_gate_layers(model) and not args.no_fold:
        return _main_export_exit_gates(args, model, fmt, quantization, shape)
    result = writers.export(
        model,
        args.output,
        format=fmt,
        quantization=quantization,
        batch_size=args.batch_size,
        style=args.mode,
        fold=not args.no_fold,
        conditional=not args.no_conditional,
        fold_batchnorm=args.fold_batchnorm,
        representative_data=representative,
        allow_mismatch=args.no_check,
        threads=args.threads,
        class_names=args.class_names.split(",") if args.class_names else None,
    )
    if result.report is not None:
        print(result.report)
    if result.parity:
        _print_parity(result.parity)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def _print_parity(p):
    print(
        f"parity ({p['runtime']}, {p['quantization']}): max_abs_diff={p['max_abs_diff']:.3g}"
        + (f", top1_agreement={p['top1_agreement']:.4f}" if "top1_agreement" in p else "")
        + (" PASSED" if p["passed"] else " FAILED (written because of --no-check)")
    )


def _exit_export_kwargs(args, fmt, quantization, shape):
    """Keyword arguments shared by both exit exports; parity on real images when the input allows."""
    if quantization == "int8":
        raise ValueError("Exports with exits support float32 and --fp16. Received: --int8")
    return {
        "format": fmt,
        "quantization": quantization,
        "batch_size": args.batch_size,
        "form": args.exit_form,
        "parity_data": fashion_mnist_inputs(shape) if shape[-1] in (1, 3) else None,
        "allow_mismatch": args.no_check,
        "threads": args.threads,
        "class_names": args.class_names.split(",") if args.class_names else None,
    }


def _main_export_early_exit(args, model, fmt, quantization, shape):
    from tfgated.export.early_exit import export_early_exit

    if len(model.outputs) != 2:
        raise ValueError(
            f"--exit-threshold needs a two-output early-exit model [main, exit]. Received: {len(model.outputs)} output(s)"
        )
    if args.exit_threshold is None:
        raise ValueError("This model has two outputs [main, exit]: pass --exit-threshold T to export it with its early exit.")
    result = export_early_exit(
        model,
        args.output,
        args.exit_threshold,
        **_exit_export_kwargs(args, fmt, quantization, shape),
    )
    info, p = result.sidecar["early_exit"], result.parity
    print(
        f"early exit ({info['form']}): threshold {info['threshold']:.4g}; MACs {info['macs_exit_path']:,} on the exit "
        f"path, {info['macs_full_path']:,} on the full path; {info['parity_exit_ratio']:.1%} of the parity inputs exit"
    )
    _print_parity(p)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def _main_export_exit_gates(args, model, fmt, quantization, shape):
    import tfgated
    from tfgated.export.early_exit import export_exit_gates

    if args.mode is not None:
        tfgated.set_inference_style(model, args.mode)
    result = export_exit_gates(
        model,
        args.output,
        **_exit_export_kwargs(args, fmt, quantization, shape),
    )
    info, p = result.sidecar["exit_gates"], result.parity
    shares = ", ".join(f"{v:.1%}" for v in info["parity_exit_shares"])
    print(f"exit gates ({info['form']}): {info['exits']} exits; shares of the parity inputs (exits..., final): {shares}")
    _print_parity(p)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def main_bench(argv):
    args = _bench_parser().parse_args(argv)
    from tfgated.export import latency, writers

    results = latency.bench(args.files, threads=args.threads, runs=args.runs, warmup=args.warmup, rounds=args.rounds)
    print(latency.format_table(results))
    if args.json:
        writers.write_atomic(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return main_bench(argv[1:])
        return main_export(argv)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
