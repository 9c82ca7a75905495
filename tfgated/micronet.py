"""MicroNet Challenge scoring (parameter storage + math operations), SIPA-style.

The MicroNet Challenge (NeurIPS 2019, CIFAR-100 track) scores a model by

    score = parameter_storage / 36.5e6 + math_operations / 10.49e9

normalised to WideResNet-28-10 (36.5M parameters, 10.49B operations per
CIFAR-100 image; see :func:`wide_resnet`). This module re-implements the
counting rules of the challenge's reference counter as used by the SIPA team
(Lee et al., ``counting/counting.py`` of Lee-Gihun/MicroNet_OSI-AI), on any
functional Keras model:

Parameter storage (in 32-bit parameter equivalents)
    * every parameter used at inference counts ``bits / 32`` (16-bit: one half);
    * a *sparse* weight tensor (a Conv/Dense/depthwise kernel with zeros)
      stores only its non-zero entries plus a 1-bit mask per entry (``1/32``
      per entry) -- when that is smaller than storing it dense, i.e. above
      1/32 sparsity at 32 bits (1/16 at 16 bits). So the odd exact zero of a
      random initialisation does not charge a whole mask. Biases and other
      small vectors are always counted dense;
    * batch norm folded into the preceding conv/dense (see below) adds a bias
      of ``channels`` values instead of its four vectors; a batch norm that
      cannot be folded stores a scale and a shift (``2 * channels``).

Math operations per example (multiplications and additions counted apart)
    * a dot product of ``n`` non-zero weights costs ``n`` mults and ``n - 1``
      adds (zero weights are skipped: sparse kernels save their mults and
      adds); a bias costs one add per output element;
    * activations per element: ReLU 1 mult (the reference's convention: the
      comparison counts as a low-precision mult), ReLU6 2 mults, sigmoid 2 mults
      + 1 add, swish/SiLU 3 mults + 1 add, hard sigmoid 2 mults + 1 add, hard
      swish 3 mults + 1 add, tanh 3 mults + 2 adds, ELU/CELU 5 mults + 2 adds,
      GELU 4 mults + 1 add, leaky ReLU 2 mults, softmax 2 mults per element
      + ``C - 1`` adds per position;
    * global average pooling: ``(S - 1) * C`` adds + ``C`` mults; average
      pooling ``k - 1`` adds + 1 mult per output; max pooling ``k - 1`` adds
      (comparisons) per output; elementwise add ``(n - 1) * E`` adds,
      multiply (SE scaling, channel masks) ``E`` mults; gated residual ``E``
      mults + ``E`` adds; up-sampling ``E`` mults (as the reference's
      upsample); reshapes, concatenation, dropout, padding: free;
    * batch norm directly after a conv/dense whose output feeds nothing else
      is folded into it (one add per output element for the bias if the
      layer had none); other batch norms cost 1 mult + 1 add per element;
    * at ``bits=16`` multiplications count one half, additions in full (32-bit
      accumulator), as in the reference's ``mul_bits=16, add_bits=32``.

Gates: an independent GumbelGate is a constant at inference (its ``units``
logits are stored, no ops); a dependent gate counts its pooling, two Dense
layers (batch norm folded), ReLU and one comparison per unit. Gate
bookkeeping variables are not parameters. Layers of unknown types count
their weights densely and no ops (flagged in ``notes``).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
from keras.src.layers.pooling.base_pooling import BasePooling

from tfgated.complexity import bookkeeping_variables, find_row, report_dict
from tfgated.gates import ChannelMask, GatedResidual, GumbelGate
from tfgated.graph import VALUE_MOVING_LAYERS, trace
from tfgated.losses import GateActivationLoss

#: WideResNet-28-10 on CIFAR-100, the MicroNet normalisers.
WRN_PARAMS = 36.5e6
WRN_OPS = 10.49e9

_KERNEL_LAYERS = (BaseConv, BaseConvTranspose, BaseDepthwiseConv, BaseSeparableConv, keras.layers.Dense)

#: (mults, adds) per element of each activation.
ACTIVATION_OPS = {
    "linear": (0, 0),
    "relu": (1, 0),
    "relu6": (2, 0),
    "leaky_relu": (2, 0),
    "sigmoid": (2, 1),
    "swish": (3, 1),
    "silu": (3, 1),
    "hard_sigmoid": (2, 1),
    "hard_silu": (3, 1),
    "hard_swish": (3, 1),
    "tanh": (3, 2),
    "elu": (5, 2),
    "celu": (5, 2),
    "selu": (6, 2),
    "gelu": (4, 1),
}

_FREE_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Permute,
    keras.layers.Concatenate,
    *VALUE_MOVING_LAYERS,
    keras.layers.ActivityRegularization,
    GateActivationLoss,
)


def _prod(values):
    return int(math.prod(int(v) for v in values))


def _elements(shape, name):
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"Cannot score layer {name!r}: its shape {shape} has unknown dimensions. "
            "Pass input_shape=... (without the batch axis)."
        )
    return _prod(shape[1:])


def activation_name(fn):
    """A lower-case name for a Keras activation function (or string)."""
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn.lower()
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name.lower()


def activation_ops(name, elements, channels=None):
    """``(mults, adds, note)`` of an activation over ``elements`` values."""
    if name == "softmax":
        positions = elements // channels if channels else 1
        return 2 * elements, positions * (channels - 1), ""
    if name in ACTIVATION_OPS:
        m, a = ACTIVATION_OPS[name]
        return m * elements, a * elements, ""
    return elements, 0, f"unknown activation {name!r} counted as 1 mult"


# ----------------------------------------------------------------------------- rows and report


@dataclasses.dataclass
class MicroNetRow:
    """MicroNet counts of one layer call (per example; storage in 32-bit units)."""

    name: str
    class_name: str
    params: int = 0
    nonzero: int = 0
    params_storage: float = dataclasses.field(default=0.0, metadata={"unit": "32-bit words"})
    """Storage of the parameters in 32-bit units (below 32 bits and pruned weights count less)."""
    mults: float = 0.0
    adds: float = 0.0
    ops: float = 0.0
    """``mults * bits / 32 + adds``: operations in 32-bit units."""
    notes: str = ""

    def to_dict(self):
        """The row as a dict (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)


