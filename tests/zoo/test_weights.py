"""Shipped zoo weights: verified, loadable, and as accurate on the real test set as their cards say."""

import json
import os

import pytest

from tfgated import zoo
from tfgated.zoo import registry
from tfgated.zoo.ship_weights import CHECK_EXAMPLES, evaluate_preset, matches

SHIPPED = sorted(registry.weights_index())


def test_index_entries_name_files_that_match_their_sha256():
    for name, entry in registry.weights_index().items():
        assert name in zoo.list_models(), f"{name} in zoo/weights/index.json is not a preset"
        path = os.path.join(registry.WEIGHTS_DIR, entry["file"])
        assert os.path.isfile(path), f"{path} is missing"
        assert registry.sha256_file(path) == entry["sha256"]
        assert registry.weights_status(name) == "available"
        assert entry["trained_by"].startswith("python ")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reach_the_accuracy_in_the_card(name):
    entry = registry.get_preset(name)["weights"]
    expected, check = entry["measured"], entry["check"]
    assert expected["examples"] == 10000 and check["examples"] == CHECK_EXAMPLES
    # zoo.load(name, weights="default") on the first CHECK_EXAMPLES test images; the full split
    # is `python -m tfgated.zoo.ship_weights NAME --verify` (minutes a preset on two CPU cores)
    measured = evaluate_preset(name, limit=CHECK_EXAMPLES)
    # the same weights on the same images: equal up to float reordering (two images at most)
    assert matches(measured, check) == []
    assert set(measured) == set(check)
    if expected.get("micronet_score_16bit") is not None:  # a 16-bit (SIPA-workflow) preset
        # the score and sparsity do not depend on the images: the card's full-split numbers
        assert matches({k: measured[k] for k in ("sparsity", "micronet_score_16bit")}, expected) == []
        # rounding the weights to float16 costs almost nothing
        assert measured["top1_float16_weights"] == pytest.approx(measured["top1"], abs=3e-3)
        assert expected["top1_float16_weights"] == pytest.approx(expected["top1"], abs=2e-3)
    card = open(os.path.join(registry.CARDS_DIR, f"{name}.md"), encoding="utf-8").read()
    assert f"| top-1 | {expected['top1']:.4f} |" in card
    assert "| weights | available |" in card
    # and far better than chance: these are trained weights
    assert measured["top1"] > 0.85


def test_verify_compares_numbers_with_tolerances():
    recorded = {"top1": 0.9, "examples": 10000, "gate_activation": 0.5, "micronet_score_16bit": 0.0058}
    assert matches({"top1": 0.9003, "examples": 10000, "gate_activation": 0.504}, recorded) == []
    assert matches({"top1": 0.901, "gate_activation": 0.5}, recorded) == ["top1: measured 0.901, recorded 0.9"]
    assert matches({"micronet_score_16bit": 0.0059}, recorded)
    assert matches({"examples": 1000}, recorded)
    # on 1,000 images two images are 0.002: that much float reordering may flip, three may not
    check = {"top1": 0.9, "examples": 1000}
    assert matches({"top1": 0.902}, check) == [] and matches({"top1": 0.897}, check)


def test_a_tampered_weights_file_is_refused(tmp_path, monkeypatch):
    if not SHIPPED:
        pytest.skip("no shipped weights")
    name = SHIPPED[0]
    entry = registry.get_preset(name)["weights"]
    src = os.path.join(registry.WEIGHTS_DIR, entry["file"])
    copy = tmp_path / entry["file"]
    data = bytearray(open(src, "rb").read())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="corrupt or outdated"):
        zoo.load(name, weights="default")


def test_ship_refuses_a_model_of_another_architecture(tmp_path):
    from tfgated.zoo.ship_weights import main

    other = zoo.load("sipa_fashion_mnist", compile=False)
    path = tmp_path / "other.keras"
    other.save(path)
    index_before = json.dumps(registry.weights_index(), sort_keys=True)
    assert main(["resnet_fashion_mnist", str(path), "--trained-by", "python x"]) == 2
    assert json.dumps(registry.weights_index(), sort_keys=True) == index_before
    assert not os.path.exists(os.path.join(registry.WEIGHTS_DIR, ".resnet_fashion_mnist.weights.h5.tmp.weights.h5"))
