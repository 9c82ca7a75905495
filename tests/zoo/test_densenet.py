"""DenseNet with Gumbel early exits: routing, exit gates, styles, training, reload."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgated
from tfgated.exits import EarlyExitCombine, ExitGate, ExitReach, exit_shares, exit_weights, gate_exit_shares
from tfgated.zoo.densenet import PRESETS, build

SMALL = PRESETS["gumbel_densenet_fashion_mnist_exit"]


def small_model(**gate_overrides):
    gates = {**SMALL["gates"], **gate_overrides}
    return build(num_classes=10, input_shape=(28, 28, 1), gates=gates, **SMALL["arch"])


def set_exit_logits(model, logits):
    """Make exit gate k's logit the constant logits[k] (zero head kernel)."""
    for gate, logit in zip(tfgated.exits.exit_gate_layers(model), logits):
        kernel, bias = gate.head.get_weights()
        gate.head.set_weights([np.zeros_like(kernel), np.full_like(bias, logit)])


# -- the layers --------------------------------------------------------------------


def test_combine_takes_the_first_open_exit_per_example():
    p1 = np.tile([[0.7, 0.2, 0.1]], (4, 1)).astype("float32")
    p2 = np.tile([[0.1, 0.8, 0.1]], (4, 1)).astype("float32")
    final = np.tile([[0.1, 0.1, 0.8]], (4, 1)).astype("float32")
    g1 = np.array([[1], [0], [1], [0]], "float32")
    g2 = np.array([[0], [1], [1], [0]], "float32")
    combine = EarlyExitCombine()
    out = np.asarray(combine([p1, g1, p2, g2, final]))
    np.testing.assert_allclose(out, np.stack([p1[0], p2[1], p1[2], final[3]]))
    shares = {m.name: float(m.result()) for m in combine.metrics}
    assert shares == {"exit_1_share": 0.5, "exit_2_share": 0.25, "final_share": 0.25}
    reach = np.asarray(ExitReach()([g1, g2]))
    np.testing.assert_array_equal(reach, [[0, 0], [1, 0], [0, 0], [1, 1]])
    weights = [np.asarray(w) for w in exit_weights([g1, g2])]
    np.testing.assert_array_equal(np.concatenate(weights, axis=1).sum(axis=1), 1.0)


def test_combine_passes_straight_through_gradient_to_the_gates():
    p1 = tf.constant([[0.9, 0.1]])
    final = tf.constant([[0.2, 0.8]])
    z = tf.Variable([[1.0]])
    with tf.GradientTape() as tape:
        out = EarlyExitCombine()([p1, z, final])
        loss = -tf.math.log(out[0, 1])  # class 1 is better served by the final classifier
    grad = tape.gradient(loss, z)
    assert float(grad[0, 0]) > 0  # lowering z (staying) lowers the loss


def test_combine_and_reach_reject_bad_inputs():
    p = np.ones((2, 3), "float32") / 3
    with pytest.raises(ValueError, match="odd number"):
        EarlyExitCombine()([p, np.ones((2, 1), "float32")])
    with pytest.raises(ValueError, match=r"shape \(batch, 1\)"):
        EarlyExitCombine()([p, np.ones((2, 2), "float32"), p])
    with pytest.raises(ValueError, match=r"shape \(batch, 1\)"):
        ExitReach()([np.ones((2, 3), "float32")])


