"""Activation losses that pull the gates towards a target rate ``t``.

``per_batch`` (PB, the Gumbel paper's): ``(t - mean(z))^2`` with the mean over
the batch and *all* gates of the model, so some gates may stay on and others off.

``per_gate`` (PG, ConvNet-AIG's): the mean over gates of ``(t - mean_batch(z_g))^2``,
which pulls every gate to ``t``.

With ``gate_weights`` (for example the MACs each gate controls, see
:func:`tfgated.complexity.gate_mac_weights`) the means become weighted means,
so ``t`` targets the expected fraction of gated MACs rather than the plain
fraction of open gates.

:class:`GateActivationLoss` is an identity layer on the model output that also
receives every gate tensor; it adds the loss with ``add_loss`` so a plain
``compile``/``fit`` trains the gates, and it reports the mean activation as the
``gate_activation`` metric in the progress bar.
"""

from __future__ import annotations

import numbers

import keras
from keras import ops

#: The activation loss kinds: per-batch (PB) and per-gate (PG).
LOSS_KINDS = ("per_batch", "per_gate")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_target(target):
    """Raise a clear error unless ``target`` is a rate in [0, 1]."""
    if not _is_number(target) or not 0.0 <= target <= 1.0:
        raise ValueError(f"Expected target in [0, 1]. Received: target={target!r}")
    return target


def check_weight(weight):
    """Raise a clear error unless ``weight`` is a number >= 0."""
    if not _is_number(weight) or not weight >= 0:
        raise ValueError(f"Expected weight >= 0. Received: weight={weight!r}")
    return weight


def check_loss_kind(loss_kind):
    """Raise a clear error unless ``loss_kind`` is one of :data:`LOSS_KINDS`."""
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"Expected loss_kind to be one of {list(LOSS_KINDS)}. Received: loss_kind={loss_kind!r}")
    return loss_kind


def _gate_means(gates):
    """Per-gate batch means, concatenated: shape ``(total_gates,)``."""
    return ops.concatenate([ops.mean(ops.cast(g, "float32"), axis=0) for g in gates], axis=0)


def _element_weights(gates, gate_weights):
    """Expand one weight per gate tensor to one weight per gate element."""
    if gate_weights is None:
        return None
    pieces = []
    for g, w in zip(gates, gate_weights):
        units = g.shape[-1]
        pieces.append(ops.full((units,), float(w) / units, dtype="float32"))
    return ops.concatenate(pieces, axis=0)


def mean_activation(gates, gate_weights=None):
    """Mean gate value over the batch and all gates (weighted if ``gate_weights``)."""
    means = _gate_means(gates)
    weights = _element_weights(gates, gate_weights)
    if weights is None:
        return ops.mean(means)
    return ops.sum(means * weights) / ops.sum(weights)


def per_batch_loss(gates, target, gate_weights=None):
    """PB: squared difference between ``target`` and the mean activation."""
    return ops.square(target - mean_activation(gates, gate_weights))


def per_gate_loss(gates, target, gate_weights=None):
    """PG: mean over gates of the squared difference between ``target`` and each gate's batch mean."""
    squared = ops.square(target - _gate_means(gates))
    weights = _element_weights(gates, gate_weights)
    if weights is None:
        return ops.mean(squared)
    return ops.sum(squared * weights) / ops.sum(weights)


