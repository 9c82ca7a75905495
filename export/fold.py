"""Folding gates into a plain Keras model.

:func:`fold` turns a gated functional model (gates in the ``threshold`` or
``always_on`` inference style) into a functional model made only of built-in
Keras layers that computes the same function:

* data-independent channel gates become constant masks; closed channels are
  physically removed where that is exact: the producing convolution's filters
  (and bias), the batch norms, depthwise convolutions, activations, poolings
  and squeeze-and-excitation ``Multiply`` on the way, and the input channels of
  the next convolution or dense layer. A removed channel that is a known
  constant (a closed channel is 0; after a batch norm or a biased depthwise
  convolution it becomes another constant) is folded into the bias of the next
  convolution when that is exact (the constant is 0, or the convolution is 1x1
  or ``valid``). Where a masked channel must stay (it reaches a residual
  ``Add``, a concatenation, or another layer that needs every channel), it is
  kept and multiplied by a constant mask (a 1x1 ``DepthwiseConv2D``);
* data-independent layer gates (:class:`~tfgated.GatedResidual`): a closed gate
  removes the branch (output = shortcut), an open gate becomes a plain ``Add``;
* data-dependent gates are rebuilt as plain layers in *masked* form: the gate
  network (pool, dense, batch norm, ReLU, dense), a hard step
  (``Rescaling`` + ``ReLU(max_value=1)``), and a ``Multiply``. For a batch of
  one, :func:`tfgated.export.writers.export_function` can instead run gated
  residual branches under ``tf.cond`` (conditional form);
* the :class:`~tfgated.GateActivationLoss` layer becomes the identity.

The analysis is channel-exact: a channel is removed only when the folded model
provably computes the same outputs (up to float rounding).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from tfgated.gates import ChannelMask, GatedResidual, GumbelGate
from tfgated.losses import GateActivationLoss

FOLDABLE_STYLES = ("threshold", "always_on")

#: Slope of the hard step that replaces a data-dependent gate's threshold.
#: Decisions agree with the gate except for logits within about 1/STEP_SCALE of
#: the threshold logit. Chosen to stay finite in float16.
STEP_SCALE = 6.0e4

L = keras.layers

# Layers that act on each channel independently and carry no weights.
# value: how a spatially constant channel goes through: "eval" (apply the layer
# to the constant), "same" (the constant is unchanged), "zero" (only 0 stays 0).
_STATELESS_PER_CHANNEL = {
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


@dataclasses.dataclass
class FoldReport:
    """What :func:`fold` did.

    Attributes:
        style: inference style the gates were folded in.
        macs_before: multiply-accumulates of the gated model with every gate
            open (the dense network; gate networks included).
        macs_after: multiply-accumulates of the folded model.
        channels_removed: ``{layer name: channels removed from its output}``
            for every sliced convolution / dense layer.
        masked_constant: ``{mask layer name: closed channels kept and
            multiplied by a constant mask}`` (they reach an ``Add``, a
            concatenation or another layer that needs every channel).
        branches_removed: gated residual layers whose closed gate removed the branch.
        branches_kept: gated residual layers whose open gate became a plain ``Add``.
        dependent_masked: data-dependent gates rebuilt in masked form.
        conditional: data-dependent residual gates that can run as control flow
            (``tf.cond``) at batch size 1: dicts with the folded model's layer
            names ``gate`` (the z tensor's layer), ``branch`` (the branch output's
            layer), ``multiply`` and ``add``.
        selections: layers inserted to re-order channels (should be empty for
            ordinary architectures).
    """

    style: str
    macs_before: int = 0
    macs_after: int = 0
    channels_removed: dict = dataclasses.field(default_factory=dict)
    masked_constant: dict = dataclasses.field(default_factory=dict)
    branches_removed: list = dataclasses.field(default_factory=list)
    branches_kept: list = dataclasses.field(default_factory=list)
    dependent_masked: list = dataclasses.field(default_factory=list)
    conditional: list = dataclasses.field(default_factory=list)
    selections: list = dataclasses.field(default_factory=list)

    @property
    def mac_ratio(self):
        """Folded MACs / dense MACs."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def summary(self):
        """A JSON-friendly summary (used in the export sidecar)."""
        return {
            "style": self.style,
            "macs_before": int(self.macs_before),
            "macs_after": int(self.macs_after),
            "mac_ratio": round(self.mac_ratio, 6),
            "channels_removed_total": int(sum(self.channels_removed.values())),
            "channels_removed": {k: int(v) for k, v in self.channels_removed.items()},
            "masked_constant": {k: int(v) for k, v in self.masked_constant.items()},
            "branches_removed": list(self.branches_removed),
            "branches_kept": list(self.branches_kept),
            "dependent_masked": list(self.dependent_masked),
            "conditional_candidates": [c["add"] for c in self.conditional],
            "selections": list(self.selections),
        }

    def __str__(self):
        s = self.summary()
        lines = [
            f"folded ({s['style']}): MACs {s['macs_before']:,} -> {s['macs_after']:,} "
            f"({100 * s['mac_ratio']:.1f}%)",
            f"  channels removed: {s['channels_removed_total']} in {len(s['channels_removed'])} layers",
        ]
        if s["masked_constant"]:
            lines.append(
                "  closed channels kept with a constant mask (they reach an Add, a concatenation or a data-dependent product): "
                + ", ".join(f"{k}={v}" for k, v in s["masked_constant"].items())
            )
        if s["branches_removed"]:
            lines.append(f"  residual branches removed: {', '.join(s['branches_removed'])}")
        if s["branches_kept"]:
            lines.append(f"  residual gates open -> plain Add: {', '.join(s['branches_kept'])}")
        if s["dependent_masked"]:
            lines.append(f"  data-dependent gates (masked form): {', '.join(s['dependent_masked'])}")
        if s["selections"]:
            lines.append(f"  channel re-ordering layers inserted: {', '.join(s['selections'])}")
        return "\n".join(lines)


