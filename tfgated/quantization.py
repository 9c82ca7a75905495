"""16-bit quantization-aware training: float16 fake quantization with a straight-through backward.

SIPA (Lee et al., MicroNet Challenge 2019) trains its networks with weights and activations
fake-quantized to 16 bits and scores them at 16 bits. This module does the same in Keras, in
the manner of ``tfmot.quantization.keras``:

* :func:`fake_quantize` -- ``x`` rounded to the nearest float16 value in the forward pass, the
  gradient passed through unchanged (``x + stop_gradient(round16(x) - x)``);
* :class:`FakeQuantize` -- that rounding as a layer (for activations);
* :class:`QuantizeWrapper` -- one layer run with its trainable weights fake-quantized and its
  floating outputs fake-quantized; the float32 weights stay the ones the optimizer updates;
* :func:`quantize_model` -- every layer of a functional model wrapped (the layers, and so their
  weights, are shared with the given model);
* :func:`strip_quantization` -- the plain model back, its weights rounded to float16: exactly the
  weights the quantized forward pass used, ready for counting (:mod:`tfgated.micronet`) and
  export;
* :func:`round_weights` -- every float weight of a model rounded to ``bits`` in place (16-bit
  deployment of a model trained at 32 bits).

Typical use::

    qat = quantize_model(model, bits=16)
    recipe.compile(qat, steps_per_epoch=steps); qat.fit(...)
    model = strip_quantization(qat)

Or through a recipe: ``Recipe(precision_bits=16).prepare_model(model)`` returns the quantized
model. ``bits=32`` is the identity everywhere.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = [
    "PRECISIONS",
    "FakeQuantize",
    "QuantizeWrapper",
    "check_bits",
    "fake_quantize",
    "is_quantized",
    "quantize_model",
    "round_weights",
    "strip_quantization",
]

#: The precisions, in bits: 32 (no quantization) and 16 (float16).
PRECISIONS = (16, 32)
_FLOATS = ("float32", "float64")


def check_bits(bits):
    """``bits`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming them."""
    if isinstance(bits, bool) or bits not in PRECISIONS:
        raise ValueError(f"Expected bits to be one of {list(PRECISIONS)}. Received: bits={bits!r}")
    return int(bits)


def fake_quantize(x, bits=16):
    """``x`` rounded to the nearest float16 value (``bits=16``), with a straight-through gradient.

    Non-float tensors (and every tensor at ``bits=32``) are returned unchanged.
    """
    if check_bits(bits) == 32 or keras.backend.standardize_dtype(x.dtype) not in _FLOATS:
        return x
    return _round_to_float16(x)


@ops.custom_gradient
def _round_to_float16(x):
    """``x`` through float16 and back; the gradient passes unchanged. As a custom gradient
    (rather than ``x + stop_gradient(rounded - x)``) it costs two casts forward and nothing
    backward; with the fused batch norm (:mod:`tfgated.fused_norm`) a 16-bit training step of the
    pipeline's network takes 0.73x the time it took (``benchmarks/training_speed.py``)."""

    def grad(*args, upstream=None):
        return args[0] if upstream is None else upstream

    return ops.cast(ops.cast(x, "float16"), x.dtype), grad


@keras.saving.register_keras_serializable(package="tfgated")
class FakeQuantize(keras.layers.Layer):
    """Activations fake-quantized to ``bits`` (:func:`fake_quantize`); no weights."""

    def __init__(self, bits=16, **kwargs):
        super().__init__(**kwargs)
        self.bits = check_bits(bits)

    def call(self, inputs):
        return fake_quantize(inputs, self.bits)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}


def _quantize_outputs(outputs, bits):
    return keras.tree.map_structure(lambda t: fake_quantize(t, bits) if hasattr(t, "dtype") else t, outputs)


@keras.saving.register_keras_serializable(package="tfgated")
class QuantizeWrapper(keras.layers.Wrapper):
    """``layer`` run with float16 fake-quantized trainable weights and outputs.

    The wrapped layer's float32 weights are the trained ones (straight-through estimator: the
    gradient with respect to the rounded weight is applied to the float32 weight). Updates the
    layer makes to its other variables while called (batch-norm moving statistics, dropout
    seeds) are applied as usual.
    """

    def __init__(self, layer, bits=16, **kwargs):
        super().__init__(layer, **kwargs)
        self.bits = check_bits(bits)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        weights = [v for v in self.layer.trainable_weights if v.dtype in _FLOATS]
        if self.bits == 32 or not weights:
            return _quantize_outputs(self.layer(inputs, *args, **kwargs), self.bits)
        mapping = [(v, fake_quantize(v.value, self.bits)) for v in weights]
        mapped = {id(v) for v in weights}
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = self.layer(inputs, *args, **kwargs)
        for variable in self.layer.variables:
            if id(variable) not in mapped:
                value = scope.get_current_value(variable)
                if value is not None:
                    variable.assign(value)
        return _quantize_outputs(outputs, self.bits)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}


def is_quantized(model):
    """Whether ``model`` has :class:`QuantizeWrapper` layers (made by :func:`quantize_model`)."""
    return any(isinstance(layer, QuantizeWrapper) for layer in getattr(model, "layers", ()))


def _check_functional(model, what):
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth") and not isinstance(
        model, keras.Sequential
    ):
        raise ValueError(f"Expected a functional or Sequential keras.Model to {what}. Received: {model!r}")


def _clone(model, clone_function):
    """``keras.models.clone_model`` keeping the names of the input layers."""
    inputs = []
    for tensor in model.inputs:
        history = getattr(tensor, "_keras_history", None)
        name = history.operation.name if history is not None else tensor.name
        inputs.append(keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name))
    return keras.models.clone_model(
        model, input_tensors=inputs if len(inputs) > 1 else inputs[0], clone_function=clone_function
    )


def quantize_model(model, bits=16):
    """``model`` with every layer in a :class:`QuantizeWrapper` (weights and outputs fake-quantized).

    The layers (and so the weights) are shared with ``model``: training the result trains
    ``model``'s float32 weights. ``bits=32`` returns ``model`` itself. A model that is already
    quantized is returned unchanged.

    Args:
        model: a built functional or Sequential ``keras.Model``.
        bits: 16 (float16 fake quantization) or 32 (none).

    Returns:
        A functional model of the same inputs and outputs, named ``model.name``.
    """
    bits = check_bits(bits)
    _check_functional(model, "quantize")
    if bits == 32 or is_quantized(model):
        return model

    def wrap(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return QuantizeWrapper(layer, bits=bits, name=f"quant_{layer.name}")

    return _clone(model, wrap)


def strip_quantization(model):
    """The plain model inside a :func:`quantize_model` result, its float weights rounded to 16 bits.

    The returned model shares the layers of ``model``; its weights are the float16 values the
    quantized forward pass used. A model without wrappers is returned unchanged (not rounded).
    """
    _check_functional(model, "strip")
    wrappers = [layer for layer in model.layers if isinstance(layer, QuantizeWrapper)]
    if not wrappers:
        return model
    bits = wrappers[0].bits
    plain = _clone(model, lambda layer: layer.layer if isinstance(layer, QuantizeWrapper) else layer)
    return round_weights(plain, bits)


def round_weights(model, bits=16):
    """Round every float weight of ``model`` (or a layer) to ``bits`` in place; returns ``model``."""
    if check_bits(bits) == 32:
        return model
    for variable in model.weights:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind == "f":
            variable.assign(value.astype(np.float16).astype(value.dtype))
    return model