@keras.saving.register_keras_serializable(package="tfgated")
class GateActivationLoss(keras.layers.Layer):
    """Identity on ``outputs`` that adds the gate activation loss.

    Args:
        target: target activation rate ``t`` in [0, 1]; a non-trainable
            variable, so :class:`tfgated.callbacks.TargetAnnealing` can move it.
        weight: multiplier of the loss (>= 0).
        loss_kind: ``"per_batch"`` (PB) or ``"per_gate"`` (PG). Configs saved
            before the rename spell it ``mode``; :meth:`from_config` reads both.
        gate_weights: optional list, one non-negative weight per gate tensor
            (e.g. the MACs it controls), to target the expected fraction of gated
            MACs instead of the plain gate fraction.

    Call arguments:
        inputs: ``[outputs, gates_1, ..., gates_n]``. Returns ``outputs``.
    """

    #: The target rate is a setting of the model, not a learned value (see
    #: :attr:`tfgated.gates.GumbelGate.SETTING_VARIABLES`).
    SETTING_VARIABLES = ("target_value",)

    def __init__(self, target=0.5, weight=1.0, loss_kind="per_batch", gate_weights=None, **kwargs):
        super().__init__(**kwargs)
        check_target(target)
        check_weight(weight)
        check_loss_kind(loss_kind)
        if gate_weights is not None:
            gate_weights = [float(w) for w in gate_weights]
            if any(w < 0 for w in gate_weights) or sum(gate_weights) <= 0:
                raise ValueError(
                    "Expected non-negative gate_weights with a positive sum. "
                    f"Received: gate_weights={gate_weights}"
                )
        self.target = float(target)
        self.weight = float(weight)
        self.loss_kind = loss_kind
        self.gate_weights = gate_weights
        self.activation_tracker = keras.metrics.Mean(name="gate_activation")
        # An identity on the model output: keep its dtype (e.g. a float32 softmax
        # under mixed_float16) instead of casting it to this layer's compute dtype.
        self._convert_input_args = False

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError("Expected inputs [outputs, gates_1, ...] with at least one gate tensor.")
        if self.gate_weights is not None and len(self.gate_weights) != len(input_shape) - 1:
            raise ValueError(
                f"Expected one gate weight per gate tensor ({len(input_shape) - 1}). "
                f"Received: {len(self.gate_weights)} gate_weights"
            )
        self.target_value = self.add_weight(
            name="target_value",
            shape=(),
            trainable=False,
            initializer=keras.initializers.Constant(self.target),
        )

    def set_target(self, target):
        """Change the target rate in place (used by annealing)."""
        check_target(target)
        self.target = float(target)
        self.target_value.assign(self.target)

    def call(self, inputs):
        outputs, gates = inputs[0], list(inputs[1:])
        target = ops.cast(self.target_value, "float32")
        if self.loss_kind == "per_batch":
            loss = per_batch_loss(gates, target, self.gate_weights)
        else:
            loss = per_gate_loss(gates, target, self.gate_weights)
        self.add_loss(self.weight * loss)
        self.activation_tracker.update_state(mean_activation(gates, self.gate_weights))
        return outputs

    def load_own_variables(self, store):
        super().load_own_variables(store)
        saved = float(keras.ops.convert_to_numpy(self.target_value))
        if abs(saved - self.target) > 1e-6:  # changed (e.g. annealed) after the config was written
            self.target = saved

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def compute_output_spec(self, inputs):
        # the model output passes through unchanged, dtype included
        return keras.KerasTensor(inputs[0].shape, dtype=inputs[0].dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "target": self.target,
            "weight": self.weight,
            "loss_kind": self.loss_kind,
            "gate_weights": self.gate_weights,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "mode" in config:  # the name before loss_kind, in .keras files saved earlier
            config["loss_kind"] = config.pop("mode")
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfgated")
class SparseLabelSmoothingCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing on integer labels.

    The loss of ``keras.losses.CategoricalCrossentropy(label_smoothing=s)`` on the one-hot
    labels (``1 - s + s/K`` on the true class, ``s/K`` elsewhere), taking the integer labels a
    plain ``model.fit(x, y)`` gets, so a model compiled for integer labels keeps a recipe's
    label smoothing (``keras.losses.SparseCategoricalCrossentropy`` has none).

    Args:
        label_smoothing: ``s`` in ``[0, 1)``.
        from_logits: whether the predictions are logits.
    """

    def __init__(self, label_smoothing=0.0, from_logits=False, name="sparse_label_smoothing_crossentropy", **kwargs):
        if not _is_number(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Expected label_smoothing in [0, 1). Received: label_smoothing={label_smoothing!r}")
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        classes = y_pred.shape[-1]
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (batch, 1) labels
            labels = ops.squeeze(labels, axis=-1)
        one_hot = ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}