# -- graph helpers -------------------------------------------------------------------


def _nodes_in_order(model):
    """The model's non-input nodes in topological order."""
    if not hasattr(model, "_nodes_by_depth"):
        raise FoldError(f"Expected a functional Keras model. Received: {type(model).__name__} {model.name!r}")
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def _channels(tensor):
    shape = tensor.shape
    return shape[-1] if len(shape) >= 2 else None


def _is_static(gate):
    return gate.kind == "independent" or gate.inference_style == "always_on" or (
        gate.force_open and gate.units == 1
    )


def static_gate_values(gate):
    """The constant 0/1 values ``(units,)`` of a gate whose decision ignores its input."""
    if gate.inference_style == "always_on" or (gate.force_open and gate.units == 1):
        return np.ones((gate.units,), "float32")
    z = gate(np.zeros((1, 1), "float32"), training=False)
    return np.asarray(keras.ops.convert_to_numpy(z), "float32")[0]


def _is_builtin(layer):
    return type(layer).__module__.startswith("keras.")


def _conv_like(layer):
    return isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and not isinstance(
        layer, (L.DepthwiseConv2D, L.SeparableConv2D, L.Conv2DTranspose, L.Conv1DTranspose, L.Conv3DTranspose)
    ) and getattr(layer, "groups", 1) == 1


def _depthwise(layer):
    return isinstance(layer, L.DepthwiseConv2D) and layer.depth_multiplier == 1


def _bn_last_axis(layer, rank):
    if not isinstance(layer, L.BatchNormalization):
        return False
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    return axis is not None and axis in (-1, rank - 1)


def _reshape_keeps_channels(layer, in_tensor):
    return (
        isinstance(layer, L.Reshape)
        and _channels(in_tensor) is not None
        and tuple(layer.target_shape)[-1] == _channels(in_tensor)
    )


def _kind(layer, node):
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
    if not _is_builtin(layer):
        return "custom"
    if len(inputs) != 1:
        if (
            isinstance(layer, L.Multiply)
            and len(inputs) == 2
            and all(_channels(t) == _channels(node.outputs[0]) for t in inputs)
        ):
            return "multiply"
        return "other"
    if _conv_like(layer) or isinstance(layer, L.Dense):
        return "linear"
    if _depthwise(layer):
        return "depthwise"
    if _bn_last_axis(layer, len(inputs[0].shape)):
        return "batchnorm"
    if type(layer) in _STATELESS_PER_CHANNEL:
        if isinstance(layer, L.Activation) and layer.get_config().get("activation") in ("softmax", "log_softmax"):
            return "other"
        return "stateless"
    if _reshape_keeps_channels(layer, inputs[0]):
        return "reshape"
    return "other"


