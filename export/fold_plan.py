"""The analysis behind a fold: which nodes are live, which channels are constant, which must exist.

:class:`FoldPlan` reads a gated functional model in three passes over its nodes:

1. *live* (backward from the outputs): a closed residual gate cuts its branch, a static
   channel gate needs no input, so everything only they read is dead;
2. *constants* (forward): per channel, the spatially constant value it provably holds
   (a closed channel is 0; after a batch norm or a biased depthwise convolution another
   constant), NaN where it varies;
3. *present* (backward): the channels that must physically exist; a convolution or dense
   layer can absorb a missing constant input channel into its bias (see
   :func:`~tfgated.export.fold_graph.linear_foldable`).

:class:`tfgated.export.fold_build.FoldBuilder` then rebuilds the model from the plan.
"""

from __future__ import annotations

import keras
import numpy as np

from tfgated.export.fold_graph import (
    STATELESS_PER_CHANNEL,
    channels,
    eval_constant,
    gate_of,
    graph_index,
    is_static_gate,
    layer_kind,
    linear_foldable,
    nodes_in_order,
)

#: Kinds whose output channel ``c`` needs exactly input channel ``c`` of their first input.
_PER_CHANNEL_KINDS = ("mask", "stateless", "reshape", "batchnorm", "depthwise", "loss")


class FoldPlan:
    """The three analyses of a fold (see the module docstring).

    Attributes after :meth:`analyse`: ``live`` (ids of live nodes), ``live_tensors``,
    ``const`` (``{id(tensor): per-channel constant or NaN}``), ``present``
    (``{id(tensor): bool mask of channels that must exist}``).
    """

    def __init__(self, model, remove_channels=True):
        self.model = model
        self.remove_channels = remove_channels
        self.nodes = nodes_in_order(model)
        self.producer, self.consumers = graph_index(self.nodes)

    # -- per-node semantics -----------------------------------------------------------

    def _gate_info(self, z):
        return gate_of(self.producer, z)

    def _live_inputs(self, node):
        layer = node.operation
        kind = layer_kind(layer, node)
        inputs = node.input_tensors
        if kind == "gate":
            return [] if is_static_gate(layer) else [inputs[0]]
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

    def get_const(self, t):
        """Per-channel constants of original tensor ``t`` (NaN: varies; ``None``: no channels)."""
        c = channels(t)
        return self.const.get(id(t), np.full((c,), np.nan)) if c else None

    # -- the three passes ----------------------------------------------------------------

    def analyse(self):
        self._find_live()
        self._propagate_constants()
        self._find_present()

    def _find_live(self):
        live_tensors = {id(t) for t in self.model.outputs}
        self.live = set()
        for node in reversed(self.nodes):
            if any(id(t) in live_tensors for t in node.outputs):
                self.live.add(id(node))
                for t in self._live_inputs(node):
                    live_tensors.add(id(t))
        self.live_tensors = live_tensors

    def _live_nodes(self, reverse=False):
        return [n for n in (reversed(self.nodes) if reverse else self.nodes) if id(n) in self.live]

    def _propagate_constants(self):
        self.const = {}
        for node in self._live_nodes():
            out = node.outputs[0]
            kind = layer_kind(node.operation, node)
            if channels(out) is None or kind == "gate":
                continue
            self.const[id(out)] = self._constant_of(node, kind, channels(out))

    def _constant_of(self, node, kind, c_out):
        """The per-channel constants of ``node``'s output (NaN where they vary)."""
        layer, ins = node.operation, node.input_tensors
        if kind == "mask":
            gate, values = self._gate_info(ins[1])
            c_in = self.get_const(ins[0])
            if values is not None:
                return np.where(np.repeat(values, layer.granularity) == 0, 0.0, c_in)
            return np.where(c_in == 0, 0.0, np.nan)
        if kind in ("stateless", "reshape"):
            c_in = self.get_const(ins[0])
            mode = STATELESS_PER_CHANNEL.get(type(layer), "same")
            if mode == "eval":
                return eval_constant(layer, c_in, len(ins[0].shape))
            return np.where(c_in == 0, 0.0, np.nan) if mode == "zero" else c_in
        if kind == "batchnorm":
            return eval_constant(layer, self.get_const(ins[0]), len(ins[0].shape))
        if kind == "depthwise":
            bias = np.asarray(layer.bias) if layer.use_bias else np.zeros((c_out,))
            result = np.where(self.get_const(ins[0]) == 0, bias, np.nan)
            if layer.activation is not keras.activations.linear:
                result = eval_constant(keras.layers.Activation(layer.activation), result, 2)
            return result
        if kind == "multiply":
            a, b = self.get_const(ins[0]), self.get_const(ins[1])
            return np.where((a == 0) | (b == 0), 0.0, a * b)
        if kind == "loss":
            return self.get_const(ins[0])
        if kind == "residual":
            gate, values = self._gate_info(ins[2])
            if values is not None and values[0] == 0:
                return self.get_const(ins[0])
        return np.full((c_out,), np.nan)

    def _find_present(self):
        self.present = {id(t): np.ones((channels(t),), bool) for t in self.model.outputs if channels(t)}
        for node in self._live_nodes(reverse=True):
            for t, mask in self._needed_channels(node):
                c = channels(t)
                if c is not None:
                    self.present[id(t)] = self.present.get(id(t), np.zeros((c,), bool)) | mask

    def _needed_channels(self, node):
        """``[(input tensor, bool mask of its channels node needs)]``."""

        def every_channel(tensors):
            return [(t, np.ones((channels(t),), bool)) for t in tensors if channels(t)]

        if not self.remove_channels:
            return every_channel(self._live_inputs(node))
        layer, ins, out = node.operation, node.input_tensors, node.outputs[0]
        kind = layer_kind(layer, node)
        c_out = channels(out)
        p_out = self.present.get(id(out), np.zeros((c_out,), bool)) if c_out else None
        if kind in _PER_CHANNEL_KINDS:
            return [(ins[0], p_out)]
        if kind == "multiply":
            return [(ins[0], p_out), (ins[1], p_out)]
        if kind == "linear":
            return [(ins[0], ~linear_foldable(layer, self.get_const(ins[0])))]
        if kind == "residual":
            live = self._live_inputs(node)
            if len(live) == 1:
                return [(ins[0], p_out)]
            return every_channel([t for t in live if t is not ins[2]])
        return every_channel(self._live_inputs(node))  # gates and every other layer: all channels

