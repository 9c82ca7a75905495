"""Early exits: SIPA's "Accelerating" step (Lee et al., MicroNet Challenge 2019, section 2.4).

An *exit head* is a small classifier attached to an intermediate tensor of a trained network.
At test time a sample whose exit head is confident enough (maximum softmax probability strictly
above a threshold, the reference's ``LogitCond``) is answered by the exit and skips the rest of
the network; the others continue to the main output.

The pieces, generic over any functional Keras classification model with a softmax output:

* :func:`attach_exit` returns a two-output model ``[main_probs, exit_probs]`` (main first) that
  shares its layers with the given model. :func:`sipa_exit_head` is the default head, SIPA's
  Figure 8 / reference ``EarlyExitBlock``: 3x3 depthwise conv (no bias), BN, swish, 1x1 conv
  (no bias) to ``channels``, BN, swish, global average pooling, dense softmax classifier.
  The default ``channels=136`` is the reference's ``final_channels=150`` scaled by its width
  coefficient 0.9 (EfficientNet rounding to a multiple of 8); it reproduces the README's
  "Added Param #" column (19,500 for 40 input channels, BN folded, 100 classes).
* :func:`train_exit` freezes everything but the head (``trainable=False``) and trains the head
  only. The frozen part up to the exit point runs in *inference mode* while the head trains
  (batch-norm moving statistics, dropout/drop-connect off, gates in their inference style), so
  the head learns on exactly the features it sees at test time and the main weights are not
  touched. (The reference instead kept the frozen network in training mode, which updated its
  batch-norm buffers; its README calls that side effect "batchnorm stabilization".)
  The two-output model is then compiled with a loss on the exit output only.
* :class:`SoftSmoothingLoss`: ``(1 + max_softmax(y_hat)) * CE(y_hat, y)`` per sample. In the
  reference (``train_tools/criterion.py``, ``SoftLabelSmoothingLoss``) the confidence factor is
  **not** stop-gradient'ed: ``torch.max`` of the softmax keeps its gradient, so the factor is
  differentiated too. The default here does the same (``stop_gradient_confidence=False``).
* :func:`calibrate_threshold` picks the threshold on validation data, either for a maximum
  accuracy drop against the full network or for a target exit ratio.
* :class:`EarlyExitModel` / :func:`early_exit_predict` really stop early: the functional graph
  is split into part A (input -> exit head, plus every tensor the rest of the network needs) and
  part B (those tensors -> main output). Tensors that cross the split besides the exit point (skip
  connections, gate tensors read by the activation-loss layer, ...) are carried over, so any
  topology works. Part B runs only on the samples that did not exit.
* :func:`exit_position_study` (SIPA README's exit-position table) and :func:`risk_coverage` /
  :func:`plot_risk_coverage` (SIPA Figure 9).

MACs are counted per example with :func:`tfgated.complexity.layer_macs` (convolutions and dense
layers; batch norm, activations, pooling and additions count zero), summed over the layer calls
of each part of the split. The identity :class:`~tfgated.losses.GateActivationLoss` layer on a
gated model's output is skipped at inference.

Block-index convention: ``after=k`` (an int) means the last layer, in the model's topological
layer order, whose name starts with ``f"block{k}_"`` (the zoo's SIPA/MBConv naming, zero-based:
``block4_add`` or ``block4_project_bn``); ``after="block4a"`` (a string that is not a layer name)
means the last layer whose name starts with ``"block4a_"`` (keras.applications naming).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional, Sequence

import keras
import numpy as np
from keras import ops

from tfgated import complexity
from tfgated.io import save_figure
from tfgated.losses import GateActivationLoss

__all__ = [
    "EarlyExitModel",
    "EarlyExitResult",
    "ExitStructure",
    "ExitStudy",
    "RiskCoverage",
    "SoftSmoothingLoss",
    "ThresholdCalibration",
    "attach_exit",
    "calibrate_threshold",
    "combine_predictions",
    "early_exit_predict",
    "exit_position_study",
    "exit_structure",
    "freeze_main",
    "plot_risk_coverage",
    "resolve_exit_layer",
    "risk_coverage",
    "sipa_exit_head",
    "study_table",
    "train_exit",
]

DEFAULT_EXIT_CHANNELS = 136
LOSSES = ("softsmoothing", "crossentropy")


# ----------------------------------------------------------------------------- loss


@keras.saving.register_keras_serializable(package="tfgated")
class SoftSmoothingLoss(keras.losses.Loss):
    """SIPA's confidence-aware "soft smoothing" loss, per sample ``(1 + c) * CE``.

    ``c`` is the maximum predicted probability and ``CE`` the cross-entropy against the
    (optionally label-smoothed) target. Over-confident samples are penalized more.

    Args:
        label_smoothing: ``s`` in ``[0, 1)``; the target is ``1 - s`` on the true class and
            ``s / (C - 1)`` on the others (the reference's convention, not Keras' ``s / C``).
        from_logits: ``y_pred`` are logits (softmax applied here) instead of probabilities.
        stop_gradient_confidence: treat ``c`` as a constant. False (default) matches the
            reference, where the factor is differentiated too.
        reduction, name, dtype: as for :class:`keras.losses.Loss`.

    Labels may be class indices (shape ``(batch,)`` or ``(batch, 1)``) or one-hot/dense
    targets of shape ``(batch, C)``.
    """

    def __init__(
        self,
        label_smoothing=0.0,
        from_logits=False,
        stop_gradient_confidence=False,
        reduction="sum_over_batch_size",
        name="soft_smoothing",
        dtype=None,
    ):
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"Expected label_smoothing in [0, 1). Received: label_smoothing={label_smoothing}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)
        self.stop_gradient_confidence = bool(stop_gradient_confidence)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        num_classes = y_pred.shape[-1]
        if self.from_logits:
            probs = ops.softmax(y_pred, axis=-1)
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            probs = y_pred
            eps = keras.config.epsilon()
            log_probs = ops.log(ops.clip(y_pred, eps, 1.0 - eps))
        target = _dense_targets(y_true, y_pred, num_classes, self.label_smoothing)
        cross_entropy = -ops.sum(target * log_probs, axis=-1)
        confidence = ops.max(probs, axis=-1)
        if self.stop_gradient_confidence:
            confidence = ops.stop_gradient(confidence)
        return (1.0 + confidence) * cross_entropy

    def get_config(self):
        base = super().get_config()
        return {
            **base,
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
            "stop_gradient_confidence": self.stop_gradient_confidence,
        }


def _dense_targets(y_true, y_pred, num_classes, smoothing):
    """Float targets of shape ``(batch, C)`` from class indices or dense labels."""
    y_true = ops.convert_to_tensor(y_true)
    dense = len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes and num_classes != 1
    if dense:
        target = ops.cast(y_true, y_pred.dtype)
    else:
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        target = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
    if smoothing:
        off = smoothing / max(num_classes - 1, 1)
        target = target * (1.0 - smoothing) + (1.0 - target) * off
    return target


def _exit_loss(loss, label_spec=None, num_classes=None):
    """A Keras loss object for ``loss`` ("softsmoothing", "crossentropy" or a Loss)."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    if loss == "softsmoothing":
        return SoftSmoothingLoss()
    if loss == "crossentropy":
        dense = (
            label_spec is not None
            and len(label_spec.shape) >= 2
            and label_spec.shape[-1] == num_classes
            and num_classes != 1
        )
        if dense:
            return keras.losses.CategoricalCrossentropy()
        return keras.losses.SparseCategoricalCrossentropy()
    raise ValueError(f"Expected loss to be one of {LOSSES} or a keras.losses.Loss. Received: loss={loss!r}")


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


