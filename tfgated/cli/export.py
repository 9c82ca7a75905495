"""``python -m tfgated.export``: write TFLite / ONNX files, and measure their latency.

Export::

    python -m tfgated.export --tflite MODEL -o out.tflite [--fp16 | --int8 ...]
    python -m tfgated.export --onnx MODEL -o out.onnx

``MODEL`` is a ``.keras`` file or a zoo preset name. A two-output early-exit model
(``[main, exit]``, see ``tfgated.exits``) needs ``--exit-threshold`` (a preset with an exit takes
its recipe's by default); its file then
stops early (TFLite at batch 1: the rest of the network sits in an ``IF`` branch)::

    python -m tfgated.export --tflite exit_model.keras --exit-threshold 0.9 -o model.tflite

A model with Gumbel exit gates (``tfgated.exits``) exports with each exit as an ``IF`` the same
way, its gates deciding in threshold style (``--style``), with no threshold argument.

Latency::

    python -m tfgated.export bench a.tflite b.onnx --threads 1 --runs 200 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfgated.cli.common import (
    add_debug_flag,
    add_style_argument,
    check_input_shape,
    parse_shape,
    positive_int,
    run_command,
)
from tfgated.export.options import STYLES

#: How many Fashion-MNIST test images calibrate int8 and check exits.
FASHION_MNIST_EXAMPLES = 200


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
    q.add_argument("--fp16", action="store_true", help="TFLite with float16 weights (top-1 agreement >= 99.5%% checked where the top-2 margin "
                   "exceeds float16 rounding)")
    q.add_argument("--int8", action="store_true", help="TFLite int8 post-training quantization (parity reported only)")
    p.add_argument(
        "--representative-data",
        default="fashion_mnist",
        metavar="fashion_mnist|FILE.npy",
        help="calibration inputs for --int8: real Fashion-MNIST test images resized to the model input, "
        "or a .npy array of inputs (default: fashion_mnist)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="fixed batch size of the exported signature (default 1)")
    add_style_argument(p, STYLES, help="inference style of the gates to export (default: the model's own)")
    p.add_argument("--no-fold", action="store_true", help="export the gated model as is (masks computed at run time)")
    p.add_argument("--fold-batchnorm", action="store_true", help="also fold batch norms into the preceding convolutions")
    masked = "keep data-dependent residual gates in masked form even at batch size 1 (TFLite)"
    forms = p.add_mutually_exclusive_group()
    forms.add_argument("--no-conditional", action="store_true", help=masked)
    forms.add_argument("--sparse", action="store_true", help="gather-run-scatter: each data-dependent residual gate "
                       "(and an early exit) runs its branch only on the examples that need it; dynamic batch size")
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
        choices=["conditional", "masked", "sparse"],
        default=None,
        help="early exit as a conditional (TFLite at batch 1, the default there) or masked "
        "(both paths run, tf.where selects; the only form for ONNX)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="runtime threads used by the parity check")
    p.add_argument("--no-check", action="store_true", help="write the file even if the parity check fails")
    p.add_argument("--input-shape", default=None, help="for zoo presets: input shape as H,W,C (e.g. 64,64,3)")
    p.add_argument("--class-names", default=None, help="comma-separated class names recorded in the sidecar")
    p.add_argument(
        "--weights", default="default", metavar="default|none|FILE",
        help="for zoo presets: 'default' (the shipped weights; a preset without them is refused), "
        "'none' (a fresh, random model) or a .weights.h5/.keras file",
    )
    return add_debug_flag(p)


def _bench_parser():
    p = argparse.ArgumentParser(
        prog="python -m tfgated.export bench",
        description="Batch-1 latency of exported .tflite (LiteRT) and .onnx (ONNX Runtime) files side by side.",
    )
    p.add_argument("files", nargs="*", help=".tflite / .onnx files")
    p.add_argument("--conditional", metavar="MODEL", default=None,
                   help="instead of files: export MODEL (a .keras file or a zoo preset with shipped weights) as "
                   "dense, masked and gather-run-scatter files and time them side by side on real Fashion-MNIST "
                   "test images, with Keras predict throughput, MAC ratios and the goals of each")
    p.add_argument("--batch-sizes", default="1,8,64,256", help="with --conditional: batch sizes (default 1,8,64,256)")
    p.add_argument("--thread-counts", default="1,2", help="with --conditional: runtime threads (default 1,2)")
    p.add_argument("--images", type=positive_int, default=256, help="with --conditional: test images (default 256)")
    p.add_argument("--repeats", type=positive_int, default=3, help="with --conditional: timed passes (default 3)")
    p.add_argument("--keras-images", type=positive_int, default=2560,
                   help="with --conditional: test images for Keras predict throughput (default 2560)")
    p.add_argument("--dir", default=None, help="with --conditional: where the files go (default: a temporary folder)")
    p.add_argument("--exit-threshold", type=float, default=None, metavar="T",
                   help="with --conditional and an early-exit model [main, exit]: its threshold "
                   "(default: the preset's recipe; required for a .keras file)")
    p.add_argument("--threads", type=positive_int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--runs", type=positive_int, default=100, help="timed runs per file; the median is reported (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--rounds", type=positive_int, default=1, help="interleaved rounds over the files (default 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return add_debug_flag(p)


def is_preset(spec):
    """Whether ``spec`` names a zoo preset rather than a model file."""
    return not (spec.endswith(".keras") or os.path.sep in spec)


def load_model(spec, input_shape=None, weights="default"):
    """A Keras model from a ``.keras`` file (:func:`tfgated.io.load_model`) or a zoo preset name.

    A file keeps its own input shape: an ``input_shape`` that contradicts it is refused. For a
    preset, ``weights`` is ``"default"`` (its shipped weights; a preset without them is refused
    with the command that trains them), ``"none"`` (a fresh, random model) or a file.
    """
    if not is_preset(spec):
        from tfgated.io import load_model as load_file

        model = load_file(spec)
        check_input_shape(model, input_shape, spec)
        return model
    from tfgated import zoo
    from tfgated.zoo.registry import has_shipped_weights, train_command

    if weights == "default" and not has_shipped_weights(spec):
        raise ValueError(
            f"Preset {spec!r} ships no trained weights, so its export would be a random model. Train it with "
            f"`{train_command(spec)}` and export the run's model.keras, or pass --weights none for a random model."
        )
    kwargs = {"compile": False, "weights": None if weights == "none" else weights}
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    return zoo.load(spec, **kwargs)


def fashion_mnist_inputs(shape, n=FASHION_MNIST_EXAMPLES, raw=False):
    """``n`` real Fashion-MNIST test images (:mod:`tfgated.data`), resized/tiled to ``shape`` (H, W, C):
    in [0, 1], or raw pixel values in [0, 255] with ``raw`` (what a zoo model takes)."""
    import numpy as np

    from tfgated.data import load_fashion_mnist_arrays

    _, (images, _) = load_fashion_mnist_arrays()
    x = images[:n].astype("float32") * (1.0 if raw else 1 / 255.0)
    h, w, c = shape
    if (h, w) != (28, 28):
        import tensorflow as tf

        x = tf.image.resize(x, (h, w)).numpy()
    if c != 1:
        x = np.repeat(x, c, axis=-1)
    return x.astype("float32")


def _representative(option, shape, raw=False):
    import numpy as np

    if option == "fashion_mnist":
        return fashion_mnist_inputs(shape, raw=raw)
    if not os.path.exists(option):
        raise FileNotFoundError(f"Expected 'fashion_mnist' or a .npy file. Received: {option!r}")
    try:
        x = np.load(option).astype("float32")
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"Representative data file {option!r} is not a readable .npy array of numbers (truncated or "
            f"corrupt?): {' '.join(str(error).split())[:200]}"
        ) from error
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"Expected representative data of shape (N, {', '.join(map(str, shape))}). Received: {x.shape}")
    return x


def _input_shape(text):
    if not text:
        return None
    shape = parse_shape(text)
    if len(shape) != 3:
        raise ValueError(f"Expected --input-shape as three positive integers H,W,C. Received: {text!r}")
    return shape


def _options(args, shape, exits, deploy=None):
    """The :class:`tfgated.export.ExportOptions` the arguments ask for (``deploy``: a preset's
    :class:`~tfgated.export.deployment.PresetEvaluation`, whose real images check parity)."""
    from tfgated.export import ExportOptions

    raw = deploy is not None and deploy.raw
    quantization = "float16" if args.fp16 else "int8" if args.int8 else "float32"
    if exits and quantization == "int8":
        raise ValueError("Exports with exits support float32 and --fp16. Received: --int8")
    form = (args.exit_form or ("sparse" if args.sparse else None)) if exits else (
        "masked" if args.no_conditional else "sparse" if args.sparse else None)
    return ExportOptions(
        format="tflite" if args.tflite else "onnx",
        quantization=quantization,
        batch_size=args.batch_size,
        style=None if exits else args.style,
        fold=not args.no_fold,
        form=form,
        fold_batchnorm=args.fold_batchnorm,
        representative_data=_representative(args.representative_data, shape, raw) if quantization == "int8" else None,
        # parity on real images (they exercise every path): the preset's test images, else
        # Fashion-MNIST's for exits when the input allows
        parity_data=deploy.images if deploy is not None else (
            fashion_mnist_inputs(shape, raw=raw) if exits and shape[-1] in (1, 3) else None),
        allow_mismatch=args.no_check,
        threads=args.threads,
        class_names=args.class_names.split(",") if args.class_names else (deploy.class_names if deploy else None),
        preprocessing=deploy.contract if deploy is not None else None,
    )


def main_export(argv):
    args = _export_parser().parse_args(argv)
    from tfgated.exits import exit_gate_layers

    spec = args.tflite or args.onnx
    model = load_model(spec, _input_shape(args.input_shape), args.weights)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    deploy = _preset_evaluation(spec, args.weights, shape) if is_preset(spec) else None
    if len(model.outputs) == 2 or args.exit_threshold is not None:
        return _export_early_exit(args, model, _options(args, shape, exits=True, deploy=deploy), deploy)
    if exit_gate_layers(model) and not args.no_fold:
        return _export_exit_gates(args, model, _options(args, shape, exits=True, deploy=deploy), deploy)
    from tfgated.export import export

    result = export(model, args.output, _options(args, shape, exits=False, deploy=deploy))
    if result.report is not None:
        print(_report_text(result))
    if result.parity:
        _print_parity(result.parity)
    _finish_preset(result, model, deploy)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def _report_text(result):
    """The fold report, naming the form the file really uses for data-dependent gates."""
    text = str(result.report)
    gates = result.sidecar.get("gates") or {}
    if gates.get("dependent_form") == "conditional":
        text = text.replace("data-dependent gates (masked form)", "data-dependent gates (conditional form, tf.cond)")
    if gates.get("dependent_form") in ("sparse", "mixed"):
        text = text.replace("data-dependent gates (masked form)", "data-dependent gates")
        why = gates.get("masked_because") or {}
        text += "\n" + "\n".join(
            f"  {name}: {form}" + (f" ({why[name]})" if name in why else "") for name, form in gates["forms"].items()
        )
    return text


def _preset_evaluation(spec, weights, shape):
    """The :class:`~tfgated.export.deployment.PresetEvaluation` of preset ``spec`` (``None``
    when its dataset cannot be read here or the shape was changed)."""
    from tfgated import zoo
    from tfgated.export.deployment import PresetEvaluation

    from tfgated.zoo.registry import resolve_weights, sha256_file, weights_index

    preset = zoo.get_preset(spec)
    if tuple(shape) != tuple(preset["input_shape"]):
        return None
    if weights == "none":
        identity, card = {"source": "none (fresh, random)", "sha256": None}, None
    else:
        path = resolve_weights(spec, weights)
        identity = {"source": "shipped" if weights == "default" else "file", "file": os.path.basename(path),
                    "sha256": sha256_file(path)}
        card = (weights_index().get(spec, {}).get("check") or {}).get("top1") if weights == "default" else None
    return PresetEvaluation.of_preset(spec, preset, identity, card_top1=card)


def _finish_preset(result, model, deploy, exit_threshold=None):
    """Score the written file and the Keras model on the preset's real test images; amend the sidecar."""
    if deploy is None:
        return
    fields = deploy.sidecar_fields(result.path, model, exit_threshold=exit_threshold)
    result.sidecar.update(fields)
    from tfgated.export.writers import amend_sidecar

    amend_sidecar(result.sidecar_path, fields)
    top1 = fields["test_top1"]
    card = "" if top1["card"] is None else f", card {top1['card']:.4f}"
    print(f"test top-1 on {top1['examples']} real test images (raw pixels): file {top1['file']:.4f}, "
          f"keras {top1['keras']:.4f}{card}")


