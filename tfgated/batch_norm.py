"""Re-estimating batch-norm statistics after training, with the gates in an inference style.

:func:`recalibrate_batch_norm` (also ``tfgated.recalibrate_batch_norm`` and
``tfgated.train.recalibrate_batch_norm``) resets every batch-norm moving mean and
variance and recomputes them as the exact average over some training batches, the
gates following an inference style. It matters after short training; the ``fit``
callback :class:`tfgated.callbacks.RecalibrateBatchNorm` and ``python -m tfgated
evaluate --bn-recalibrate`` use it.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["recalibrate_batch_norm"]


@contextlib.contextmanager
def _gates_in_inference_mode(model):
    """Within the block, gates (and dropout-like layers) run their inference branch.

    Their ``call`` is wrapped on the instance to force ``training=False``,
    so a ``model(x, training=True)`` call trains only batch norm's
    statistics. Eager calls only (the wrapper is removed on exit).
    """
    import keras

    from tfgated.inference import gate_layers

    layers = list(gate_layers(model))
    layers += [
        layer for layer in model._flatten_layers()  # noqa: SLF001
        if isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout))
    ]
    patched = []
    try:
        for layer in layers:
            original = layer.call

            def call(*args, _original=original, **kwargs):
                kwargs["training"] = False
                return _original(*args, **kwargs)

            layer.call = call
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.call


def recalibrate_batch_norm(model, dataset, style=None, batches=20, samples=None, batch_size=128):
    """Re-estimate every batch-norm moving mean/variance under an inference style.

    When it matters: after short training. The moving statistics follow the
    weights with momentum 0.99, so after a few hundred steps or fewer they lag
    the weights, and a gated model can score well during training (batch
    statistics) but far lower at test time (moving statistics, gates
    thresholded). ``benchmarks/bn_recalibration.py`` measures it.

    The moving statistics are reset, then ``batches`` batches of ``dataset``
    run forward with batch norm in training mode (it normalizes with, and
    accumulates, batch statistics) while the gates follow ``style``
    (``threshold``: deterministic; ``stochastic``/``ensemble``: sampled). The
    momentum is set to ``1 - 1/k`` at batch ``k``, so the result is the exact
    average of the batches' statistics. Batch norm inside gate networks is
    left alone (the gate decisions stay those of the trained model). Nothing
    else is trained. Also available as ``tfgated.recalibrate_batch_norm``, as the
    ``fit`` callback :class:`tfgated.callbacks.RecalibrateBatchNorm` and as
    ``python -m tfgated evaluate --bn-recalibrate``.

    Args:
        model: a built Keras model with batch-norm layers.
        dataset: training images: a ``tf.data`` dataset of ``(x, y)`` or ``x``
            batches, or an array of images (batched by ``batch_size``).
        style: inference style of the gates; ``None``: the model's current one.
        batches: batches of ``dataset`` used.
        samples: samples of the ``ensemble`` style.
        batch_size: batch size for array ``dataset``.

    Returns:
        The number of batches used.
    """
    import keras

    if not hasattr(dataset, "element_spec"):  # not tf.data: an array of images (or (x, y))
        import tensorflow as tf

        images = dataset[0] if isinstance(dataset, (tuple, list)) else dataset
        dataset = tf.data.Dataset.from_tensor_slices(np.asarray(images)).batch(int(batch_size))

    from tfgated.inference import gate_layers, set_inference_style

    if style is not None:
        set_inference_style(model, style, samples=samples)
    inside_gates = set()
    for gate in gate_layers(model):
        for layer in gate._flatten_layers():  # noqa: SLF001
            inside_gates.add(id(layer))
    bns = [
        layer for layer in model._flatten_layers()  # noqa: SLF001
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in inside_gates
    ]
    if not bns:
        raise ValueError(f"Model {model.name!r} has no batch-norm layers to recalibrate.")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    used = 0
    try:
        with _gates_in_inference_mode(model):
            for element in dataset.take(batches):
                x = element[0] if isinstance(element, (tuple, list)) else element
                used += 1
                for bn in bns:
                    bn.momentum = 1.0 - 1.0 / used
                model(x, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    if used == 0:
        raise ValueError("The recalibration dataset is empty.")
    return used