def _check_functional(model, what="model"):
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
    _check_functional(model_with_exit, "model_with_exit")
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
    _check_functional(model)
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
    _check_functional(model)
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


# ----------------------------------------------------------------------------- training


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


class _ExitTrainer(keras.Model):
    """Transient trainer: frozen features in inference mode, then the trainable head."""

    def __init__(self, features, head, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.head = head

    def call(self, x, training=False):
        return self.head(self.features(x, training=False), training=training)


def _label_spec(dataset):
    spec = getattr(dataset, "element_spec", None)
    if isinstance(spec, tuple) and len(spec) >= 2:
        return spec[1]
    return None


def train_exit(
    model_with_exit,
    train_ds,
    val_ds=None,
    epochs=1,
    loss="softsmoothing",
    optimizer=None,
    callbacks=None,
    steps_per_epoch=None,
    verbose="auto",
):
    """Train only the exit head of ``model_with_exit`` (main network frozen).

    Freezes the main layers (:func:`freeze_main`), trains the head on features computed by the
    frozen network in inference mode, then compiles ``model_with_exit`` with the loss on the
    exit output only (``model_with_exit.evaluate`` then reports the exit's loss and accuracy).

    Args:
        model_with_exit: a model from :func:`attach_exit`.
        train_ds, val_ds: ``tf.data`` datasets (or anything ``fit`` takes) of ``(x, labels)``.
        epochs: training epochs.
        loss: "softsmoothing" (SIPA), "crossentropy" or a ``keras.losses.Loss``.
        optimizer: None for Adam (learning rate 1e-3, cosine decay to 0 over the run when the
            dataset length is known), or any optimizer ``compile`` accepts. (The reference used
            SGD 0.13 with momentum 0.9 and cosine decay over 800 epochs.)
        callbacks, steps_per_epoch, verbose: passed to ``fit``.

    Returns:
        The ``keras.callbacks.History`` of the head training.
    """
    if int(epochs) < 1:
        raise ValueError(f"Expected epochs >= 1. Received: epochs={epochs}")
    structure = freeze_main(model_with_exit)
    num_classes = structure.exit_output.shape[-1]
    loss_object = _exit_loss(loss, _label_spec(train_ds), num_classes)
    points = structure.exit_points[0] if len(structure.exit_points) == 1 else structure.exit_points
    features = keras.Model(structure.inputs, points, name="exit_features")
    head = keras.Model(points, structure.exit_output, name="exit_head")
    trainer = _ExitTrainer(features, head, name="exit_trainer")
    if optimizer is None:
        steps = steps_per_epoch
        if steps is None:
            try:
                steps = len(train_ds)
            except TypeError:
                steps = None
        learning_rate = 1e-3
        if steps:
            learning_rate = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=int(steps) * int(epochs))
        optimizer = keras.optimizers.Adam(learning_rate)
    trainer.compile(optimizer=optimizer, loss=loss_object, metrics=["accuracy"])
    history = trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=int(epochs),
        callbacks=callbacks,
        steps_per_epoch=steps_per_epoch,
        verbose=verbose,
        shuffle=not hasattr(train_ds, "element_spec"),  # datasets are shuffled by their pipeline
    )
    model_with_exit.compile(optimizer=trainer.optimizer, loss=[None, loss_object], metrics=[None, ["accuracy"]])
    return history