class MicroNetReport:
    """Per-layer rows and the MicroNet totals.

    Attributes:
        rows: :class:`MicroNetRow` per layer call.
        bits: 32 or 16.
        params: parameter values counted (dense count, after BN folding).
        nonzero: non-zero parameter values.
        params_storage: storage in 32-bit parameter equivalents.
        mults, adds: raw multiplications and additions per example.
        ops: ``mults * bits / 32 + adds`` (16-bit mults count one half).
        score: ``params_storage / 36.5e6 + ops / 10.49e9``.
    """

    def __init__(self, name, rows, bits):
        self.name = name
        self.rows = list(rows)
        self.bits = bits
        self.params = int(sum(r.params for r in self.rows))
        self.nonzero = int(sum(r.nonzero for r in self.rows))
        self.params_storage = float(sum(r.params_storage for r in self.rows))
        self.mults = float(sum(r.mults for r in self.rows))
        self.adds = float(sum(r.adds for r in self.rows))
        self.ops = float(sum(r.ops for r in self.rows))

    @property
    def storage_score(self):
        return self.params_storage / WRN_PARAMS

    @property
    def ops_score(self):
        return self.ops / WRN_OPS

    @property
    def score(self):
        return self.storage_score + self.ops_score

    def row(self, name):
        """The row of layer call ``name``."""
        return find_row(self.rows, name, f"the MicroNet report of {self.name!r}")

    def table(self, skip_empty=True):
        header = f"{'layer':<36} {'class':<22} {'storage':>13} {'mults':>15} {'adds':>15} {'ops':>15}"
        lines = [
            f"MicroNet score of {self.name} ({self.bits}-bit parameters and mults, 32-bit adds; per example)",
            header,
            "-" * len(header),
        ]
        for r in self.rows:
            if skip_empty and not (r.params or r.mults or r.adds or r.notes):
                continue
            line = f"{r.name:<36} {r.class_name:<22} {r.params_storage:>13,.1f} {r.mults:>15,.0f} {r.adds:>15,.0f} {r.ops:>15,.0f}"
            lines.append(line + (f"  [{r.notes}]" if r.notes else ""))
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<36} {'':<22} {self.params_storage:>13,.1f} {self.mults:>15,.0f} {self.adds:>15,.0f} {self.ops:>15,.0f}"
        )
        lines.append(
            f"storage {self.params_storage / 1e6:.4f}M / 36.5M = {self.storage_score:.6f}; "
            f"ops {self.ops / 1e9:.4f}B / 10.49B = {self.ops_score:.6f}; score = {self.score:.6f}"
        )
        return "\n".join(lines)

    def to_dict(self):
        totals = ("params", "nonzero", "params_storage", "mults", "adds", "ops")
        return report_dict(self, ("name", "bits", *totals, "storage_score", "ops_score", "score"))

    def __repr__(self):
        return (
            f"MicroNetReport({self.name!r}, bits={self.bits}, storage={self.params_storage:,.0f}, "
            f"ops={self.ops:,.0f}, score={self.score:.6f})"
        )


