"""Early-exit export: the exit decision becomes control flow inside the exported file.

A SIPA early-exit model (:func:`tfgated.exits.attach_exit`, two outputs
``[main_probs, exit_probs]``) is split the way :class:`tfgated.exits.EarlyExitModel`
splits it: part A computes the exit probabilities (and every tensor the rest of the
network needs), part B the main output. The exported function returns one tensor, the
probabilities of the path each example took:

* ``"conditional"`` (TFLite at batch size 1, the default there): ``tf.cond(max(exit_probs) >
  threshold, exit_probs, part_b(...))``, so part B does not run for a confident example.
  LiteRT runs it as an ``IF`` op: the saved compute is real.
* ``"masked"`` (any batch size, and every ONNX file): both paths run and ``tf.where`` selects
  per example. The outputs are the same; nothing is saved.

ONNX has an ``If`` operator, but tf2onnx 1.16 cannot convert the convolutions inside a
``tf.cond`` branch: with variable kernels it fails outright, and from a frozen graph it writes
``Conv`` nodes that ONNX Runtime rejects ("Attribute dilations has incorrect size"). So an ONNX
early-exit file is masked, and the sidecar says so.

After writing, the file runs in its real runtime on ``parity_data`` one example at a time
and must match :meth:`EarlyExitModel.predict` (float32: max abs difference <= 1e-4;
float16: top-1 agreement >= 99.5 %), as for :func:`tfgated.export.export`. An example whose
exit confidence lies within rounding of the threshold (:data:`BOUNDARY_TOLERANCE`) may take
the other path in the runtime; it is compared with that path's Keras output, and the parity
record counts such examples (``examples_at_threshold``). The sidecar
``<file>.json`` records the threshold, the form, the exit ratio on the parity data and the
MACs of each path.

    python -m tfgated.export --tflite exit_model.keras --exit-threshold 0.9 -o model.tflite

Gumbel exit gates (:mod:`tfgated.exits`, the DenseNet of the Gumbel supplement) export the same
way with :func:`export_exit_gates`: in the conditional form each stage after exit ``k`` sits in
the ``else`` branch of exit ``k``'s ``IF`` (nested), and exit ``k``'s classifier in its ``then``
branch, so an example leaving at exit ``k`` computes neither the later stages nor the other
classifiers. The gates decide in their threshold style (``probability > threshold``).

    python -m tfgated.export --tflite densenet_exit.keras -o model.tflite
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from tfgated.export import parity as parity_lib
from tfgated.export.writers import (
    FORMATS,
    ExportResult,
    _default_parity_inputs,
    _json_default,
    _temp_path,
    check_exportable,
    convert_onnx,
    convert_tflite,
    fold_lib,
    input_spec,
)
from tfgated.io import write_atomic

EXIT_FORMS = ("conditional", "masked")

#: Exit confidences this close to the threshold may round to either side in another runtime.
BOUNDARY_TOLERANCE = {"float32": 1e-5, "float16": 2e-3}


def _check_form(form, batch_size, fmt="tflite"):
    if form is None:
        return "conditional" if batch_size == 1 and fmt == "tflite" else "masked"
    if form not in EXIT_FORMS:
        raise ValueError(f"Expected form to be one of {list(EXIT_FORMS)}. Received: form={form!r}")
    if form == "conditional" and fmt == "onnx":
        raise ValueError(
            "tf2onnx cannot convert convolutions inside a conditional branch, so an ONNX early-exit "
            "file uses form='masked'. Received: form='conditional' with format='onnx'"
        )
    if form == "conditional" and batch_size != 1:
        raise ValueError(
            "The conditional early-exit form decides per example, so it needs batch_size=1. "
            f"Received: batch_size={batch_size} (use form='masked' for larger batches)"
        )
    return form


def early_exit_function(model_with_exit, threshold, batch_size=1, form=None, fmt="tflite"):
    """A concrete ``tf.function`` of a two-output exit model that stops early.

    Args:
        model_with_exit: a functional model ``[main_probs, exit_probs]``.
        threshold: an example exits when its maximum exit probability is above this.
        batch_size: fixed batch size of the signature.
        form: ``"conditional"`` (batch 1) or ``"masked"``; ``None`` picks
            ``"conditional"`` at batch size 1 for TFLite.
        fmt: the target format, ``"tflite"`` or ``"onnx"`` (ONNX: masked only).

    Returns:
        ``(concrete_function, tf_function, input_spec, early_exit_model, form)``.
    """
    import tensorflow as tf

    from tfgated.exits import EarlyExitModel
    from tfgated.gates import static_inference_style

    form = _check_form(form, batch_size, fmt)
    check_exportable(model_with_exit, allow_gates=True)
    split = EarlyExitModel(model_with_exit, threshold)
    spec = input_spec(model_with_exit, batch_size)
    part_a, part_b = split.part_a, split.part_b
    limit = float(split.threshold)

    def rest(crossing):
        if part_b is None:  # the main output itself crosses the split
            return crossing[0]
        return part_b(crossing if len(crossing) > 1 else crossing[0], training=False)

    @tf.function(input_signature=[spec])
    def serve(x):
        with keras.StatelessScope():
            outs = part_a(x, training=False)
            exit_probs, crossing = tf.cast(outs[0], tf.float32), list(outs[1:])
            confident = tf.reduce_max(exit_probs, axis=-1) > limit
            if form == "conditional":
                return tf.cond(
                    confident[0],
                    lambda: tf.identity(exit_probs),
                    lambda: tf.cast(rest(crossing), tf.float32),
                )
            return tf.where(confident[:, None], exit_probs, tf.cast(rest(crossing), tf.float32))

    with static_inference_style(model_with_exit):
        concrete = serve.get_concrete_function()
    return concrete, serve, spec, split, form


def _reference(main_probs, exit_probs, threshold, outputs, quantization):
    """The Keras answer for each example, and how many sit at the threshold.

    An example whose exit confidence is within rounding of the threshold may take either path
    in another runtime; for those the path closer to the file's output is the reference.
    """
    confidence = exit_probs.max(axis=1).astype("float64")
    expected = np.where((confidence > threshold)[:, None], exit_probs, main_probs)
    tolerance = BOUNDARY_TOLERANCE[quantization]
    at_threshold = np.abs(confidence - threshold) <= tolerance
    outputs = np.asarray(outputs, "float32")
    closer_to_exit = np.abs(outputs - exit_probs).max(axis=1) <= np.abs(outputs - main_probs).max(axis=1)
    pick = at_threshold & closer_to_exit
    expected[pick] = exit_probs[pick]
    pick = at_threshold & ~closer_to_exit
    expected[pick] = main_probs[pick]
    return expected, int(at_threshold.sum())


def _runtime_outputs(path, x, threads):
    return parity_lib.run_file(path, x, threads=threads)


def _check_request(path, format, quantization, what):
    fmt = format or parity_lib.file_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"Expected format to be one of {list(FORMATS)}. Received: format={fmt!r}")
    if quantization not in ("float32", "float16"):
        raise ValueError(f"Expected quantization to be 'float32' or 'float16' for {what}. Received: {quantization!r}")
    if fmt == "onnx" and quantization != "float32":
        raise ValueError(f"ONNX export supports float32 only. Received: quantization={quantization!r}")
    return fmt


def _write_checked(path, data, fmt, quantization, x, expected_for, check, allow_mismatch, threads, what):
    """Write ``data`` to ``path`` only after it matches Keras in its runtime (or the check is waived).

    ``expected_for(outputs)`` returns ``(expected outputs, extra parity fields)``. Returns the
    parity record (``None`` when not checked); nothing is left behind on failure.
    """
    tmp = _temp_path(path)
    tmp_ext = tmp + os.path.splitext(os.fspath(path))[1]  # the runtimes need the right extension
    try:
        with open(tmp_ext, "wb") as f:
            f.write(data)
        os.remove(tmp)
        parity = None
        if check or allow_mismatch:
            outputs = _runtime_outputs(tmp_ext, x, threads)
            expected, extra = expected_for(outputs)
            parity = parity_lib.compare(expected, outputs, quantization)
            parity["runtime"] = "litert" if fmt == "tflite" else "onnxruntime"
            parity.update(extra)
            if not parity["passed"] and check and not allow_mismatch:
                raise parity_lib.ParityError(
                    f"Parity check failed for the {what} {os.fspath(path)!r} ({quantization}): "
                    f"max_abs_diff={parity['max_abs_diff']}, top1_agreement={parity.get('top1_agreement')}; "
                    f"expected {parity['threshold']}. Pass allow_mismatch=True (--no-check) to write it anyway."
                )
        os.replace(tmp_ext, path)
    except BaseException:
        for leftover in (tmp, tmp_ext):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    return parity


def _write_sidecar(path, model, fmt, quantization, batch_size, class_names, preprocessing, parity, key, info):
    sidecar = {
        "file": os.path.basename(path),
        "format": fmt,
        "quantization": quantization,
        "model": model.name,
        "input_shape": [batch_size] + [int(d) for d in model.inputs[0].shape[1:]],
        "input_dtype": "float32",
        "preprocessing": preprocessing,
        "class_names": list(class_names) if class_names is not None else None,
        key: info,
        "folded": False,
        "parity": parity,
    }
    sidecar_path = os.fspath(path) + ".json"
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=_json_default) + "\n")
    return ExportResult(path=os.fspath(path), sidecar_path=sidecar_path, sidecar=sidecar, report=None, parity=parity)


def export_early_exit(
    model_with_exit,
    path,
    threshold,
    format=None,
    quantization="float32",
    batch_size=1,
    form=None,
    parity_data=None,
    check=True,
    allow_mismatch=False,
    threads=None,
    class_names=None,
    preprocessing=None,
    opset=None,
):
    """Write a two-output exit model as one file that stops early (see the module docstring).

    Args:
        model_with_exit: a functional model ``[main_probs, exit_probs]``.
        path: ``.tflite`` or ``.onnx`` output, written atomically.
        threshold: exit confidence threshold (a number in [0, 1]).
        format: ``"tflite"`` or ``"onnx"`` (default: from the extension).
        quantization: ``"float32"`` or ``"float16"`` (TFLite weights).
        batch_size: fixed batch size of the signature.
        form: ``"conditional"`` or ``"masked"`` (default: conditional for TFLite at batch size 1,
            masked otherwise).
        parity_data: inputs of the parity check (default: 256 uniform random inputs; real
            images exercise both paths, random ones may all take one).
        check, allow_mismatch, threads, class_names, preprocessing, opset: as in
            :func:`tfgated.export.export`.

    Returns:
        :class:`tfgated.export.ExportResult` (no fold report).

    Raises:
        ParityError: the written file does not match the split Keras inference.
        ValueError: not a two-output exit model, bad threshold, form or format.
    """
    fmt = _check_request(path, format, quantization, "an early-exit export")
    concrete, function, spec, split, form = early_exit_function(model_with_exit, threshold, batch_size, form, fmt)
    if fmt == "tflite":
        data = convert_tflite(concrete, model_with_exit, quantization, None, batch_size)
    else:
        data = convert_onnx(function, spec, opset)
    x = np.asarray(parity_data if parity_data is not None else _default_parity_inputs(model_with_exit), "float32")
    # One Keras pass gives both the parity reference and the exit ratio on the parity data.
    main_probs, exit_probs = (np.asarray(p, "float32") for p in model_with_exit.predict(x, batch_size=256, verbose=0))
    exit_ratio = float(np.mean(exit_probs.max(axis=1).astype("float64") > split.threshold))

    def expected_for(outputs):
        expected, ambiguous = _reference(main_probs, exit_probs, split.threshold, outputs, quantization)
        return expected, {"examples_at_threshold": ambiguous}

    parity = _write_checked(
        path, data, fmt, quantization, x, expected_for, check, allow_mismatch, threads, "early-exit export"
    )
    macs = split.macs
    info = {
        "form": form,
        "threshold": float(split.threshold),
        "rule": "exit when max(exit softmax) > threshold",
        "macs_exit_path": int(macs["part_a"] + macs["head"]),
        "macs_full_path": int(macs["part_a"] + macs["head"] + macs["part_b"]),
        "macs_main_without_exit": int(macs["main"]),
        "parity_exit_ratio": exit_ratio,
        "parity_mean_macs": float(macs["part_a"] + macs["head"] + (1.0 - exit_ratio) * macs["part_b"]),
    }
    return _write_sidecar(
        path, model_with_exit, fmt, quantization, batch_size, class_names, preprocessing, parity, "early_exit", info
    )


# -- Gumbel exit gates (tfgated.exits) -----------------------------------------------------------


def _combine_node(model):
    from tfgated.exits import EarlyExitCombine

    nodes = _nodes(model)
    found = [n for n in nodes if isinstance(n.operation, EarlyExitCombine)]
    if len(found) != 1:
        raise ValueError(
            f"Expected one EarlyExitCombine layer (a Gumbel exit-gate model). Received: {len(found)} in {model.name!r}"
        )
    return nodes, found[0]


def _nodes(model):
    return fold_lib._nodes_in_order(model)


def _run_until(nodes, targets, values):
    """Run, in topological order, the nodes needed for ``targets`` that ``values`` lacks."""
    producer = {id(t): n for n in nodes for t in n.outputs}
    needed, stack = set(), [t for t in targets if id(t) not in values]
    while stack:
        node = producer.get(id(stack.pop()))
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(t for t in node.input_tensors if id(t) not in values)
    for node in nodes:
        if id(node) in needed and any(id(t) not in values for t in node.outputs):
            args, kwargs = node.arguments.fill_in(values)
            outs = node.operation(*args, **kwargs)
            for t, v in zip(node.outputs, keras.tree.flatten(outs)):
                values[id(t)] = v


def exit_gates_call(model):
    """A batch-1 callable of a Gumbel exit-gate model with each exit as a (nested) ``tf.cond``."""
    import tensorflow as tf

    nodes, combine = _combine_node(model)
    inputs = combine.input_tensors  # [probs_1, z_1, ..., probs_K, z_K, final_probs]
    probs, gates, final = inputs[0:-1:2], inputs[1:-1:2], inputs[-1]

    def step(k, values):
        if k == len(gates):
            _run_until(nodes, [final], values)
            return tf.cast(values[id(final)], tf.float32)
        _run_until(nodes, [gates[k]], values)
        z = tf.reshape(values[id(gates[k])], [-1])[0]

        def leave(values=values, k=k):
            local = dict(values)
            _run_until(nodes, [probs[k]], local)
            return tf.cast(local[id(probs[k])], tf.float32)

        return tf.cond(z > 0.5, leave, lambda values=values, k=k: step(k + 1, dict(values)))

    return lambda x: step(0, {id(model.inputs[0]): x})


def exit_gates_function(model, batch_size=1, form=None, fmt="tflite"):
    """``(concrete, tf_function, spec, form)`` of a Gumbel exit-gate model in threshold style."""
    import tensorflow as tf

    import tfgated
    from tfgated.gates import static_inference_style

    form = _check_form(form, batch_size, fmt)
    check_exportable(model, allow_gates=True)
    styles = {g.inference_style for g in tfgated.gate_layers(model)}
    if styles - {"threshold", "always_on"}:
        raise ValueError(
            f"Expected the gates in the threshold or always_on style to export. Received: {sorted(styles)} "
            "(call tfgated.set_inference_style(model, 'threshold') first)"
        )
    _combine_node(model)
    spec = input_spec(model, batch_size)
    call = exit_gates_call(model) if form == "conditional" else None

    @tf.function(input_signature=[spec])
    def serve(x):
        with keras.StatelessScope():
            if call is not None:
                return call(x)
            return tf.cast(model(x, training=False), tf.float32)

    with static_inference_style(model):
        concrete = serve.get_concrete_function()
    return concrete, serve, spec, form


def export_exit_gates(
    model,
    path,
    format=None,
    quantization="float32",
    batch_size=1,
    form=None,
    parity_data=None,
    check=True,
    allow_mismatch=False,
    threads=None,
    class_names=None,
    preprocessing=None,
    opset=None,
):
    """Write a Gumbel exit-gate model (:mod:`tfgated.exits`) as one file that stops at its exits.

    Arguments as for :func:`export_early_exit`, without a threshold: the exit gates decide in
    their threshold style. The parity reference is the Keras model's own routed output.
    """
    from tfgated.exits import exit_shares

    fmt = _check_request(path, format, quantization, "an exit-gate export")
    concrete, function, spec, form = exit_gates_function(model, batch_size, form, fmt)
    if fmt == "tflite":
        data = convert_tflite(concrete, model, quantization, None, batch_size)
    else:
        data = convert_onnx(function, spec, opset)
    x = np.asarray(parity_data if parity_data is not None else _default_parity_inputs(model), "float32")
    reference = np.asarray(model.predict(x, batch_size=256, verbose=0), "float32")
    shares = exit_shares(model, x)
    parity = _write_checked(
        path, data, fmt, quantization, x, lambda outputs: (reference, {}), check, allow_mismatch, threads,
        "exit-gate export",
    )
    info = {
        "form": form,
        "exits": int(len(shares) - 1),
        "rule": "leave at the first exit whose gate probability is above its threshold",
        "parity_exit_shares": [float(v) for v in shares],
    }
    return _write_sidecar(path, model, fmt, quantization, batch_size, class_names, preprocessing, parity, "exit_gates", info)
