"""Float16 TFLite files whose gate networks keep float32 constants.

The TFLite converter's float16 quantization (``supported_types=[tf.float16]``) stores every
float constant as float16 behind a ``DEQUANTIZE`` op and offers no way to leave some layers
out. For a data-dependent gate that is wrong twice over: the folded gate's threshold step
(:data:`tfgated.export.fold_build.STEP_SCALE`, 6e4) is fused by the converter into the gate's
logit layer, so its weights and bias times 6e4 leave the float16 range and saturate at 65504
(on ``gumbel_resnet_fashion_mnist_dep_pg_t0.4`` this flipped 2,318 of 7,000 gate decisions
on 1,000 test images); and any rounding near the threshold flips a decision.

:func:`keep_float32` repairs a converted float16 file after the fact: given the same model
converted in float32, it gives the ops of the named layer scopes their exact float32
constants back (taken from the float32 file, op by op) and drops the ``DEQUANTIZE`` ops left
unused. Everything else stays float16. :func:`float32_constants` lists the float32 constants
a file stores, for the sidecar.
"""

from __future__ import annotations

import numpy as np


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _read(data):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _op_names(model):
    """Builtin operator name of each operator code of ``model``."""
    names = {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]


def _name(tensor):
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def in_scopes(tensor_name, scopes):
    """Whether a TFLite tensor name (``model/layer_1/op`` parts joined by ``;``) comes from a
    layer named ``scope`` or ``scope_<suffix>`` for one of ``scopes``."""
    parts = [p for fused in tensor_name.split(";") for p in fused.split("/")]
    return any(p == s or p.startswith(s + "_") for p in parts for s in scopes)


def _constant(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    return None if buffer is None or buffer.data is None or len(buffer.data) == 0 else buffer


def _match_subgraph(half, full, h_graph, f_graph, h_names, f_names):
    """``[(half op, full op)]`` of the two subgraphs once the half file's ``DEQUANTIZE`` ops
    are set aside; raise ``RuntimeError`` unless the op sequences are the same."""
    h_ops = [op for op in h_graph.operators if h_names[op.opcodeIndex] != "DEQUANTIZE"]
    h_seq = [h_names[op.opcodeIndex] for op in h_ops]
    f_seq = [f_names[op.opcodeIndex] for op in f_graph.operators]
    if h_seq != f_seq or any(len(a.inputs) != len(b.inputs) for a, b in zip(h_ops, f_graph.operators)):
        raise RuntimeError(
            "The float16 and float32 conversions of the model differ beyond DEQUANTIZE ops "
            f"({len(h_seq)} against {len(f_seq)} ops): cannot keep the gate networks in float32."
        )
    return list(zip(h_ops, f_graph.operators))


def _float32_copy(half, full, h_graph, f_graph, f_index, cache):
    """Index (in ``h_graph``) of a new float32 constant tensor copied from ``full``'s tensor
    ``f_index``; one per source tensor."""
    schema = _schema()
    if f_index not in cache:
        source = f_graph.tensors[f_index]
        buffer = _constant(full, source)
        if source.type != schema.TensorType.FLOAT32 or buffer is None:
            raise RuntimeError(f"Tensor {_name(source)!r} of the float32 conversion is not a float32 constant.")
        new_buffer = schema.BufferT()
        new_buffer.data = np.array(buffer.data, dtype=np.uint8)
        half.buffers.append(new_buffer)
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = source.name, np.array(source.shape), schema.TensorType.FLOAT32
        tensor.buffer = len(half.buffers) - 1
        h_graph.tensors.append(tensor)
        cache[f_index] = len(h_graph.tensors) - 1
    return cache[f_index]


def _restore_subgraph(half, full, h_graph, f_graph, scopes, names):
    """Give the ops of ``scopes`` in ``h_graph`` float32 constants: ``(names of the new float32
    tensors, float16 tensors no op reads any more)``."""
    h_names, f_names = names
    dequantized = {
        op.outputs[0]: op.inputs[0] for op in h_graph.operators if h_names[op.opcodeIndex] == "DEQUANTIZE"
    }
    cache = {}
    for h_op, f_op in _match_subgraph(half, full, h_graph, f_graph, h_names, f_names):
        if not any(in_scopes(_name(h_graph.tensors[t]), scopes) for t in h_op.outputs):
            continue
        for slot, index in enumerate(h_op.inputs):
            source = dequantized.get(index)
            if source is None or _constant(half, h_graph.tensors[source]) is None:
                continue
            copy = _float32_copy(half, full, h_graph, f_graph, int(f_op.inputs[slot]), cache)
            if list(h_graph.tensors[copy].shape) != list(h_graph.tensors[index].shape):
                raise RuntimeError(f"Tensor {_name(h_graph.tensors[copy])!r} has another shape in the float32 conversion.")
            h_op.inputs[slot] = copy
    orphans = _drop_unused_dequantize(h_graph, h_names)
    return [_name(h_graph.tensors[i]) for i in cache.values()], orphans


def _drop_unused_dequantize(graph, names):
    """Remove the ``DEQUANTIZE`` ops whose output nothing reads; their float16 source tensors."""
    used = {int(t) for op in graph.operators for t in op.inputs} | {int(t) for t in graph.outputs}
    dropped = [op for op in graph.operators if names[op.opcodeIndex] == "DEQUANTIZE" and int(op.outputs[0]) not in used]
    graph.operators = [op for op in graph.operators if not any(op is d for d in dropped)]
    return [graph.tensors[op.inputs[0]] for op in dropped]


def _empty_buffers(model, tensors):
    """Empty the buffers of ``tensors`` that no op of ``model`` reads any more."""
    used = {
        g.tensors[int(t)].buffer for g in model.subgraphs for op in g.operators for t in list(op.inputs) + list(op.outputs)
        if int(t) >= 0
    }
    for tensor in tensors:
        if tensor.buffer and tensor.buffer not in used:
            model.buffers[tensor.buffer].data = None


def keep_float32(half, full, scopes):
    """The float16 flatbuffer ``half`` with the constants of ``scopes`` back in float32.

    Args:
        half: bytes of the model converted with float16 quantization.
        full: bytes of the same concrete function converted in float32.
        scopes: layer names; an op whose output tensor name carries one of them (or
            ``name_<suffix>``) gets its float32 constants from ``full``.

    Returns:
        ``(bytes, names)``: the repaired flatbuffer and the names of the constants it now
        stores in float32.

    Raises:
        RuntimeError: the two conversions do not match op for op.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    scopes = tuple(scopes)
    if not scopes:
        return bytes(half), []
    h_model, f_model = _read(half), _read(full)
    if len(h_model.subgraphs) != len(f_model.subgraphs):
        raise RuntimeError("The float16 and float32 conversions of the model have different subgraphs.")
    names = (_op_names(h_model), _op_names(f_model))
    kept, orphans = [], []
    for h_graph, f_graph in zip(h_model.subgraphs, f_model.subgraphs):
        names_kept, dropped = _restore_subgraph(h_model, f_model, h_graph, f_graph, scopes, names)
        kept, orphans = kept + names_kept, orphans + dropped
    _empty_buffers(h_model, orphans)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(h_model)), kept


def float32_constants(data, tensor_type="FLOAT32"):
    """Names of the constant tensors of type ``tensor_type`` (default float32) that the TFLite
    flatbuffer ``data`` stores."""
    model = _read(data)
    wanted = getattr(_schema().TensorType, tensor_type)
    return [
        _name(t) for g in model.subgraphs for t in g.tensors if t.type == wanted and _constant(model, t) is not None
    ]