def test_exit_gate_decides_per_example_and_always_on_never_exits():
    features = np.random.default_rng(0).normal(size=(6, 8, 8, 5)).astype("float32")
    gate = ExitGate(filters=4, pool_size=4, open_probability=0.25, name="exit_gate")
    z = np.asarray(gate(features))
    assert z.shape == (6, 1) and set(np.unique(z)) <= {0.0, 1.0}
    assert gate.kind == "dependent" and gate.units == 1 and not gate.force_open
    assert gate.head.kernel.shape == (2 * 2 * 4, 1)  # 4x4 average pool of 8x8, 4 channels
    # two 3x3 convolutions (5 -> 4, 4 -> 4 channels) at 8x8, then the head on the pooled 2x2x4
    assert gate.compute_macs((6, 8, 8, 5)) == 8 * 8 * 9 * (5 * 4 + 4 * 4) + 2 * 2 * 4
    np.testing.assert_allclose(np.asarray(gate.probabilities(features)), 0.25, atol=0.05)
    kernel, bias = gate.head.get_weights()
    gate.head.set_weights([kernel, bias + 20.0])
    np.testing.assert_array_equal(np.asarray(gate(features)), 1.0)
    gate.set_inference_style("always_on")
    np.testing.assert_array_equal(np.asarray(gate(features)), 0.0)
    config = gate.get_config()
    assert {"units", "kind", "hidden_units", "force_open"}.isdisjoint(config)
    clone = ExitGate.from_config(config)
    assert clone.filters == 4 and clone.pool_size == 4 and clone.inference_style == "always_on"
    with pytest.raises(ValueError, match="filters"):
        ExitGate(filters=0)


# -- the model ---------------------------------------------------------------------


def test_dense_densenet_bc_100_has_the_published_parameter_count():
    model = build()  # DenseNet-BC (L=100, k=12) for CIFAR-10
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 769_162  # 0.8M in Huang et al., Table 2
    assert not tfgated.gate_layers(model)