# ----------------------------------------------------------------------------- counting


class _Counter:
    def __init__(self, row, bits):
        self.row = row
        self.bits = bits

    def kernel(self, tensor):
        """A sparse-able weight tensor; returns its non-zero count."""
        values = np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else keras.ops.convert_to_numpy(tensor))
        size, nonzero = values.size, int(np.count_nonzero(values))
        self.row.params += size
        self.row.nonzero += nonzero
        dense = size * self.bits / 32
        sparse = nonzero * self.bits / 32 + size / 32  # non-zeros + a 1-bit mask per entry
        self.row.params_storage += min(dense, sparse) if nonzero < size else dense
        return nonzero

    def dense(self, size):
        """Dense parameters (biases, scales...)."""
        self.row.params += int(size)
        self.row.nonzero += int(size)
        self.row.params_storage += size * self.bits / 32

    def ops(self, mults=0, adds=0):
        self.row.mults += mults
        self.row.adds += adds

    def dot(self, nonzero, uses, outputs):
        """``uses`` applications of ``nonzero`` weights summed into ``outputs`` values."""
        mults = nonzero * uses
        self.ops(mults, max(mults - outputs, 0))


def _channels(shape, data_format="channels_last"):
    return shape[1] if data_format == "channels_first" else shape[-1]


def _spatial(shape, data_format="channels_last"):
    return _prod(shape[2:] if data_format == "channels_first" else shape[1:-1])


def _foldable_batchnorms(graph):
    """``{bn call name: producer call name}`` for batch norms foldable into a conv/dense."""
    folded = {}
    for call in graph.calls:
        if not isinstance(call.layer, keras.layers.BatchNormalization) or len(call.inputs) != 1:
            continue
        producer = graph.producer.get(call.inputs[0])
        if producer is None or not isinstance(producer.layer, _KERNEL_LAYERS):
            continue
        if activation_name(getattr(producer.layer, "activation", None)) != "linear":
            continue
        if len(graph.consumers.get(call.inputs[0], [])) != 1:
            continue
        axis = call.layer.axis if isinstance(call.layer.axis, int) else call.layer.axis[0]
        rank = len(call.input_shapes[0])
        fmt = getattr(producer.layer, "data_format", "channels_last")
        channel_axis = 1 if fmt == "channels_first" else rank - 1
        if axis % rank != channel_axis:
            continue
        folded[call.name] = producer.name
    return folded


def _count_kernel_layer(c, layer, call, bias_from_bn):
    inp, out = call.input_shapes[0], call.output_shapes[0]
    fmt = getattr(layer, "data_format", "channels_last")
    out_elements = _elements(out, call.name)
    _elements(inp, call.name)
    if isinstance(layer, BaseSeparableConv):
        spatial = _spatial(out, fmt)
        nz = c.kernel(layer.depthwise_kernel)
        c.dot(nz, spatial, spatial * _channels(inp, fmt) * layer.depth_multiplier)
        nz = c.kernel(layer.pointwise_kernel)
        c.dot(nz, spatial, out_elements)
    elif isinstance(layer, BaseConvTranspose):
        nz = c.kernel(layer.kernel)
        c.dot(nz, _spatial(inp, fmt), out_elements)
    elif isinstance(layer, (BaseConv, BaseDepthwiseConv)):
        nz = c.kernel(layer.kernel)  # Keras 3 names the depthwise kernel `kernel` too
        c.dot(nz, _spatial(out, fmt), out_elements)
    else:  # Dense
        nz = c.kernel(layer.kernel)
        c.dot(nz, _prod(inp[1:-1]), out_elements)
    if layer.use_bias or bias_from_bn:  # a folded batch norm merges into the bias
        c.dense(_channels(out, fmt))
        c.ops(adds=out_elements)
    name = activation_name(getattr(layer, "activation", None))
    m, a, note = activation_ops(name, out_elements, _channels(out, fmt))
    c.ops(m, a)
    return note