def _layer_name(layer):
    return layer.name


# -- constant evaluation ---------------------------------------------------------------


def _eval_constant(layer, const, rank):
    """Apply an element-wise ``layer`` to spatially constant channels (NaN = not constant)."""
    known = ~np.isnan(const)
    if not known.any():
        return const
    x = np.where(known, const, 0.0).astype("float32").reshape((1,) * (rank - 1) + (-1,))
    y = np.asarray(keras.ops.convert_to_numpy(layer(x, training=False)), "float64").reshape(-1)
    return np.where(known, y, np.nan)


def _linear_foldable(layer, const):
    """Input channels of a conv/dense ``layer`` that need not be physically present."""
    known = ~np.isnan(const)
    if isinstance(layer, L.Dense):
        return known
    pointwise = all(k == 1 for k in layer.kernel_size) or layer.padding == "valid"
    if pointwise:
        return known
    return known & (const == 0)


# -- the fold ----------------------------------------------------------------------------


class _Folder:
    def __init__(self, model, remove_channels=True, fold_batchnorm=False):
        self.model = model
        self.remove_channels = remove_channels
        self.fold_batchnorm = fold_batchnorm
        self.nodes = _nodes_in_order(model)
        self.producer = {}
        self.consumers = {}
        for node in self.nodes:
            for t in node.outputs:
                self.producer[id(t)] = node
            for t in node.input_tensors:
                self.consumers.setdefault(id(t), []).append(node)
        self.gate_z = {}  # id(z tensor) -> (gate, static values or None)
        self.report = FoldReport(style="threshold")

    # -- per-node semantics -----------------------------------------------------------

    def _gate_info(self, z):
        node = self.producer.get(id(z))
        if node is None or not isinstance(node.operation, GumbelGate):
            raise FoldError(
                "Expected the gate input of a ChannelMask/GatedResidual to come from a GumbelGate. "
                f"Received a tensor from {getattr(getattr(node, 'operation', None), 'name', 'an input')!r}"
            )
        gate = node.operation
        return gate, (static_gate_values(gate) if _is_static(gate) else None)

    def _live_inputs(self, node):
        layer = node.operation
        kind = _kind(layer, node)
        inputs = node.input_tensors
        if kind == "gate":
            return [] if _is_static(layer) else [inputs[0]]
        if kind == "mask":
            gate, values = self._gate_info(inputs[1])
            return [inputs[0]] if values is not None else list(inputs)
        if kind == "residual":
            gate, values = self._gate_info(inputs[2])
            if values is None:
                return list(inputs)
            return [inputs[0]] if values[0] == 0 else list(inputs[:2])
        if kind == "loss":
            return [inputs[0]]
        return list(inputs)

    # -- analysis ------------------------------------------------------------------------

    def analyse(self):
        outputs = self.model.outputs
        live_tensors = {id(t) for t in outputs}
        self.live = set()
        for node in reversed(self.nodes):
            if any(id(t) in live_tensors for t in node.outputs):
                self.live.add(id(node))
                for t in self._live_inputs(node):
                    live_tensors.add(id(t))
        self.live_tensors = live_tensors

        # Forward: spatially constant channels (value, NaN when varying).
        const = {}

        def get_const(t):
            c = _channels(t)
            return const.get(id(t), np.full((c,), np.nan)) if c else None

        for node in self.nodes:
            if id(node) not in self.live:
                continue
            layer = node.operation
            kind = _kind(layer, node)
            ins = node.input_tensors
            out = node.outputs[0]
            c_out = _channels(out)
            if c_out is None or kind == "gate":
                continue
            result = np.full((c_out,), np.nan)
            if kind == "mask":
                gate, values = self._gate_info(ins[1])
                c_in = get_const(ins[0])
                if values is not None:
                    m = np.repeat(values, layer.granularity)
                    result = np.where(m == 0, 0.0, c_in)
                else:
                    result = np.where(c_in == 0, 0.0, np.nan)
            elif kind in ("stateless", "reshape"):
                c_in = get_const(ins[0])
                mode = _STATELESS_PER_CHANNEL.get(type(layer), "same")
                if mode == "eval":
                    result = _eval_constant(layer, c_in, len(ins[0].shape))
                elif mode == "zero":
                    result = np.where(c_in == 0, 0.0, np.nan)
                else:
                    result = c_in
            elif kind == "batchnorm":
                result = _eval_constant(layer, get_const(ins[0]), len(ins[0].shape))
            elif kind == "depthwise":
                c_in = get_const(ins[0])
                bias = np.asarray(layer.bias) if layer.use_bias else np.zeros((c_out,))
                result = np.where(c_in == 0, bias, np.nan)
                if layer.activation is not keras.activations.linear:
                    act = keras.layers.Activation(layer.activation)
                    result = _eval_constant(act, result, 2)
            elif kind == "multiply":
                a, b = get_const(ins[0]), get_const(ins[1])
                result = np.where((a == 0) | (b == 0), 0.0, a * b)
            elif kind == "loss":
                result = get_const(ins[0])
            elif kind == "residual":
                gate, values = self._gate_info(ins[2])
                if values is not None and values[0] == 0:
                    result = get_const(ins[0])
            const[id(out)] = result
        self.const = const
        self.get_const = get_const

        # Backward: channels that must physically exist.
        present = {}
        for t in outputs:
            if _channels(t):
                present[id(t)] = np.ones((_channels(t),), bool)

        def need(t, mask):
            c = _channels(t)
            if c is None:
                return
            cur = present.get(id(t), np.zeros((c,), bool))
            present[id(t)] = cur | mask

        for node in reversed(self.nodes):
            if id(node) not in self.live:
                continue
            layer = node.operation
            kind = _kind(layer, node)
            ins = node.input_tensors
            out = node.outputs[0]
            c_out = _channels(out)
            p_out = present.get(id(out), np.zeros((c_out,), bool)) if c_out else None
            if not self.remove_channels:
                for t in self._live_inputs(node):
                    if _channels(t):
                        need(t, np.ones((_channels(t),), bool))
                continue
            if kind == "gate":
                for t in self._live_inputs(node):
                    need(t, np.ones((_channels(t),), bool))
            elif kind in ("mask", "stateless", "reshape", "batchnorm", "depthwise", "loss"):
                need(ins[0], p_out)
                if kind == "mask" and len(self._live_inputs(node)) == 2:
                    pass  # z tensors are not channel tensors
            elif kind == "multiply":
                need(ins[0], p_out)
                need(ins[1], p_out)
            elif kind == "linear":
                need(ins[0], ~_linear_foldable(layer, get_const(ins[0])))
            elif kind == "residual":
                live = self._live_inputs(node)
                if len(live) == 1:
                    need(ins[0], p_out)
                else:
                    for t in live:
                        if _channels(t) and t is not ins[2]:
                            need(t, np.ones((_channels(t),), bool))
            else:
                for t in self._live_inputs(node):
                    if _channels(t):
                        need(t, np.ones((_channels(t),), bool))
        self.present = present

    # -- rebuild -------------------------------------------------------------------------------

    def _select(self, t, target):
        """The new tensor for original ``t`` with exactly the channels ``target``."""
        new_t, idx = self.new[id(t)]
        if idx is None or (len(idx) == len(target) and np.array_equal(idx, target)):
            return new_t
        const = self.get_const(t)
        rank = len(t.shape)
        kernel = np.zeros((len(idx), len(target)), "float32")
        bias = np.zeros((len(target),), "float32")
        pos = {int(c): i for i, c in enumerate(idx)}
        for j, c in enumerate(target):
            if int(c) in pos:
                kernel[pos[int(c)], j] = 1.0
            elif not np.isnan(const[c]):
                bias[j] = const[c]
            else:  # pragma: no cover - guaranteed by the analysis
                raise FoldError(f"Internal error: channel {c} of {t.name} is missing and not constant.")
        name = self._unique(f"{t.name.split('/')[0]}_select")
        self.report.selections.append(name)
        if rank == 4:
            layer = L.Conv2D(len(target), 1, use_bias=True, name=name)
            out = layer(new_t)
            layer.set_weights([kernel[None, None], bias])
        else:
            layer = L.Dense(len(target), use_bias=True, name=name)
            out = layer(new_t)
            layer.set_weights([kernel, bias])
        return out

    def _full(self, t):
        c = _channels(t)
        return self._select(t, np.arange(c)) if c else self.new[id(t)][0]

    def _unique(self, name):
        base, i = name, 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def _clone(self, layer, **changes):
        config = {**layer.get_config(), **changes}
        config["name"] = self._unique(config.get("name", layer.name))
        return type(layer).from_config(config)

    def _out_index(self, t):
        c = _channels(t)
        p = self.present.get(id(t), np.ones((c,), bool))
        idx = np.flatnonzero(p)
        if len(idx) == 0:
            idx = np.array([0])
        return idx

    def build(self):
        self.new = {}
        self.names = set()
        new_inputs = []
        for t in self.model.inputs:
            layer = t._keras_history[0]
            x = keras.Input(shape=t.shape[1:], dtype=t.dtype, name=self._unique(layer.name))
            new_inputs.append(x)
            self.new[id(t)] = (x, np.arange(_channels(t)) if _channels(t) else None)
        for node in self.nodes:
            if id(node) not in self.live:
                continue
            self._rebuild_node(node)
        outputs = [self._full(t) for t in self.model.outputs]
        if len(outputs) == 1:
            outputs = outputs[0]
        folded = keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0], outputs, name=f"{self.model.name}_folded")
        return folded

    def _set(self, t, new_t, idx):
        self.new[id(t)] = (new_t, idx)

    def _rebuild_node(self, node):
        layer = node.operation
        kind = _kind(layer, node)
        ins = node.input_tensors
        out = node.outputs[0]
        if kind == "custom":
            raise FoldError(
                f"Cannot fold layer {layer.name!r} of type {type(layer).__name__}: only built-in Keras "
                "layers and tfgated gates are supported."
            )
        if kind == "gate":
            if _is_static(layer):
                return
            self._set(out, self._dependent_gate(layer, self._full(ins[0])), None)
            return
        if kind == "loss":
            self.new[id(out)] = self.new[id(ins[0])]
            return
        if kind == "mask":
            self._rebuild_mask(layer, ins, out)
            return
        if kind == "residual":
            self._rebuild_residual(layer, ins, out)
            return
        if kind == "linear":
            self._rebuild_linear(layer, ins[0], out)
            return
        if kind in ("depthwise", "batchnorm"):
            x, idx = self.new[id(ins[0])]
            new_layer = self._clone(layer)
            y = new_layer(x)
            new_layer.set_weights([w if w.ndim == 0 else (w[..., idx, :] if w.ndim == 4 else w[idx])
                                   for w in layer.get_weights()])
            self._set(out, y, idx)
            return
        if kind == "stateless":
            x, idx = self.new[id(ins[0])]
            self._set(out, self._clone(layer)(x), idx)
            return
        if kind == "reshape":
            x, idx = self.new[id(ins[0])]
            target = tuple(layer.target_shape)[:-1] + (len(idx),)
            self._set(out, self._clone(layer, target_shape=target)(x), idx)
            return
        if kind == "multiply":
            _, ia = self.new[id(ins[0])]
            _, ib = self.new[id(ins[1])]
            target = ia if np.array_equal(ia, ib) else np.intersect1d(ia, ib)
            p = self.present.get(id(out), np.ones((_channels(out),), bool))
            if not set(np.flatnonzero(p)) <= set(target.tolist()):
                target = np.arange(_channels(out))
            a, b = self._select(ins[0], target), self._select(ins[1], target)
            self._set(out, self._clone(layer)([a, b]), target)
            return
        # Any other built-in layer: every channel of every input, weights copied.
        args, kwargs = node.arguments.fill_in({id(t): self._full(t) for t in ins})
        new_layer = self._clone(layer)
        y = new_layer(*args, **kwargs)
        if layer.weights:
            new_layer.set_weights(layer.get_weights())
        for t, nt in zip(node.outputs, keras.tree.flatten(y)):
            self._set(t, nt, np.arange(_channels(t)) if _channels(t) else None)

    def _rebuild_linear(self, layer, t, out):
        x, idx = self.new[id(t)]
        const = self.get_const(t)
        weights = layer.get_weights()
        kernel = weights[0].astype("float64")
        bias = weights[1].astype("float64") if layer.use_bias else np.zeros(kernel.shape[-1])
        missing = np.setdiff1d(np.arange(kernel.shape[-2]), idx)
        if len(missing):
            values = const[missing]
            if np.isnan(values).any():  # pragma: no cover - guaranteed by the analysis
                raise FoldError(f"Internal error: non-constant channels missing before {layer.name}.")
            summed = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)
            bias = bias + values @ summed[missing]
        out_idx = self._out_index(out)
        new_kernel = kernel[..., idx, :][..., out_idx]
        new_bias = bias[out_idx]
        use_bias = layer.use_bias or bool(np.any(new_bias != 0))
        width = "filters" if not isinstance(layer, L.Dense) else "units"
        new_layer = self._clone(layer, **{width: int(len(out_idx)), "use_bias": use_bias})
        y = new_layer(x)
        new_weights = [new_kernel.astype("float32")] + ([new_bias.astype("float32")] if use_bias else [])
        new_layer.set_weights(new_weights)
        removed = kernel.shape[-1] - len(out_idx)
        if removed:
            self.report.channels_removed[layer.name] = removed
        self._set(out, y, out_idx)

    def _rebuild_mask(self, layer, ins, out):
        gate, values = self._gate_info(ins[1])
        x, idx = self.new[id(ins[0])]
        rank = len(ins[0].shape)
        if values is None:
            z = self.new[id(ins[1])][0]
            self.report.dependent_masked.append(gate.name)
            expand = np.zeros((gate.units, len(idx)), "float32")
            expand[idx // layer.granularity, np.arange(len(idx))] = 1.0
            dense = L.Dense(len(idx), use_bias=False, trainable=False, name=self._unique(f"{layer.name}_expand"))
            zc = dense(z)
            dense.set_weights([expand])
            if rank > 2:
                zc = L.Reshape((1,) * (rank - 2) + (len(idx),), name=self._unique(f"{layer.name}_reshape"))(zc)
            y = L.Multiply(name=self._unique(layer.name))([x, zc])
            self._set(out, y, idx)
            return
        m = np.repeat(values, layer.granularity)[idx]
        if np.all(m == 1):
            self._set(out, x, idx)
            return
        self.report.masked_constant[layer.name] = int(np.sum(m == 0))
        name = self._unique(layer.name)
        if rank == 4:
            mask_layer = L.DepthwiseConv2D(1, use_bias=False, trainable=False, name=name)
            y = mask_layer(x)
            mask_layer.set_weights([m.reshape(1, 1, -1, 1).astype("float32")])
        elif rank in (2, 3):
            mask_layer = L.Dense(len(idx), use_bias=False, trainable=False, name=name)
            y = mask_layer(x)
            mask_layer.set_weights([np.diag(m).astype("float32")])
        else:
            raise FoldError(f"Cannot fold ChannelMask {layer.name!r} on a rank-{rank} tensor.")
        self._set(out, y, idx)

    def _rebuild_residual(self, layer, ins, out):
        gate, values = self._gate_info(ins[2])
        if values is not None and values[0] == 0:
            self.report.branches_removed.append(layer.name)
            self.new[id(out)] = self.new[id(ins[0])]
            return
        shortcut, branch = self._full(ins[0]), self._full(ins[1])
        c = _channels(out)
        if values is not None:
            self.report.branches_kept.append(layer.name)
            y = L.Add(name=self._unique(layer.name))([shortcut, branch])
            self._set(out, y, np.arange(c) if c else None)
            return
        self.report.dependent_masked.append(gate.name)
        z = self.new[id(ins[2])][0]
        rank = len(ins[1].shape)
        if rank > 2:
            z = L.Reshape((1,) * (rank - 1), name=self._unique(f"{layer.name}_gate_reshape"))(z)
        mul_name = self._unique(f"{layer.name}_branch")
        gated = L.Multiply(name=mul_name)([branch, z])
        add_name = self._unique(layer.name)
        y = L.Add(name=add_name)([shortcut, gated])
        self.report.conditional.append(
            {
                "gate": z._keras_history[0].name,
                "branch": branch._keras_history[0].name,
                "multiply": mul_name,
                "add": add_name,
            }
        )
        self._set(out, y, np.arange(c) if c else None)

    def _dependent_gate(self, gate, context):
        """The plain-layer version of a data-dependent gate in threshold style."""
        prefix = gate.name
        rank = len(context.shape)
        x = context
        if rank == 4:
            x = L.GlobalAveragePooling2D(name=self._unique(f"{prefix}_pool"))(x)
        elif rank == 3:
            x = L.GlobalAveragePooling1D(name=self._unique(f"{prefix}_pool"))(x)
        elif rank != 2:
            raise FoldError(f"Cannot fold gate {gate.name!r} on a rank-{rank} context.")
        hidden = L.Dense(gate.hidden_units, use_bias=False, name=self._unique(f"{prefix}_hidden"))
        x = hidden(x)
        hidden.set_weights(gate.hidden.get_weights())
        norm = self._clone(gate.norm, name=f"{prefix}_norm")
        x = norm(x)
        norm.set_weights(gate.norm.get_weights())
        x = L.ReLU(name=self._unique(f"{prefix}_relu"))(x)
        theta = math.log(gate.threshold / (1.0 - gate.threshold))
        head_kernel, head_bias = gate.head.get_weights()
        head = L.Dense(gate.units, name=self._unique(f"{prefix}_logits"))
        logits = head(x)
        head.set_weights([head_kernel, (head_bias.astype("float64") - theta).astype("float32")])
        step = L.Rescaling(STEP_SCALE, name=self._unique(f"{prefix}_scale"))(logits)
        z = L.ReLU(max_value=1.0, name=self._unique(f"{prefix}_step"))(step)
        if gate.force_open and gate.units > 1:
            col = L.Reshape((gate.units, 1), name=self._unique(f"{prefix}_column"))(logits)
            best = L.GlobalMaxPooling1D(name=self._unique(f"{prefix}_max"))(col)
            diff = L.Subtract(name=self._unique(f"{prefix}_gap"))([logits, best])
            scaled = L.Rescaling(STEP_SCALE, offset=1.0, name=self._unique(f"{prefix}_argmax_scale"))(diff)
            onehot = L.ReLU(max_value=1.0, name=self._unique(f"{prefix}_argmax"))(scaled)
            z = L.Maximum(name=self._unique(f"{prefix}_force_open"))([z, onehot])
        return z


# -- MACs --------------------------------------------------------------------------------


def count_macs(model):
    """Multiply-accumulates of one example through ``model`` with every gate open.

    The project's one counter, :func:`tfgated.complexity.count`: convolutions,
    depthwise/separable convolutions, dense layers and gate networks.
    """
    from tfgated import complexity

    return int(complexity.count(model).macs)


# -- public API -------------------------------------------------------------------------------


def _check_styles(model, style):
    from tfgated.inference import gate_layers

    gates = gate_layers(model)
    for gate in gates:
        current = style or gate.inference_style
        if current not in FOLDABLE_STYLES:
            raise FoldError(
                f"Cannot fold gate {gate.name!r} in inference style {current!r}. "
                f"Expected one of {list(FOLDABLE_STYLES)}: set it with "
                "tfgated.set_inference_style(model, 'threshold')."
            )
    return gates


def fold(model, style=None, remove_channels=True, fold_batchnorm=False, return_report=False):
    """Fold the gates of a gated functional model into plain Keras layers.

    Args:
        model: a functional Keras model with tfgated gates (or none).
        style: ``"threshold"`` or ``"always_on"`` to fold in that inference
            style; ``None`` keeps each gate's current style (which must be one
            of these). The model's own styles are restored afterwards.
        remove_channels: physically remove closed channels (``False`` keeps
            every channel and multiplies by constant masks: the "masked" model).
        fold_batchnorm: also fold batch norms into the preceding convolution
            (see :func:`fold_batchnorm`).
        return_report: also return the :class:`FoldReport`.

    Returns:
        The folded ``keras.Model`` (plain Keras layers only), or
        ``(model, report)`` with ``return_report=True``.

    Raises:
        FoldError (a ValueError): stochastic/ensemble styles, custom layers,
            or a model that is not functional.
    """
    if style is not None and style not in FOLDABLE_STYLES:
        raise FoldError(f"Expected style to be one of {list(FOLDABLE_STYLES)} or None. Received: style={style!r}")
    gates = _check_styles(model, style)
    saved = [(g, g.inference_style, g.threshold) for g in gates]
    try:
        if style is not None:
            for g in gates:
                g.set_inference_style(style)
        styles = {g.inference_style for g in gates}
        folder = _Folder(model, remove_channels=remove_channels)
        folder.report.style = styles.pop() if len(styles) == 1 else ("mixed" if styles else "none")
        folder.analyse()
        folded = folder.build()
    finally:
        for g, s, t in saved:
            g.set_inference_style(s, threshold=t)
    if fold_batchnorm:
        folded = fold_batchnorms(folded)
    report = folder.report
    report.macs_before = count_macs(model)
    report.macs_after = count_macs(folded)
    return (folded, report) if return_report else folded


def fold_batchnorms(model):
    """Fold every ``BatchNormalization`` that directly follows a conv/depthwise/dense layer into it.

    Only batch norms whose input is used by nothing else are folded. Returns a
    new functional model.
    """
    nodes = _nodes_in_order(model)
    consumers = {}
    producer = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
        for t in node.outputs:
            producer[id(t)] = node
    fusable = {}  # id(conv node) -> bn layer
    skip = set()
    for node in nodes:
        layer = node.operation
        if not (isinstance(layer, L.BatchNormalization) and len(node.input_tensors) == 1):
            continue
        t = node.input_tensors[0]
        if not _bn_last_axis(layer, len(t.shape)) or len(consumers.get(id(t), [])) != 1:
            continue
        prev = producer.get(id(t))
        if prev is None or len(prev.operation._inbound_nodes) != 1:
            continue
        pl = prev.operation
        if (_conv_like(pl) or _depthwise(pl) or isinstance(pl, L.Dense)) and pl.activation is keras.activations.linear:
            fusable[id(prev)] = layer
            skip.add(id(node))
    new = {id(t): keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t._keras_history[0].name) for t in model.inputs}
    new_inputs = [new[id(t)] for t in model.inputs]
    for node in nodes:
        layer = node.operation
        if id(node) in skip:
            new[id(node.outputs[0])] = new[id(node.input_tensors[0])]
            continue
        args, kwargs = node.arguments.fill_in({id(t): new[id(t)] for t in node.input_tensors})
        if id(node) in fusable:
            bn = fusable[id(node)]
            new_layer = type(layer).from_config({**layer.get_config(), "use_bias": True})
            y = new_layer(*args, **kwargs)
            w = layer.get_weights()
            kernel = w[0].astype("float64")
            bias = w[1].astype("float64") if layer.use_bias else np.zeros(kernel.shape[-2] if _depthwise(layer) else kernel.shape[-1])
            gamma = np.asarray(bn.gamma, "float64") if bn.scale else 1.0
            beta = np.asarray(bn.beta, "float64") if bn.center else 0.0
            mean = np.asarray(bn.moving_mean, "float64")
            var = np.asarray(bn.moving_variance, "float64")
            scale = gamma / np.sqrt(var + bn.epsilon)
            if _depthwise(layer):
                kernel = kernel * scale[None, None, :, None]
            else:
                kernel = kernel * scale
            bias = (bias - mean) * scale + beta
            new_layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
        else:
            new_layer = type(layer).from_config(layer.get_config())
            y = new_layer(*args, **kwargs)
            if layer.weights:
                new_layer.set_weights(layer.get_weights())
        for t, nt in zip(node.outputs, keras.tree.flatten(y)):
            new[id(t)] = nt
    outputs = [new[id(t)] for t in model.outputs]
    return keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                       outputs if len(outputs) > 1 else outputs[0], name=model.name)
