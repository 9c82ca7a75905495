"""Assembling gated functional models."""

from __future__ import annotations

import keras

from tfgated.losses import GateActivationLoss

ACTIVATION_LOSS_NAME = "activation_loss"


def gated_model(
    inputs,
    outputs,
    gates,
    target=0.5,
    loss_kind="per_batch",
    weight=1.0,
    gate_weights=None,
    name=None,
):
    """A functional model whose output passes through the activation loss.

    Args:
        inputs, outputs: as for ``keras.Model``; ``outputs`` is one tensor.
        gates: the gate tensors (``z``) of every gate in the model. With none,
            the model is returned without an activation loss (a dense model).
        target, loss_kind, weight, gate_weights: see
            :class:`tfgated.losses.GateActivationLoss`.
        name: model name.
    """
    gates = list(gates)
    if gates:
        outputs = GateActivationLoss(
            target=target,
            weight=weight,
            loss_kind=loss_kind,
            gate_weights=gate_weights,
            name=ACTIVATION_LOSS_NAME,
        )([outputs, *gates])
    return keras.Model(inputs, outputs, name=name)
