"""Batch-1 latency of exported files in LiteRT and ONNX Runtime.

:func:`measure` times one file (median over ``runs`` invocations after
``warmup`` untimed ones); :func:`bench` times several side by side with the
same thread count; :func:`format_table` prints them. :func:`measure_inputs` times
one file on every example of a real input set (batch 1), for files whose cost
depends on the input, such as early-exit exports.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tfgated.export.parity import file_format


def _interpreter(path, threads):
    from tfgated.export.parity import litert_interpreter

    return litert_interpreter(path, threads)


def _onnx_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    return session, inp, tuple(d if isinstance(d, int) else 1 for d in inp.shape)


def _tflite_runner(path, threads):
    interpreter = _interpreter(path, threads)
    inp = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).random(inp["shape"]).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    return interpreter.invoke, tuple(int(d) for d in inp["shape"])


def _onnx_runner(path, threads):
    session, inp, shape = _onnx_session(path, threads)
    feed = {inp.name: np.random.default_rng(0).random(shape).astype("float32")}
    return (lambda: session.run(None, feed)), shape


def measure(path, threads=1, runs=100, warmup=10):
    """Latency of one ``.tflite``/``.onnx`` file at its exported batch size.

    Returns a dict with ``file``, ``runtime``, ``threads``, ``runs``,
    ``input_shape``, ``median_ms``, ``mean_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such exported file: {os.fspath(path)!r}")
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"Expected runs to be a positive integer. Received: runs={runs}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"Expected threads to be a positive integer. Received: threads={threads}")
    kind = file_format(path)
    run, shape = (_tflite_runner if kind == "tflite" else _onnx_runner)(path, threads)
    for _ in range(warmup):
        run()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    times *= 1e3
    return {
        "file": os.fspath(path),
        "runtime": "litert" if kind == "tflite" else "onnxruntime",
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "input_shape": list(shape),
        "median_ms": float(np.median(times)),
        "mean_ms": float(np.mean(times)),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(np.min(times)),
    }


def _tflite_feeder(path, threads):
    interpreter = _interpreter(path, threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(x):
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run, tuple(int(d) for d in inp["shape"])


def _onnx_feeder(path, threads):
    session, inp, shape = _onnx_session(path, threads)
    return (lambda x: session.run(None, {inp.name: x})[0]), shape


def measure_inputs(path, x, threads=1, warmup=10):
    """Batch-1 latency of one file over every example of ``x`` (one run each, in order).

    The mean over the examples is what an input-dependent file (an early-exit export)
    costs on that data; ``warmup`` untimed runs on the first examples come first.

    Returns a dict with ``file``, ``runtime``, ``threads``, ``examples``, ``mean_ms``,
    ``median_ms``, ``p10_ms``, ``p90_ms`` and ``outputs`` (the file's outputs, stacked).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such exported file: {os.fspath(path)!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"Expected threads to be a positive integer. Received: threads={threads}")
    kind = file_format(path)
    run, shape = (_tflite_feeder if kind == "tflite" else _onnx_feeder)(path, threads)
    x = np.asarray(x, "float32")
    if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]) or shape[0] != 1:
        raise ValueError(
            f"Expected inputs of shape (N, {', '.join(map(str, shape[1:]))}) for a batch-1 file. "
            f"Received: {x.shape} for input shape {shape}"
        )
    if len(x) == 0:
        raise ValueError("Expected at least one example. Received: empty input")
    for i in range(warmup):
        run(x[i % len(x)][None])
    times = np.empty(len(x))
    outputs = []
    for i in range(len(x)):
        xi = x[i][None]
        start = time.perf_counter()
        y = run(xi)
        times[i] = time.perf_counter() - start
        outputs.append(np.array(y[0]))
    times *= 1e3
    return {
        "file": os.fspath(path),
        "runtime": "litert" if kind == "tflite" else "onnxruntime",
        "threads": threads,
        "examples": int(len(x)),
        "mean_ms": float(np.mean(times)),
        "median_ms": float(np.median(times)),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "outputs": np.stack(outputs),
    }


def bench(paths, threads=1, runs=100, warmup=10, rounds=1):
    """:func:`measure` every file, interleaved over ``rounds`` to share CPU noise fairly.

    With ``rounds > 1`` each file is measured ``rounds`` times (``runs`` each)
    in turn and the reported numbers pool all the timings' medians.
    """
    results = {os.fspath(p): [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            results[os.fspath(p)].append(measure(p, threads=threads, runs=runs, warmup=warmup))
    merged = []
    for p, rs in results.items():
        r = dict(rs[0])
        if len(rs) > 1:
            r["median_ms"] = float(np.median([x["median_ms"] for x in rs]))
            r["mean_ms"] = float(np.mean([x["mean_ms"] for x in rs]))
            r["min_ms"] = float(np.min([x["min_ms"] for x in rs]))
            r["rounds"] = len(rs)
        merged.append(r)
    return merged


def format_table(results):
    """A plain-text table of :func:`bench` results (relative to the first file)."""
    base = results[0]["median_ms"] if results else 1.0
    header = f"{'file':<40} {'runtime':<12} {'threads':>7} {'median ms':>10} {'p90 ms':>9} {'rel':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        name = os.path.basename(r["file"])
        lines.append(
            f"{name:<40} {r['runtime']:<12} {r['threads']:>7} {r['median_ms']:>10.3f} "
            f"{r['p90_ms']:>9.3f} {r['median_ms'] / base:>6.2f}"
        )
    return "\n".join(lines)
