"""Gather against scatter: how a gather-run-scatter sub-batch's results return to the batch.

The sparse form computes a data-dependent residual branch on the examples whose gate is open
and must put the products back in batch order (:func:`tfgated.sparse.run_branch`):
``"scatter"`` writes them into zeros with ``ScatterNd``; ``"gather"`` appends a zero row and
lets every example gather its row. This times both, side by side in one process, on a shipped
gated preset and real Fashion-MNIST test images:

* Keras ``predict`` (TensorFlow) of the masked model and of both stitches, batch 256, best of
  ``--repeats`` interleaved passes;
* the sparse TFLite and ONNX files of both stitches (dynamic batch), batch 1, 64 and 256, 1 and 2
  threads (median of ``--repeats`` interleaved passes).

    python benchmarks/sparse_stitch.py          # a few minutes on 2 cores; run it alone

Writes ``benchmarks/results/sparse_stitch.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
STITCHES = ("scatter", "gather")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gumbel_resnet_fashion_mnist")
    p.add_argument("--keras-images", type=int, default=2560, help="test images for Keras predict (default 2560)")
    p.add_argument("--file-images", type=int, default=256, help="test images for the files (default 256)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default=os.path.join(RESULTS, "sparse_stitch.json"))
    return p.parse_args(argv)


def keras_rows(model, images, repeats):
    """Images per second of Keras predict: masked, and sparse with each stitch."""
    from tfgated.sparse import SparseModel

    runners = {"masked": model}
    for stitch in STITCHES:
        runners[stitch] = SparseModel(model, stitch=stitch)
    for run in runners.values():
        run.predict(images, batch_size=256, verbose=0)  # traces
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run.predict(images, batch_size=256, verbose=0)
            best[name] = min(best[name], time.perf_counter() - start)
    speed = {name: len(images) / seconds for name, seconds in best.items()}
    return {"images_per_s": speed, **{f"{s}_over_masked": speed[s] / speed["masked"] for s in STITCHES}}


def file_rows(model, images, directory, repeats):
    """ms per image of the sparse files of both stitches, per runtime, threads and batch."""
    from tfgated.export import ExportOptions, export
    from tfgated.export.conditional_bench import RUNTIMES, time_per_image

    paths = {}
    for stitch in STITCHES:
        for fmt in RUNTIMES:
            path = os.path.join(directory, f"{stitch}.{fmt}")
            export(model, path, ExportOptions(batch_size=None, parity_data=images, form="sparse", sparse_stitch=stitch))
            paths[(stitch, fmt)] = path
    rows = []
    for fmt, runtime in RUNTIMES.items():
        for threads in (1, 2):
            for batch in (1, 64, 256):
                ms = time_per_image([paths[(s, fmt)] for s in STITCHES], images, batch, threads, repeats)
                scatter, gather = (ms[paths[(s, fmt)]] for s in STITCHES)
                rows.append({"runtime": runtime, "threads": threads, "batch": batch, "scatter_ms_per_image": scatter,
                             "gather_ms_per_image": gather, "gather_over_scatter": gather / scatter})
    return rows


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(HERE))
    import tfgated
    from tfgated import zoo
    from tfgated.cli.export import fashion_mnist_inputs
    from tfgated.cli.pipeline.machine import CpuMeter
    from tfgated.io import machine_info, write_json

    model = zoo.load(args.preset, compile=False)
    tfgated.set_inference_style(model, "threshold")
    shape = tuple(model.inputs[0].shape[1:])
    meter = CpuMeter().start()
    keras = keras_rows(model, fashion_mnist_inputs(shape, n=args.keras_images, raw=True), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        files = file_rows(model, fashion_mnist_inputs(shape, n=args.file_images, raw=True), tmp, args.repeats)
    result = {"benchmark": "sparse_stitch", "preset": args.preset,
              "command": "python benchmarks/sparse_stitch.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "load": meter.stop(), "keras_predict_batch_256": keras, "files": files}
    for row in files:
        print(f"{row['runtime']:<12} {row['threads']} thr batch {row['batch']:>3}: gather / scatter "
              f"{row['gather_over_scatter']:.3f}")
    print(f"keras predict over masked: scatter {keras['scatter_over_masked']:.2f}x, gather {keras['gather_over_masked']:.2f}x")
    write_json(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
