"""The graph side of folding: nodes in order, how each layer treats channels, constants.

Plain functions over a functional Keras model's nodes, shared by the fold
(:mod:`tfgated.export.fold_plan`, :mod:`tfgated.export.fold_build`), the batch-norm fold and
the exporters' conditional calls (:mod:`tfgated.export.convert`,
:mod:`tfgated.export.early_exit`). They read Keras' own nodes (``node.arguments``) because
the fold re-calls each layer with its original arguments; :func:`tfgated.graph.trace` keeps
shapes and tensor keys only.
"""

from __future__ import annotations

import keras
import numpy as np

from tfgated.gates import ChannelMask, GatedResidual, GumbelGate
from tfgated.losses import GateActivationLoss
from tfgated.sparse import functional_nodes, graph_index, run_node  # noqa: F401  (re-exported)

L = keras.layers

# Layers that act on each channel independently and carry no weights.
# value: how a spatially constant channel goes through: "eval" (apply the layer
# to the constant), "same" (the constant is unchanged), "zero" (only 0 stays 0).
STATELESS_PER_CHANNEL = {
    L.Activation: "eval",
    L.ReLU: "eval",
    L.LeakyReLU: "eval",
    L.ELU: "eval",
    L.Dropout: "same",
    L.SpatialDropout1D: "same",
    L.SpatialDropout2D: "same",
    L.GaussianNoise: "same",
    L.GaussianDropout: "same",
    L.Identity: "same",
    L.GlobalAveragePooling1D: "same",
    L.GlobalAveragePooling2D: "same",
    L.GlobalMaxPooling1D: "same",
    L.GlobalMaxPooling2D: "same",
    L.MaxPooling1D: "same",
    L.MaxPooling2D: "same",
    L.AveragePooling1D: "same",
    L.AveragePooling2D: "same",
    L.ZeroPadding1D: "zero",
    L.ZeroPadding2D: "zero",
    L.Cropping1D: "same",
    L.Cropping2D: "same",
    L.UpSampling2D: "same",
}


class FoldError(ValueError):
    """The model cannot be folded (unsupported layer, style or structure)."""



# -- graph helpers -------------------------------------------------------------------


def nodes_in_order(model):
    """The model's non-input nodes in topological order (:func:`tfgated.sparse.functional_nodes`)."""
    return functional_nodes(model, FoldError)


def gate_of(producer, z):
    """``(gate, static 0/1 values or None)`` of the :class:`GumbelGate` that produced ``z``."""
    node = producer.get(id(z))
    if node is None or not isinstance(node.operation, GumbelGate):
        raise FoldError(
            "Expected the gate input of a ChannelMask/GatedResidual to come from a GumbelGate. "
            f"Received a tensor from {getattr(getattr(node, 'operation', None), 'name', 'an input')!r}"
        )
    gate = node.operation
    return gate, (static_gate_values(gate) if is_static_gate(gate) else None)

def channels(tensor):
    """The channel count (last axis) of ``tensor``, or ``None`` for a rank-1 tensor."""
    shape = tensor.shape
    return shape[-1] if len(shape) >= 2 else None


def is_static_gate(gate):
    """Whether ``gate``'s decision ignores its input (independent, always on, or a forced single unit)."""
    return gate.kind == "independent" or gate.inference_style == "always_on" or (
        gate.force_open and gate.units == 1
    )


def static_gate_values(gate):
    """The constant 0/1 values ``(units,)`` of a gate whose decision ignores its input."""
    if gate.inference_style == "always_on" or (gate.force_open and gate.units == 1):
        return np.ones((gate.units,), "float32")
    z = gate(np.zeros((1, 1), "float32"), training=False)
    return np.asarray(keras.ops.convert_to_numpy(z), "float32")[0]


def is_builtin(layer):
    """Whether ``layer`` is a built-in Keras layer."""
    return type(layer).__module__.startswith("keras.")


def conv_like(layer):
    """Whether ``layer`` is a plain (ungrouped, not depthwise/separable/transposed) convolution."""
    return isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and not isinstance(
        layer, (L.DepthwiseConv2D, L.SeparableConv2D, L.Conv2DTranspose, L.Conv1DTranspose, L.Conv3DTranspose)
    ) and getattr(layer, "groups", 1) == 1


def depthwise_like(layer):
    """Whether ``layer`` is a ``DepthwiseConv2D`` with one output channel per input channel."""
    return isinstance(layer, L.DepthwiseConv2D) and layer.depth_multiplier == 1


def bn_last_axis(layer, rank):
    """Whether ``layer`` is a batch norm over the last axis of a rank-``rank`` input."""
    if not isinstance(layer, L.BatchNormalization):
        return False
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    return axis is not None and axis in (-1, rank - 1)


def reshape_keeps_channels(layer, in_tensor):
    """Whether ``layer`` is a ``Reshape`` that keeps ``in_tensor``'s channels as its last axis."""
    return (
        isinstance(layer, L.Reshape)
        and channels(in_tensor) is not None
        and tuple(layer.target_shape)[-1] == channels(in_tensor)
    )


def layer_kind(layer, node):
    """Classify how ``layer`` treats the channels of its inputs."""
    inputs = node.input_tensors
    if isinstance(layer, GumbelGate):
        if type(layer) is not GumbelGate:
            raise FoldError(
                f"Cannot fold gate {layer.name!r} of type {type(layer).__name__}: only GumbelGate "
                "channel and residual gates are folded (export exit-gate models with "
                "tfgated.export.export_exit_gates, which runs each exit as a conditional)."
            )
        return "gate"
    if isinstance(layer, ChannelMask):
        return "mask"
    if isinstance(layer, GatedResidual):
        return "residual"
    if isinstance(layer, GateActivationLoss):
        return "loss"
    if isinstance(layer, L.InputLayer):
        return "input"
    if not is_builtin(layer):
        return "custom"
    if len(inputs) != 1:
        if (
            isinstance(layer, L.Multiply)
            and len(inputs) == 2
            and all(channels(t) == channels(node.outputs[0]) for t in inputs)
        ):
            return "multiply"
        return "other"
    if conv_like(layer) or isinstance(layer, L.Dense):
        return "linear"
    if depthwise_like(layer):
        return "depthwise"
    if bn_last_axis(layer, len(inputs[0].shape)):
        return "batchnorm"
    if type(layer) in STATELESS_PER_CHANNEL:
        if isinstance(layer, L.Activation) and layer.get_config().get("activation") in ("softmax", "log_softmax"):
            return "other"
        return "stateless"
    if reshape_keeps_channels(layer, inputs[0]):
        return "reshape"
    return "other"


# -- constant evaluation ---------------------------------------------------------------


def eval_constant(layer, const, rank):
    """Apply an element-wise ``layer`` to spatially constant channels (NaN = not constant)."""
    known = ~np.isnan(const)
    if not known.any():
        return const
    x = np.where(known, const, 0.0).astype("float32").reshape((1,) * (rank - 1) + (-1,))
    y = np.asarray(keras.ops.convert_to_numpy(layer(x, training=False)), "float64").reshape(-1)
    return np.where(known, y, np.nan)


def linear_foldable(layer, const):
    """Input channels of a conv/dense ``layer`` that need not be physically present."""
    known = ~np.isnan(const)
    if isinstance(layer, L.Dense):
        return known
    pointwise = all(k == 1 for k in layer.kernel_size) or layer.padding == "valid"
    if pointwise:
        return known
    return known & (const == 0)
