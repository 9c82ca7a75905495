"""TFLite and ONNX writers with folding, parity checks and a JSON sidecar.

:func:`export` is the one-call path used by ``python -m tfgated.export``::

    result = export(model, "out.tflite", quantization="float16")

It folds the gates (:func:`tfgated.export.fold.fold`), builds a concrete
``tf.function`` with a fixed input signature (batch 1 by default), converts it,
checks the written file in its real runtime against the Keras model
(:mod:`tfgated.export.parity`), and only then moves the file into place
(temporary file + ``os.replace``), with a sidecar ``<file>.json`` next to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import keras
import numpy as np

import importlib

# ``tfgated.export.fold`` the function shadows the module of the same name on the package.
fold_lib = importlib.import_module("tfgated.export.fold")
from tfgated.export import parity as parity_lib
from tfgated.export.parity import ParityError  # noqa: F401  (re-exported)
from tfgated.io import write_atomic  # noqa: F401  (also re-exported as tfgated.export.writers.write_atomic)

FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("float32", "float16", "int8")
DEFAULT_PARITY_EXAMPLES = 256


class UnsupportedLayerError(ValueError):
    """The model has a layer the exporters cannot handle."""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: str
    sidecar_path: str
    sidecar: dict
    report: object = None
    parity: dict = None


# -- files ----------------------------------------------------------------------------------


def _temp_path(path):
    """An empty temporary file next to ``path`` for the converted model, which is checked in its
    runtime before ``os.replace`` moves it into place (other files use :func:`write_atomic`)."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return tmp


# -- checks -----------------------------------------------------------------------------------


def check_exportable(model, allow_gates=False):
    """Raise :class:`UnsupportedLayerError` naming the first layer the exporters cannot take.

    Built-in Keras layers are supported; tfgated gate layers only when
    ``allow_gates`` (an unfolded export); any other custom layer is not.
    """
    from tfgated.inference import _walk

    for layer in _walk(model):
        if layer is model or isinstance(layer, keras.Model) and type(layer).__module__.startswith("keras."):
            continue
        module = type(layer).__module__
        if module.startswith("keras."):
            continue
        if allow_gates and module.startswith("tfgated."):
            continue
        if module.startswith("tfgated."):
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({type(layer).__name__}) is a tfgated layer left in a folded model."
            )
        raise UnsupportedLayerError(
            f"Cannot export layer {layer.name!r} of type {type(layer).__module__}.{type(layer).__name__}: "
            "only built-in Keras layers and tfgated gates are supported."
        )


