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
            :class:`tfgated.losses.GateActivationLoss`. ``gate_weights="macs"`` weights
            each gate tensor by the MACs it controls
            (:func:`tfgated.complexity.gate_mac_weights`): the target is then a fraction
            of the gated MACs.
        name: model name.
    """
    gates = list(gates)
    by_macs = isinstance(gate_weights, str)
    if by_macs and gate_weights != "macs":
        raise ValueError(f"Expected gate_weights to be None, 'macs' or a list. Received: gate_weights={gate_weights!r}")
    if gates:
        outputs = GateActivationLoss(
            target=target,
            weight=weight,
            loss_kind=loss_kind,
            gate_weights=None if by_macs else gate_weights,
            name=ACTIVATION_LOSS_NAME,
        )([outputs, *gates])
    model = keras.Model(inputs, outputs, name=name)
    if gates and by_macs:
        from tfgated.complexity import gate_mac_weights

        model.get_layer(ACTIVATION_LOSS_NAME).set_gate_weights(gate_mac_weights(model))
    return model