def _count_gate(c, gate, call):
    if gate.kind == "independent":
        c.dense(gate.units)
        return "constant at inference"
    context = call.input_shapes[0]
    channels = context[-1]
    positions = _prod(context[1:-1]) if len(context) > 2 else 1
    if positions > 1:
        c.ops(mults=channels, adds=(positions - 1) * channels)
    nz = c.kernel(gate.hidden.kernel)
    c.dot(nz, 1, gate.hidden_width)
    c.dense(gate.hidden_width)  # batch norm folded into a bias
    c.ops(adds=gate.hidden_width)
    c.ops(mults=gate.hidden_width)  # ReLU
    nz = c.kernel(gate.head.kernel)
    c.dot(nz, 1, gate.units)
    c.dense(gate.units)
    c.ops(adds=2 * gate.units)  # bias, comparison with the threshold logit
    return ""


def _count_call(c, call, folded, gets_bias):
    layer = call.layer
    out = call.output_shapes[0]
    if isinstance(layer, _KERNEL_LAYERS):
        return _count_kernel_layer(c, layer, call, call.name in gets_bias)
    if isinstance(layer, keras.layers.BatchNormalization):
        if call.name in folded:
            return f"folded into {folded[call.name]}"
        e = _elements(out, call.name)
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        c.dense(2 * out[axis])
        c.ops(e, e)
        return ""
    if isinstance(layer, GumbelGate):
        return _count_gate(c, layer, call)
    if isinstance(layer, ChannelMask):
        c.ops(mults=_elements(out, call.name))
        return ""
    if isinstance(layer, GatedResidual):
        e = _elements(out, call.name)
        c.ops(e, e)
        return ""
    if isinstance(layer, _FREE_LAYERS):
        return ""
    if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                          keras.layers.Softmax)):
        e = _elements(out, call.name)
        if isinstance(layer, keras.layers.ReLU):
            name = "relu" if layer.max_value is None else "relu6"
            if layer.negative_slope:
                name = "leaky_relu"
        elif isinstance(layer, keras.layers.LeakyReLU):
            name = "leaky_relu"
        elif isinstance(layer, keras.layers.ELU):
            name = "elu"
        elif isinstance(layer, keras.layers.Softmax):
            name = "softmax"
        else:
            name = activation_name(layer.activation)
        m, a, note = activation_ops(name, e, out[-1])
        c.ops(m, a)
        return note
    if isinstance(layer, BaseGlobalPooling):
        inp = call.input_shapes[0]
        fmt = layer.data_format
        channels, positions = _channels(inp, fmt), _spatial(inp, fmt)
        _elements(inp, call.name)
        if "Average" in type(layer).__name__:
            c.ops(mults=channels, adds=(positions - 1) * channels)
        else:
            c.ops(adds=(positions - 1) * channels)
        return ""
    if isinstance(layer, BasePooling):
        e = _elements(out, call.name)
        window = _prod(layer.pool_size)
        if "Average" in type(layer).__name__:
            c.ops(mults=e, adds=(window - 1) * e)
        else:
            c.ops(adds=(window - 1) * e)
        return ""
    if isinstance(layer, (keras.layers.Add, keras.layers.Subtract, keras.layers.Maximum, keras.layers.Minimum)):
        c.ops(adds=(len(call.inputs) - 1) * _elements(out, call.name))
        return ""
    if isinstance(layer, keras.layers.Average):
        e = _elements(out, call.name)
        c.ops(mults=e, adds=(len(call.inputs) - 1) * e)
        return ""
    if isinstance(layer, keras.layers.Multiply):
        c.ops(mults=(len(call.inputs) - 1) * _elements(out, call.name))
        return ""
    if isinstance(layer, (keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
                          keras.layers.Resizing)):
        c.ops(mults=_elements(out, call.name))
        return ""
    if isinstance(layer, keras.layers.Rescaling):
        e = _elements(out, call.name)
        offset = np.asarray(layer.offset)
        c.ops(mults=e, adds=e if np.any(offset != 0) else 0)
        return ""
    # Unknown layer: its weights count densely, its ops are not known.
    skip = {id(v) for v in bookkeeping_variables(layer)}
    size = sum(_prod(v.shape) for v in layer.weights if id(v) not in skip)
    if size:
        c.dense(size)
    return f"unsupported layer {type(layer).__name__}: ops not counted"