def input_spec(model, batch_size=1):
    """``tf.TensorSpec`` of the model's single input with a fixed batch size."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"Expected a model with one input. Received: {len(model.inputs)} inputs")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"Expected a fixed input shape to export. Received: input shape {(None,) + shape}")
    return tf.TensorSpec((batch_size,) + shape, tf.float32, name="input")


# -- tf.function ---------------------------------------------------------------------------------


def _exclusive_nodes(nodes, consumers, outputs, branch_tensor, producer):
    """Nodes computing ``branch_tensor`` whose outputs nothing else uses."""
    exclusive = set()
    start = producer.get(id(branch_tensor))
    if start is None:
        return exclusive
    ancestors, stack = set(), [start]
    while stack:
        node = stack.pop()
        if id(node) in ancestors:
            continue
        ancestors.add(id(node))
        stack.extend(producer[id(t)] for t in node.input_tensors if id(t) in producer)
    output_ids = {id(t) for t in outputs}
    for node in reversed(nodes):
        if id(node) not in ancestors:
            continue
        if node is start:
            if len(consumers.get(id(branch_tensor), [])) == 1 and id(branch_tensor) not in output_ids:
                exclusive.add(id(node))
            continue
        outs = [t for t in node.outputs]
        if any(id(t) in output_ids for t in outs):
            continue
        users = [c for t in outs for c in consumers.get(id(t), [])]
        if users and all(id(c) in exclusive for c in users):
            exclusive.add(id(node))
    return exclusive


def conditional_call(model, conditional):
    """A callable running ``model`` with the residual branches of ``conditional`` under ``tf.cond``.

    ``conditional`` lists dicts with the layer names ``multiply`` (branch * z),
    ``branch`` and ``add`` (see :attr:`FoldReport.conditional`). The branch is
    computed only when its gate is open; the decision reads the first example,
    so use it with batch size 1.
    """
    import tensorflow as tf

    nodes = fold_lib._nodes_in_order(model)
    producer, consumers = {}, {}
    for node in nodes:
        for t in node.outputs:
            producer[id(t)] = node
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    by_name = {node.operation.name: node for node in nodes}
    plans = {}
    for spec in conditional:
        mul = by_name.get(spec["multiply"])
        if mul is None:
            raise ValueError(f"No layer {spec['multiply']!r} in model {model.name!r}.")
        branch, z = mul.input_tensors
        exclusive = _exclusive_nodes(nodes, consumers, model.outputs, branch, producer)
        plans[id(mul)] = (branch, z, [n for n in nodes if id(n) in exclusive])
    skipped = {id(n) for _, _, ns in plans.values() for n in ns}

    def run_node(node, values):
        args, kwargs = node.arguments.fill_in(values)
        outs = node.operation(*args, **kwargs)
        for t, v in zip(node.outputs, keras.tree.flatten(outs)):
            values[id(t)] = v

    def call(x):
        values = {id(model.inputs[0]): x}
        for node in nodes:
            if id(node) in skipped:
                continue
            if id(node) in plans:
                branch, z, inner = plans[id(node)]
                zv = values[id(z)]

                def open_branch(inner=inner, branch=branch, zv=zv):
                    local = dict(values)
                    for n in inner:
                        run_node(n, local)
                    return local[id(branch)] * zv

                shape = (x.shape[0],) + tuple(branch.shape[1:])
                values[id(node.outputs[0])] = tf.cond(
                    tf.reshape(zv, [-1])[0] > 0.5, open_branch, lambda shape=shape: tf.zeros(shape, x.dtype)
                )
                continue
            run_node(node, values)
        return values[id(model.outputs[0])]

    return call


def export_function(model, batch_size=1, conditional=None):
    """A concrete ``tf.function`` computing ``model`` (inference) on a fixed-size batch.

    Args:
        model: a Keras model with one input and one output.
        batch_size: fixed batch size of the signature.
        conditional: optional list of conditional residual branches (from
            :attr:`FoldReport.conditional`) to run under ``tf.cond``; only
            used with ``batch_size == 1``.
    """
    import tensorflow as tf

    from tfgated.gates import static_inference_style

    spec = input_spec(model, batch_size)
    if conditional and batch_size == 1:
        call = conditional_call(model, conditional)
    else:
        def call(x):
            # Stochastic unfolded gates advance a seed state; a stateless scope
            # keeps that assignment out of the exported graph.
            with keras.StatelessScope():
                return model(x, training=False)

    @tf.function(input_signature=[spec])
    def serve(x):
        return call(x)

    # Unfolded gates trace their style as a constant: no random op in the graph.
    with static_inference_style(model):
        concrete = serve.get_concrete_function()
    return concrete, serve, spec


# -- converters ---------------------------------------------------------------------------------


def _representative(x, batch_size):
    def generator():
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield [np.asarray(x[i : i + batch_size], "float32")]

    return generator


def _all_layers(model):
    from tfgated.inference import _walk

    return list(_walk(model))


def convert_tflite(concrete, model, quantization="float32", representative_data=None, batch_size=1):
    """TFLite flatbuffer bytes for a concrete function of ``model``."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Expected quantization to be one of {list(QUANTIZATIONS)}. Received: {quantization!r}")
    # The trackable must hold the tf.Variables behind the Keras variables, or
    # the converter freezes uninitialised (NaN) weights.
    holder = tf.Module()
    holder.variables_list = [getattr(v, "value", v) for v in model.variables]
    seeds = [layer.seed_generator.state for layer in _all_layers(model) if hasattr(layer, "seed_generator")]
    holder.seed_states = [getattr(v, "value", v) for v in seeds]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    if seeds:  # unfolded gates draw noise: keep their seed state as a resource variable
        converter.experimental_enable_resource_variables = True
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_data is None:
            raise ValueError("int8 quantization needs representative_data (an array of example inputs).")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(representative_data, batch_size)
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 - add context, keep the cause
        raise RuntimeError(f"TFLite conversion of model {model.name!r} failed: {error}") from error


def convert_onnx(function, spec, opset=None):
    """ONNX model bytes for a ``tf.function`` with input signature ``[spec]``."""
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    except Exception as error:  # noqa: BLE001
        raise RuntimeError(f"ONNX conversion failed: {error}") from error
    return proto.SerializeToString()


# -- one-call export ---------------------------------------------------------------------------------


