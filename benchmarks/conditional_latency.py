"""Dense, masked and gather-run-scatter (sparse) exports of a gated model, timed side by side.

The gather-run-scatter issue's benchmark, on a shipped preset: ``gumbel_resnet_fashion_mnist``
(its data-dependent residual gates in threshold style) or ``sipa_fashion_mnist_exit`` (SIPA's
exit after block 4 at its recipe's threshold 0.85; "dense" is then the network without the
exit), exported three ways with a dynamic batch (:mod:`tfgated.export.conditional_bench`), each
file timed on the same real Fashion-MNIST test images at batch sizes 1, 8, 64 and 256 in LiteRT
and ONNX Runtime at 1 and 2 threads, Keras ``predict`` throughput in the dense (masked) and
sparse executions, and the MAC ratio measured per example on those images beside every latency
ratio. Each goal of the issue is recorded with a ``goal_met`` boolean.

    python benchmarks/conditional_latency.py                                   # a few minutes
    python benchmarks/conditional_latency.py --preset sipa_fashion_mnist_exit
    python benchmarks/conditional_latency.py --quick                           # smoke run, not written

Writes ``benchmarks/results/conditional_latency.json`` and ``.png`` (another preset:
``conditional_latency_PRESET.json``). Time it alone: two cores are shared by everything.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gumbel_resnet_fashion_mnist", help="zoo preset with shipped weights")
    p.add_argument("--images", type=int, default=256, help="real test images timed (default 256)")
    p.add_argument("--keras-images", type=int, default=2560,
                   help="real test images for Keras predict throughput (default 2560: ten batches of 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per file and setting (default 3)")
    p.add_argument("--quick", action="store_true", help="32 images, batch 1 and 8, 1 thread, 1 pass; nothing written")
    p.add_argument("--output", default=None, help="default benchmarks/results/conditional_latency[_PRESET].json")
    args = p.parse_args(argv)
    if args.output is None:
        suffix = "" if args.preset == "gumbel_resnet_fashion_mnist" else f"_{args.preset}"
        args.output = os.path.join(RESULTS, f"conditional_latency{suffix}.json")
    return args


def plot(result, path):
    """Latency / dense of the masked and sparse files against batch size, one panel per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = sorted({r["runtime"] for r in result["latency"]})
    fig, axes = plt.subplots(1, len(runtimes), figsize=(5 * len(runtimes), 3.6), sharey=True)
    axes = axes if len(runtimes) > 1 else [axes]
    for ax, runtime in zip(axes, runtimes):
        for threads in result["threads"]:
            rows = [r for r in result["latency"] if r["runtime"] == runtime and r["threads"] == threads]
            batches = [r["batch"] for r in rows]
            ax.plot(batches, [r["masked_over_dense"] for r in rows], "s--", label=f"masked, {threads} thr")
            ax.plot(batches, [r["sparse_over_dense"] for r in rows], "o-", label=f"sparse, {threads} thr")
        ax.axhline(result["macs"]["sparse"], color="gray", lw=1, label="sparse MAC ratio")
        ax.axhline(1.25 * result["macs"]["sparse"], color="gray", lw=1, ls=":", label="goal: 1.25 x MAC ratio")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(runtime)
    axes[0].set_ylabel("time per image / dense")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{result['model']}: gather-run-scatter vs masked, {result['images']} test images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(HERE))
    from tfgated import zoo
    from tfgated.cli.export import fashion_mnist_inputs
    from tfgated.export import conditional_bench
    from tfgated.cli.pipeline.machine import CpuMeter
    from tfgated.io import machine_info, write_json

    model = zoo.load(args.preset, compile=False)
    n, batches, threads, repeats = args.images, (1, 8, 64, 256), (1, 2), args.repeats
    if args.quick:
        n, batches, threads, repeats = 32, (1, 8), (1,), 1
    preset = zoo.get_preset(args.preset)
    shape, raw = tuple(model.inputs[0].shape[1:]), preset.get("input") is not None
    images = fashion_mnist_inputs(shape, n=n, raw=raw)
    keras_images = images if args.quick else fashion_mnist_inputs(shape, n=args.keras_images, raw=raw)
    threshold = zoo.registry.exit_threshold(args.preset)
    meter = CpuMeter().start()  # timings mean little without the load they ran under
    with tempfile.TemporaryDirectory() as tmp:
        result = conditional_bench.run(model, images, tmp, batches, threads, repeats, exit_threshold=threshold,
                                       keras_images=keras_images)
    result = {"benchmark": "conditional_latency", "preset": args.preset,
              "command": "python benchmarks/conditional_latency.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "load": meter.stop(), **result}
    print(conditional_bench.format_rows(result))
    if args.quick:
        return 0
    write_json(args.output, result)
    plot(result, args.output[: -len(".json")] + ".png")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
