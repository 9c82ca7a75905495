"""Pretrained weights copied into the zoo's ResNets by layer name.

:func:`load_keras_applications_weights` fills a :func:`tfgated.zoo.resnet.imagenet_resnet`
model (gated or dense) from a ``keras.applications`` ResNet or its legacy ``.h5`` file:
every Keras layer has the same name in both, the gates keep their own values.
"""

from __future__ import annotations

import os

import keras


def load_keras_applications_weights(model, source, skip=()):
    """Copy keras.applications ResNet weights into ``model`` by layer name.

    Args:
        model: a model from :func:`imagenet_resnet` (gated or dense).
        source: a ``keras.applications`` ResNet model (e.g.
            ``keras.applications.ResNet50(weights="imagenet")``) or the path of a legacy
            keras-applications ``.h5`` weights file (e.g.
            ``resnet50_weights_tf_dim_ordering_tf_kernels.h5``), read by layer name.
        skip: layer names not to copy (e.g. ``("predictions",)`` for another number of
            classes).

    Returns:
        The sorted names of the copied layers. Layers of ``model`` missing from the source
        (the gates) keep their values.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: a source layer is missing from ``model`` or its weights differ in shape
            (checked before anything is assigned, so ``model`` is then unchanged).
    """
    skip = set(skip)
    if isinstance(source, (str, os.PathLike)):
        return _load_h5_by_name(model, os.fspath(source), skip)
    if not isinstance(source, keras.Model):
        raise ValueError(
            f"Expected source to be a keras.Model or a weights file path. Received: source={source!r}"
        )
    pairs = {
        layer.name: layer.get_weights() for layer in source.layers if layer.weights and layer.name not in skip
    }
    return _assign_all(model, pairs)


def _assign_all(model, pairs):
    """Check every ``{layer name: weights}`` pair against ``model``, then assign them all."""
    targets = {}
    for layer_name, weights in pairs.items():
        try:
            target = model.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f"Layer {layer_name!r} of the source has no counterpart in model {model.name!r}."
            ) from None
        shapes = [tuple(w.shape) for w in weights]
        expected = [tuple(w.shape) for w in target.weights]
        if shapes != expected:
            raise ValueError(
                f"Expected weights of shapes {expected} for layer {layer_name!r}. Received: shapes {shapes}"
            )
        targets[layer_name] = target
    # Nothing is assigned unless every layer matched: a failed load leaves the model as it was.
    for layer_name, target in targets.items():
        target.set_weights(pairs[layer_name])
    return sorted(targets)


def _load_h5_by_name(model, path, skip):
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"No weights file at {path!r}.")
    pairs = {}
    with h5py.File(path, "r") as f:
        if "layer_names" not in f.attrs and "model_weights" in f:
            f = f["model_weights"]
        if "layer_names" not in f.attrs:
            raise ValueError(f"Expected a legacy Keras .h5 weights file with 'layer_names'. Received: {path!r}")
        for raw in f.attrs["layer_names"]:
            layer_name = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
            group = f[layer_name]
            weight_names = [
                n.decode("utf8") if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])
            ]
            if not weight_names or layer_name in skip:
                continue
            pairs[layer_name] = [group[n][()] for n in weight_names]
    return _assign_all(model, pairs)
