"""The zoo's input contract: raw pixels in, preprocessing inside the graph, shipped weights by default."""

import os
import warnings

import numpy as np
import pytest

from tfgated import zoo
from tfgated.zoo import registry
from tfgated.zoo.inputs import DATASET_INPUTS, model_pixels

PRESET = "resnet_fashion_mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    reason="apt-get install dataset-fashion-mnist",
)


@needs_fmnist
def test_fashion_mnist_constants_are_the_full_training_split_statistics():
    from tfgated.data import load_dataset

    info = load_dataset("fashion_mnist", limit=100, batch_size=10).info  # a limit does not change them
    mean, std = info.statistics
    assert DATASET_INPUTS["fashion_mnist"]["mean"] == pytest.approx(list(mean), abs=1e-12)
    assert DATASET_INPUTS["fashion_mnist"]["std"] == pytest.approx(list(std), abs=1e-12)


def test_every_preset_with_a_dataset_records_its_input_contract():
    for name in zoo.list_models():
        preset = zoo.get_preset(name)
        contract = preset["input"]
        if preset.get("dataset") is None:
            continue
        assert contract["dtype"] == "uint8" and contract["range"] == [0, 255] and contract["layout"] == "NHWC"
        assert contract["shape"] == list(preset["input_shape"])
        assert len(contract["mean"]) in (1, preset["input_shape"][-1])
    assert zoo.get_preset(PRESET)["input"]["class_names"][9] == "Ankle boot"


@pytest.mark.slow
def test_the_preprocessing_layers_are_weightless_and_the_model_takes_raw_pixels():
    model = zoo.load(PRESET, weights=None, compile=False)
    plain = registry.build(PRESET, preprocessing=None)
    assert [layer.name for layer in model.layers[1:3]] == ["pixels_scale", "pixels_normalize"]
    assert len(model.weights) == len(plain.weights)
    assert model_pixels(model) == "raw" and model_pixels(plain) == "normalized"
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype("uint8")
    mean, std = DATASET_INPUTS["fashion_mnist"]["mean"][0], DATASET_INPUTS["fashion_mnist"]["std"][0]
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, verbose=0), plain.predict((x / 255.0 - mean) / std, verbose=0), atol=1e-5
    )
    from tfgated.micronet import micronet_score

    # input preprocessing folds into the first layer: MicroNet counts do not change
    assert micronet_score(model, bits=16).ops == micronet_score(plain, bits=16).ops


@pytest.mark.slow
def test_load_gives_the_shipped_weights_by_default_and_fresh_ones_on_request():
    shipped = zoo.load(PRESET, compile=False)
    explicit = zoo.load(PRESET, weights="default", compile=False)
    fresh = zoo.load(PRESET, weights=None, compile=False)
    kernel = "conv1_conv"
    np.testing.assert_array_equal(shipped.get_layer(kernel).kernel, explicit.get_layer(kernel).kernel)
    assert not np.allclose(shipped.get_layer(kernel).kernel, fresh.get_layer(kernel).kernel)
    with pytest.warns(UserWarning, match="fresh .random. weights"):
        zoo.load(PRESET, compile=False, num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.load("gumbel_densenet_cifar10_exit", compile=False)  # ships nothing: fresh, no warning