# ----------------------------------------------------------------------------- calibration


def _labels(labels):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    return labels.reshape(-1).astype("int64")


def _check_probs(probs, what):
    probs = np.asarray(probs, dtype="float64")
    if probs.ndim != 2:
        raise ValueError(f"Expected {what} of shape (N, classes). Received: shape={probs.shape}")
    return probs


def combine_predictions(exit_probs, main_probs, threshold):
    """Per-sample selection: the exit where ``max(exit_probs) > threshold``, else the main output.

    Returns ``(probs, exited)`` (numpy arrays).
    """
    exit_probs = _check_probs(exit_probs, "exit_probs")
    main_probs = _check_probs(main_probs, "main_probs")
    if exit_probs.shape != main_probs.shape:
        raise ValueError(
            f"Expected exit_probs and main_probs of one shape. Received: {exit_probs.shape} and {main_probs.shape}"
        )
    exited = exit_probs.max(axis=1) > float(threshold)
    return np.where(exited[:, None], exit_probs, main_probs), exited


@dataclasses.dataclass
class ThresholdCalibration:
    """A calibrated threshold and what it gives on the calibration data (accuracies in [0, 1])."""

    threshold: float
    exit_ratio: float
    accuracy: float
    full_accuracy: float
    exit_accuracy: float
    criterion: str

    @property
    def accuracy_drop(self):
        return self.full_accuracy - self.accuracy

    def to_dict(self):
        return {**dataclasses.asdict(self), "accuracy_drop": self.accuracy_drop}


