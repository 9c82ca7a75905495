"""Training exits: SIPA's soft smoothing loss, head-only training, Gumbel-exit classifiers.

* :class:`SoftSmoothingLoss`: ``(1 + max_softmax(y_hat)) * CE(y_hat, y)`` per sample. In the
  reference (``train_tools/criterion.py``, ``SoftLabelSmoothingLoss``) the confidence factor is
  **not** stop-gradient'ed: ``torch.max`` of the softmax keeps its gradient, so the factor is
  differentiated too. The default here does the same (``stop_gradient_confidence=False``).
* :func:`train_exit` freezes every weight but the head's and trains the head only. By default
  (``update_main_statistics=True``) it does what the reference does: the frozen main network
  runs in training mode, so its batch-norm layers update their moving statistics (their gamma
  and beta stay fixed) on the un-mixed training images -- the reference README's "batchnorm
  stabilization", which it found to raise the main network's accuracy after mixup training --
  and dropout/drop-connect are on, as under the reference's ``model.train()``. With
  ``update_main_statistics=False`` the frozen part runs in inference mode (moving statistics,
  no dropout, gates in their inference style) and the main network is not changed at all.
  The two-output model is then compiled with a loss on the exit output only.
* :func:`prune_exit` is SIPA's "further pruning" of the exit path: rounds of global
  layer-normalized magnitude pruning of the head's kernels only, each followed by
  :func:`train_exit` (re-stabilization) with the masks kept.
* :func:`fit_exit_classifiers` trains the exit classifiers of a Gumbel-exit network
  (:mod:`tfgated.exits.layers`) before its gates, as a probe or with deep supervision.
* :class:`ExitTrainer` is the transient model both use: frozen features in inference mode,
  then the trainable head(s).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tfgated.exits.heads import exit_structure, freeze_main
from tfgated.exits.layers import EarlyExitCombine, exit_classifier_outputs
from tfgated.inference import find_layers
from tfgated.quantization import quantize_model
from tfgated.smoothing import smooth_labels

__all__ = [
    "LOSSES",
    "ExitTrainer",
    "SoftSmoothingLoss",
    "exit_loss",
    "fit_exit_classifiers",
    "label_spec",
    "prune_exit",
    "train_exit",
]

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
    return smooth_labels(target, smoothing, "others")


def exit_loss(loss, label_spec=None, num_classes=None):
    """A Keras loss object for ``loss`` ("softsmoothing", "crossentropy" or a Loss).

    ``label_spec`` (see :func:`label_spec`) and ``num_classes`` choose between sparse and
    categorical cross-entropy for ``"crossentropy"``: dense ``(batch, num_classes)`` labels
    get the categorical one.
    """
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


# ----------------------------------------------------------------------------- training


class ExitTrainer(keras.Model):
    """Transient trainer: frozen ``features``, then the trainable ``head``.

    ``features`` maps the input to the exit point(s), ``head`` maps them to the exit
    output(s); both share layers with the network they were cut from, so ``fit`` on this
    model trains the head in place. Not meant to be saved. With ``main_statistics=False``
    the features run in inference mode; with True, ``features`` returns ``(exit points,
    main output)`` and runs in the trainer's mode, so that the whole main network's batch
    norm updates its moving statistics while training (the main output is discarded).
    """

    def __init__(self, features, head, main_statistics=False, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.head = head
        self.main_statistics = bool(main_statistics)

    def call(self, x, training=False):
        if self.main_statistics:
            points, _ = self.features(x, training=training)
            return self.head(points, training=training)
        return self.head(self.features(x, training=False), training=training)


def label_spec(dataset):
    """The ``tf.TensorSpec`` of the labels of a ``(x, labels)`` dataset, or None (not a dataset)."""
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
    update_main_statistics=True,
    bits=32,
):
    """Train only the exit head of ``model_with_exit`` (main network's weights frozen).

    Freezes the main layers (:func:`freeze_main`), trains the head on features computed by the
    frozen network, then compiles ``model_with_exit`` with the loss on the exit output only
    (``model_with_exit.evaluate`` then reports the exit's loss and accuracy).

    Args:
        model_with_exit: a model from :func:`attach_exit`.
        train_ds, val_ds: ``tf.data`` datasets (or anything ``fit`` takes) of ``(x, labels)``.
        epochs: training epochs.
        loss: "softsmoothing" (SIPA), "crossentropy" or a ``keras.losses.Loss``.
        optimizer: None for Adam (learning rate 1e-3, cosine decay to 0 over the run when the
            dataset length is known), or any optimizer ``compile`` accepts. (The reference used
            SGD 0.13 with momentum 0.9 and cosine decay over 800 epochs.)
        callbacks, steps_per_epoch, verbose: passed to ``fit``.
        update_main_statistics: True (the reference's behaviour): the main network runs in
            training mode and its batch norm updates its moving statistics, gamma and beta
            fixed; False: the main network runs in inference mode and is left unchanged.
        bits: 16 trains the head with weights and activations (the frozen features' too)
            fake-quantized to float16 (:func:`tfgated.quantization.quantize_model`); the head's
            float32 weights are left unrounded (round them with
            :func:`tfgated.quantization.round_weights`). 32: plain float32.

    Returns:
        The ``keras.callbacks.History`` of the head training.
    """
    if int(epochs) < 1:
        raise ValueError(f"Expected epochs >= 1. Received: epochs={epochs}")
    structure = freeze_main(model_with_exit)
    num_classes = structure.exit_output.shape[-1]
    loss_object = exit_loss(loss, label_spec(train_ds), num_classes)
    points = structure.exit_points[0] if len(structure.exit_points) == 1 else structure.exit_points
    features = quantize_model(keras.Model(
        structure.inputs, (points, structure.main_output) if update_main_statistics else points, name="exit_features"
    ), bits)
    head = quantize_model(keras.Model(points, structure.exit_output, name="exit_head"), bits)
    trainer = ExitTrainer(features, head, main_statistics=update_main_statistics, name="exit_trainer")
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
    restore = _statistics_only(structure) if update_main_statistics else (lambda: None)
    try:
        history = trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=int(epochs),
            callbacks=callbacks,
            steps_per_epoch=steps_per_epoch,
            verbose=verbose,
            shuffle=not hasattr(train_ds, "element_spec"),  # datasets are shuffled by their pipeline
        )
    finally:
        restore()
    model_with_exit.compile(optimizer=trainer.optimizer, loss=[None, loss_object], metrics=[None, ["accuracy"]])
    return history


def _statistics_only(structure):
    """Let the main network's batch-norm layers update their moving statistics while their
    gamma and beta stay frozen; returns the function that freezes them again."""
    head_ids = {id(layer) for layer in structure.head_layers}
    layers = [layer for layer in structure.main_layers
              if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in head_ids]
    for layer in layers:
        layer.trainable = True  # (Keras' setter makes the layer's variables trainable too)
        for v in layer.trainable_weights:
            v.trainable = False

    def restore():
        for layer in layers:
            layer.trainable = False

    return restore


def prune_exit(model_with_exit, schedule, train_ds, val_ds=None, epochs=1, **train_kwargs):
    """SIPA's "further pruning": prune the exit head's kernels, re-stabilizing after each round.

    The reference (``main.py: _early_exit_pruning``, README "Pruning Early Exiting") prunes the
    trained exit module to 50% in rounds (global magnitude ranking, each kernel normalized by its
    L2 norm, earlier zeros kept) and trains it again after each round, the frozen main network's
    batch norm updating its statistics. Here each round prunes the head's kernels to the next
    sparsity of ``schedule`` (:func:`tfgated.pruning.prune_once`, ``"global_normalized"``, main
    network excluded) and runs :func:`train_exit` for ``epochs`` with the masks kept; the masks
    are then baked in (:func:`tfgated.pruning.strip_pruning`).

    Args:
        model_with_exit: a model from :func:`attach_exit`, its head trained.
        schedule: increasing target sparsities in ``(0, 1)`` of the head's kernels.
        train_ds, val_ds, epochs: as for :func:`train_exit`.
        train_kwargs: other :func:`train_exit` arguments (``loss``, ``optimizer``,
            ``update_main_statistics``, ``verbose``, ...).

    Returns:
        One dict per round: ``sparsity`` (the head's kernels) and the last epoch's ``loss`` and
        ``accuracy`` of the exit.
    """
    from tfgated.pruning import prune_once, strip_pruning

    schedule = [float(s) for s in schedule]
    if not schedule or any(not 0 < s < 1 for s in schedule) or schedule != sorted(schedule):
        raise ValueError(f"Expected schedule to be increasing sparsities in (0, 1). Received: schedule={schedule!r}")
    head_ids = {id(layer) for layer in exit_structure(model_with_exit).head_layers}
    rows = []
    try:
        for sparsity in schedule:
            prune_once(model_with_exit, sparsity, ranking="global_normalized",
                       exclude=lambda path, layer: id(layer) not in head_ids)
            history = train_exit(model_with_exit, train_ds, val_ds, epochs=epochs, **train_kwargs)
            rows.append({"sparsity": sparsity, "loss": float(history.history["loss"][-1]),
                         "accuracy": float(history.history["accuracy"][-1])})
    finally:
        strip_pruning(model_with_exit)
    return rows


def fit_exit_classifiers(model, train_ds, val_ds=None, epochs=1, train_trunk=False, optimizer=None,
                         verbose="auto"):
    """Train the exit classifiers of a Gumbel-exit ``model`` on every example, gates aside.

    An exit gate learns to send the examples its classifier gets right; a classifier that has
    never been trained gets almost none right, so from a fresh head the straight-through
    gradient closes the exit for good within an epoch and the classifier, which only learns
    from the examples that leave there, never improves. Warm-starting a network's exits
    therefore starts with this step, then the whole model trains with its gates.

    * ``train_trunk=False``: each exit classifier (the layers between its feature map and its
      probabilities) trains with cross-entropy, the rest of the network frozen and in
      inference mode (as SIPA trains its exit head): a linear probe of the trunk's features.
    * ``train_trunk=True``: deep supervision (as in BranchyNet or MSDNet): the whole network
      trains on the sum of the cross-entropies of every exit classifier and the final
      classifier, so the early stages learn features the exits can use.

    Args:
        model: a model with :class:`ExitGate` layers feeding an :class:`EarlyExitCombine`.
        train_ds, val_ds: ``tf.data`` datasets of ``(images, class indices or one-hot labels)``.
        epochs: training epochs.
        train_trunk: see above.
        optimizer: None for Adam 1e-3, or any optimizer ``compile`` accepts.

    Returns:
        The ``keras.callbacks.History``; one loss and accuracy per classifier (exits first).
    """
    if int(epochs) < 1:
        raise ValueError(f"Expected epochs >= 1. Received: epochs={epochs}")
    exits = exit_classifier_outputs(model)
    outputs = [probabilities for _, _, probabilities in exits]
    if train_trunk:
        outputs.append(find_layers(model, EarlyExitCombine)[0].input[-1])
    num_classes = outputs[0].shape[-1]
    loss = exit_loss("crossentropy", label_spec(train_ds), num_classes)

    def repeat_labels(ds):
        if ds is None:
            return None
        return ds.map(lambda x, y: (x, tuple(y for _ in outputs)), num_parallel_calls=tf.data.AUTOTUNE)

    flags = {}
    try:
        if train_trunk:
            trainer = keras.Model(model.inputs, outputs, name="deep_supervision_trainer")
        else:
            points = [feature for _, feature, _ in exits]
            features = keras.Model(model.inputs, points, name="exit_features")
            heads = keras.Model(points, outputs, name="exit_classifiers")
            head_ids = {id(layer) for layer in heads.layers}
            for layer in features.layers:
                if id(layer) not in head_ids:
                    flags[id(layer)] = (layer, layer.trainable)
                    layer.trainable = False
            trainer = ExitTrainer(features, heads, name="exit_classifier_trainer")
        trainer.compile(
            optimizer=optimizer or keras.optimizers.Adam(1e-3),
            loss=[loss] * len(outputs),
            metrics=[["accuracy"] for _ in outputs],
        )
        return trainer.fit(repeat_labels(train_ds), validation_data=repeat_labels(val_ds), epochs=int(epochs),
                           verbose=verbose)
    finally:
        for layer, trainable in flags.values():
            layer.trainable = trainable