def _input_preprocessing(graph):
    """Names of the weightless ``Rescaling``/``Normalization`` calls that act on the model input
    alone (a model taking raw pixels): a per-channel affine map that folds into the first layer,
    so the MicroNet rules do not count it."""
    found, sources = set(), set(graph.inputs)
    for call in graph.calls:
        preprocessing = isinstance(call.layer, (keras.layers.Rescaling, keras.layers.Normalization))
        if isinstance(call.layer, keras.layers.InputLayer) or (preprocessing and not call.layer.weights):
            if call.inputs and all(key in sources for key in call.inputs):
                if preprocessing:
                    found.add(call.name)
                sources.update(call.outputs)
            elif not call.inputs:
                sources.update(call.outputs)
    return found


def micronet_score(model, bits=32, input_shape=None):
    """Score ``model`` with the MicroNet Challenge rules (see module docstring).

    Args:
        model: a built functional or Sequential Keras model (nested functional
            models are scored layer by layer). Weights are read, so pruned
            (zeroed) weights lower the counts.
        bits: 32 or 16: the precision of parameters and multiplications
            (additions always use a 32-bit accumulator).
        input_shape: optional input shape without the batch axis, for models
            built with unknown spatial size.

    Returns:
        :class:`MicroNetReport`.
    """
    if bits not in (16, 32):
        raise ValueError(f"Expected bits to be 16 or 32. Received: bits={bits}")
    graph = trace(model, input_shape=input_shape)
    folded = _foldable_batchnorms(graph)
    gets_bias = set(folded.values())
    preprocessing = _input_preprocessing(graph)
    rows, seen = [], set()
    for call in graph.calls:
        row = MicroNetRow(call.name, call.class_name)
        counter = _Counter(row, bits)
        shared = id(call.layer) in seen
        seen.add(id(call.layer))
        if call.name in preprocessing:
            row.notes = "input preprocessing: an affine map the first layer absorbs, not counted"
        else:
            row.notes = _count_call(counter, call, folded, gets_bias) or ""
        if shared:  # a shared layer stores its parameters once
            row.params = row.nonzero = 0
            row.params_storage = 0.0
        row.ops = row.mults * bits / 32 + row.adds
        rows.append(row)
    return MicroNetReport(model.name, rows, bits)


# ----------------------------------------------------------------------------- WideResNet-28-10


def wide_resnet(depth=28, width=10, num_classes=100, input_shape=(32, 32, 3), dropout=0.0, name=None):
    """Pre-activation WideResNet (Zagoruyko & Komodakis 2016), the MicroNet normaliser.

    ``depth = 6 n + 4``; three groups of ``n`` blocks with ``16 k, 32 k, 64 k``
    channels (``k = width``), strides 1, 2, 2. A block is BN-ReLU-conv3x3-BN-
    ReLU-(dropout)-conv3x3 plus the shortcut (a 1x1 conv on the pre-activated
    input when the shape changes). Convolutions have no bias; the head is
    BN-ReLU-global average pool-Dense-softmax. ``wide_resnet()`` (28-10,
    CIFAR-100) scores 36.5M parameters and 10.49B operations.
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Expected depth = 6 n + 4 with n >= 1. Received: depth={depth}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Expected width to be a positive integer. Received: width={width}")
    n = (depth - 4) // 6
    layers = keras.layers

    def conv(filters, size, strides, label):
        return layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False, name=label)

    inputs = keras.Input(input_shape)
    x = conv(16, 3, 1, "stem_conv")(inputs)
    channels = 16
    for group, (filters, stride) in enumerate(zip([16 * width, 32 * width, 64 * width], [1, 2, 2]), start=1):
        for block in range(1, n + 1):
            prefix = f"group{group}_block{block}"
            strides = stride if block == 1 else 1
            pre = layers.BatchNormalization(name=f"{prefix}_bn1")(x)
            pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
            h = conv(filters, 3, strides, f"{prefix}_conv1")(pre)
            h = layers.BatchNormalization(name=f"{prefix}_bn2")(h)
            h = layers.ReLU(name=f"{prefix}_relu2")(h)
            if dropout:
                h = layers.Dropout(dropout, name=f"{prefix}_dropout")(h)
            h = conv(filters, 3, 1, f"{prefix}_conv2")(h)
            shortcut = x if channels == filters and strides == 1 else conv(filters, 1, strides, f"{prefix}_shortcut")(pre)
            x = layers.Add(name=f"{prefix}_add")([shortcut, h])
            channels = filters
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head_fc")(x)
    return keras.Model(inputs, outputs, name=name or f"wide_resnet_{depth}_{width}")