def calibrate_threshold(exit_probs, main_probs, labels, max_accuracy_drop=None, target_exit_ratio=None):
    """Choose the confidence threshold on calibration (validation) data.

    A sample exits when its exit confidence (max probability) is strictly above the threshold.
    Only thresholds that change the exited set are considered; the returned one lies midway
    between the confidences of the last exiting and the first continuing sample.

    Exactly one criterion:
        max_accuracy_drop: the largest exit ratio whose accuracy is at least
            ``full_accuracy - max_accuracy_drop`` (a fraction: 0.003 = 0.3 points).
        target_exit_ratio: the highest threshold whose exit ratio is at least this (in [0, 1]).

    Returns:
        :class:`ThresholdCalibration` (exit_accuracy is NaN when nothing exits).
    """
    if (max_accuracy_drop is None) == (target_exit_ratio is None):
        raise ValueError(
            "Expected exactly one of max_accuracy_drop and target_exit_ratio. "
            f"Received: max_accuracy_drop={max_accuracy_drop}, target_exit_ratio={target_exit_ratio}"
        )
    exit_probs = _check_probs(exit_probs, "exit_probs")
    main_probs = _check_probs(main_probs, "main_probs")
    labels = _labels(labels)
    n = len(labels)
    if exit_probs.shape != main_probs.shape or exit_probs.shape[0] != n or n == 0:
        raise ValueError(
            "Expected exit_probs, main_probs (N, classes) and N labels, N > 0. "
            f"Received: {exit_probs.shape}, {main_probs.shape}, {labels.shape}"
        )
    confidence = exit_probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    exit_correct = (exit_probs.argmax(axis=1) == labels)[order].astype("int64")
    main_correct = (main_probs.argmax(axis=1) == labels)[order].astype("int64")
    cum_exit = np.concatenate([[0], np.cumsum(exit_correct)])
    cum_main = np.concatenate([[0], np.cumsum(main_correct)])
    full_correct = cum_main[-1]
    # k = number of exited samples; valid where the top-k set is separable by a threshold.
    ks = np.arange(n + 1)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = conf_sorted[:-1] > conf_sorted[1:]
    accuracy = (cum_exit + (full_correct - cum_main)) / n
    full_accuracy = full_correct / n

    if max_accuracy_drop is not None:
        if not 0.0 <= float(max_accuracy_drop) <= 1.0:
            raise ValueError(f"Expected max_accuracy_drop in [0, 1]. Received: max_accuracy_drop={max_accuracy_drop}")
        ok = valid & (accuracy >= full_accuracy - float(max_accuracy_drop) - 1e-12)
        k = int(ks[ok].max())  # k = 0 is always feasible
        criterion = f"max_accuracy_drop={float(max_accuracy_drop)}"
    else:
        if not 0.0 <= float(target_exit_ratio) <= 1.0:
            raise ValueError(f"Expected target_exit_ratio in [0, 1]. Received: target_exit_ratio={target_exit_ratio}")
        ok = valid & (ks >= float(target_exit_ratio) * n - 1e-9)
        k = int(ks[ok].min())  # k = n is always feasible
        criterion = f"target_exit_ratio={float(target_exit_ratio)}"
    if k == 0:
        threshold = max(1.0, float(conf_sorted[0]))
    elif k == n:
        threshold = 0.0
    else:
        threshold = 0.5 * (float(conf_sorted[k - 1]) + float(conf_sorted[k]))
    return ThresholdCalibration(
        threshold=threshold,
        exit_ratio=k / n,
        accuracy=float(accuracy[k]),
        full_accuracy=float(full_accuracy),
        exit_accuracy=float(cum_exit[k] / k) if k else float("nan"),
        criterion=criterion,
    )


