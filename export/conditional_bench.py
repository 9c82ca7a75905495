"""Dense, masked and gather-run-scatter (sparse) files of one gated model, timed side by side.

:func:`run` exports three files per format from one model, each with a dynamic batch dimension:

``dense``   every gate open (``always_on``), folded: the network without gates;
``masked``  threshold-style gates, every branch computed and multiplied by ``z``;
``sparse``  threshold-style gates, each branch run on the examples whose gate is open.

An early-exit model ``[main, exit]`` (with ``exit_threshold``) gets the same three:
``dense`` the main network without its exit, ``masked`` both paths computed and selected,
``sparse`` the rest of the network run only on the examples that do not exit.

It then times every file on the same real images at each batch size, in LiteRT and ONNX
Runtime at each thread count (time per image, the median over ``repeats`` passes over the
images, the runtimes interleaved), measures Keras ``predict`` throughput in both executions,
and puts the MAC ratio measured on those images (:func:`tfgated.complexity.expected_macs`, per
example) beside every latency ratio. :func:`goals` checks the goals of the gather-run-scatter
issue and records a ``goal_met`` boolean for each. ``python -m tfgated.export bench --conditional``
and ``benchmarks/conditional_latency.py`` call it.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from tfgated.export.parity import litert_interpreter

FORMS = ("dense", "masked", "sparse")
RUNTIMES = {"tflite": "litert", "onnx": "onnxruntime"}
#: Goal of the issue: latency / dense at most this many times the MAC ratio.
LATENCY_OVER_MACS = 1.25
#: Goal of the issue: Keras sparse predict throughput over masked at batch 256.
KERAS_SPEEDUP = 1.3
#: Timing noise tolerated before a sparse file counts as slower than the masked one.
NOISE = 1.05


def export_forms(model, directory, images, formats=("tflite", "onnx")):
    """``{form: {format: (path, sidecar)}}`` of the three forms of ``model`` in ``directory``."""
    from tfgated.export import ExportOptions, export

    settings = {
        "dense": dict(style="always_on", form="masked"),
        "masked": dict(style="threshold", form="masked"),
        "sparse": dict(style="threshold", form="sparse"),
    }
    files = {}
    for form, kwargs in settings.items():
        for fmt in formats:
            path = os.path.join(directory, f"{model.name}_{form}.{fmt}")
            result = export(model, path, ExportOptions(batch_size=None, parity_data=images, **kwargs))
            files.setdefault(form, {})[fmt] = (path, result.sidecar)
    return files


def export_exit_forms(model, threshold, directory, images, formats=("tflite", "onnx")):
    """The three forms of an early-exit ``model`` (``[main, exit]``): ``dense`` the main network
    without its exit, ``masked`` both paths computed and ``tf.where`` choosing, ``sparse`` the
    rest of the network gathered onto the examples that do not exit (``threshold``)."""
    import keras

    from tfgated.export import ExportOptions, export, export_early_exit

    main = keras.Model(model.inputs, model.outputs[0], name=f"{model.name}_main")
    files = {}
    for form in FORMS:
        for fmt in formats:
            path = os.path.join(directory, f"{model.name}_{form}.{fmt}")
            options = ExportOptions(batch_size=None, parity_data=images, form=None if form == "dense" else form)
            result = export(main, path, options) if form == "dense" else export_early_exit(model, path, threshold, options)
            files.setdefault(form, {})[fmt] = (path, result.sidecar)
    return files


def exit_mac_ratios(model, threshold, images, files):
    """MACs per image of each form of an early-exit ``model`` over the main network's, on
    ``images``: the masked file computes both paths, the sparse one the exit path for every
    image and the rest for those that stay (the exit share measured on the images)."""
    from tfgated.exits import EarlyExitModel

    info = next(iter(files["sparse"].values()))[1]["early_exit"]
    result = EarlyExitModel(model, threshold).predict(images)
    dense = info["macs_main_without_exit"]
    mean = result.exit_ratio * info["macs_exit_path"] + (1 - result.exit_ratio) * info["macs_full_path"]
    return {"dense_macs": int(dense), "dense": 1.0, "masked": float(info["macs_full_path"] / dense),
            "sparse": float(mean / dense), "exit_ratio": float(result.exit_ratio)}


def _runner(path, batch, threads):
    """``run(x)`` for ``path`` with the batch dimension set to ``batch``."""
    if path.endswith(".tflite"):
        interpreter = litert_interpreter(path, threads)
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], [batch] + [int(d) for d in inp["shape"][1:]])
        interpreter.allocate_tensors()
        out = interpreter.get_output_details()[0]

        def run(x):
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])

        return run
    from tfgated.export.latency import _onnx_session

    session, inp, _ = _onnx_session(path, threads)
    return lambda x: session.run(None, {inp.name: x})[0]


def time_per_image(paths, images, batch, threads, repeats):
    """``{path: median ms per image}`` over ``repeats`` passes of ``images`` in batches of ``batch``,
    the files interleaved pass by pass (so they share the machine's noise)."""
    usable = len(images) - len(images) % batch
    chunks = [np.ascontiguousarray(images[i : i + batch]) for i in range(0, usable, batch)]
    runners = {p: _runner(p, batch, threads) for p in paths}
    for run in runners.values():
        run(chunks[0])  # warm-up: allocation, first-call costs
    times = {p: [] for p in paths}
    for _ in range(repeats):
        for path, run in runners.items():
            start = time.perf_counter()
            for chunk in chunks:
                run(chunk)
            times[path].append((time.perf_counter() - start) * 1e3 / usable)
    return {p: float(np.median(t)) for p, t in times.items()}


def mac_ratios(model, images, files):
    """MACs per image of each form over the dense file's, on ``images`` (per example).

    A gate that the sparse file keeps masked (its sidecar's ``gates.forms``) counts as open for
    every image; the masked file computes every branch (and the gate networks).
    """
    import tfgated
    from tfgated import complexity
    from tfgated.sparse import residual_branches

    saved = [(g, g.inference_style) for g in tfgated.gate_layers(model)]
    try:
        tfgated.set_inference_style(model, "threshold")
        values = tfgated.gate_values(model, images)
    finally:
        for gate, style in saved:
            gate.set_inference_style(style)
    sidecars = {form: next(iter(by_fmt.values()))[1] for form, by_fmt in files.items()}
    forms = sidecars["sparse"]["gates"].get("forms") or {}
    masked = {b.z._keras_history[0].name for b in residual_branches(model) if forms.get(b.name) == "masked"}
    sparse = complexity.expected_macs(model, gate_values={k: np.ones_like(v) if k in masked else v for k, v in values.items()})
    threshold = complexity.expected_macs(model, gate_values=values)
    dense = sidecars["dense"]["macs_after_folding"]
    return {
        "dense_macs": int(dense),
        "dense": 1.0,
        "masked": float(sidecars["masked"]["macs_after_folding"] / dense),
        # gate networks are in the expected counts: the sparse file computes them too
        "sparse": float(sparse.expected / dense),
        "threshold_model": float(threshold.expected / dense),
    }


def keras_throughput(model, images, batch_size, repeats, exit_threshold=None):
    """Images per second of ``tfgated.predict`` (threshold style) in the dense (masked) and the
    sparse execution (an early-exit model at ``exit_threshold``: both outputs computed for every
    image against :class:`tfgated.exits.SparseExitModel`): the best of ``max(repeats, 5)``
    passes each, the two executions interleaved pass by pass after a warm-up pass (which traces)."""
    import tfgated

    if tfgated.gate_layers(model):
        tfgated.set_inference_style(model, "threshold")
    runners = {name: functools.partial(tfgated.predict, model, images, batch_size=batch_size, execution=execution,
                                       exit_threshold=exit_threshold)
               for name, execution in {"masked": "dense", "sparse": "sparse"}.items()}
    best = dict.fromkeys(runners, float("inf"))
    for run in runners.values():
        run()
    for _ in range(max(repeats, 5)):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    result = {name: len(images) / seconds for name, seconds in best.items()}
    result["sparse_over_masked"] = result["sparse"] / result["masked"]
    return result


def time_files(files, images, batch_sizes, threads, repeats):
    """One row per (runtime, threads, batch): ms per image of each form and the ratios to dense."""
    rows = []
    for fmt in files["dense"]:
        for t in threads:
            for batch in batch_sizes:
                paths = {form: files[form][fmt][0] for form in FORMS}
                ms = time_per_image(list(paths.values()), images, batch, t, repeats)
                row = {"runtime": RUNTIMES[fmt], "threads": t, "batch": batch}
                row.update({f"{form}_ms_per_image": ms[p] for form, p in paths.items()})
                for form in ("masked", "sparse"):
                    row[f"{form}_over_dense"] = ms[paths[form]] / ms[paths["dense"]]
                row["sparse_over_masked"] = ms[paths["sparse"]] / ms[paths["masked"]]
                rows.append(row)
    return rows


def goals(rows, macs, keras):
    """The issue's goals, each with its figures and a ``goal_met`` boolean."""
    limit = LATENCY_OVER_MACS * macs["sparse"]

    def within(selected):
        return [dict(r, limit=limit, met=r["sparse_over_dense"] <= limit) for r in selected]

    large = within([r for r in rows if r["batch"] in (64, 256)])
    onnx_one = within([r for r in rows if r["batch"] == 1 and r["runtime"] == "onnxruntime"])
    slower = [r for r in rows if r["sparse_over_masked"] > NOISE]
    pick = ("runtime", "threads", "batch", "sparse_over_dense", "limit", "met")
    return {
        "latency_batch_64_256": {
            "goal": f"sparse / dense latency <= {LATENCY_OVER_MACS} x MAC ratio at batch 64 and 256, LiteRT and ONNX Runtime",
            "cases": [{k: r[k] for k in pick} for r in large],
            "goal_met": bool(large) and all(r["met"] for r in large),
        },
        "latency_onnx_batch_1": {
            "goal": f"sparse / dense latency <= {LATENCY_OVER_MACS} x MAC ratio at batch 1 in ONNX Runtime",
            "cases": [{k: r[k] for k in pick} for r in onnx_one],
            "goal_met": bool(onnx_one) and all(r["met"] for r in onnx_one),
        },
        "keras_predict_batch_256": {
            "goal": f"Keras sparse predict throughput >= {KERAS_SPEEDUP} x masked at batch 256",
            "sparse_over_masked": keras["sparse_over_masked"],
            "goal_met": keras["sparse_over_masked"] >= KERAS_SPEEDUP,
        },
        "never_slower_than_masked": {
            "goal": f"sparse never slower than masked (ratio <= {NOISE}, timing noise) at any batch size",
            "slower": [{k: r[k] for k in ("runtime", "threads", "batch", "sparse_over_masked")} for r in slower],
            "goal_met": not slower,
        },
    }


def run(model, images, directory, batch_sizes=(1, 8, 64, 256), threads=(1, 2), repeats=3, formats=("tflite", "onnx"),
        exit_threshold=None, keras_images=None):
    """Export, time and check (see the module docstring); returns the JSON-ready result. A
    two-output early-exit model needs ``exit_threshold``. Keras throughput is measured on
    ``keras_images`` (default ``images``): ``predict`` has a fixed cost per call (tens of ms
    here), so a throughput needs several batches of the largest size."""
    import tfgated

    if tfgated.gate_layers(model):  # an early-exit model may have none
        tfgated.set_inference_style(model, "threshold")
    images = np.asarray(images, "float32")
    if len(model.outputs) == 2:
        if exit_threshold is None:
            raise ValueError("An early-exit model [main, exit] needs exit_threshold.")
        files = export_exit_forms(model, exit_threshold, directory, images, formats)
        macs = exit_mac_ratios(model, exit_threshold, images, files)
    else:
        files = export_forms(model, directory, images, formats)
        macs = mac_ratios(model, images, files)
    rows = time_files(files, images, batch_sizes, threads, repeats)
    keras_images = images if keras_images is None else np.asarray(keras_images, "float32")
    keras = keras_throughput(model, keras_images, max(batch_sizes), repeats, exit_threshold=exit_threshold)
    keras["images"] = int(len(keras_images))
    for row in rows:
        row["mac_ratio_sparse"] = macs["sparse"]
        row["mac_ratio_masked"] = macs["masked"]
    sparse = files["sparse"][formats[0]][1].get("gates") or {}
    return {
        "model": model.name,
        "exit_threshold": exit_threshold,
        "images": int(len(images)),
        "batch_sizes": list(batch_sizes),
        "threads": list(threads),
        "repeats": int(repeats),
        "litert_note": "the sparse TFLite file runs on LiteRT's builtin kernels: the XNNPACK delegate cannot "
        "resize data-dependent sub-batches; the dense and masked files run with XNNPACK (the default)",
        "gate_forms": sparse.get("forms"),
        "masked_because": sparse.get("masked_because"),
        "macs": macs,
        "latency": rows,
        "keras_predict_images_per_s": keras,
        "goals": goals(rows, macs, keras),
    }


def format_rows(result):
    """A plain-text table of :func:`run`'s latency rows (ms per image, ratios to dense, MAC ratios)."""
    head = f"{'runtime':<12}{'thr':>4}{'batch':>6}{'dense':>9}{'masked':>9}{'sparse':>9}{'sp/dense':>10}{'MACs':>7}{'sp/mask':>9}"
    lines = [head, "-" * len(head)]
    for r in result["latency"]:
        lines.append(
            f"{r['runtime']:<12}{r['threads']:>4}{r['batch']:>6}{r['dense_ms_per_image']:>9.3f}"
            f"{r['masked_ms_per_image']:>9.3f}{r['sparse_ms_per_image']:>9.3f}{r['sparse_over_dense']:>10.3f}"
            f"{r['mac_ratio_sparse']:>7.3f}{r['sparse_over_masked']:>9.3f}"
        )
    k = result["keras_predict_images_per_s"]
    lines.append(f"keras predict: masked {k['masked']:.0f} img/s, sparse {k['sparse']:.0f} img/s "
                 f"({k['sparse_over_masked']:.2f}x)")
    lines += [f"goal {name}: {'met' if g['goal_met'] else 'NOT met'}" for name, g in result["goals"].items()]
    return "\n".join(lines)
