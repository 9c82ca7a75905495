"""Trace a model to a ``tf.function`` and convert it: the table of formats.

:data:`FORMATS` maps a format name to a :class:`Format`: its runtime, the quantizations it
takes, whether it can hold conditionals, and its converter ``convert(traced, options) ->
bytes``. :func:`trace` builds the :class:`Traced` function (fixed input signature, batch 1 by
default) that every converter reads.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

from tfgated.export.fold_graph import graph_index, nodes_in_order, run_node
from tfgated.sparse import exclusive_nodes


@dataclasses.dataclass
class Traced:
    """A model traced for conversion.

    Attributes:
        concrete: the concrete function (TFLite converts it).
        function: the ``tf.function`` (tf2onnx converts it).
        spec: its one ``tf.TensorSpec`` input.
        model: the Keras model whose variables the function reads.
        float32_scopes: layer names whose constants a float16 TFLite file keeps in float32
            (the gate networks: :func:`tfgated.export.float16.keep_float32`).
    """

    concrete: object
    function: object
    spec: object
    model: object
    float32_scopes: tuple = ()


# -- tf.function -----------------------------------------------------------------------------------


def input_spec(model, batch_size=1):
    """``tf.TensorSpec`` of the model's single input with a fixed batch size (``None``: dynamic)."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"Expected a model with one input. Received: {len(model.inputs)} inputs")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"Expected a fixed input shape to export. Received: input shape {(None,) + shape}")
    return tf.TensorSpec((batch_size,) + shape, tf.float32, name="input")


def trace(model, call, batch_size=1, style_model=None, float32_scopes=()):
    """:class:`Traced` of ``call(x)`` on a fixed-size batch of ``model``'s input.

    ``style_model`` (default ``model``) is the gated model whose unfolded gates trace their
    inference style as a constant, so no random op reaches the graph. ``float32_scopes``: see
    :attr:`Traced.float32_scopes`.
    """
    import tensorflow as tf

    from tfgated.gates import static_inference_style

    spec = input_spec(model, batch_size)

    @tf.function(input_signature=[spec])
    def serve(x):
        return call(x)

    with static_inference_style(style_model if style_model is not None else model):
        concrete = serve.get_concrete_function()
    return Traced(concrete=concrete, function=serve, spec=spec, model=model, float32_scopes=tuple(float32_scopes))


def _branch_plans(model, nodes, conditional):
    """``{id(multiply node): (branch tensor, z tensor, nodes only the branch needs)}``."""
    producer, consumers = graph_index(nodes)
    by_name = {node.operation.name: node for node in nodes}
    plans = {}
    for spec in conditional:
        mul = by_name.get(spec["multiply"])
        if mul is None:
            raise ValueError(f"No layer {spec['multiply']!r} in model {model.name!r}.")
        branch, z = mul.input_tensors
        exclusive = exclusive_nodes(nodes, consumers, model.outputs, branch, producer)
        plans[id(mul)] = (branch, z, [n for n in nodes if id(n) in exclusive])
    return plans


