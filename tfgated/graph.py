"""Functional-graph analysis: a flat call graph and the structure of the gates.

Two tools live here, both plain data so other modules (complexity counting,
the exporter that folds gates) can rely on them:

* :func:`trace` flattens a functional Keras model, nested functional models
  included (``keras.applications`` models used as layers), into a topologically
  ordered list of :class:`Call` s: one per layer call, with qualified names
  (``"outer_model/inner_layer"``), the tensors it reads and writes (small integer
  keys) and their shapes (batch first). Sequential models are traced through
  their functional graph.
* :func:`gate_structure` lists, for every :class:`~tfgated.gates.GumbelGate`,
  the layer that applies it and the layers whose computation it switches off,
  each with a *role* (see :class:`GateInfo`).

The gate-aware MAC counts built on this structure (``expected_macs``,
``gate_mac_weights``, ``expected_macs_on_data``) live in :mod:`tfgated.complexity`,
which imports this module (never the other way round).

Exit gates (:mod:`tfgated.exits`) are recognised by the class attributes their
layers declare, ``exits_early = True`` on the gate and ``routes_exits = True``
on the layer applying it (``EarlyExitCombine``): the exits package builds on
this module and complexity counting, so this module does not import it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
from keras.src.layers.pooling.base_pooling import BasePooling

from tfgated.gates import ChannelMask, GatedResidual, GumbelGate
from tfgated.losses import GateActivationLoss

#: Layers that compute with weights over channels (they own the MACs).
MAC_LAYERS = (BaseConv, BaseConvTranspose, BaseSeparableConv, keras.layers.Dense)
#: Per-channel convolutions: their channels follow their input's channels.
DEPTHWISE_LAYERS = (BaseDepthwiseConv,)
#: Layers that only copy, pad, crop or (in training) drop values: no arithmetic at inference,
#: and channel ``c`` of the input stays channel ``c`` (shared with :mod:`tfgated.micronet`).
VALUE_MOVING_LAYERS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
)
#: One-input layers that keep channel ``c`` of their input as channel ``c`` of their output.
CHANNEL_PRESERVING = (
    keras.layers.BatchNormalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    *VALUE_MOVING_LAYERS,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
    BasePooling,
    BaseGlobalPooling,
)

ROLES = ("output", "input", "through", "branch", "after", "rest")


# ----------------------------------------------------------------------------- flat graph


@dataclasses.dataclass
class Call:
    """One call of a layer in a flattened functional graph.

    Attributes:
        name: qualified name, unique in the graph: nested models prefix their
            name (``"mobilenetv2_1.00_224/Conv1"``); a layer called a second
            time in the same model gets ``"#1"`` appended, and so on.
        layer: the Keras layer object.
        inputs, outputs: tensor keys (ints) read and written, in call order.
        input_shapes, output_shapes: the tensors' shapes, batch first.
    """

    name: str
    layer: keras.layers.Layer
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list

    @property
    def class_name(self):
        return type(self.layer).__name__


class Graph:
    """A flattened functional graph: ``calls`` in topological order plus indices.

    Attributes:
        calls: list of :class:`Call` (inputs first).
        shapes: ``{tensor key: shape}``.
        producer: ``{tensor key: Call}`` (model inputs have none).
        consumers: ``{tensor key: [Call, ...]}``.
        by_name: ``{call name: Call}``.
        inputs, outputs: tensor keys of the model's inputs and outputs.
    """

    def __init__(self):
        self.calls = []
        self.shapes = {}
        self.producer = {}
        self.consumers = {}
        self.by_name = {}
        self.inputs = []
        self.outputs = []

    def add(self, call):
        self.calls.append(call)
        self.by_name[call.name] = call
        for key in call.outputs:
            self.producer[key] = call
        for key in call.inputs:
            self.consumers.setdefault(key, []).append(call)

    def calls_of(self, layer):
        """Every call of ``layer`` (usually one)."""
        return [c for c in self.calls if c.layer is layer]

    def ancestors(self, keys, stop=frozenset()):
        """Tensor keys upstream of ``keys`` (included), not walking past ``stop`` keys."""
        seen, todo = set(), list(keys)
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            if key in stop:
                continue
            call = self.producer.get(key)
            if call is not None:
                todo.extend(call.inputs)
        return seen


def _is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and hasattr(layer, "_nodes")


def _functional_of(model):
    """The functional graph behind ``model`` (Sequential models wrap one)."""
    if _is_functional(model):
        return model
    inner = getattr(model, "_functional", None)
    if inner is not None and _is_functional(inner):
        return inner
    raise ValueError(
        "Expected a built functional or Sequential Keras model (with an Input). "
        f"Received: {type(model).__name__} {getattr(model, 'name', '')!r}"
    )


def _shape(shape):
    return tuple(None if d is None else int(d) for d in shape)


class _Tracer:
    def __init__(self):
        self.graph = Graph()
        self._keys = {}  # id(KerasTensor) -> key (scoped per model: see _key)
        self._keep = []  # keep tensors alive so ids stay unique
        self._next = 0

    def new_key(self, shape):
        key = self._next
        self._next += 1
        self.graph.shapes[key] = _shape(shape)
        return key

    def trace(self, model, input_keys, prefix):
        """Trace ``model`` with its inputs bound to ``input_keys``; returns output keys."""
        model = _functional_of(model)
        keys = {}  # id(inner KerasTensor) -> key
        for tensor, key in zip(model.inputs, input_keys):
            keys[id(tensor)] = key
            self._keep.append(tensor)
        call_counts = {}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                op = node.operation
                if node.is_input or isinstance(op, keras.layers.InputLayer):
                    continue
                in_tensors = node.arguments.keras_tensors
                in_keys = [keys[id(t)] for t in in_tensors]
                in_shapes = [self.graph.shapes[k] for k in in_keys]
                own_shapes = [_shape(t.shape) for t in in_tensors]
                count = call_counts.get(id(op), 0)
                call_counts[id(op)] = count + 1
                name = prefix + op.name + (f"#{count}" if count else "")
                if _is_functional(op) or isinstance(op, keras.Sequential):
                    out_keys = self.trace(op, in_keys, prefix=name + "/")
                    out_shapes = None
                else:
                    if in_shapes == own_shapes:
                        out_shapes = [_shape(t.shape) for t in node.outputs]
                    else:
                        out_shapes = self._respecify(node, in_tensors, in_shapes)
                    out_keys = [self.new_key(s) for s in out_shapes]
                    self.graph.add(
                        Call(name, op, in_keys, out_keys, in_shapes, out_shapes)
                    )
                for tensor, key in zip(node.outputs, out_keys):
                    keys[id(tensor)] = key
                    self._keep.append(tensor)
        return [keys[id(t)] for t in model.outputs]

    @staticmethod
    def _respecify(node, in_tensors, in_shapes):
        fill = {
            id(t): keras.KerasTensor(shape, dtype=t.dtype) for t, shape in zip(in_tensors, in_shapes)
        }
        args, kwargs = node.arguments.fill_in(fill)
        spec = node.operation.compute_output_spec(*args, **kwargs)
        return [_shape(s.shape) for s in keras.tree.flatten(spec)]


def trace(model, input_shape=None):
    """Flatten the functional graph of ``model`` into a :class:`Graph`.

    Args:
        model: a built functional or Sequential Keras model; nested functional
            models are traced into (their layers get ``"model_name/"`` prefixes).
        input_shape: optional shape *without* the batch axis (or a list of them,
            one per model input) to re-propagate shapes through the graph, for
            models built with unknown spatial size.
    """
    functional = _functional_of(model)
    tracer = _Tracer()
    inputs = functional.inputs
    if input_shape is None:
        shapes = [_shape(t.shape) for t in inputs]
    else:
        given = list(input_shape)
        if len(inputs) == 1 and (not given or not isinstance(given[0], (list, tuple))):
            given = [given]
        if len(given) != len(inputs):
            raise ValueError(
                f"Expected {len(inputs)} input shapes (without batch). Received: input_shape={input_shape}"
            )
        shapes = [(None, *[int(d) for d in s]) for s in given]
    input_keys = [tracer.new_key(s) for s in shapes]
    tracer.graph.inputs = input_keys
    tracer.graph.outputs = tracer.trace(functional, input_keys, prefix="")
    return tracer.graph


# ----------------------------------------------------------------------------- gate structure


@dataclasses.dataclass(frozen=True)
class ControlledLayer:
    """A layer whose work a gate switches off.

    Attributes:
        name: qualified layer-call name (see :class:`Call`), for top-level
            layers simply ``layer.name``.
        class_name: the layer's class name.
        role: how the gate acts on it:

            ``"output"``  its output channels are masked: channel ``c`` of its
                          output is gate ``c // granularity`` (Conv/Dense/
                          DepthwiseConv producers and the BatchNormalization
                          between them and the mask);
            ``"input"``   its input channels are masked: input feature ``f``
                          (after a Flatten too, channels last) is gate
                          ``(f % channels) // granularity``;
            ``"through"`` a depthwise convolution downstream of the mask: its
                          channel ``c`` follows gate ``c // granularity``
                          (``depth_multiplier`` > 1: output channel ``o``
                          follows input channel ``o // depth_multiplier``);
            ``"branch"``  strictly inside the residual branch of a
                          GatedResidual: runs only when the gate is open;
            ``"after"``   a weightless-MAC layer on the forward walk
                          (BatchNormalization, activation, pooling...) that
                          sees the masked channels; zero MACs. Note that a
                          BatchNormalization maps a zeroed channel to a
                          constant, which a folder must carry into the next
                          layer's bias.
            ``"rest"``    after an exit gate (:class:`~tfgated.exits.ExitGate`,
                          ``z = 1`` means "leave here"): runs only for the
                          examples that pass the exit (the later stages, exit
                          gates and classifiers, and the final classifier).
    """

    name: str
    class_name: str
    role: str

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GateInfo:
    """Plain-data description of one gate (stable API, also used by the exporter).

    Attributes:
        name: the GumbelGate layer's qualified name.
        kind: ``"independent"`` or ``"dependent"``.
        units: number of gate values per example.
        apply: qualified name of the layer applying the gate
            (a ChannelMask, a GatedResidual or an EarlyExitCombine).
        apply_class: ``"ChannelMask"``, ``"GatedResidual"`` or
            ``"EarlyExitCombine"`` (an exit gate: its value 1 switches the
            controlled layers *off*, so their open fraction is ``1 - z``).
        granularity: channels per gate unit (ChannelMask); for a GatedResidual
            the whole branch is one unit and ``granularity`` is the number of
            channels of the branch output; 1 for an exit gate.
        channels: channels of the masked tensor (= ``units * granularity``;
            1 for an exit gate).
        context: qualified name of the layer producing the gate's context
            tensor (``None`` for a model input).
        loss_index: position of this gate's tensor among the model's
            GateActivationLoss gate inputs (``inputs[1:]``), or ``None``.
        controlled: :class:`ControlledLayer` s in graph order.
    """

    name: str
    kind: str
    units: int
    apply: str
    apply_class: str
    granularity: int
    channels: int
    context: Optional[str]
    loss_index: Optional[int]
    controlled: tuple

    def channel_indices(self, unit):
        """Channels (of the masked tensor) controlled by gate value ``unit``."""
        if not 0 <= unit < self.units:
            raise ValueError(f"Expected unit in [0, {self.units}). Received: unit={unit}")
        return list(range(unit * self.granularity, (unit + 1) * self.granularity))

    def layers(self, role=None):
        """Names of the controlled layers, optionally only those with ``role``."""
        return [c.name for c in self.controlled if role is None or c.role == role]

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["controlled"] = [c.to_dict() for c in self.controlled]
        return data


def _is_exit_gate(layer):
    """An exit gate (``tfgated.exits.ExitGate``): its value 1 means "leave here"."""
    return isinstance(layer, GumbelGate) and getattr(type(layer), "exits_early", False) is True


def _routes_exits(layer):
    """A layer applying exit gates (``tfgated.exits.EarlyExitCombine``)."""
    return getattr(type(layer), "routes_exits", False) is True


def _non_gate_consumers(graph, key):
    return [c for c in graph.consumers.get(key, []) if not isinstance(c.layer, GumbelGate)]


def _walk_back(graph, key):
    """Producers of the masked tensor ``key``: roles ``output`` (see GateInfo)."""
    found = []
    while True:
        if len(_non_gate_consumers(graph, key)) != 1:
            return found  # the channels are needed elsewhere: nothing is saved
        call = graph.producer.get(key)
        if call is None or len(call.inputs) != 1:
            return found
        layer = call.layer
        if isinstance(layer, MAC_LAYERS):
            found.append(ControlledLayer(call.name, call.class_name, "output"))
            return found
        if isinstance(layer, DEPTHWISE_LAYERS):
            found.append(ControlledLayer(call.name, call.class_name, "output"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(ControlledLayer(call.name, call.class_name, "output"))
        elif not isinstance(layer, CHANNEL_PRESERVING) or isinstance(layer, BaseGlobalPooling):
            return found
        key = call.inputs[0]


def _walk_forward(graph, key, masked_channels):
    """Consumers of the masked tensor ``key``: roles ``input``/``through``/``after``."""
    found, seen = [], set()
    todo = [key]
    while todo:
        key = todo.pop(0)
        for call in graph.consumers.get(key, []):
            if call.name in seen or isinstance(call.layer, (GumbelGate, GateActivationLoss)):
                continue
            layer = call.layer
            if isinstance(layer, MAC_LAYERS):
                seen.add(call.name)
                found.append(ControlledLayer(call.name, call.class_name, "input"))
            elif isinstance(layer, DEPTHWISE_LAYERS):
                seen.add(call.name)
                found.append(ControlledLayer(call.name, call.class_name, "through"))
                todo.extend(call.outputs)
            elif isinstance(layer, CHANNEL_PRESERVING) and len(call.inputs) == 1:
                seen.add(call.name)
                found.append(ControlledLayer(call.name, call.class_name, "after"))
                todo.extend(call.outputs)
            elif isinstance(layer, keras.layers.Flatten) and len(call.inputs) == 1:
                seen.add(call.name)
                todo.extend(call.outputs)
            elif isinstance(layer, keras.layers.Multiply) and _same_channels(graph, call, masked_channels):
                # x * s keeps masked channels at zero (squeeze-and-excitation scaling).
                seen.add(call.name)
                todo.extend(call.outputs)
            # Add, Concatenate, GatedResidual, another ChannelMask, ...: stop here.
    return found


def _same_channels(graph, call, channels):
    return all(graph.shapes[k][-1] in (channels, 1) for k in call.inputs)


def _residual_branch(graph, call):
    """Calls strictly inside the branch of a GatedResidual call."""
    shortcut, branch = call.inputs[0], call.inputs[1]
    shortcut_side = graph.ancestors([shortcut])
    branch_side = graph.ancestors([branch], stop=shortcut_side)
    names = {graph.producer[k].name for k in branch_side if k not in shortcut_side and k in graph.producer}
    return [
        ControlledLayer(c.name, c.class_name, "branch")
        for c in graph.calls
        if c.name in names and not isinstance(c.layer, (GumbelGate, GateActivationLoss))
    ]


def _exit_rest(graph, call):
    """``(combine call, controlled layers)`` of exit gate ``call``: the calls upstream of the
    EarlyExitCombine inputs after this gate's (later exits and the final classifier) that
    are not upstream of its own exit (the trunk so far, this gate and its classifier)."""
    z = call.outputs[0]
    combines = [c for c in graph.consumers.get(z, []) if _routes_exits(c.layer)]
    if len(combines) != 1:
        raise ValueError(
            f"Expected exit gate {call.name!r} to feed exactly one EarlyExitCombine. "
            f"Received: {[c.name for c in combines]}"
        )
    combine = combines[0]
    position = combine.inputs.index(z)
    before = graph.ancestors(combine.inputs[: position + 1])
    after = graph.ancestors(combine.inputs[position + 1:], stop=before)
    names = {graph.producer[k].name for k in after if k not in before and k in graph.producer}
    controlled = [
        ControlledLayer(c.name, c.class_name, "rest")
        for c in graph.calls
        if c.name in names and not isinstance(c.layer, GateActivationLoss)
    ]
    return combine, controlled


def _loss_order(graph):
    """``{gate tensor key: index}`` for the first GateActivationLoss call's gate inputs."""
    for call in graph.calls:
        if isinstance(call.layer, GateActivationLoss):
            return {key: i for i, key in enumerate(call.inputs[1:])}
    return {}


def gate_structure(model, graph=None):
    """Analyse how each GumbelGate of ``model`` acts on the functional graph.

    For every gate call (graph order) a :class:`GateInfo` names the layer
    applying it and the layers it controls, with roles:

    * ChannelMask: walking **back** from the masked tensor through one-input,
      channel-preserving layers (BatchNormalization, activations, dropout,
      padding...) to the nearest Conv/Dense: that layer and the
      BatchNormalization on the way get role ``"output"`` (a depthwise
      convolution on the way gets ``"output"`` and the walk goes on to the conv
      before it). The walk only passes tensors read by a single layer
      (gates not counted): if the channels are also used elsewhere (a
      shortcut), masking saves nothing upstream and the walk stops.
      Walking **forward** from the mask output through channel-preserving
      layers (role ``"after"``; pooling and global pooling included, Flatten
      passed silently) to the nearest Conv/Dense consumers (role ``"input"``);
      a DepthwiseConv met forward gets role ``"through"`` and the walk goes on
      past it. A ``Multiply`` (squeeze-and-excitation scaling ``x * s``) is
      walked through, since masked channels stay zero; so SE convolutions
      reading the pooled masked tensor become ``"input"`` and the projection
      after the scaling too. ``Add``, ``Concatenate``, another gate's apply
      layer and any other multi-input layer stop the walk.
    * GatedResidual: every layer strictly inside the residual branch
      (ancestors of the branch input that are not ancestors of the shortcut
      input) gets role ``"branch"``.
    * ExitGate (applied by an EarlyExitCombine): every layer upstream of the
      later exits and the final classifier but not of this exit (its trunk,
      gate and classifier) gets role ``"rest"``; it runs for the examples
      whose gate is 0.

    Args:
        model: a built functional (or Sequential) model.
        graph: optional pre-computed :func:`trace` of ``model``.

    Returns:
        list of :class:`GateInfo`, plain data (``to_dict()`` gives JSON).
    """
    graph = graph or trace(model)
    order = _loss_order(graph)
    infos = []
    for call in graph.calls:
        gate = call.layer
        if not isinstance(gate, GumbelGate):
            continue
        z = call.outputs[0]
        context_call = graph.producer.get(call.inputs[0])
        if _is_exit_gate(gate):
            combine, controlled = _exit_rest(graph, call)
            infos.append(
                GateInfo(
                    name=call.name, kind=gate.kind, units=gate.units, apply=combine.name,
                    apply_class="EarlyExitCombine", granularity=1, channels=1,
                    context=None if context_call is None else context_call.name,
                    loss_index=order.get(z), controlled=tuple(controlled),
                )
            )
            continue
        appliers = [
            c for c in graph.consumers.get(z, []) if isinstance(c.layer, (ChannelMask, GatedResidual))
        ]
        if len(appliers) != 1:
            raise ValueError(
                f"Expected gate {call.name!r} to feed exactly one ChannelMask or GatedResidual. "
                f"Received: {[c.name for c in appliers]}"
            )
        apply = appliers[0]
        if isinstance(apply.layer, ChannelMask):
            channels = graph.shapes[apply.inputs[0]][-1]
            granularity = apply.layer.granularity
            back = _walk_back(graph, apply.inputs[0])
            forward = _walk_forward(graph, apply.outputs[0], channels)
            controlled = back + forward
        else:
            channels = graph.shapes[apply.inputs[1]][-1]
            granularity = channels
            controlled = _residual_branch(graph, apply)
        position = {c.name: i for i, c in enumerate(graph.calls)}
        controlled = sorted(controlled, key=lambda c: position[c.name])
        infos.append(
            GateInfo(
                name=call.name,
                kind=gate.kind,
                units=gate.units,
                apply=apply.name,
                apply_class=type(apply.layer).__name__,
                granularity=int(granularity),
                channels=int(channels),
                context=None if context_call is None else context_call.name,
                loss_index=order.get(z),
                controlled=tuple(controlled),
            )
        )
    return infos
