"""Early-exit export: the exit decision as control flow (TFLite) or a mask (ONNX), checked in the runtimes."""

import json
import os

import keras
import numpy as np
import pytest

from tfgated import exits as ee
from tfgated.export import export_early_exit, measure_inputs, run_file, tflite_operators
from tfgated.export.parity import ParityError


def exit_model():
    """12x12 grey input, three blocks, a skip connection across the split, exit after block 0."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    stem = x
    for k in range(3):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"block{k}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{k}_bn")(y)
        x = keras.layers.Add(name=f"block{k}_add")([x, y])
    x = keras.layers.Add(name="long_skip")([x, stem])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    with_exit = ee.attach_exit(model, 0, channels=8)
    # An untrained head answers 1/4 everywhere; sharpen it so confidence varies by example.
    head = with_exit.get_layer("exit_predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 40.0, bias])
    return with_exit


@pytest.fixture(scope="module")
def model_and_data(fashion_mnist_small):
    x = fashion_mnist_small[0][:64, 8:20, 8:20, :].copy()
    model = exit_model()
    confidence = model.predict(x, verbose=0)[1].max(axis=1)
    threshold = float(np.median(confidence))
    return model, x, threshold


def test_tflite_conditional_matches_split_inference_and_skips_the_rest(model_and_data, tmp_path):
    model, x, threshold = model_and_data
    path = tmp_path / "exit.tflite"
    result = export_early_exit(model, path, threshold, parity_data=x)
    info = result.sidecar["early_exit"]
    assert info["form"] == "conditional" and result.parity["passed"]
    assert result.parity["max_abs_diff"] <= 1e-4 and result.parity["examples_at_threshold"] == 0
    assert 0.3 <= info["parity_exit_ratio"] <= 0.7  # both paths are exercised
    # the file gives, per example, the exit's answer or the main network's: what the split gives
    reference = ee.EarlyExitModel(model, threshold).predict(x)
    main_probs, exit_probs = model.predict(x, verbose=0)
    out = run_file(path, x)
    np.testing.assert_allclose(out[reference.exited], exit_probs[reference.exited], atol=1e-5)
    np.testing.assert_allclose(out[~reference.exited], main_probs[~reference.exited], atol=1e-5)
    # the rest of the network lives in an IF branch: it runs only when the exit is not confident
    ops = tflite_operators(path)
    assert ops[0]["IF"] == 1 and len(ops) == 3
    assert ops[0]["CONV_2D"] == 1 + 1 + 1  # stem, block 0, the head's 1x1 conv
    assert sorted(g["CONV_2D"] for g in ops[1:]) == [0, 2]  # blocks 1 and 2, in the "continue" branch
    sidecar = json.loads(open(result.sidecar_path).read())
    assert sidecar["early_exit"]["threshold"] == pytest.approx(threshold)
    assert info["macs_exit_path"] < info["macs_full_path"]
    # batch-1 latency over real inputs runs the same file and returns its outputs
    timing = measure_inputs(path, x[:8], warmup=2)
    assert timing["examples"] == 8 and timing["mean_ms"] > 0
    np.testing.assert_allclose(timing["outputs"], out[:8], atol=1e-6)


def test_onnx_and_larger_batches_use_the_masked_form(model_and_data, tmp_path):
    model, x, threshold = model_and_data
    reference = ee.EarlyExitModel(model, threshold).predict(x).probabilities
    onnx = export_early_exit(model, tmp_path / "exit.onnx", threshold, parity_data=x)
    assert onnx.sidecar["early_exit"]["form"] == "masked" and onnx.parity["passed"]
    np.testing.assert_allclose(run_file(onnx.path, x), reference, atol=1e-4)
    batched = export_early_exit(model, tmp_path / "exit4.tflite", threshold, batch_size=4, parity_data=x)
    assert batched.sidecar["early_exit"]["form"] == "masked" and batched.sidecar["input_shape"] == [4, 12, 12, 1]
    assert "IF" not in tflite_operators(batched.path)[0]
    np.testing.assert_allclose(run_file(batched.path, x), reference, atol=1e-4)
    fp16 = export_early_exit(model, tmp_path / "exit16.tflite", threshold, quantization="float16", parity_data=x)
    assert fp16.parity["passed"] and fp16.parity["top1_agreement"] >= 0.995


def test_bad_requests_are_clear_and_leave_no_file(model_and_data, tmp_path, monkeypatch):
    model, x, threshold = model_and_data
    with pytest.raises(ValueError, match="form='masked'"):
        export_early_exit(model, tmp_path / "a.onnx", threshold, form="conditional")
    with pytest.raises(ValueError, match="batch_size=1"):
        export_early_exit(model, tmp_path / "a.tflite", threshold, form="conditional", batch_size=2)
    with pytest.raises(ValueError, match="threshold"):
        export_early_exit(model, tmp_path / "a.tflite", 1.5)
    with pytest.raises(ValueError, match="two outputs"):
        export_early_exit(keras.Model(model.inputs, model.outputs[0]), tmp_path / "a.tflite", threshold)
    with pytest.raises(ValueError, match="float16"):
        export_early_exit(model, tmp_path / "a.tflite", threshold, quantization="int8")
    # a file that does not match is an error, and nothing is left behind
    from tfgated.export import parity

    monkeypatch.setattr(parity, "_runtime_outputs", lambda path, x, threads: run_file(path, x)[:, ::-1])
    with pytest.raises(ParityError, match="early-exit"):
        export_early_exit(model, tmp_path / "bad.tflite", threshold, parity_data=x)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_exports_a_saved_exit_model(model_and_data, tmp_path, capsys):
    from tfgated.cli.export import main

    model, _, threshold = model_and_data
    path = tmp_path / "exit.keras"
    model.save(path)
    assert main(["--tflite", str(path), "--exit-threshold", str(threshold), "-o", str(tmp_path / "e.tflite")]) == 0
    out = capsys.readouterr().out
    assert "early exit (conditional)" in out and "PASSED" in out
    assert json.loads((tmp_path / "e.tflite.json").read_text())["early_exit"]["form"] == "conditional"
    assert main(["--tflite", str(path), "-o", str(tmp_path / "f.tflite")]) == 2
    assert "--exit-threshold" in capsys.readouterr().err
    assert not (tmp_path / "f.tflite").exists()


def test_an_example_on_the_threshold_may_take_either_path(model_and_data, tmp_path):
    model, x, _ = model_and_data
    confidence = model.predict(x, verbose=0)[1].max(axis=1)
    threshold = float(confidence[3])  # example 3 sits exactly on the threshold
    result = export_early_exit(model, tmp_path / "t.tflite", threshold, parity_data=x)
    assert result.parity["passed"] and result.parity["examples_at_threshold"] >= 1


@pytest.mark.slow
def test_a_gated_zoo_exit_model_exports_with_its_gates(tmp_path):
    """The SIPA gated preset with an exit head: unfolded channel gates in threshold style, exit as IF."""
    import tfgated
    from tfgated import zoo

    blocks = ["r1_k3_s1_e1_i24_o16_se0.2", "r1_k3_s2_e6_i16_o24_se0.2", "r1_k3_s1_e6_i24_o24_se0.2"]
    model = zoo.load("sipa_fashion_mnist_gated", blocks=blocks, exit_after=1, width=1.0, resolution=1.0, compile=False)
    assert len(model.outputs) == 2
    tfgated.set_inference_style(model, "threshold")
    x = np.random.default_rng(0).random((32, 28, 28, 1)).astype("float32")
    head = [l for l in model.layers if l.name.startswith("exit") and isinstance(l, keras.layers.Dense)][-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 200.0, bias])
    threshold = float(np.median(model.predict(x, verbose=0)[1].max(axis=1)))
    result = export_early_exit(model, tmp_path / "g.tflite", threshold, parity_data=x)
    assert result.parity["passed"] and 0.2 <= result.sidecar["early_exit"]["parity_exit_ratio"] <= 0.8
    assert tflite_operators(result.path)[0]["IF"] == 1


def _densenet_with_mixed_exits(x):
    """The small Gumbel-exit DenseNet with exit heads that send examples to every exit."""
    import tfgated
    from tfgated.exits import exit_gate_layers, exit_shares
    from tfgated.zoo.densenet import PRESETS, build

    small = PRESETS["gumbel_densenet_fashion_mnist_exit"]
    model = build(num_classes=10, input_shape=(28, 28, 1), gates=small["gates"], **small["arch"])
    tfgated.set_inference_style(model, "threshold")
    rng = np.random.default_rng(1)
    for gate in exit_gate_layers(model):
        kernel, bias = gate.head.get_weights()
        gate.head.set_weights([rng.normal(0.0, 1.0, kernel.shape).astype("float32"), bias * 0])
    # centre each exit's logit on the data so about half of the examples leave at each exit
    contexts = keras.Model(model.inputs, [g.input for g in exit_gate_layers(model)]).predict(x, verbose=0)
    for gate, context in zip(exit_gate_layers(model), contexts):
        kernel, bias = gate.head.get_weights()
        logits = keras.ops.convert_to_numpy(gate.compute_logits(context))
        gate.head.set_weights([kernel, bias - np.median(logits)])
    return model, exit_shares(model, x)


@pytest.mark.slow
def test_gumbel_exit_gates_export_as_nested_conditionals(tmp_path, fashion_mnist_small):
    from tfgated.export import export_exit_gates

    x = fashion_mnist_small[0][:48]
    model, shares = _densenet_with_mixed_exits(x)
    assert np.all(shares > 0.05), shares  # every exit and the final classifier answer some examples
    result = export_exit_gates(model, tmp_path / "dn.tflite", parity_data=x)
    assert result.sidecar["exit_gates"]["form"] == "conditional" and result.parity["passed"]
    np.testing.assert_allclose(result.sidecar["exit_gates"]["parity_exit_shares"], shares)
    np.testing.assert_allclose(run_file(result.path, x), model.predict(x, verbose=0), atol=1e-4)
    ops = tflite_operators(result.path)
    # exit 1's IF in the entry graph; exit 2's IF inside exit 1's "continue" branch
    assert ops[0]["IF"] == 1 and sum(g["IF"] for g in ops) == 2
    onnx = export_exit_gates(model, tmp_path / "dn.onnx", parity_data=x)
    assert onnx.sidecar["exit_gates"]["form"] == "masked" and onnx.parity["passed"]
    tfgated_style = __import__("tfgated").set_inference_style
    tfgated_style(model, "stochastic")
    with pytest.raises(ValueError, match="threshold or always_on"):
        export_exit_gates(model, tmp_path / "s.tflite", parity_data=x)


@pytest.mark.slow
def test_cli_exports_a_zoo_exit_gate_preset(tmp_path, capsys):
    from tfgated.cli.export import main

    out = tmp_path / "dn.tflite"
    assert main(["--tflite", "gumbel_densenet_fashion_mnist_exit", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exit gates (conditional): 2 exits" in printed and "PASSED" in printed
    assert tflite_operators(out)[0]["IF"] == 1