def conditional_call(model, conditional):
    """A callable running ``model`` with the residual branches of ``conditional`` under ``tf.cond``.

    ``conditional`` lists dicts with the layer names ``multiply`` (branch * z),
    ``branch`` and ``add`` (see :attr:`FoldReport.conditional`). The branch is
    computed only when its gate is open; the decision reads the first example,
    so use it with batch size 1.
    """
    import tensorflow as tf

    nodes = nodes_in_order(model)
    plans = _branch_plans(model, nodes, conditional)
    skipped = {id(n) for _, _, ns in plans.values() for n in ns}

    def gated_branch(node, values, x):
        branch, z, inner = plans[id(node)]
        zv = values[id(z)]

        def open_branch():
            local = dict(values)
            for n in inner:
                run_node(n, local)
            return local[id(branch)] * zv

        shape = (x.shape[0],) + tuple(branch.shape[1:])
        return tf.cond(tf.reshape(zv, [-1])[0] > 0.5, open_branch, lambda: tf.zeros(shape, x.dtype))

    def call(x):
        values = {id(model.inputs[0]): x}
        for node in nodes:
            if id(node) in skipped:
                continue
            if id(node) in plans:
                values[id(node.outputs[0])] = gated_branch(node, values, x)
            else:
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

    Returns:
        ``(concrete_function, tf_function, input_spec)``.
    """
    if conditional and batch_size == 1:
        call = conditional_call(model, conditional)
    else:
        def call(x):
            # Stochastic unfolded gates advance a seed state; a stateless scope
            # keeps that assignment out of the exported graph.
            with keras.StatelessScope():
                return model(x, training=False)

    traced = trace(model, call, batch_size)
    return traced.concrete, traced.function, traced.spec


# -- converters ---------------------------------------------------------------------------------


def _representative(x, batch_size):
    def generator():
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield [np.asarray(x[i : i + batch_size], "float32")]

    return generator


def _tflite_converter(concrete, model):
    """A ``TFLiteConverter`` for ``concrete`` reading ``model``'s variables."""
    import tensorflow as tf

    from tfgated.inference import _walk

    # The trackable must hold the tf.Variables behind the Keras variables, or
    # the converter freezes uninitialised (NaN) weights.
    holder = tf.Module()
    holder.variables_list = [getattr(v, "value", v) for v in model.variables]
    seeds = [layer.seed_generator.state for layer in _walk(model) if hasattr(layer, "seed_generator")]
    holder.seed_states = [getattr(v, "value", v) for v in seeds]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    if seeds:  # unfolded gates draw noise: keep their seed state as a resource variable
        converter.experimental_enable_resource_variables = True
    return converter


def convert_tflite(concrete, model, quantization="float32", representative_data=None, batch_size=1,
                   float32_scopes=()):
    """TFLite flatbuffer bytes for a concrete function of ``model``.

    With ``quantization="float16"``, the constants of the layers named in ``float32_scopes``
    (the gate networks) stay float32: see :func:`tfgated.export.float16.keep_float32`.
    """
    import tensorflow as tf

    from tfgated.export.options import QUANTIZATIONS

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Expected quantization to be one of {list(QUANTIZATIONS)}. Received: {quantization!r}")
    converter = _tflite_converter(concrete, model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_data is None:
            raise ValueError("int8 quantization needs representative_data (an array of example inputs).")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(representative_data, batch_size)
    try:
        data = converter.convert()
        if quantization == "float16" and float32_scopes:
            from tfgated.export.float16 import keep_float32

            data, _ = keep_float32(data, _tflite_converter(concrete, model).convert(), float32_scopes)
        return data
    except Exception as error:  # noqa: BLE001 - add context, keep the cause
        raise RuntimeError(f"TFLite conversion of model {model.name!r} failed: {error}") from error


def convert_onnx(function, spec, opset=None):
    """ONNX model bytes for a ``tf.function`` with input signature ``[spec]``."""
    import tf2onnx

    from tfgated.export.onnx_layout import drop_batch_axis_transposes

    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    except Exception as error:  # noqa: BLE001
        raise RuntimeError(f"ONNX conversion failed: {error}") from error
    drop_batch_axis_transposes(proto)  # the NHWC round trips tf2onnx leaves around gathers
    return proto.SerializeToString()


# -- the table of formats ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Format:
    """One output format.

    Attributes:
        name: the format's name (``"tflite"``), also the file extension.
        title: how messages name it (``"TFLite"``).
        runtime: the runtime the parity check runs it in.
        quantizations: the quantizations it takes.
        conditional: whether it can hold ``tf.cond`` branches with convolutions.
        convert: ``convert(traced, options) -> bytes``.
    """

    name: str
    title: str
    runtime: str
    quantizations: tuple
    conditional: bool
    convert: Callable


def _tflite(traced, options):
    return convert_tflite(
        traced.concrete, traced.model, options.quantization, options.representative_data, options.batch_size,
        traced.float32_scopes,
    )


def _onnx(traced, options):
    return convert_onnx(traced.function, traced.spec, options.opset)


FORMATS = {
    "tflite": Format("tflite", "TFLite", "litert", ("float32", "float16", "int8"), True, _tflite),
    # tf2onnx cannot convert convolutions inside tf.cond branches (their kernels stay
    # variables there): ONNX files always use the masked form.
    "onnx": Format("onnx", "ONNX", "onnxruntime", ("float32",), False, _onnx),
}
