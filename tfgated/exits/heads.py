"""SIPA's exit head and the structure of a two-output ``[main, exit]`` model.

SIPA's "Accelerating" step (Lee et al., MicroNet Challenge 2019, section 2.4) attaches an
*exit head*, a small classifier, to an intermediate tensor of a trained network; a sample
whose exit is confident enough skips the rest of the network (:mod:`tfgated.exits.runtime`).

* :func:`attach_exit` returns a two-output model ``[main_probs, exit_probs]`` (main first) that
  shares its layers with the given model. :func:`sipa_exit_head` is the default head, SIPA's
  Figure 8 / reference ``EarlyExitBlock``: 3x3 depthwise conv (no bias), BN, swish, 1x1 conv
  (no bias) to ``channels``, BN, swish, global average pooling, dense softmax classifier.
  The default ``channels=136`` is the reference's ``final_channels=150`` scaled by its width
  coefficient 0.9 (EfficientNet rounding to a multiple of 8); it reproduces the README's
  "Added Param #" column (19,500 for 40 input channels, BN folded, 100 classes).
* :func:`exit_structure` splits such a model (from :func:`attach_exit`, a zoo builder with an
  exit option, or a saved/loaded copy) into part A (input -> exit points), the head and
  part B (the rest of the main network), with each part's MACs; :func:`freeze_main` freezes
  the main network for head-only training (:func:`tfgated.exits.train_exit`).

MACs are counted per example with :func:`tfgated.complexity.layer_macs` (convolutions and dense
layers; batch norm, activations, pooling and additions count zero), summed over the layer calls
of each part of the split. The identity :class:`~tfgated.losses.GateActivationLoss` layer on a
gated model's output is skipped.

Block-index convention: ``after=k`` (an int) means the last layer, in the model's topological
layer order, whose name starts with ``f"block{k}_"`` (the zoo's SIPA/MBConv naming, zero-based:
``block4_add`` or ``block4_project_bn``); ``after="block4a"`` (a string that is not a layer name)
means the last layer whose name starts with ``"block4a_"`` (keras.applications naming).
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from tfgated import complexity
from tfgated.losses import GateActivationLoss

__all__ = [
    "DEFAULT_EXIT_CHANNELS",
    "ExitStructure",
    "attach_exit",
    "check_functional",
    "exit_structure",
    "freeze_main",
    "resolve_exit_layer",
    "sipa_exit_head",
]

DEFAULT_EXIT_CHANNELS = 136


# ----------------------------------------------------------------------------- graph helpers


def _node_of(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _ancestors(tensors, stop_ids=frozenset()):
    """Walk the functional graph backwards from ``tensors``.

    Returns ``(nodes, tensors, boundary)``: the nodes producing the visited tensors (by id,
    in discovery order), the visited tensors (by id; stop tensors excluded) and the tensors of
    ``stop_ids`` that were reached (in discovery order).
    """
    nodes, seen, boundary, boundary_ids = {}, {}, [], set()
    stack = list(reversed(list(tensors)))
    while stack:
        tensor = stack.pop()
        if id(tensor) in stop_ids:
            if id(tensor) not in boundary_ids:
                boundary_ids.add(id(tensor))
                boundary.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        seen[id(tensor)] = tensor
        node = _node_of(tensor)
        if id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(reversed(list(node.input_tensors)))
    return nodes, seen, boundary


def _is_functional(model):
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and model.outputs is not None


def check_functional(model, what="model"):
    """Raise a ValueError naming ``what`` unless ``model`` is a functional (or Sequential)
    ``keras.Model``: the graph surgery here needs its layer calls."""
    if not _is_functional(model):
        raise ValueError(
            f"Expected {what} to be a functional (or Sequential) keras.Model. Received: {type(model).__name__}"
        )


def _strip_activation_loss(tensor):
    """The tensor that a chain of identity GateActivationLoss layers passes through."""
    while isinstance(_node_of(tensor).operation, GateActivationLoss):
        tensor = _node_of(tensor).input_tensors[0]
    return tensor


def _node_macs(node):
    """MACs per example of one layer call (nested functional models counted layer by layer)."""
    operation = node.operation
    if node.is_input:
        return 0
    if _is_functional(operation):
        return int(complexity.count(operation).macs)
    return int(
        complexity.layer_macs(
            operation,
            [tuple(t.shape) for t in node.input_tensors],
            [tuple(t.shape) for t in node.output_tensors],
        )
    )


def _layers_of(nodes):
    layers, ids = [], set()
    for node in nodes.values():
        op = node.operation
        if node.is_input or id(op) in ids:
            continue
        ids.add(id(op))
        layers.append(op)
    return layers


@dataclasses.dataclass
class ExitStructure:
    """The parts of a two-output ``[main, exit]`` model (see :func:`exit_structure`).

    Attributes:
        inputs: the model's input tensor.
        main_output: the main probabilities (after skipping an identity activation-loss layer).
        exit_output: the exit probabilities.
        exit_points: main-network tensors the head reads (usually one).
        crossing: tensors computed in part A and read by part B (the exit point and any skip
            connection or gate tensor crossing the split).
        head_layers, main_layers: the layers of the exit head and of the main network.
        macs: per-example MACs of ``part_a`` (input -> exit points), ``head`` and ``part_b``
            (the rest of the main network); ``main`` = part A + part B.
        head_params: parameters of the head (Keras' ``count_params``).
    """

    inputs: object
    main_output: object
    exit_output: object
    exit_points: list
    crossing: list
    head_layers: list
    main_layers: list
    macs: dict
    head_params: int

    @property
    def exit_path_macs(self):
        """MACs of a sample that exits: part A + head."""
        return self.macs["part_a"] + self.macs["head"]

    @property
    def main_macs(self):
        """MACs of the main network alone (no exit)."""
        return self.macs["part_a"] + self.macs["part_b"]


def exit_structure(model_with_exit):
    """Analyse a two-output functional model ``[main_probs, exit_probs]``.

    The head is every layer call needed by the exit output but not by the main output; the
    exit points are the main-network tensors it reads. Works on models from
    :func:`attach_exit`, zoo builders with an exit option, and their saved/loaded copies.

    Raises:
        ValueError: not functional, not two outputs, or the exit output is not a separate
            branch of the main network.
    """
    check_functional(model_with_exit, "model_with_exit")
    outputs = list(model_with_exit.outputs)
    if len(outputs) != 2:
        raise ValueError(
            "Expected a model with two outputs [main_probs, exit_probs] (see attach_exit). "
            f"Received: {len(outputs)} output(s) in model {model_with_exit.name!r}"
        )
    if len(model_with_exit.inputs) != 1:
        raise ValueError(f"Expected a model with one input. Received: {len(model_with_exit.inputs)} inputs")
    main_out, exit_out = outputs
    main_nodes, main_tensors, _ = _ancestors([main_out])
    if id(exit_out) in main_tensors:
        raise ValueError("The exit output is part of the main network's path; expected a separate exit branch.")
    head_nodes, _, exit_points = _ancestors([exit_out], stop_ids=frozenset(main_tensors))
    if not exit_points:
        raise ValueError("The exit head reads no tensor of the main network; expected it to branch off it.")
    a_nodes, a_tensors, _ = _ancestors(exit_points)
    logical_main = _strip_activation_loss(main_out)
    b_nodes, _, crossing = _ancestors([logical_main], stop_ids=frozenset(a_tensors))
    if any(node.is_input for node in b_nodes.values()):
        raise ValueError("The main network reads an input that the exit path does not; cannot split it.")
    macs = {
        "part_a": sum(_node_macs(n) for n in a_nodes.values()),
        "head": sum(_node_macs(n) for n in head_nodes.values()),
        "part_b": sum(_node_macs(n) for n in b_nodes.values()),
    }
    macs["main"] = macs["part_a"] + macs["part_b"]
    head_layers = _layers_of(head_nodes)
    return ExitStructure(
        inputs=model_with_exit.inputs[0],
        main_output=logical_main,
        exit_output=exit_out,
        exit_points=exit_points,
        crossing=crossing,
        head_layers=head_layers,
        main_layers=_layers_of(main_nodes),
        macs=macs,
        head_params=int(sum(layer.count_params() for layer in head_layers)),
    )


# ----------------------------------------------------------------------------- attaching


def _model_layer_outputs(model):
    """``{layer name: [output tensors of its calls in this model]}`` for a functional model."""
    nodes, _, _ = _ancestors(model.outputs)
    found = {}
    for node in nodes.values():
        found.setdefault(node.operation.name, []).extend(node.output_tensors)
    return found


def resolve_exit_layer(model, after):
    """The name of the layer after which an exit is attached.

    Args:
        model: a functional model.
        after: a layer name; an int ``k`` = the last layer (topological order) named
            ``block{k}_*``; or a string prefix ``p`` that is not a layer name = the last layer
            named ``{p}_*``.

    Raises:
        ValueError: no such layer.
    """
    check_functional(model)
    names = [layer.name for layer in model.layers]
    if isinstance(after, bool) or not isinstance(after, (int, str, np.integer)):
        raise ValueError(f"Expected after to be a layer name or a block index. Received: after={after!r}")
    if isinstance(after, str) and after in names:
        return after
    prefix = f"block{int(after)}_" if not isinstance(after, str) else f"{after}_"
    matches = [n for n in names if n.startswith(prefix)]
    if not matches:
        blocks = sorted({m.group(0)[:-1] for n in names if (m := re.match(r"block\w*?_", n))})
        hint = f" Blocks in the model: {', '.join(blocks)}." if blocks else ""
        raise ValueError(
            f"No layer named {after!r} or starting with {prefix!r} in model {model.name!r}.{hint}"
        )
    return matches[-1]


def sipa_exit_head(features, num_classes, channels=DEFAULT_EXIT_CHANNELS, activation="swish", name="exit"):
    """SIPA's exit head on an NHWC feature map; returns the exit probabilities.

    3x3 depthwise conv (no bias) -> BN -> ``activation`` -> 1x1 conv to ``channels`` (no bias)
    -> BN -> ``activation`` -> global average pooling -> dense softmax. Layers are named
    ``{name}_dwconv``, ``{name}_dwconv_bn``, ``{name}_dwconv_activation``, ``{name}_conv``,
    ``{name}_conv_bn``, ``{name}_conv_activation``, ``{name}_pool``, ``{name}_predictions``.
    """
    if len(features.shape) != 4:
        raise ValueError(
            "The default exit head needs an NHWC feature map (rank 4). "
            f"Received: shape={tuple(features.shape)}; pass head=... for other tensors."
        )
    if int(channels) < 1:
        raise ValueError(f"Expected channels >= 1. Received: channels={channels}")
    bn = dict(momentum=0.9, epsilon=1e-5)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dwconv")(features)
    x = keras.layers.BatchNormalization(**bn, name=f"{name}_dwconv_bn")(x)
    x = keras.layers.Activation(activation, name=f"{name}_dwconv_activation")(x)
    x = keras.layers.Conv2D(int(channels), 1, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{name}_conv_bn")(x)
    x = keras.layers.Activation(activation, name=f"{name}_conv_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"{name}_predictions")(x)


def attach_exit(model, after, head=None, name="exit", channels=DEFAULT_EXIT_CHANNELS):
    """A two-output model ``[main_probs, exit_probs]`` with an exit head after layer ``after``.

    The returned model shares all layers (and weights) of ``model``.

    Args:
        model: a functional classification model with one input and one softmax output.
        after: where to attach, see :func:`resolve_exit_layer`.
        head: None for :func:`sipa_exit_head`, or a callable (a function or a new Keras
            layer/model) mapping the exit-point tensor to a probability tensor of shape
            ``(batch, num_classes)``; it must create new layers.
        name: prefix of the default head's layer names; no layer of ``model`` may use it.
        channels: the default head's 1x1 conv channels.

    Raises:
        ValueError: bad model, unknown position, name clash, or a head that does not output
            ``(batch, num_classes)``.
    """
    check_functional(model)
    if len(model.outputs) != 1 or len(model.inputs) != 1:
        raise ValueError(
            "Expected a model with one input and one output to attach an exit to. "
            f"Received: {len(model.inputs)} input(s), {len(model.outputs)} output(s) in {model.name!r}"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected name to be a non-empty string. Received: name={name!r}")
    clash = [layer.name for layer in model.layers if layer.name == name or layer.name.startswith(f"{name}_")]
    if clash:
        raise ValueError(f"Layer names of model {model.name!r} already use the exit name {name!r}: {clash[:3]}")
    layer_name = resolve_exit_layer(model, after)
    produced = _model_layer_outputs(model).get(layer_name, [])
    if len(produced) != 1:
        raise ValueError(
            f"Expected layer {layer_name!r} to produce exactly one tensor in model {model.name!r}. "
            f"Received: {len(produced)}"
        )
    features = produced[0]
    main_out = model.outputs[0]
    num_classes = main_out.shape[-1]
    if head is None:
        exit_out = sipa_exit_head(features, num_classes, channels=channels, name=name)
    elif callable(head):
        exit_out = head(features)
    else:
        raise ValueError(f"Expected head to be None or a callable. Received: head={head!r}")
    if tuple(exit_out.shape[1:]) != (num_classes,):
        raise ValueError(
            f"Expected the exit head to output shape (batch, {num_classes}). Received: {tuple(exit_out.shape)}"
        )
    return keras.Model(model.inputs, [main_out, exit_out], name=f"{model.name}_{name}")


def freeze_main(model_with_exit):
    """Set ``trainable=False`` on every main-network layer and True on the head's.

    Returns the :class:`ExitStructure`. The main layers are shared with the original model,
    which is frozen too.
    """
    structure = exit_structure(model_with_exit)
    head_ids = {id(layer) for layer in structure.head_layers}
    for layer in structure.main_layers:
        if id(layer) not in head_ids:
            layer.trainable = False
    for layer in structure.head_layers:
        layer.trainable = True
    return structure
