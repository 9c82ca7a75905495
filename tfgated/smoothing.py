"""Label smoothing in its two forms, and a cross-entropy that uses either.

With ``C`` classes, smoothing ``s`` and a one-hot (or mixup-mixed) target ``y``:

* ``spread="others"`` (the SIPA paper and its reference code, ``LabelSmoothingLoss``):
  ``y * (1 - s) + (1 - y) * s / (C - 1)``: the true class keeps ``1 - s`` and the ``s``
  is shared by the *other* classes (SIPA's 0.3 on CIFAR-100: 0.7 and 0.3/99).
* ``spread="all"`` (Keras' ``label_smoothing``, Szegedy et al.): ``y * (1 - s) + s / C``:
  the ``s`` is shared by all classes, the true class included (0.703 and 0.003).

Both are linear in ``y``, so they also apply to mixup's mixed targets and every row
still sums to one.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["SPREADS", "SmoothedCrossentropy", "SparseLabelSmoothingCrossentropy", "smooth_labels"]

#: Where the smoothing mass goes: to the other classes (SIPA) or to all classes (Keras).
SPREADS = ("others", "all")


def check_smoothing(smoothing, spread="others"):
    """``(float(smoothing), spread)``, or ``ValueError`` naming the bad one.

    ``smoothing`` must be in ``[0, 1)``, ``spread`` one of :data:`SPREADS`.
    """
    if spread not in SPREADS:
        raise ValueError(f"Expected label_smoothing_spread to be one of {list(SPREADS)}. Received: {spread!r}")
    number = not isinstance(smoothing, bool) and isinstance(smoothing, (int, float))
    if not (number and 0.0 <= smoothing < 1.0):
        raise ValueError(f"Expected label_smoothing in [0, 1). Received: label_smoothing={smoothing!r}")
    return float(smoothing), spread


def smooth_labels(targets, smoothing, spread="others"):
    """Smoothed dense targets of shape ``(batch, C)`` (see the module docstring).

    Args:
        targets: one-hot or mixed targets, shape ``(batch, C)``.
        smoothing: ``s`` in ``[0, 1)``.
        spread: ``"others"`` (SIPA) or ``"all"`` (Keras).
    """
    smoothing, spread = check_smoothing(smoothing, spread)
    targets = ops.convert_to_tensor(targets)
    if not smoothing:
        return targets
    num_classes = targets.shape[-1]
    if spread == "all":
        return targets * (1.0 - smoothing) + smoothing / num_classes
    off = smoothing / max(num_classes - 1, 1)
    return targets * (1.0 - smoothing) + (1.0 - targets) * off


@keras.saving.register_keras_serializable(package="tfgated")
class SmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy against :func:`smooth_labels` targets.

    Args:
        label_smoothing: ``s`` in ``[0, 1)``.
        spread: ``"others"`` (SIPA's definition, the default) or ``"all"`` (the same
            targets as ``keras.losses.CategoricalCrossentropy(label_smoothing=s)``).
        from_logits: ``y_pred`` are logits instead of probabilities.
        reduction, name, dtype: as for :class:`keras.losses.Loss`.
    """

    def __init__(self, label_smoothing=0.0, spread="others", from_logits=False, **kwargs):
        kwargs.setdefault("name", "smoothed_crossentropy")
        super().__init__(**kwargs)
        self.label_smoothing, self.spread = check_smoothing(label_smoothing, spread)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        targets = smooth_labels(ops.cast(y_true, y_pred.dtype), self.label_smoothing, self.spread)
        return keras.losses.categorical_crossentropy(targets, y_pred, from_logits=self.from_logits)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "spread": self.spread,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="tfgated")
class SparseLabelSmoothingCrossentropy(SmoothedCrossentropy):
    """:class:`SmoothedCrossentropy` on the integer labels a plain ``model.fit(x, y)`` gets.

    ``keras.losses.SparseCategoricalCrossentropy`` has no label smoothing; this loss one-hot
    encodes the labels (shape ``(batch,)`` or ``(batch, 1)``) and smooths them as ``spread``
    says, so a model compiled for integer labels keeps a recipe's smoothing. With
    ``spread="all"`` it equals ``keras.losses.CategoricalCrossentropy(label_smoothing=s)`` on
    the one-hot labels.
    """

    def __init__(self, label_smoothing=0.0, spread="others", from_logits=False, **kwargs):
        kwargs.setdefault("name", "sparse_label_smoothing_crossentropy")
        super().__init__(label_smoothing, spread, from_logits=from_logits, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (batch, 1) labels
            labels = ops.squeeze(labels, axis=-1)
        return super().call(ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype), y_pred)