# ----------------------------------------------------------------------------- inference


@dataclasses.dataclass
class EarlyExitResult:
    """What early-exit inference did on a set of examples.

    ``probabilities`` (N, C) and ``exited`` (N,) are numpy arrays; ``mean_macs`` is the
    measured mean MACs per example: part A + head for every sample, + part B for those that
    continued. ``mac_saving`` is ``1 - mean_macs / main_macs`` (main network alone, no exit).
    Accuracies are None without labels.
    """

    probabilities: np.ndarray
    exited: np.ndarray
    threshold: float
    exit_ratio: float
    mean_macs: float
    macs: dict
    mac_saving: float
    accuracy: Optional[float] = None
    exit_accuracy: Optional[float] = None
    continued_accuracy: Optional[float] = None

    @property
    def predictions(self):
        return self.probabilities.argmax(axis=1)

    def to_dict(self):
        """JSON-ready summary (no per-example arrays)."""
        return {
            "threshold": self.threshold,
            "exit_ratio": self.exit_ratio,
            "accuracy": self.accuracy,
            "exit_accuracy": self.exit_accuracy,
            "continued_accuracy": self.continued_accuracy,
            "mean_macs": self.mean_macs,
            "mac_saving": self.mac_saving,
            "macs": dict(self.macs),
            "examples": int(len(self.exited)),
        }


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"Expected threshold to be a number. Received: threshold={threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0 or math.isnan(float(threshold)):
        raise ValueError(f"Expected threshold in [0, 1]. Received: threshold={threshold}")
    return float(threshold)


def _batches(x, batch_size):
    """Yield ``(x_batch, y_batch or None)`` from an array or a dataset of x or (x, y)."""
    if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not hasattr(x, "element_spec")):
        x = np.asarray(x)
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], None
        return
    for item in x:
        if isinstance(item, (tuple, list)):
            yield np.asarray(item[0]), np.asarray(item[1])
        else:
            yield np.asarray(item), None


class EarlyExitModel:
    """Inference that really stops early.

    Part A computes the exit probabilities and every tensor that the rest of the network needs
    (:attr:`ExitStructure.crossing`); part B computes the main output from those tensors and
    runs only on the samples whose exit confidence is not above ``threshold``.
    Both parts share weights with ``model_with_exit``.
    """

    def __init__(self, model_with_exit, threshold=0.85):
        self.threshold = _check_threshold(threshold)
        self.structure = exit_structure(model_with_exit)
        s = self.structure
        self.part_a = keras.Model(s.inputs, [s.exit_output, *s.crossing], name="early_exit_part_a")
        main_in_a = any(t is s.main_output for t in s.crossing)
        crossing = s.crossing[0] if len(s.crossing) == 1 else s.crossing
        self.part_b = None if main_in_a else keras.Model(crossing, s.main_output, name="early_exit_part_b")

    @property
    def macs(self):
        return dict(self.structure.macs)

    def predict_batch(self, x):
        """``(probs, exited)`` numpy arrays for one batch."""
        outs = self.part_a(x, training=False)
        outs = [keras.ops.convert_to_numpy(o) for o in outs]
        exit_probs, crossing = outs[0], outs[1:]
        exited = exit_probs.max(axis=1).astype("float64") > self.threshold
        probs = exit_probs.copy()
        rest = ~exited
        if rest.any():
            if self.part_b is None:
                main = crossing[0][rest]
            else:
                inputs = [c[rest] for c in crossing]
                main = self.part_b(inputs if len(inputs) > 1 else inputs[0], training=False)
                main = keras.ops.convert_to_numpy(main)
            probs[rest] = main
        return probs, exited

    def predict(self, x, labels=None, batch_size=256):
        """Early-exit predictions for an array, or a dataset of ``x`` or ``(x, labels)``.

        Returns:
            :class:`EarlyExitResult`.
        """
        if int(batch_size) < 1:
            raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")
        all_probs, all_exited, all_labels = [], [], []
        for xb, yb in _batches(x, int(batch_size)):
            probs, exited = self.predict_batch(xb)
            all_probs.append(probs)
            all_exited.append(exited)
            if yb is not None:
                all_labels.append(yb)
        if not all_probs:
            raise ValueError("Expected at least one example. Received: empty input")
        probs = np.concatenate(all_probs)
        exited = np.concatenate(all_exited)
        if labels is None and all_labels:
            labels = np.concatenate(all_labels)
        macs = self.structure.macs
        n = len(exited)
        exit_ratio = float(exited.mean())
        mean_macs = macs["part_a"] + macs["head"] + (1.0 - exit_ratio) * macs["part_b"]
        result = EarlyExitResult(
            probabilities=probs,
            exited=exited,
            threshold=self.threshold,
            exit_ratio=exit_ratio,
            mean_macs=float(mean_macs),
            macs=dict(macs),
            mac_saving=float(1.0 - mean_macs / macs["main"]) if macs["main"] else 0.0,
        )
        if labels is not None:
            labels = _labels(labels)
            if len(labels) != n:
                raise ValueError(f"Expected {n} labels. Received: {len(labels)}")
            correct = probs.argmax(axis=1) == labels
            result.accuracy = float(correct.mean())
            result.exit_accuracy = float(correct[exited].mean()) if exited.any() else None
            result.continued_accuracy = float(correct[~exited].mean()) if (~exited).any() else None
        return result


