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
  one, :func:`tfgated.export.convert.export_function` can instead run gated
  residual branches under ``tf.cond`` (conditional form);
* the :class:`~tfgated.GateActivationLoss` layer becomes the identity.

The analysis is channel-exact: a channel is removed only when the folded model
provably computes the same outputs (up to float rounding).

The work is split in three modules: :mod:`tfgated.export.fold_graph` (nodes, how a layer
treats channels, constants), :mod:`tfgated.export.fold_plan` (the live / constant / present
analyses) and :mod:`tfgated.export.fold_build` (the rebuild); this module holds the public
:func:`fold`, :class:`FoldReport` and :func:`fold_batchnorms`.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfgated.complexity import mac_fraction
from tfgated.export.fold_build import STEP_SCALE, FoldBuilder
from tfgated.export.fold_graph import (
    FoldError,
    bn_last_axis,
    conv_like,
    depthwise_like,
    graph_index,
    nodes_in_order,
    static_gate_values,
)

__all__ = ["FOLDABLE_STYLES", "STEP_SCALE", "FoldError", "FoldReport", "count_macs", "fold", "fold_batchnorms",
           "static_gate_values"]

FOLDABLE_STYLES = ("threshold", "always_on")

L = keras.layers



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
        return mac_fraction(self.macs_after, self.macs_before)

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
        if s["macs_after"] > s["macs_before"]:
            lines.append(
                f"  the folded model costs {s['macs_after'] - s['macs_before']:,} MACs more than the unfolded one: "
                "its constant masks (1x1 depthwise products) outweigh the channels removed"
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
        style_name = styles.pop() if len(styles) == 1 else ("mixed" if styles else "none")
        folder = FoldBuilder(model, FoldReport(style=style_name), remove_channels=remove_channels)
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
    nodes = nodes_in_order(model)
    producer, consumers = graph_index(nodes)
    fusable = {}  # id(conv node) -> bn layer
    skip = set()
    for node in nodes:
        layer = node.operation
        if not (isinstance(layer, L.BatchNormalization) and len(node.input_tensors) == 1):
            continue
        t = node.input_tensors[0]
        if not bn_last_axis(layer, len(t.shape)) or len(consumers.get(id(t), [])) != 1:
            continue
        prev = producer.get(id(t))
        if prev is None or len(prev.operation._inbound_nodes) != 1:
            continue
        pl = prev.operation
        if (conv_like(pl) or depthwise_like(pl) or isinstance(pl, L.Dense)) and pl.activation is keras.activations.linear:
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
            new_layer.set_weights(_fused_weights(layer, bn))
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


def _fused_weights(layer, bn):
    """Kernel and bias of ``layer`` (conv, depthwise or dense) with the batch norm ``bn`` after it folded in."""
    w = layer.get_weights()
    kernel = w[0].astype("float64")
    width = kernel.shape[-2] if depthwise_like(layer) else kernel.shape[-1]
    bias = w[1].astype("float64") if layer.use_bias else np.zeros(width)
    gamma = np.asarray(bn.gamma, "float64") if bn.scale else 1.0
    beta = np.asarray(bn.beta, "float64") if bn.center else 0.0
    mean = np.asarray(bn.moving_mean, "float64")
    var = np.asarray(bn.moving_variance, "float64")
    scale = gamma / np.sqrt(var + bn.epsilon)
    if depthwise_like(layer):
        kernel = kernel * scale[None, None, :, None]
    else:
        kernel = kernel * scale
    bias = (bias - mean) * scale + beta
    return [kernel.astype("float32"), bias.astype("float32")]