def _default_parity_inputs(model, n=DEFAULT_PARITY_EXAMPLES, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((n,) + shape).astype("float32")


def export(
    model,
    path,
    format=None,
    quantization="float32",
    batch_size=1,
    style=None,
    fold=True,
    conditional=True,
    fold_batchnorm=False,
    remove_channels=True,
    representative_data=None,
    parity_data=None,
    check=True,
    allow_mismatch=False,
    threads=None,
    class_names=None,
    preprocessing=None,
    opset=None,
):
    """Fold, convert, check and write ``model`` to ``path`` (``.tflite`` or ``.onnx``).

    Args:
        model: a Keras functional model (gated or plain), one input, one output.
        path: output file; the format follows the extension unless ``format``.
        format: ``"tflite"`` or ``"onnx"``.
        quantization: ``"float32"``, ``"float16"`` (weights) or ``"int8"`` (TFLite only).
        batch_size: fixed batch size of the exported signature.
        style: ``"threshold"`` or ``"always_on"`` to export the gates in that
            style; ``None`` keeps the model's style (must be one of these when folding).
        fold: fold the gates (``False`` exports the gated model as is).
        conditional: at batch size 1, run data-dependent residual branches
            under ``tf.cond`` instead of masking them (TFLite only: tf2onnx
            cannot convert convolutions inside conditionals, ONNX files use
            the masked form).
        fold_batchnorm: fold batch norms into the preceding convolutions.
        remove_channels: physically remove closed channels; ``False`` gives
            the plain *masked* model (constant masks, every channel kept).
        representative_data: example inputs for int8 calibration.
        parity_data: inputs of the parity check (default: 256 uniform random inputs).
        check: run the parity check; ``allow_mismatch`` writes the file even if it fails.
        threads: runtime threads for the parity run.
        class_names, preprocessing: recorded in the sidecar.
        opset: ONNX opset (tf2onnx's default if ``None``).

    A model with pruning masks attached (:mod:`tfgated.pruning`) gets its masks applied first, so
    the file holds exact zeros where the masks do (as after ``strip_pruning``; the masks stay
    attached).

    Returns:
        :class:`ExportResult`.

    Raises:
        ParityError: the written file does not match Keras (no file is left behind).
        UnsupportedLayerError: a layer cannot be exported.
    """
    import tfgated

    fmt = format or parity_lib.file_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"Expected format to be one of {list(FORMATS)}. Received: format={fmt!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Expected quantization to be one of {list(QUANTIZATIONS)}. Received: {quantization!r}")
    if fmt == "onnx" and quantization != "float32":
        raise ValueError(f"ONNX export supports float32 only. Received: quantization={quantization!r}")
    from tfgated.pruning import get_pruning_state

    pruning = get_pruning_state(model)
    if pruning is not None:  # a model still under pruning: the file holds its masked (exact-zero) weights
        pruning.apply_masks()
    gates = tfgated.gate_layers(model)
    saved = [(g, g.inference_style, g.threshold) for g in gates]
    try:
        if style is not None and gates:
            tfgated.set_inference_style(model, style)
        inference_style = tfgated.get_inference_style(model)
        check_exportable(model, allow_gates=True)
        report = None
        if fold:
            exported, report = fold_lib.fold(
                model, fold_batchnorm=fold_batchnorm, remove_channels=remove_channels, return_report=True
            )
            check_exportable(exported)
        else:
            exported = model
        # tf2onnx cannot convert convolutions inside tf.cond branches (their
        # kernels stay variables there): ONNX always uses the masked form.
        use_cond = report is not None and conditional and batch_size == 1 and fmt == "tflite"
        used_conditional = list(report.conditional) if use_cond else []
        concrete, function, spec = export_function(exported, batch_size, used_conditional)
        if fmt == "tflite":
            data = convert_tflite(concrete, exported, quantization, representative_data, batch_size)
        else:
            data = convert_onnx(function, spec, opset)
        tmp = _temp_path(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            parity = None
            if check or allow_mismatch:
                x = parity_data if parity_data is not None else _default_parity_inputs(model)
                reference = model.predict(np.asarray(x, "float32"), batch_size=64, verbose=0)
                # rename so the runtimes see the right extension
                tmp_ext = tmp + os.path.splitext(path)[1]
                os.replace(tmp, tmp_ext)
                tmp = tmp_ext
                parity = parity_lib.check_parity(
                    tmp, reference, x, quantization, allow_mismatch=allow_mismatch or not check, threads=threads
                )
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    finally:
        for g, s, t in saved:
            g.set_inference_style(s, threshold=t)

    sidecar = {
        "file": os.path.basename(path),
        "format": fmt,
        "quantization": quantization,
        "model": model.name,
        "input_shape": [batch_size] + [int(d) for d in model.inputs[0].shape[1:]],
        "input_dtype": "float32",
        "preprocessing": preprocessing,
        "class_names": list(class_names) if class_names is not None else None,
        "inference_style": inference_style,
        "folded": bool(fold),
        "pruning_masks_applied": pruning is not None,
        "gates": {
            "dependent_form": ("conditional" if used_conditional else "masked") if report and report.dependent_masked else None,
            "conditional": [c["add"] for c in used_conditional],
        },
        "macs_before_folding": int(report.macs_before if report else fold_lib.count_macs(model)),
        "macs_after_folding": int(report.macs_after if report else fold_lib.count_macs(model)),
        "fold_report": report.summary() if report else None,
        "parity": parity,
    }
    sidecar_path = os.fspath(path) + ".json"
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=_json_default) + "\n")
    return ExportResult(path=os.fspath(path), sidecar_path=sidecar_path, sidecar=sidecar, report=report, parity=parity)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def export_tflite(model, path, **kwargs):
    """:func:`export` to TFLite."""
    return export(model, path, format="tflite", **kwargs)


def export_onnx(model, path, **kwargs):
    """:func:`export` to ONNX."""
    return export(model, path, format="onnx", **kwargs)
