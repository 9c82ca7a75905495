"""Early-exit export: the exit decision becomes control flow inside the exported file.

A SIPA early-exit model (:func:`tfgated.exits.attach_exit`, two outputs
``[main_probs, exit_probs]``) is split the way :class:`tfgated.exits.EarlyExitModel`
splits it: part A computes the exit probabilities (and every tensor the rest of the
network needs), part B the main output. The exported function returns one tensor, the
probabilities of the path each example took:

* ``"conditional"`` (TFLite at batch size 1, the default there): ``tf.cond(max(exit_probs) >
  threshold, exit_probs, part_b(...))``, so part B does not run for a confident example.
  LiteRT runs it as an ``IF`` op: the saved compute is real.
* ``"masked"`` (any batch size): both paths run and ``tf.where`` selects per example. The
  outputs are the same; nothing is saved.
* ``"sparse"`` (gather-run-scatter, TFLite and ONNX, a dynamic batch dimension): the examples
  that do not exit are gathered, part B runs on them (its data-dependent residual gates
  gathered too) and the two outputs are stitched in order (:func:`tfgated.sparse.sparse_exit_call`).

ONNX has an ``If`` operator, but tf2onnx 1.16 cannot convert the convolutions inside a
``tf.cond`` branch: with variable kernels it fails outright, and from a frozen graph it writes
``Conv`` nodes that ONNX Runtime rejects ("Attribute dilations has incorrect size"). So an ONNX
early-exit file is masked or sparse, and the sidecar says so.

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

import os

import keras
import numpy as np

from tfgated.export.convert import FORMATS, trace
from tfgated.export.fold_graph import graph_index, nodes_in_order, run_node
from tfgated.export.options import ExportOptions
from tfgated.export.parity import write_verified
from tfgated.export.writers import ExportResult, check_exportable, describe
from tfgated.sparse import sparse_exit_call

EXIT_FORMS = ("conditional", "masked")
#: Quantizations an export with exits takes (int8 would move the exit decisions).
EXIT_QUANTIZATIONS = ("float32", "float16")

#: Exit confidences this close to the threshold may round to either side in another runtime.
BOUNDARY_TOLERANCE = {"float32": 1e-5, "float16": 2e-3}


def _form(form, batch_size, fmt):
    """The checked form for ``fmt`` (see :meth:`ExportOptions.resolve_form`)."""
    if fmt not in FORMATS:
        raise ValueError(f"Expected format to be one of {list(FORMATS)}. Received: format={fmt!r}")
    return ExportOptions(batch_size=batch_size, form=form).resolve_form(FORMATS[fmt])


def _exit_request(path, options, overrides, what):
    """``(options, format entry, form)`` of an export with exits, checked before any work."""
    options = ExportOptions.of(options, **overrides)
    if options.quantization not in EXIT_QUANTIZATIONS:
        raise ValueError(
            f"Expected quantization to be 'float32' or 'float16' for {what}. Received: {options.quantization!r}"
        )
    target = options.resolve_format(path)
    return options, target, options.resolve_form(target)


def _write_exit_file(model, path, target, options, data, x, expected_for, what, info):
    """Verify and write ``data``, then the sidecar with ``info`` (``{key: fields}``)."""
    parity = write_verified(path, data, target, options, x, expected_for, what)
    forms = {entry.get("form") for entry in info.values()}
    shape = {"input_shape": [None] + [int(d) for d in model.inputs[0].shape[1:]]} if "sparse" in forms else {}
    sidecar_path, sidecar = describe(path, model, target, options, **info, folded=False, parity=parity, **shape)
    return ExportResult(path=os.fspath(path), sidecar_path=sidecar_path, sidecar=sidecar, report=None, parity=parity)


# -- SIPA early exit (tfgated.exits) ------------------------------------------------------------


def _early_exit_traced(model_with_exit, threshold, batch_size, form, stitch="gather"):
    """``(Traced, EarlyExitModel)`` of the function that returns the taken path's probabilities."""
    import tensorflow as tf

    from tfgated.exits import EarlyExitModel

    check_exportable(model_with_exit, allow_gates=True)
    split = EarlyExitModel(model_with_exit, threshold)
    part_a, part_b = split.part_a, split.part_b
    limit = float(split.threshold)

    def rest(crossing):
        if part_b is None:  # the main output itself crosses the split
            return crossing[0]
        return part_b(crossing if len(crossing) > 1 else crossing[0], training=False)

    if form == "sparse":  # gather the examples that stay, run part B on them, stitch
        sparse = sparse_exit_call(part_a, part_b, limit, stitch=stitch)

        def call(x):
            with keras.StatelessScope():
                return tf.cast(sparse(x), tf.float32)

        return trace(model_with_exit, call, None), split

    def call(x):
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

    return trace(model_with_exit, call, batch_size), split


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
    form = _form(form, batch_size, fmt)
    traced, split = _early_exit_traced(model_with_exit, threshold, batch_size, form)
    return traced.concrete, traced.function, traced.spec, split, form


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