def _print_parity(p):
    print(
        f"parity ({p['runtime']}, {p['quantization']}): max_abs_diff={p['max_abs_diff']:.3g}"
        + (f", top1_agreement={p['top1_agreement']:.4f}" if "top1_agreement" in p else "")
        + (f" ({p['top1_agreement_decisive']:.4f} on {p['decisive_examples']} decisive examples)"
           if "top1_agreement_decisive" in p else "")
        + (" PASSED" if p["passed"] else " FAILED (written because of --no-check)")
    )


def _export_early_exit(args, model, options, deploy=None):
    from tfgated.export import export_early_exit
    from tfgated.zoo.registry import exit_threshold

    if len(model.outputs) != 2:
        raise ValueError(
            f"--exit-threshold needs a two-output early-exit model [main, exit]. Received: {len(model.outputs)} output(s)"
        )
    threshold, source = args.exit_threshold, "--exit-threshold"
    spec = args.tflite or args.onnx
    if threshold is None and is_preset(spec):
        threshold, source = exit_threshold(spec), "the preset's recipe"
    if threshold is None:
        raise ValueError("This model has two outputs [main, exit]: pass --exit-threshold T to export it with its early exit.")
    result = export_early_exit(model, args.output, threshold, options)
    info = result.sidecar["early_exit"]
    print(
        f"early exit ({info['form']}): threshold {info['threshold']:.4g} ({source}); MACs {info['macs_exit_path']:,} on "
        f"the exit path, {info['macs_full_path']:,} on the full path; {info['parity_exit_ratio']:.1%} of the parity inputs exit"
    )
    _print_parity(result.parity)
    _finish_preset(result, model, deploy, exit_threshold=threshold)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def _export_exit_gates(args, model, options, deploy=None):
    import tfgated
    from tfgated.export import export_exit_gates

    if args.style is not None:
        tfgated.set_inference_style(model, args.style)
    result = export_exit_gates(model, args.output, options)
    info = result.sidecar["exit_gates"]
    shares = ", ".join(f"{v:.1%}" for v in info["parity_exit_shares"])
    print(f"exit gates ({info['form']}): {info['exits']} exits; shares of the parity inputs (exits..., final): {shares}")
    _print_parity(result.parity)
    _finish_preset(result, model, deploy)
    print(f"wrote {result.path} and {result.sidecar_path}")
    return 0