def early_exit_predict(model_with_exit, x, threshold, batch_size=256, labels=None):
    """One-shot :meth:`EarlyExitModel.predict` (builds the split each call)."""
    return EarlyExitModel(model_with_exit, threshold).predict(x, labels=labels, batch_size=batch_size)


# ----------------------------------------------------------------------------- risk-coverage


@dataclasses.dataclass
class RiskCoverage:
    """A risk-coverage curve (Geifman & El-Yaniv; SIPA Figure 9).

    Points are taken where the covered set changes: covering the samples with confidence
    ``>= confidence[i]`` gives ``coverage[i]`` (fraction covered) and ``risk[i]`` (error rate
    among the covered). ``aurc`` is the area under the step curve, ``sum(risk_i * dcov_i)``.
    """

    coverage: np.ndarray
    risk: np.ndarray
    confidence: np.ndarray

    @property
    def aurc(self):
        widths = np.diff(np.concatenate([[0.0], self.coverage]))
        return float(np.sum(self.risk * widths))

    def risk_at(self, coverage):
        """Risk at the smallest achievable coverage ``>= coverage``."""
        if not 0.0 <= float(coverage) <= 1.0:
            raise ValueError(f"Expected coverage in [0, 1]. Received: coverage={coverage}")
        index = int(np.searchsorted(self.coverage, float(coverage) - 1e-12, side="left"))
        return float(self.risk[min(index, len(self.risk) - 1)])

    def mean_risk(self, min_coverage=0.0):
        """Mean risk over the points with coverage ``>= min_coverage``, weighted by coverage step."""
        widths = np.diff(np.concatenate([[0.0], self.coverage]))
        keep = self.coverage >= float(min_coverage) - 1e-12
        return float(np.sum(self.risk[keep] * widths[keep]) / np.sum(widths[keep]))

    def to_dict(self):
        return {
            "coverage": self.coverage.tolist(),
            "risk": self.risk.tolist(),
            "confidence": self.confidence.tolist(),
            "aurc": self.aurc,
        }


def risk_coverage(probs, labels):
    """Risk-coverage curve of max-softmax confidence; see :class:`RiskCoverage`."""
    probs = _check_probs(probs, "probs")
    labels = _labels(labels)
    if len(labels) != len(probs) or len(labels) == 0:
        raise ValueError(f"Expected as many labels as probs (> 0). Received: {len(labels)} and {len(probs)}")
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    errors = np.cumsum((probs.argmax(axis=1) != labels)[order])
    n = len(labels)
    ends = np.flatnonzero(np.concatenate([conf_sorted[:-1] > conf_sorted[1:], [True]]))  # last index of groups
    counts = ends + 1
    return RiskCoverage(coverage=counts / n, risk=errors[ends] / counts, confidence=conf_sorted[ends])


