"""The input contract of the zoo's models: raw pixels in, preprocessing inside the graph.

Every family builder takes ``preprocessing`` (a preset's ``input`` entry or ``None``) and starts
its graph with :func:`pixel_preprocessing`: ``Rescaling(1/255)`` (``pixels_scale``) and
``(x - mean) / std`` with the dataset's constants (``pixels_normalize``, a ``Rescaling`` with
scale ``1/std`` and offset ``-mean/std``), like a ``keras.applications`` model with its
preprocessing built in. Both layers are weightless, so weights saved before they existed still
load, and neither counts a multiply-accumulate.

The per-dataset constants (:data:`DATASET_INPUTS`) are the per-channel statistics of the FULL
training split scaled to ``[0, 1]``: Fashion-MNIST's computed exactly from its 60,000 training
images (``tfgated.data.load_dataset(...).info.statistics``, checked by the tests), CIFAR's and
ImageNet's the published ones that ``tfgated.data`` normalizes with.
"""

from __future__ import annotations

import keras

from tfgated.data import FASHION_MNIST_CLASS_NAMES

CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: ``{dataset: {"mean", "std", "class_names"}}``; ``class_names`` is ``None`` where the list is long
#: (CIFAR-100, ImageNet): then it is TFDS' ``info.features["label"].names`` of that dataset.
DATASET_INPUTS = {
    "fashion_mnist": {
        "mean": [0.2860405969887955], "std": [0.3530242445149226], "class_names": list(FASHION_MNIST_CLASS_NAMES),
    },
    "cifar10": {
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616], "class_names": list(CIFAR10_CLASS_NAMES),
    },
    "cifar100": {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762], "class_names": None},
    "imagenet2012": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "class_names": None},
}


def input_contract(dataset, input_shape):
    """The ``input`` entry of a preset on ``dataset`` at ``input_shape`` (``None`` without a known
    dataset): what the model takes (uint8-range pixels, NHWC) and the constants it applies."""
    if dataset not in DATASET_INPUTS:
        return None
    constants = DATASET_INPUTS[dataset]
    return {
        "dtype": "uint8",
        "range": [0, 255],
        "layout": "NHWC",
        "shape": [int(v) for v in input_shape],
        "scale": 1 / 255,
        "mean": list(constants["mean"]),
        "std": list(constants["std"]),
        "class_names": None if constants["class_names"] is None else list(constants["class_names"]),
        "formula": "(x / 255 - mean) / std, inside the model",
    }


def pixel_preprocessing(inputs, preprocessing):
    """``inputs`` scaled and normalized per ``preprocessing`` (an :func:`input_contract` dict)
    with the weightless ``Rescaling`` layers ``pixels_scale`` (``x / 255``) and
    ``pixels_normalize`` (``(x - mean) / std``); ``inputs`` itself when ``preprocessing`` is
    ``None``."""
    if preprocessing is None:
        return inputs
    if not isinstance(preprocessing, dict) or not {"mean", "std"} <= set(preprocessing):
        raise ValueError(
            "Expected preprocessing to be None or a dict with 'mean' and 'std' (a preset's "
            f"'input' entry). Received: preprocessing={preprocessing!r}"
        )
    mean, std = list(preprocessing["mean"]), list(preprocessing["std"])
    channels = inputs.shape[-1]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(
            f"Expected one mean and std per channel ({channels}) or a single pair. "
            f"Received: mean={mean}, std={std}"
        )
    x = keras.layers.Rescaling(preprocessing.get("scale", 1 / 255), name="pixels_scale")(inputs)
    # (x - mean) / std as x * (1 / std) + (-mean / std): a Rescaling's constants are traced into the
    # graph, where Normalization's captured tensors would become extra inputs of an ONNX file
    scale = [1.0 / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    if len(mean) == 1:  # one constant for every channel
        scale, offset = scale[0], offset[0]
    return keras.layers.Rescaling(scale, offset=offset, name="pixels_normalize")(x)


def model_pixels(model):
    """``"raw"`` when ``model`` normalizes inside its graph (it has the ``pixels_normalize``
    layer of :func:`pixel_preprocessing`), else ``"normalized"``: the ``pixels`` argument of
    :func:`tfgated.data.load_dataset` that feeds ``model`` what it was built for."""
    names = {layer.name for layer in model.layers}
    return "raw" if "pixels_normalize" in names else "normalized"