def _positive_ints(text, flag):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"Expected {flag} as comma-separated positive integers. Received: {text!r}")
    return values


def bench_conditional(args, argv):
    """``bench --conditional MODEL``: dense, masked and sparse files side by side (:mod:`tfgated.export.conditional_bench`)."""
    import tempfile

    from tfgated.zoo.registry import exit_threshold

    from tfgated.export import conditional_bench
    from tfgated.io import write_atomic

    batch_sizes = _positive_ints(args.batch_sizes, "--batch-sizes")
    threads = _positive_ints(args.thread_counts, "--thread-counts")
    model = load_model(args.conditional)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    raw = is_preset(args.conditional) and _preset_input(args.conditional) is not None
    images = fashion_mnist_inputs(shape, n=args.images, raw=raw)
    keras_images = fashion_mnist_inputs(shape, n=args.keras_images, raw=raw)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        os.makedirs(directory, exist_ok=True)
        threshold = args.exit_threshold
        if threshold is None and len(model.outputs) == 2 and is_preset(args.conditional):
            threshold = exit_threshold(args.conditional)
        if len(model.outputs) == 2 and threshold is None:
            raise ValueError("This model has two outputs [main, exit]: pass --exit-threshold T to bench its early exit.")
        result = conditional_bench.run(model, images, directory, batch_sizes, threads, args.repeats,
                                       exit_threshold=threshold, keras_images=keras_images)
    result["command"] = "python -m tfgated.export bench " + " ".join(argv)
    print(conditional_bench.format_rows(result))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _preset_input(spec):
    from tfgated import zoo

    return zoo.get_preset(spec).get("input")


def main_bench(argv):
    args = _bench_parser().parse_args(argv)
    if args.conditional:
        if args.files:
            raise ValueError("Pass either files or --conditional MODEL to bench. Received: both")
        return bench_conditional(args, argv)
    if not args.files:
        raise ValueError("Expected .tflite/.onnx files to bench, or --conditional MODEL. Received: neither")
    from tfgated.export import latency
    from tfgated.io import write_atomic

    from tfgated.export.parity import check_loadable

    for path in args.files:
        check_loadable(path)  # a damaged file: one line naming it
    results = latency.bench(args.files, threads=args.threads, runs=args.runs, warmup=args.warmup, rounds=args.rounds)
    print(latency.format_table(results))
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv=None):
    """``python -m tfgated.export [bench] ...``; a user error is one line on stderr and exit status 2
    (``--debug`` shows the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return run_command(lambda: main_bench(argv[1:]), debug="--debug" in argv)
    return run_command(lambda: main_export(argv), debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
