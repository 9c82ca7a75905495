"""Exports of shipped presets BY NAME, the way a user runs them, checked on real test images fed as
raw uint8 pixels (the input contract of every zoo model)."""

import json
import os

import numpy as np
import pytest

from tfgated.cli.export import main as export_main
from tfgated.data import load_fashion_mnist_arrays
from tfgated.export import run_file
from tfgated.zoo import registry

PRESET = "gumbel_resnet_fashion_mnist"
EXAMPLES = 1000
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    reason="apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def raw_test():
    _, (images, labels) = load_fashion_mnist_arrays()
    return images[:EXAMPLES], labels[:EXAMPLES].astype("int64")  # uint8 (N, 28, 28, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("preset") / "g.tflite")
    assert export_main(["--tflite", PRESET, "-o", path]) == 0
    with open(path + ".json", encoding="utf-8") as f:
        return path, json.load(f)


def card_top1(name):
    return registry.weights_index()[name]["check"]["top1"]


@needs_fmnist
@pytest.mark.slow
def test_a_preset_exported_by_name_scores_its_card_on_real_raw_images(exported, raw_test):
    path, sidecar = exported
    images, labels = raw_test
    top1 = float(np.mean(np.argmax(run_file(path, images.astype("float32")), -1) == labels))
    assert top1 == pytest.approx(card_top1(PRESET), abs=0.005)
    assert sidecar["test_top1"]["file"] == pytest.approx(top1, abs=1e-9)
    assert sidecar["test_top1"]["card"] == card_top1(PRESET) and sidecar["test_top1"]["examples"] == EXAMPLES
    # what a deployer needs
    assert sidecar["preset"] == PRESET
    assert sidecar["weights"]["sha256"] == registry.weights_index()[PRESET]["sha256"]
    contract = sidecar["input_contract"]
    assert contract["range"] == [0, 255] and contract["layout"] == "NHWC" and contract["shape"] == [28, 28, 1]
    assert contract["mean"][0] == pytest.approx(0.28604, abs=1e-5) and contract["std"][0] == pytest.approx(0.35302, abs=1e-5)
    assert sidecar["class_names"][0] == "T-shirt/top" and len(sidecar["class_names"]) == 10
    assert sidecar["input_range"] == [0, 255]
    assert sidecar["inference_style"] == "threshold"
    assert sidecar["parity"]["passed"] and sidecar["parity"]["examples"] == EXAMPLES  # real images, not random


@needs_fmnist
@pytest.mark.slow
def test_raw_uint8_images_go_straight_into_the_keras_model_and_the_file(exported, raw_test):
    from tfgated import zoo

    path, _ = exported
    images, labels = raw_test
    model = zoo.load(PRESET)  # the shipped weights by default
    keras_pred = np.argmax(model.predict(images, batch_size=250, verbose=0), -1)  # uint8 as it comes
    file_pred = np.argmax(run_file(path, images.astype("float32")), -1)
    assert float(np.mean(keras_pred == labels)) == pytest.approx(card_top1(PRESET), abs=0.005)
    assert float(np.mean(keras_pred == file_pred)) >= 0.998


def test_exporting_a_preset_without_weights_is_refused(tmp_path, capsys):
    path = tmp_path / "random.tflite"
    assert export_main(["--tflite", "gumbel_densenet_cifar10_exit", "-o", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "python -m tfgated train --model gumbel_densenet_cifar10_exit" in err and "--weights none" in err
    assert not path.exists()


@needs_fmnist
@pytest.mark.slow
def test_the_learned_pruning_preset_exported_by_name_computes_the_macs_its_card_promises(raw_test, tmp_path):
    """``sipa_fashion_mnist_gated``: the MACs its card counts under threshold inference are the MACs
    the exported file computes (the closed channels are gone, not masked), at the card's top-1."""
    name = "sipa_fashion_mnist_gated"
    path = str(tmp_path / "sipa_gated.tflite")
    assert export_main(["--tflite", name, "-o", path]) == 0
    with open(path + ".json", encoding="utf-8") as f:
        sidecar = json.load(f)
    promised = registry.weights_index()[name]["measured"]["macs"]
    assert sidecar["macs_after_folding"] == pytest.approx(promised, rel=0.01)
    assert sidecar["macs_after_folding"] < 0.6 * sidecar["macs_before_folding"]
    images, labels = raw_test
    top1 = float(np.mean(np.argmax(run_file(path, images.astype("float32")), -1) == labels))
    assert top1 == pytest.approx(card_top1(name), abs=0.005)