def plot_risk_coverage(curves: Mapping[str, RiskCoverage], path, title="Risk-coverage of the exit head"):
    """Write a PNG with one risk-coverage curve per entry of ``curves`` (label -> curve).

    Uses matplotlib's Agg canvas (no global backend change). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("Expected at least one curve. Received: curves={}")
    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        axes.plot(curve.coverage, curve.risk, label=f"{label} (AURC {curve.aurc:.4f})")
    axes.set_xlabel("coverage")
    axes.set_ylabel("risk (error rate among covered)")
    axes.set_title(title)
    axes.set_xlim(0.0, 1.0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    save_figure(figure, path, format="png", dpi=120, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- exit-position study


@dataclasses.dataclass
class ExitStudy:
    """Result of :func:`exit_position_study`: JSON-ready ``rows``, a markdown ``table``, the
    trained two-output ``models`` (by position), and the no-exit network's test accuracy/MACs."""

    rows: list
    table: str
    models: dict
    full_accuracy: float
    main_macs: int


def _splits(data):
    if isinstance(data, Mapping):
        get = data.get
    elif isinstance(data, (tuple, list)):
        if len(data) != 3:
            raise ValueError(f"Expected data as (train, validation, test). Received: {len(data)} items")
        get = dict(zip(("train", "validation", "test"), data)).get
    else:
        def get(key):
            return getattr(data, key, None)
    train, validation, test = get("train"), get("validation"), get("test")
    if train is None or test is None:
        raise ValueError("Expected data with train and test datasets (e.g. tfgated.data.DatasetSplits).")
    return train, validation, test


def _exit_name(position):
    if isinstance(position, (int, np.integer)):
        return f"exit{int(position)}"
    return "exit_" + re.sub(r"\W", "_", str(position))


def _threshold_entry(exit_probs, main_probs, labels, threshold, structure):
    probs, exited = combine_predictions(exit_probs, main_probs, threshold)
    ratio = float(exited.mean())
    macs = structure.macs
    mean_macs = macs["part_a"] + macs["head"] + (1.0 - ratio) * macs["part_b"]
    return {
        "threshold": float(threshold),
        "exit_ratio": ratio,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "mean_macs": float(mean_macs),
        "mac_saving": float(1.0 - mean_macs / macs["main"]) if macs["main"] else 0.0,
    }


