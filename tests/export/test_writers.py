"""TFLite/ONNX export through the real runtimes, atomic writes, CLI and bench."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfgated
from tfgated.export import ParityError, UnsupportedLayerError, export, run_file

sys.path.insert(0, os.path.dirname(__file__))
from models import close_gates, fashion_mnist_presets, load_preset, mbconv_model, randomize, residual_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gated():
    keras.utils.set_random_seed(7)
    return randomize(mbconv_model())


@pytest.fixture(scope="module")
def exported(gated, tmp_path_factory):
    """float32 TFLite, float16 TFLite and ONNX files of the gated MBConv model, converted once."""
    d = tmp_path_factory.mktemp("exported")
    x = np.random.default_rng(1).random((200,) + tuple(gated.input_shape[1:])).astype("float32")
    return {
        "x": x,
        "tflite": export(gated, str(d / "m.tflite"), parity_data=x),
        "fp16": export(gated, str(d / "m16.tflite"), quantization="float16", parity_data=x),
        "onnx": export(gated, str(d / "m.onnx"), parity_data=x),
    }


@pytest.mark.slow
@pytest.mark.parametrize("key", ["tflite", "onnx"])
def test_float32_parity_in_runtime(exported, gated, key):
    result = exported[key]
    x = exported["x"][:32]
    outputs = run_file(result.path, x)
    np.testing.assert_allclose(outputs, gated.predict(x, verbose=0), atol=1e-4, rtol=0)
    assert result.parity["passed"] and result.parity["max_abs_diff"] <= 1e-4
    side = json.load(open(result.sidecar_path))
    assert side["input_shape"] == [1, 16, 16, 3]
    assert side["inference_style"] == "threshold"
    assert side["macs_after_folding"] < side["macs_before_folding"]
    assert side["fold_report"]["channels_removed_total"] > 0


def test_float16_agreement(exported):
    parity = exported["fp16"].parity
    assert parity["quantization"] == "float16"
    assert parity["top1_agreement"] >= 0.995
    assert os.path.getsize(exported["fp16"].path) < os.path.getsize(exported["tflite"].path)


def test_conditional_tflite_for_dependent_residual_gates(tmp_path):
    model = randomize(residual_model(kinds=("independent", "dependent")))
    close_gates(model, ["r0_gate"])
    x = np.random.default_rng(2).random((64, 12, 12, 3)).astype("float32")
    result = export(model, str(tmp_path / "r.tflite"), parity_data=x)
    assert result.sidecar["gates"]["dependent_form"] == "conditional"
    assert result.sidecar["gates"]["conditional"] == ["r1_add"]
    assert result.parity["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_failed_parity_leaves_no_file(gated, tmp_path, monkeypatch):
    from tfgated.export import parity

    monkeypatch.setattr(parity, "FLOAT32_TOLERANCE", -1.0)  # impossible threshold: the check must fail
    path = tmp_path / "bad.tflite"
    with pytest.raises(ParityError, match="Parity check failed"):
        export(gated, str(path), parity_data=np.zeros((2, 16, 16, 3), "float32"))
    assert os.listdir(tmp_path) == []
    export(gated, str(path), parity_data=np.zeros((2, 16, 16, 3), "float32"), allow_mismatch=True)
    assert path.exists() and (tmp_path / "bad.tflite.json").exists()


@keras.saving.register_keras_serializable(package="tests")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def test_unsupported_layer_named(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Doubler(name="my_doubler")(inputs)))
    with pytest.raises(UnsupportedLayerError, match="my_doubler"):
        export(model, str(tmp_path / "x.onnx"))
    assert os.listdir(tmp_path) == []


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "tfgated.export", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def test_cli_help_documents_options(capsys):
    from tfgated.cli.export import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ["--tflite", "--onnx", "--fp16", "--int8", "--representative-data", "--batch-size", "--style",
                   "--no-fold", "--threads", "--no-check"]:
        assert option in out
    assert "--mode" not in out  # the old name of --style still parses, unlisted
    from tfgated.cli.export import _export_parser

    for flag in ("--style", "--mode"):
        assert _export_parser().parse_args(["--onnx", "m.keras", "-o", "m.onnx", flag, "always_on"]).style == "always_on"
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--runs" in out and "--json" in out


@pytest.mark.slow
def test_cli_export_keras_file_and_bench(tmp_path):
    """The real ``python -m tfgated.export`` in a subprocess (the other CLI tests call ``main``)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x, z = tfgated.channel_gate(x, 2, name="g")
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = tfgated.gated_model(inputs, keras.layers.Dense(3, activation="softmax")(x), gates=[z], name="tiny")
    model.get_layer("g_gate").logits.assign(np.array([3.0, -3.0, 3.0, -3.0], "float32"))
    model.save(tmp_path / "tiny.keras")
    out = _cli("--tflite", str(tmp_path / "tiny.keras"), "-o", str(tmp_path / "tiny.tflite"), "--threads", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PASSED" in out.stdout
    out = _cli("--onnx", str(tmp_path / "tiny.keras"), "-o", str(tmp_path / "tiny.onnx"), "--style", "always_on")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.load(open(tmp_path / "tiny.onnx.json"))["inference_style"] == "always_on"
    out = _cli("bench", str(tmp_path / "tiny.tflite"), str(tmp_path / "tiny.onnx"), "--runs", "5", "--threads", "1",
               "--json", str(tmp_path / "bench.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.load(open(tmp_path / "bench.json"))
    assert [r["runtime"] for r in rows] == ["litert", "onnxruntime"]
    assert all(r["median_ms"] > 0 for r in rows)
    assert "median ms" in out.stdout


def test_cli_missing_model_is_clear(tmp_path, capsys):
    from tfgated.cli.export import main

    assert main(["--tflite", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "x.tflite")]) == 2
    assert "not found" in capsys.readouterr().err


def test_pruning_masks_are_applied_before_export(tmp_path):
    from tfgated import pruning
    from tfgated.export import run_file

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(6, 3, name="conv"), keras.layers.Flatten(), keras.layers.Dense(4, name="fc")]
    )
    model = keras.Model(model.inputs, model.outputs)
    pruning.prune_once(model, 0.5, ranking="layerwise")
    masks = [np.asarray(k.mask) for k in pruning.get_pruning_state(model).kernels]
    for k in pruning.get_pruning_state(model).kernels:  # an optimizer step moved the pruned weights
        k.variable.assign(keras.ops.convert_to_numpy(k.variable) + 0.5)
    x = np.random.default_rng(0).random((16, 8, 8, 2)).astype("float32")
    result = export(model, tmp_path / "p.tflite", parity_data=x)
    assert result.sidecar["pruning_masks_applied"] and result.parity["passed"]
    for k, mask in zip(pruning.get_pruning_state(model).kernels, masks):
        assert np.all(keras.ops.convert_to_numpy(k.variable)[mask == 0] == 0)
    np.testing.assert_allclose(run_file(result.path, x), model.predict(x, verbose=0), atol=1e-4)
    assert pruning.get_pruning_state(model) is not None  # still attached


@pytest.mark.slow
@pytest.mark.parametrize("name", fashion_mnist_presets())
def test_zoo_presets_export_to_tflite(name, tmp_path):
    """One Fashion-MNIST preset per family and gate kind: a TFLite file that matches Keras in LiteRT
    (folded; models with Gumbel exit gates through export_exit_gates, each exit an IF)."""
    from tfgated.exits import exit_gate_layers
    from tfgated.export import export_exit_gates, tflite_operators

    model = randomize(load_preset(name))
    tfgated.set_inference_style(model, "threshold")
    x = np.random.default_rng(5).random((8,) + tuple(model.input_shape[1:])).astype("float32")
    path = tmp_path / f"{name}.tflite"
    if exit_gate_layers(model):
        result = export_exit_gates(model, path, parity_data=x)
        assert tflite_operators(path)[0]["IF"] == 1
    else:
        result = export(model, path, parity_data=x)
        dependent = [g for g in tfgated.gate_layers(model) if g.kind == "dependent"]
        assert (result.sidecar["gates"]["dependent_form"] is not None) == bool(dependent)
    assert result.parity["passed"] and result.parity["max_abs_diff"] <= 1e-4
