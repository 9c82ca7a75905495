"""Fused batch normalization for training speed on the TensorFlow backend.

Keras 3's ``BatchNormalization`` computes its batch moments and normalization with
``keras.ops`` element-wise operations: on TensorFlow that is about ten passes over every
activation forward and as many backward, where TensorFlow's own fused kernel
(``FusedBatchNormV3``, oneDNN on CPU) makes one pass each way. In the small SIPA network on
two CPU cores batch norm was half of the training step's operator time; with the fused kernel
a float32 training step takes 0.74x the time (1.24 -> 0.91 ms per image), same results
(``benchmarks/training_speed.py``).

:class:`FusedBatchNormalization` is ``keras.layers.BatchNormalization`` with that kernel in
training on the TensorFlow backend (4-D channels-last inputs, no mask, no renorm, not
synchronized); everywhere else, and in inference, it *is* Keras' layer. It is the one layer of
tfgated that calls TensorFlow directly: ``keras.ops`` has no fused batch norm.
:func:`use_fused_batch_norm` swaps it into a built model (:meth:`tfgated.recipes.Recipe.prepare_model`
does); :func:`tfgated.ghost_norm.plain_batch_norm` swaps it back, so saved and exported models
hold Keras' built-in layer only.
"""

from __future__ import annotations

import keras
from keras import ops

from tfgated.ghost_norm import _clone_replacing

__all__ = ["FusedBatchNormalization", "fused_kernel_available", "use_fused_batch_norm"]


def fused_kernel_available():
    """Whether the fused kernel can be used (the TensorFlow backend)."""
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="tfgated")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed in training by TensorFlow's fused kernel.

    Same arguments, weights, outputs and moving-statistics updates as Keras' layer (the moving
    variance is updated with the biased batch variance, as Keras does; the kernel's unbiased one
    is scaled back). Falls back to Keras' computation wherever the fused kernel does not apply.
    """

    #: A batch norm that differs from Keras' only in training (:func:`tfgated.ghost_norm.plain_batch_norm`
    #: swaps it back).
    training_variant = True

    def _fused_applies(self, inputs, training, mask):
        return (
            bool(training) and self.trainable and mask is None and fused_kernel_available()
            and len(inputs.shape) == 4 and self.axis in (-1, 3) and not self.renorm and not self.synchronized
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the fused kernel has no keras.ops counterpart

        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = unbiased * (count - 1.0) / ops.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


def use_fused_batch_norm(model):
    """A clone of a functional/Sequential ``model`` whose top-level ``keras.layers.BatchNormalization``
    layers are :class:`FusedBatchNormalization` (same config and weights); ``model`` itself on
    backends without the fused kernel or when it has no such layer. Other layers keep their weights."""
    if not fused_kernel_available() or not any(
        type(layer) is keras.layers.BatchNormalization for layer in getattr(model, "layers", ())
    ):
        return model

    def fused(layer, config):
        return FusedBatchNormalization(**config) if type(layer) is keras.layers.BatchNormalization else None

    return _clone_replacing(model, fused)