def exit_position_study(
    model,
    positions,
    data,
    thresholds=(0.85, 0.88, 0.92),
    epochs=1,
    loss="softsmoothing",
    head=None,
    max_accuracy_drop=None,
    optimizer_fn=None,
    verbose=0,
):
    """Train an exit head at each candidate position and tabulate the trade-off (SIPA Table 2).

    Args:
        model: a trained single-output functional model (its layers get frozen).
        positions: candidate exit positions (see :func:`resolve_exit_layer`).
        data: ``tfgated.data.DatasetSplits`` (or dict / ``(train, validation, test)``); heads
            train on ``train``, results are on ``test``, calibration (if asked) on ``validation``.
        thresholds: confidence thresholds to report.
        epochs, loss, head: for :func:`attach_exit` / :func:`train_exit`.
        max_accuracy_drop: if given (and ``validation`` exists), also calibrate a threshold on
            validation (:func:`calibrate_threshold`) and report its test results.
        optimizer_fn: None or a zero-argument callable returning a fresh optimizer per head.
        verbose: ``fit`` verbosity.

    Returns:
        :class:`ExitStudy`. Each row: ``position``, ``exit_layer``, ``exit_path_macs`` (part A +
        head), ``main_macs``, ``exit_path_share`` (exit path / (main + head), SIPA's "Exiting Path
        FLOPs" ratio), ``added_params``, ``exit_accuracy`` (every sample exits), ``thresholds``
        (list of ``threshold, exit_ratio, accuracy, mean_macs, mac_saving``) and optionally
        ``calibrated`` (the calibration on validation, with its MAC saving there, and the
        calibrated threshold's results on test).
    """
    _check_functional(model)
    positions = list(positions)
    if not positions:
        raise ValueError("Expected at least one exit position. Received: positions=[]")
    thresholds = [_check_threshold(t) for t in thresholds]
    train, validation, test = _splits(data)
    labels = _labels(np.concatenate([np.asarray(y) for _, y in test]))
    main_probs = np.asarray(model.predict(test, verbose=0))
    full_accuracy = float((main_probs.argmax(1) == labels).mean())
    if max_accuracy_drop is not None and validation is not None:
        val_labels = _labels(np.concatenate([np.asarray(y) for _, y in validation]))
        val_main = np.asarray(model.predict(validation, verbose=0))
    rows, models, main_macs = [], {}, None
    for position in positions:
        layer_name = resolve_exit_layer(model, position)
        with_exit = attach_exit(model, position, head=head, name=_exit_name(position))
        train_exit(
            with_exit,
            train,
            epochs=epochs,
            loss=loss,
            optimizer=optimizer_fn() if optimizer_fn else None,
            verbose=verbose,
        )
        structure = exit_structure(with_exit)
        main_macs = structure.main_macs
        exit_model = keras.Model(structure.inputs, structure.exit_output)
        exit_probs = np.asarray(exit_model.predict(test, verbose=0))
        row = {
            "position": position if isinstance(position, str) else int(position),
            "exit_layer": layer_name,
            "exit_path_macs": int(structure.exit_path_macs),
            "main_macs": int(structure.main_macs),
            "exit_path_share": float(structure.exit_path_macs / (structure.main_macs + structure.macs["head"])),
            "added_params": int(structure.head_params),
            "exit_accuracy": float((exit_probs.argmax(1) == labels).mean()),
            "thresholds": [_threshold_entry(exit_probs, main_probs, labels, t, structure) for t in thresholds],
        }
        if max_accuracy_drop is not None and validation is not None:
            val_exit = np.asarray(exit_model.predict(validation, verbose=0))
            calibration = calibrate_threshold(val_exit, val_main, val_labels, max_accuracy_drop=max_accuracy_drop)
            on_validation = _threshold_entry(val_exit, val_main, val_labels, calibration.threshold, structure)
            row["calibrated"] = {
                "validation": {**calibration.to_dict(), "mac_saving": on_validation["mac_saving"]},
                "test": _threshold_entry(exit_probs, main_probs, labels, calibration.threshold, structure),
            }
        rows.append(row)
        models[row["position"]] = with_exit
    return ExitStudy(rows=rows, table=study_table(rows, full_accuracy), models=models,
                     full_accuracy=full_accuracy, main_macs=int(main_macs))


def study_table(rows: Sequence[dict], full_accuracy=None):
    """A markdown table of :func:`exit_position_study` rows (accuracies in %)."""
    thresholds = [e["threshold"] for e in rows[0]["thresholds"]] if rows else []
    ts = ", ".join(f"{t:g}" for t in thresholds)
    header = (
        f"| Exit position | Exit layer | Exit path MACs (share) | Added params | Exit ratio @ {ts} "
        f"| Accuracy @ {ts} (exit only) | MAC saving @ {ts} |"
    )
    lines = [header, "| :---: | :---: | :---: | :---: | :---: | :---: | :---: |"]
    for r in rows:
        entries = r["thresholds"]
        ratios = ", ".join(f"{100 * e['exit_ratio']:.2f}%" for e in entries)
        accuracies = ", ".join(f"{100 * e['accuracy']:.2f}%" for e in entries)
        savings = ", ".join(f"{100 * e['mac_saving']:.1f}%" for e in entries)
        lines.append(
            f"| {r['position']} | {r['exit_layer']} | {r['exit_path_macs']:,} ({100 * r['exit_path_share']:.2f}%) "
            f"| {r['added_params']:,} | {ratios} | {accuracies} ({100 * r['exit_accuracy']:.2f}%) | {savings} |"
        )
    if full_accuracy is not None:
        lines.append("")
        lines.append(f"No-exit network accuracy: {100 * full_accuracy:.2f}%.")
    return "\n".join(lines)