def export_early_exit(model_with_exit, path, threshold, options=None, **overrides):
    """Write a two-output exit model as one file that stops early (see the module docstring).

    Args:
        model_with_exit: a functional model ``[main_probs, exit_probs]``.
        path: ``.tflite`` or ``.onnx`` output, written atomically.
        threshold: exit confidence threshold (a number in [0, 1]).
        options: :class:`~tfgated.export.options.ExportOptions`; ``**overrides`` set its fields.
            Used here: ``format``, ``quantization`` (``"float32"`` or ``"float16"``),
            ``batch_size``, ``form`` (default: conditional for TFLite at batch size 1, masked
            otherwise), ``parity_data`` (default: 256 uniform random inputs; real images
            exercise both paths, random ones may all take one), ``check``, ``allow_mismatch``,
            ``threads``, ``class_names``, ``preprocessing``, ``opset``. The gates are not folded.

    Returns:
        :class:`tfgated.export.ExportResult` (no fold report).

    Raises:
        ParityError: the written file does not match the split Keras inference.
        ValueError: not a two-output exit model, bad threshold, form or format.
    """
    options, target, form = _exit_request(path, options, overrides, "an early-exit export")
    traced, split = _early_exit_traced(model_with_exit, threshold, options.batch_size, form, options.sparse_stitch)
    data = target.convert(traced, options)
    x = options.parity_inputs(model_with_exit)
    # One Keras pass gives both the parity reference and the exit ratio on the parity data.
    main_probs, exit_probs = (np.asarray(p, "float32") for p in model_with_exit.predict(x, batch_size=256, verbose=0))
    exit_ratio = float(np.mean(exit_probs.max(axis=1).astype("float64") > split.threshold))

    def expected_for(outputs):
        expected, ambiguous = _reference(main_probs, exit_probs, split.threshold, outputs, options.quantization)
        return expected, {"examples_at_threshold": ambiguous}

    macs = split.macs
    info = {
        "form": form,
        "threshold": float(split.threshold),
        "rule": "exit when max(exit softmax) > threshold",
        "macs_exit_path": int(macs["part_a"] + macs["head"]),
        "macs_full_path": int(macs["part_a"] + macs["head"] + macs["part_b"]),
        "macs_main_without_exit": int(macs["main"]),
        "parity_exit_ratio": exit_ratio,
        **({"stitch": options.sparse_stitch} if form == "sparse" else {}),
        "parity_mean_macs": float(macs["part_a"] + macs["head"] + (1.0 - exit_ratio) * macs["part_b"]),
    }
    return _write_exit_file(
        model_with_exit, path, target, options, data, x, expected_for, "early-exit export", {"early_exit": info}
    )


# -- Gumbel exit gates (tfgated.exits) -----------------------------------------------------------


def _combine_node(model):
    from tfgated.exits import EarlyExitCombine

    nodes = nodes_in_order(model)
    found = [n for n in nodes if isinstance(n.operation, EarlyExitCombine)]
    if len(found) != 1:
        raise ValueError(
            f"Expected one EarlyExitCombine layer (a Gumbel exit-gate model). Received: {len(found)} in {model.name!r}"
        )
    return nodes, found[0]


def _run_until(nodes, targets, values):
    """Run, in topological order, the nodes needed for ``targets`` that ``values`` lacks."""
    producer, _ = graph_index(nodes)
    needed, stack = set(), [t for t in targets if id(t) not in values]
    while stack:
        node = producer.get(id(stack.pop()))
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(t for t in node.input_tensors if id(t) not in values)
    for node in nodes:
        if id(node) in needed and any(id(t) not in values for t in node.outputs):
            run_node(node, values)


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


def _exit_gates_traced(model, batch_size, form):
    """:class:`Traced` of a Gumbel exit-gate model in threshold style, exits in ``form``."""
    import tensorflow as tf

    import tfgated

    check_exportable(model, allow_gates=True)
    styles = {g.inference_style for g in tfgated.gate_layers(model)}
    if styles - {"threshold", "always_on"}:
        raise ValueError(
            f"Expected the gates in the threshold or always_on style to export. Received: {sorted(styles)} "
            "(call tfgated.set_inference_style(model, 'threshold') first)"
        )
    _combine_node(model)
    conditional = exit_gates_call(model) if form == "conditional" else None

    def call(x):
        with keras.StatelessScope():
            if conditional is not None:
                return conditional(x)
            return tf.cast(model(x, training=False), tf.float32)

    return trace(model, call, batch_size)


def exit_gates_function(model, batch_size=1, form=None, fmt="tflite"):
    """``(concrete, tf_function, spec, form)`` of a Gumbel exit-gate model in threshold style."""
    form = _form(form, batch_size, fmt)
    traced = _exit_gates_traced(model, batch_size, form)
    return traced.concrete, traced.function, traced.spec, form


def export_exit_gates(model, path, options=None, **overrides):
    """Write a Gumbel exit-gate model (:mod:`tfgated.exits`) as one file that stops at its exits.

    Options as for :func:`export_early_exit`, without a threshold: the exit gates decide in
    their threshold style. The parity reference is the Keras model's own routed output.
    """
    from tfgated.exits import exit_shares

    options, target, form = _exit_request(path, options, overrides, "an exit-gate export")
    fallback = {}
    if form == "sparse":  # said in the sidecar: the exit gates keep the masked form
        form, fallback = "masked", {"sparse_fallback": "Gumbel exit gates have no gather-run-scatter form: masked"}
    data = target.convert(_exit_gates_traced(model, options.batch_size, form), options)
    x = options.parity_inputs(model)
    reference = np.asarray(model.predict(x, batch_size=256, verbose=0), "float32")
    shares = exit_shares(model, x)
    info = {
        "form": form,
        "exits": int(len(shares) - 1),
        "rule": "leave at the first exit whose gate probability is above its threshold",
        "parity_exit_shares": [float(v) for v in shares],
        **fallback,
    }
    return _write_exit_file(
        model, path, target, options, data, x, lambda outputs: (reference, {}), "exit-gate export", {"exit_gates": info}
    )