@pytest.mark.slow
def test_exit_model_structure_and_routing_in_every_style():
    model = small_model()
    gates = tfgated.gate_layers(model)
    assert [g.name for g in gates] == ["exit1_gate", "exit2_gate"]
    assert all(isinstance(g, ExitGate) for g in gates)
    x = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype("float32")
    exit1 = keras.Model(model.input, model.get_layer("exit1_classifier").output)(x)
    final = keras.Model(model.input, model.get_layer("predictions").output)(x)

    set_exit_logits(model, [20.0, -20.0])  # everyone leaves at exit 1
    np.testing.assert_allclose(model(x), exit1, atol=1e-6)
    np.testing.assert_allclose(exit_shares(model, x), [1.0, 0.0, 0.0])
    tfgated.set_inference_style(model, "always_on")  # all computation on: the final classifier
    np.testing.assert_allclose(model(x), final, atol=1e-6)
    np.testing.assert_allclose(exit_shares(model, x), [0.0, 0.0, 1.0])

    set_exit_logits(model, [0.0, 0.0])
    for style in ("threshold", "stochastic", "ensemble"):
        tfgated.set_inference_style(model, style, samples=3 if style == "ensemble" else None)
        probabilities = np.asarray(tfgated.predict(model, x) if style == "ensemble" else model(x))
        assert probabilities.shape == (8, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Stochastic: each example draws its own gates; in one pass, the routed output and the
    # shares are exactly what the drawn gates say.
    tfgated.set_inference_style(model, "stochastic")
    names = ["exit1_gate", "exit2_gate", "exit1_classifier", "exit2_classifier", "predictions"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    z1, z2, p1, p2, final, routed = (np.asarray(v) for v in probe(np.repeat(x, 25, axis=0)))
    assert set(np.unique(z1)) == set(np.unique(z2)) == {0.0, 1.0}  # sampled, not thresholded
    np.testing.assert_allclose(routed, z1 * p1 + (1 - z1) * z2 * p2 + (1 - z1) * (1 - z2) * final, atol=1e-6)
    shares = [np.mean(z1), np.mean((1 - z1) * z2), np.mean((1 - z1) * (1 - z2))]
    np.testing.assert_allclose(gate_exit_shares([z1, z2]), shares, rtol=1e-6)


@pytest.mark.slow
def test_training_steps_report_exit_shares_and_depth(fashion_mnist_small):
    x, y = fashion_mnist_small
    x, y = x[:64], y[:64]
    model = small_model(target=0.25, weight=5.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    before = [g.head.get_weights()[1].copy() for g in tfgated.gate_layers(model)]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    shares = [history[k][-1] for k in ("exit_1_share", "exit_2_share", "final_share")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    # The activation loss sees ExitReach: per example [1 - z1, (1 - z1)(1 - z2)], whose mean
    # is (share of exit 2 + 2 x share of the final classifier) / 2, batch by batch.
    expected = (history["exit_2_share"][-1] + 2 * history["final_share"][-1]) / 2
    assert history["gate_activation"][-1] == pytest.approx(expected, abs=1e-5)
    after = [g.head.get_weights()[1] for g in tfgated.gate_layers(model)]
    assert any(not np.allclose(b, a) for b, a in zip(before, after))  # the exits learn


def test_exit_gates_count_the_stages_after_them_and_evaluate_reports_exits(fashion_mnist_small):
    from tfgated import complexity
    from tfgated.graph import gate_structure
    from tfgated.train import evaluate_model

    model = small_model()
    infos = {i.name: i for i in gate_structure(model)}
    rest1, rest2 = (set(infos[n].layers("rest")) for n in ("exit1_gate", "exit2_gate"))
    assert infos["exit1_gate"].apply_class == "EarlyExitCombine"
    assert rest2 < rest1  # what follows exit 2 also follows exit 1
    assert {"exit2_gate", "exit2_classifier", "predictions"} <= rest1
    assert "predictions" in rest2 and "exit2_classifier" not in rest2
    assert not {"exit1_gate", "exit1_classifier", "conv2_block1_2_conv"} & rest1

    rows = {r.name: r.macs for r in complexity.count(model).rows}
    dense = sum(rows.values())
    after1 = sum(m for n, m in rows.items() if n in rest1)
    after2 = sum(m for n, m in rows.items() if n in rest2)
    x, y = fashion_mnist_small
    data = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32)
    for logits, shares, activation, macs in (
        ([-20.0, -20.0], [0.0, 0.0, 1.0], 1.0, dense),  # nobody leaves: the dense network
        ([20.0, -20.0], [1.0, 0.0, 0.0], 0.0, dense - after1),  # all leave at exit 1
        ([-20.0, 20.0], [0.0, 1.0, 0.0], 0.5, dense - after2),  # all pass exit 1, leave at exit 2
    ):
        set_exit_logits(model, logits)
        result = evaluate_model(model, data, style="threshold", runs=1)
        assert [result[k] for k in ("exit_1_share", "exit_2_share", "final_share")] == shares
        assert result["gate_activation"] == pytest.approx(activation)  # share of exits passed
        assert result["macs"] == pytest.approx(macs) and result["dense_macs"] == dense


@pytest.mark.slow
def test_import_tfgated_alone_registers_the_exit_layers_for_loading(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "exit.keras")
    small_model().save(path)
    code = f"import keras, tfgated; m = keras.saving.load_model({path!r}, safe_mode=True); print(m.name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


def test_save_and_load_safe_mode(tmp_path):
    model = small_model()
    x = np.random.default_rng(1).uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    tfgated.set_inference_style(model, "threshold", threshold=0.3)
    path = str(tmp_path / "densenet_exit.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(restored(x), model(x), atol=1e-6)
    gate = restored.get_layer("exit1_gate")
    assert isinstance(gate, ExitGate) and gate.threshold == pytest.approx(0.3)


def test_presets_and_bad_arguments():
    cifar = PRESETS["gumbel_densenet_cifar10_exit"]
    model = build(
        num_classes=10, input_shape=tuple(cifar["input_shape"]), gates=cifar["gates"],
        **{**cifar["arch"], "blocks": [2, 2, 2]},
    )
    assert model.output_shape == (None, 10)
    assert model.get_layer("exit1_gate").filters == 128
    assert model.get_layer("exit1_gate").pool_size == 4
    with pytest.raises(ValueError, match="'dependent'"):
        small_model(kind="independent")
    with pytest.raises(ValueError, match="granularity"):
        small_model(granularity=4)
    with pytest.raises(ValueError, match="at least 2 dense blocks"):
        build(gates={"target": 0.5}, blocks=[3])
    with pytest.raises(ValueError, match="compression"):
        build(compression=0.0)


def test_pool_first_exit_gate_costs_a_pool_window_less_and_counts_itself():
    from tfgated import complexity

    shape = (28, 28, 40)
    after, first = (ExitGate(filters=32, pool_size=4, pool_first=flag, name=f"g{flag}") for flag in (False, True))
    x = np.random.default_rng(0).uniform(0, 1, (3, *shape)).astype("float32")
    for gate in (after, first):
        assert tuple(gate(x).shape) == (3, 1)
    head = 7 * 7 * 32  # both orders end in a 7x7x32 map: the weights have the same shapes
    assert after.compute_macs(shape) == 28 * 28 * 9 * (40 + 32) * 32 + head
    assert first.compute_macs(shape) == 7 * 7 * 9 * (40 + 32) * 32 + head
    assert [w.shape for w in first.weights] == [w.shape for w in after.weights]
    assert ExitGate.from_config(first.get_config()).pool_first is True

    model = small_model()  # the Fashion-MNIST preset pools first
    gate = model.get_layer("exit1_gate")
    rows = {r.name: r.macs for r in complexity.count(model).rows}
    assert gate.pool_first and rows["exit1_gate"] == gate.compute_macs(gate.input.shape)
    assert rows["exit1_gate"] < 0.1 * sum(rows.values())  # 5%; the paper's order: 9.03M, 41%


def test_exit_classifier_grid_pools_to_a_grid_and_counts_its_linear_layer():
    from tfgated import complexity

    grid = small_model()  # the Fashion-MNIST preset pools its exits to a 4x4 grid
    plain = build(num_classes=10, input_shape=(28, 28, 1), gates=SMALL["gates"],
                  **{**SMALL["arch"], "exit_classifier_grid": None})
    assert SMALL["arch"]["exit_classifier_grid"] == 4
    # block 1 ends at 28x28x40 (window 7), block 2 at 14x14x44 (window 3, the last 2 rows dropped)
    assert grid.get_layer("exit1_classifier_pool").output.shape[1:] == (4, 4, 40)
    assert grid.get_layer("exit2_classifier_pool").output.shape[1:] == (4, 4, 44)
    assert grid.get_layer("exit1_classifier").kernel.shape == (640, 10)
    assert plain.get_layer("exit1_classifier").kernel.shape == (40, 10)
    assert isinstance(plain.get_layer("predictions_pool"), keras.layers.GlobalAveragePooling2D)
    assert isinstance(grid.get_layer("predictions_pool"), keras.layers.GlobalAveragePooling2D)
    extra = complexity.count(grid).macs - complexity.count(plain).macs
    assert extra == (640 - 40) * 10 + (704 - 44) * 10
    for bad in (0, 2.5, True, "4"):
        with pytest.raises(ValueError, match="exit_classifier_grid"):
            build(gates={"target": 0.5}, blocks=[1, 1], exit_classifier_grid=bad)


@pytest.mark.slow
def test_fit_exit_classifiers_probes_a_frozen_trunk_or_trains_it_with_deep_supervision(fashion_mnist_small):
    from tfgated.exits import fit_exit_classifiers

    x, y = fashion_mnist_small
    data = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32)
    model = small_model()

    def snapshot():
        return {w.path: np.array(w.numpy()) for w in model.weights}

    def changed(before):
        now = snapshot()
        return {path.split("/")[0] for path in before if not np.array_equal(before[path], now[path])}

    before = snapshot()
    history = fit_exit_classifiers(model, data, data, epochs=1, verbose=0)
    assert changed(before) == {"exit1_classifier", "exit1_classifier_bn", "exit2_classifier", "exit2_classifier_bn"}
    assert all(layer.trainable for layer in model.layers)  # flags restored
    assert {"val_accuracy", "val_accuracy_1"} <= set(history.history)

    before = snapshot()
    fit_exit_classifiers(model, data, epochs=1, train_trunk=True, verbose=0)
    moved = changed(before)
    assert {"conv1_conv", "conv4_block3_2_conv", "predictions", "exit1_classifier"} <= moved
    assert not {"exit1_gate", "exit2_gate"} & moved  # the gates are left to the gated training
    with pytest.raises(ValueError, match="EarlyExitCombine"):
        fit_exit_classifiers(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), data)


# -- the supplement's exit networks -------------------------------------------------------

#: Supplement section 1.2, transcribed: the exit gate is "3x3 conv (128) + BN, 3x3 conv (128)
#: + BN, 4x4 average pool, linear, Gumbel"; the exit classifier is MSDNet's (two 3x3 stride-2
#: 128-channel convolutions, each with BN + ReLU as MSDNet's ConvBasic, 2x2 average pool, linear).
SUPPLEMENT_EXIT_GATE = [("conv", 3, 1, 128), ("bn",), ("conv", 3, 1, 128), ("bn",), ("avg_pool", 4), ("linear", 1)]
SUPPLEMENT_EXIT_CLASSIFIER = [
    ("conv", 3, 2, 128), ("bn",), ("relu",), ("conv", 3, 2, 128), ("bn",), ("relu",), ("avg_pool", 2), ("linear", 10)
]


def _describe(layer):
    if isinstance(layer, keras.layers.Conv2D):
        return ("conv", layer.kernel_size[0], layer.strides[0], layer.filters)
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("bn",)
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu:
        return ("relu",)
    if isinstance(layer, keras.layers.AveragePooling2D):
        return ("avg_pool", layer.pool_size[0])
    if isinstance(layer, keras.layers.Dense):
        return ("linear", layer.units)
    return None


def _exit_gate_layers(gate):
    """The gate network as a layer list; the ReLU and pooling are ops in ``compute_logits``."""
    described = []
    for conv, norm in gate.conv_norm_pairs():
        described += [_describe(conv), _describe(norm)]
        if gate.activation == "relu":
            described.append(("relu",))
    pool = ("avg_pool", gate.pool_size)
    described = [pool, *described] if gate.pool_first else [*described, pool]
    return described + [_describe(gate.head)]


def test_exit_gate_and_classifier_match_the_supplement():
    model = build(gates={"target": 0.5})  # the CIFAR-10 DenseNet-BC-100 of the paper, defaults
    for k in (1, 2):
        gate = model.get_layer(f"exit{k}_gate")
        assert _exit_gate_layers(gate) == SUPPLEMENT_EXIT_GATE
        prefix = f"exit{k}_classifier"
        layers = [layer for layer in model.layers if layer.name.startswith(prefix)]
        assert [d for d in map(_describe, layers) if d is not None] == SUPPLEMENT_EXIT_CLASSIFIER
    # block 1 ends at 32x32: 16, 8, pooled to 4x4x128 before the linear layer
    assert model.get_layer("exit1_classifier").kernel.shape == (4 * 4 * 128, 10)
    from tfgated.zoo.densenet import PRESETS

    assert {"exit_gate", "exit_classifier"}.isdisjoint(PRESETS["gumbel_densenet_cifar10_exit"]["arch"])


def test_shipped_fashion_preset_keeps_the_older_exit_forms():
    model = small_model()
    gate = model.get_layer("exit1_gate")
    assert gate.convolutions == 1 and gate.activation == "relu"
    assert _exit_gate_layers(gate) == [("avg_pool", 4), ("conv", 3, 1, 32), ("bn",), ("relu",), ("linear", 1)]
    assert "exit1_classifier_1_conv" not in [layer.name for layer in model.layers]
    # a config saved before the two arguments existed rebuilds the one-convolution form
    config = {k: v for k, v in gate.get_config().items() if k not in ("convolutions", "activation")}
    old = ExitGate.from_config(config)
    assert old.convolutions == 1 and old.activation == "relu"
    with pytest.raises(ValueError, match="exit_gate"):
        build(gates={"target": 0.5}, blocks=[1, 1], exit_gate="two")
    with pytest.raises(ValueError, match="exit_classifier_grid only applies"):
        build(gates={"target": 0.5}, blocks=[1, 1], exit_classifier_grid=4)
    with pytest.raises(ValueError, match="convolutions"):
        ExitGate(convolutions=3)
