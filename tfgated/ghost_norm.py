"""Ghost batch normalization (Hoffer et al. 2017), one of SIPA's Improving switches.

:class:`GhostBatchNormalization` normalizes virtual batches in training and is an
ordinary batch norm at inference; :func:`use_ghost_batch_norm` swaps it into a
built model (:class:`tfgated.recipes.Recipe` ``ghost_batch_norm``).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfgated")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization over *virtual* batches (Hoffer et al. 2017).

    In training the batch is split into consecutive virtual batches of
    ``virtual_batch_size`` examples (the last one may be smaller); each is
    normalized with its own mean and variance. The moving statistics are
    updated with the mean over virtual batches of their statistics. At
    inference it is an ordinary ``BatchNormalization``, and it holds the same
    weights, so weights transfer both ways.

    Args:
        virtual_batch_size: examples per virtual batch (positive integer).
        **kwargs: as for ``keras.layers.BatchNormalization``; only the last
            axis (channels-last) is supported, and not ``renorm``.
    """

    #: A batch norm that differs from Keras' only in training (:func:`plain_batch_norm` swaps it back).
    training_variant = True

    def __init__(self, virtual_batch_size=32, **kwargs):
        super().__init__(**kwargs)
        if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
            raise ValueError(
                "Expected virtual_batch_size to be a positive integer. "
                f"Received: virtual_batch_size={virtual_batch_size!r}"
            )
        if self.renorm:
            raise ValueError("GhostBatchNormalization does not support renorm=True.")
        self.virtual_batch_size = virtual_batch_size

    def build(self, input_shape):
        super().build(input_shape)
        if self.axis not in (-1, len(input_shape) - 1):
            raise ValueError(
                "GhostBatchNormalization normalizes the last axis only. "
                f"Received: axis={self.axis} for inputs of shape {input_shape}"
            )

    def _ghost_moments(self, inputs):
        """Per-example mean/variance of its virtual batch, and their batch averages."""
        rank = len(inputs.shape)
        spatial_axes = tuple(range(1, rank - 1))
        batch = ops.shape(inputs)[0]
        sums = ops.sum(inputs, axis=spatial_axes) if spatial_axes else inputs
        squares = ops.sum(ops.square(inputs), axis=spatial_axes) if spatial_axes else ops.square(inputs)
        positions = 1
        for axis in spatial_axes:
            positions = positions * ops.shape(inputs)[axis]
        group = ops.floor_divide(ops.arange(batch), self.virtual_batch_size)
        num_groups = ops.floor_divide(batch + self.virtual_batch_size - 1, self.virtual_batch_size)
        # assignment[i, g] = 1 iff example i is in virtual batch g
        assignment = ops.cast(
            ops.equal(ops.expand_dims(group, 1), ops.expand_dims(ops.arange(num_groups), 0)),
            inputs.dtype,
        )
        counts = ops.sum(assignment, axis=0) * ops.cast(positions, inputs.dtype)  # (groups,)
        group_mean = ops.matmul(ops.transpose(assignment), sums) / ops.expand_dims(counts, 1)
        group_square = ops.matmul(ops.transpose(assignment), squares) / ops.expand_dims(counts, 1)
        group_var = ops.maximum(group_square - ops.square(group_mean), 0.0)
        example_mean = ops.matmul(assignment, group_mean)  # (batch, channels)
        example_var = ops.matmul(assignment, group_var)
        shape = [-1] + [1] * len(spatial_axes) + [inputs.shape[-1]]
        return (
            ops.reshape(example_mean, shape),
            ops.reshape(example_var, shape),
            ops.mean(group_mean, axis=0),
            ops.mean(group_var, axis=0),
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        mean, variance, batch_mean, batch_var = self._ghost_moments(x)
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, "float32") * momentum + batch_mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + batch_var * (1.0 - momentum)
        )
        outputs = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.cast(self.gamma, "float32")
        if self.center:
            outputs = outputs + ops.cast(self.beta, "float32")
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "virtual_batch_size": self.virtual_batch_size}


def use_ghost_batch_norm(model, virtual_batch_size=32):
    """A clone of a functional/sequential ``model`` with ghost batch norm.

    Every top-level ``keras.layers.BatchNormalization`` (not the BN inside
    gate networks or other composite layers) is replaced by a
    :class:`GhostBatchNormalization` with the same config and weights; every
    other layer is kept with its weights. The clone is not compiled.
    """
    if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
        raise ValueError(
            "Expected virtual_batch_size to be a positive integer. "
            f"Received: virtual_batch_size={virtual_batch_size!r}"
        )

    def ghost(layer, config):
        if type(layer) is keras.layers.BatchNormalization or isinstance(layer, GhostBatchNormalization):
            return GhostBatchNormalization(virtual_batch_size=virtual_batch_size, **config)
        return None

    return _clone_replacing(model, ghost)


def plain_batch_norm(model):
    """A clone of ``model`` with every :class:`GhostBatchNormalization` and
    :class:`tfgated.fused_norm.FusedBatchNormalization` back to
    ``keras.layers.BatchNormalization`` (same config and weights); ``model`` itself
    when it has none. Both only differ in training; exporters take built-in layers only."""
    def ours(layer):  # GhostBatchNormalization, tfgated.fused_norm.FusedBatchNormalization
        return isinstance(layer, keras.layers.BatchNormalization) and getattr(layer, "training_variant", False)

    if not any(ours(layer) for layer in model.layers):
        return model

    def plain(layer, config):
        return keras.layers.BatchNormalization(**config) if ours(layer) else None

    return _clone_replacing(model, plain)


def _clone_replacing(model, replace):
    """``keras.models.clone_model`` where ``replace(layer, config)`` may return a new layer
    (``virtual_batch_size`` is not in the config it gets); every layer keeps its weights."""
    pairs = []

    def clone(layer):
        config = layer.get_config()
        ghost_config = {key: value for key, value in config.items() if key != "virtual_batch_size"}
        new = replace(layer, ghost_config) or layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    cloned = keras.models.clone_model(model, clone_function=clone)
    for old, new in pairs:
        if old.weights:
            new.set_weights(old.get_weights())
    return cloned
