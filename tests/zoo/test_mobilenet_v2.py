"""Gated MobileNetV2: Keras-identical dense part, supplement granularities, forced-open gates."""

import keras
import numpy as np
import pytest

import tfgated
from tfgated.zoo import mobilenet_v2
from tfgated.zoo.mobilenet_v2 import PRESETS, build, copy_weights

FASHION = PRESETS["gumbel_mobilenet_v2_fashion_mnist"]
KERAS_MOBILENET_V2_PARAMS = 3_538_984


def fashion_model(kind="independent", **gate_overrides):
    gates = {**FASHION["gates"], "kind": kind, **gate_overrides}
    return build(num_classes=10, input_shape=(28, 28, 1), gates=gates, **FASHION["arch"])


def randomize_batch_norms(model, seed=0):
    """Non-trivial BN statistics so that weight copies are really tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0.0, 0.1, shape),
                    rng.normal(0.0, 0.1, shape),
                    rng.uniform(0.5, 1.5, shape),
                ]
            )


def test_dense_model_matches_keras_applications_parameters_and_names():
    reference = keras.applications.MobileNetV2(weights=None)
    dense = build()
    assert reference.count_params() == dense.count_params() == KERAS_MOBILENET_V2_PARAMS
    weighted = lambda m: [(l.name, [tuple(w.shape) for w in l.weights]) for l in m.layers if l.weights]  # noqa: E731
    assert weighted(dense) == weighted(reference)


def test_gated_model_adds_only_the_gates_parameters():
    reference_params = keras.applications.MobileNetV2(weights=None).count_params()
    model = build(gates={"kind": "independent"})
    gates = tfgated.gate_layers(model)
    extra = sum(g.count_params() for g in gates) + model.get_layer("activation_loss").count_params()
    assert model.count_params() == reference_params + extra
    # 17 blocks, each with an input, an expansion and a projection gate, at the supplement's
    # granularity (g_inp, g_out, g_exp).
    assert len(gates) == 51
    units = {g.name: g.units for g in gates}
    assert units["expanded_conv_input_gate"] == 32 // 8
    assert units["block_1_input_gate"] == 16 // 8
    assert units["block_16_input_gate"] == 160 // 32
    assert units["expanded_conv_expand_gate"] == 32 // 16
    assert units["block_1_expand_gate"] == 96 // 24
    assert units["block_1_project_gate"] == 24 // 8
    assert units["block_16_expand_gate"] == 960 // 64
    assert units["block_16_project_gate"] == 320 // 64


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["independent", "dependent"])
def test_always_on_gated_model_reproduces_keras_applications(kind):
    reference = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    randomize_batch_norms(reference)
    model = build(input_shape=(96, 96, 3), gates={"kind": kind})
    copied = copy_weights(reference, model)
    assert len(copied) == sum(1 for layer in reference.layers if layer.weights)
    tfgated.set_inference_style(model, "always_on")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    features = lambda m: keras.Model(m.input, m.get_layer("out_relu").output)(x)  # noqa: E731
    np.testing.assert_allclose(features(model), features(reference), atol=1e-4)
    np.testing.assert_allclose(model(x), reference(x), atol=1e-4)


def test_copy_weights_rejects_mismatched_models():
    with pytest.raises(ValueError, match="Cannot copy layer"):
        copy_weights(build(input_shape=(96, 96, 3)), fashion_model())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["independent", "dependent"])
def test_force_open_keeps_one_gate_per_non_residual_layer(kind):
    model = fashion_model(kind)
    for gate in tfgated.gate_layers(model):
        if kind == "independent":
            gate.logits.assign(np.full(gate.units, -30.0, "float32"))
        else:
            gate.head.bias.assign(np.full(gate.units, -30.0, "float32"))
    x = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    values = tfgated.gate_values(model, x)
    forced = {g.name for g in tfgated.gate_layers(model) if g.force_open}
    # Non-residual blocks: the first of each stage (blocks 0, 1, 3, 5).
    assert forced == {
        f"{prefix}_{part}_gate"
        for prefix in ("expanded_conv", "block_1", "block_3", "block_5")
        for part in ("expand", "project")
    }
    for name, z in values.items():
        per_example = np.asarray(z).sum(axis=1)
        if name in forced:
            assert np.all(per_example == 1), name
        else:
            assert np.all(per_example == 0), name


@pytest.mark.slow
def test_fashion_mnist_variant_trains_and_reloads(tmp_path, fashion_mnist_small):
    x, y = fashion_mnist_small
    x, y = x[:64], y[:64]
    model = fashion_model("dependent")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert "gate_activation" in history.history
    for style in ("threshold", "always_on", "stochastic", "ensemble"):
        tfgated.set_inference_style(model, style, samples=2 if style == "ensemble" else None)
        probabilities = np.asarray(tfgated.predict(model, x[:8]) if style == "ensemble" else model(x[:8]))
        assert probabilities.shape == (8, 10)
        np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)
    tfgated.set_inference_style(model, "threshold")
    path = str(tmp_path / "mobilenet_v2.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(restored(x[:8]), model(x[:8]), atol=1e-5)


@pytest.mark.slow
def test_every_preset_builds_at_its_test_shape():
    for name, preset in PRESETS.items():
        shape = tuple(preset.get("test_input_shape") or preset["input_shape"])
        model = build(num_classes=preset["num_classes"], input_shape=shape, gates=preset["gates"], **preset["arch"])
        assert model.output_shape == (None, preset["num_classes"]), name
        assert bool(tfgated.gate_layers(model)) == (preset["gates"] is not None), name


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="granularity to divide 16 channels. Received: granularity=7"):
        fashion_model(granularity=[(4, 4, 7), (4, 4, 12), (4, 8, 24), (8, 8, 24)])
    with pytest.raises(ValueError, match="one granularity row"):
        fashion_model(granularity=[(4, 4, 8)])
    with pytest.raises(ValueError, match="gates\\['granularity'\\]"):
        build(input_shape=(28, 28, 1), gates={"kind": "independent"}, blocks=mobilenet_v2.FASHION_MNIST_BLOCKS)
    with pytest.raises(ValueError, match="Unknown gate settings"):
        fashion_model(granularty=4)
    with pytest.raises(ValueError, match="stem_stride"):
        build(stem_stride=3)


def _batch_norm_momenta(model):
    return {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}


def test_batch_norm_momentum_keras_for_imagenet_lower_for_small_presets():
    # The ImageNet body keeps keras.applications' momentum, layer for layer.
    assert _batch_norm_momenta(build()) == _batch_norm_momenta(keras.applications.MobileNetV2(weights=None))
    # The Fashion-MNIST presets train a few thousand steps: their moving statistics must keep up.
    for name in ("mobilenet_v2_fashion_mnist", "gumbel_mobilenet_v2_fashion_mnist"):
        preset = PRESETS[name]
        model = build(num_classes=10, input_shape=preset["input_shape"], gates=preset["gates"], **preset["arch"])
        assert _batch_norm_momenta(model) == {mobilenet_v2.SMALL_BN_MOMENTUM}, name
    with pytest.raises(ValueError, match="bn_momentum in \\[0, 1\\)"):
        build(bn_momentum=1.0)


def test_input_gates_gate_the_branch_input_and_leave_the_shortcut():
    arch = {**FASHION["arch"], "input_gates": True}
    model = build(num_classes=10, input_shape=(28, 28, 1), gates=FASHION["gates"], **arch)
    gates = {g.name: g for g in tfgated.gate_layers(model)}
    assert gates["block_2_input_gate"].units == 16 // 4  # fashion row 2: g_inp 4 of 16 input channels
    assert model.get_layer("block_2_input_mask").input[0] is model.get_layer("block_1_project_mask").output
    assert not gates["block_2_input_gate"].force_open and gates["block_1_input_gate"].force_open
    # Closing every gate of the residual block 2 leaves its input: the shortcut is ungated.
    for name in ("block_2_input_gate", "block_2_expand_gate", "block_2_project_gate"):
        gates[name].logits.assign(np.full(gates[name].units, -30.0, "float32"))
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    outputs = [model.get_layer("block_1_project_mask").output, model.get_layer("block_2_add").output]
    probe = keras.Model(model.input, outputs)
    block_input, block_output = (np.asarray(t) for t in probe(x))
    np.testing.assert_allclose(block_output, block_input, atol=1e-6)
    # Only the input gates: the block's input mask zeroes the expansion's input.
    gates["block_2_expand_gate"].logits.assign(np.full(gates["block_2_expand_gate"].units, 4.0, "float32"))
    masked = keras.Model(model.input, model.get_layer("block_2_input_mask").output)(x)
    assert float(np.max(np.abs(np.asarray(masked)))) == 0.0


def test_imagenet_presets_use_the_papers_gate_form_and_the_shipped_one_keeps_its_own():
    for name, preset in PRESETS.items():
        if name.startswith("gumbel_mobilenet_v2_imagenet"):
            assert preset["gates"]["target_measure"] == "macs", name
            assert preset["gates"].get("per_gate_hidden", False) == ("_dep_" in name), name
            assert preset["arch"].get("input_gates", True) is True, name
    assert FASHION["arch"]["input_gates"] is False and "target_measure" not in FASHION["gates"]
    with pytest.raises(ValueError, match="input_gates"):
        build(gates={"kind": "independent"}, input_gates=1)
