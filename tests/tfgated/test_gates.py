"""Gate layers, losses and inference styles: behaviour as the papers define it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgated
from tfgated.gates import ChannelMask, GatedResidual, GumbelGate
from tfgated.losses import GateActivationLoss, mean_activation, per_batch_loss, per_gate_loss


def small_gated_model(kind="dependent", target=0.5, loss_kind="per_batch", weight=1.0, filters=8, **gate_kwargs):
    """A model containing every core tfgated layer: both gate kinds, channel mask, gated residual, loss."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU()(x)
    x, z1 = tfgated.channel_gate(x, granularity=2, kind="independent", name="stem", force_open=True, **gate_kwargs)
    branch = keras.layers.Conv2D(filters, 3, padding="same", name="block1_conv")(x)
    x, z2 = tfgated.residual_gate(x, branch, kind=kind, name="block1", **gate_kwargs)
    branch = keras.layers.Conv2D(filters, 3, padding="same", name="block2_conv")(x)
    x, z3 = tfgated.residual_gate(x, branch, kind="independent", name="block2", **gate_kwargs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    return tfgated.gated_model(inputs, outputs, [z1, z2, z3], target=target, loss_kind=loss_kind, weight=weight)


# -- the gate itself ---------------------------------------------------------------


def test_initial_open_probability_sets_logits():
    gate = GumbelGate(4, open_probability=0.85)
    gate.build((None, 8))
    np.testing.assert_allclose(keras.ops.sigmoid(gate.logits).numpy(), 0.85, rtol=1e-6)
    default = GumbelGate(2)
    default.build((None, 8))
    np.testing.assert_allclose(default.logits.numpy(), 4.0, atol=0.01)  # the reference code's logit


def test_training_samples_are_hard_with_straight_through_gradient():
    gate = GumbelGate(64, open_probability=0.5, temperature=0.5, seed=3)
    context = tf.zeros((32, 8))
    with tf.GradientTape() as tape:
        z = gate(context, training=True)
        objective = tf.reduce_sum(z)
    values = z.numpy()
    assert set(np.unique(values)) <= {0.0, 1.0}
    assert 0.2 < values.mean() < 0.8  # p = 0.5 gives a mix of open and closed
    grad = tape.gradient(objective, gate.logits).numpy()
    assert np.all(grad > 0)  # relaxed sample's gradient: pushing z up raises the logits


@pytest.mark.parametrize("kind", ["independent", "dependent"])
def test_gradient_scale_multiplies_the_gate_gradient_only(kind):
    context = tf.random.stateless_normal((16, 8), seed=(1, 2))

    def forward_and_gradient(scale):
        gate = GumbelGate(6, kind=kind, open_probability=0.5, seed=7, gradient_scale=scale, name="g")
        gate.build((None, 8))
        if kind == "dependent":  # same gate network for both scales
            for variable in gate.trainable_variables:
                variable.assign(tf.random.stateless_normal(variable.shape, seed=(3, 4)))
        with tf.GradientTape() as tape:
            z = gate(context, training=True)
            objective = tf.reduce_sum(z * tf.range(6, dtype=z.dtype))
        return z.numpy(), [g.numpy() for g in tape.gradient(objective, gate.trainable_variables)]

    z1, grads1 = forward_and_gradient(1.0)
    z30, grads30 = forward_and_gradient(30.0)
    np.testing.assert_array_equal(z1, z30)  # same seed, same samples: the forward pass is unchanged
    assert any(np.abs(g).max() > 0 for g in grads1)
    for g1, g30 in zip(grads1, grads30):
        np.testing.assert_allclose(g30, 30.0 * g1, rtol=1e-4, atol=1e-6)


def test_gradient_scale_is_checked_and_serialized():
    with pytest.raises(ValueError, match="gradient_scale"):
        GumbelGate(2, gradient_scale=-1.0)
    gate = GumbelGate(2, gradient_scale=25.0)
    assert GumbelGate.from_config(gate.get_config()).gradient_scale == 25.0


def test_gradient_scale_zero_freezes_the_gates_while_the_network_trains(fashion_mnist_small):
    x, y = fashion_mnist_small
    model = small_gated_model(kind="independent", gradient_scale=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    logits = model.get_layer("block2_gate").logits.numpy().copy()
    kernels = [w.numpy().copy() for w in model.trainable_weights if "kernel" in w.path]
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_layer("block2_gate").logits.numpy(), logits)
    assert any(not np.allclose(w.numpy(), k) for w, k in zip((w for w in model.trainable_weights if "kernel" in w.path), kernels))


def test_training_step_moves_gate_logits(fashion_mnist_small):
    x, y = fashion_mnist_small
    model = small_gated_model(kind="dependent")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    ind_before = model.get_layer("block2_gate").logits.numpy().copy()
    dep_before = model.get_layer("block1_gate").head.kernel.numpy().copy()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert not np.allclose(model.get_layer("block2_gate").logits.numpy(), ind_before)
    assert not np.allclose(model.get_layer("block1_gate").head.kernel.numpy(), dep_before)


def test_force_open_keeps_one_gate_open():
    gate = GumbelGate(4, open_probability=0.01, force_open=True)
    gate.build((None, 3))
    gate.logits.assign([-9.0, -5.0, -7.0, -8.0])
    z = gate(tf.zeros((3, 3)), training=False).numpy()
    np.testing.assert_array_equal(z, [[0, 1, 0, 0]] * 3)
    z_train = gate(tf.zeros((50, 3)), training=True).numpy()
    assert np.all(z_train.sum(axis=1) >= 1)


def test_channel_mask_applies_groups():
    features = tf.ones((2, 3, 3, 6))
    gates = tf.constant([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    out = ChannelMask(granularity=2)([features, gates]).numpy()
    np.testing.assert_array_equal(out[0, 0, 0], [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(out[1, 2, 2], [0, 0, 1, 1, 1, 1])


def test_gated_residual_is_shortcut_plus_gated_branch():
    shortcut = tf.fill((2, 2, 2, 3), 2.0)
    branch = tf.fill((2, 2, 2, 3), 5.0)
    gates = tf.constant([[1.0], [0.0]])
    out = GatedResidual()([shortcut, branch, gates]).numpy()
    assert np.all(out[0] == 7.0) and np.all(out[1] == 2.0)


# -- inference styles -------------------------------------------------------------


def test_inference_styles_behave_as_defined():
    gate = GumbelGate(256, open_probability=0.5, seed=7)
    gate.build((None, 4))
    rng = np.random.default_rng(0)
    gate.logits.assign(rng.normal(0, 1, 256).astype("float32"))
    context = tf.zeros((16, 4))
    expected_threshold = (keras.ops.sigmoid(gate.logits).numpy() > 0.5).astype("float32")

    gate.set_inference_style("always_on")
    assert np.all(gate(context).numpy() == 1.0)

    gate.set_inference_style("threshold")
    first, second = gate(context).numpy(), gate(context).numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], expected_threshold)

    gate.set_inference_style("threshold", threshold=0.8)
    np.testing.assert_array_equal(
        gate(context).numpy()[0], (keras.ops.sigmoid(gate.logits).numpy() > 0.8).astype("float32")
    )

    gate.set_inference_style("stochastic")
    first, second = gate(context).numpy(), gate(context).numpy()
    assert set(np.unique(first)) <= {0.0, 1.0}
    assert not np.array_equal(first, second)
    # The stochastic rate follows the open probability.
    many = np.concatenate([gate(tf.zeros((64, 4))).numpy() for _ in range(8)])
    np.testing.assert_allclose(many.mean(axis=0).mean(), keras.ops.sigmoid(gate.logits).numpy().mean(), atol=0.03)


def test_style_switch_reaches_compiled_model_without_rebuild(fashion_mnist_small):
    x, _ = fashion_mnist_small
    model = small_gated_model()
    model.get_layer("block2_gate").logits.assign([-10.0])  # closed under threshold
    tfgated.set_inference_style(model, "threshold")
    closed = tfgated.gate_values(model, x[:8])["block2_gate"]
    tfgated.set_inference_style(model, "always_on")
    opened = tfgated.gate_values(model, x[:8])["block2_gate"]
    assert np.all(closed == 0) and np.all(opened == 1)
    predictions_on = model.predict(x[:8], verbose=0)
    tfgated.set_inference_style(model, "threshold")
    assert not np.allclose(model.predict(x[:8], verbose=0), predictions_on)
    assert tfgated.get_inference_style(model) == "threshold"


def test_ensemble_averages_stochastic_passes(fashion_mnist_small):
    x, _ = fashion_mnist_small
    model = small_gated_model()
    for gate in tfgated.gate_layers(model):
        if gate.kind == "independent":
            gate.logits.assign(np.zeros(gate.units, "float32"))  # p = 0.5: passes differ
    tfgated.set_inference_style(model, "ensemble", samples=6)
    assert tfgated.get_inference_style(model) == "ensemble"
    gates = tfgated.gate_layers(model)
    states = [g.seed_generator.state.numpy() for g in gates]
    ensemble = tfgated.predict(model, x[:16])
    for gate, state in zip(gates, states):  # replay the same noise by hand
        gate.seed_generator.state.assign(state)
    tfgated.set_inference_style(model, "stochastic")
    passes = [model.predict(x[:16], verbose=0) for _ in range(6)]
    np.testing.assert_allclose(ensemble, np.mean(passes, axis=0), atol=1e-6)
    assert not np.allclose(passes[0], passes[1])
    np.testing.assert_allclose(ensemble.sum(axis=1), 1.0, atol=1e-5)


def _half_open(model):
    for gate in tfgated.gate_layers(model):
        if gate.kind == "independent":
            gate.logits.assign(np.zeros(gate.units, "float32"))  # p = 0.5: samples vary
    return model


@pytest.mark.slow
@pytest.mark.parametrize("style", ["stochastic", "ensemble"])
def test_predict_with_seed_is_reproducible(fashion_mnist_small, style):
    x, _ = fashion_mnist_small
    model = _half_open(small_gated_model())
    first = tfgated.predict(model, x[:64], style=style, samples=3, batch_size=16, seed=11)
    again = tfgated.predict(model, x[:64], style=style, samples=3, batch_size=16, seed=11)
    other = tfgated.predict(model, x[:64], style=style, samples=3, batch_size=16, seed=12)
    unseeded = tfgated.predict(model, x[:64], style=style, samples=3, batch_size=16)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, unseeded)


def test_reset_gate_noise_uses_each_gate_seed():
    gate = GumbelGate(64, open_probability=0.5, seed=5, inference_style="stochastic")
    context = np.zeros((8, 3), "float32")
    first = gate.reset_noise()(context)
    assert not np.array_equal(first, gate(context))  # the noise advances with every call
    np.testing.assert_array_equal(first, gate.reset_noise()(context))
    with pytest.raises(ValueError, match="has no seed of its own"):
        GumbelGate(4).reset_noise()
    with pytest.raises(ValueError, match="Received: seed=-1"):
        tfgated.reset_gate_noise(small_gated_model(), seed=-1)


_PREDICT_IN_A_PROCESS = """
import sys
import keras, numpy as np
sys.path.insert(0, sys.argv[1])
from test_gates import _half_open, small_gated_model
import tfgated
keras.utils.set_random_seed(0)
model = _half_open(small_gated_model())
x = np.random.RandomState(0).rand(32, 28, 28, 1).astype("float32")
for _ in range(int(sys.argv[3])):  # a different history of noise draws in each process
    tfgated.predict(model, x, style="stochastic", batch_size=8)
np.save(sys.argv[2], tfgated.predict(model, x, style="stochastic", batch_size=8, seed=3))
"""


@pytest.mark.slow
def test_predict_with_seed_is_reproducible_across_processes(tmp_path):
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    outputs = []
    for run in range(2):
        path = str(tmp_path / f"run{run}.npy")
        subprocess.run([sys.executable, "-c", _PREDICT_IN_A_PROCESS, here, path, str(run)], env=env, check=True, timeout=300)
        outputs.append(np.load(path))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert 0 < outputs[0].std()


# -- losses ------------------------------------------------------------------------


def test_per_batch_and_per_gate_losses_equal_hand_values():
    g1 = tf.constant([[1.0, 0.0], [1.0, 1.0]])  # gate means 1.0, 0.5
    g2 = tf.constant([[0.0], [0.0]])  # gate mean 0.0
    t = 0.6
    # PB: mean over batch and all gates = (1 + 0.5 + 0) / 3 = 0.5
    np.testing.assert_allclose(per_batch_loss([g1, g2], t).numpy(), (0.6 - 0.5) ** 2, rtol=1e-6)
    # PG: mean over gates of (t - gate mean)^2
    expected = ((0.6 - 1.0) ** 2 + (0.6 - 0.5) ** 2 + (0.6 - 0.0) ** 2) / 3
    np.testing.assert_allclose(per_gate_loss([g1, g2], t).numpy(), expected, rtol=1e-6)
    # MAC-weighted: g1 controls 300 MACs, g2 100 -> (0.75 * 300 + 0 * 100) / 400
    np.testing.assert_allclose(mean_activation([g1, g2], [300.0, 100.0]).numpy(), 0.5625, rtol=1e-6)
    np.testing.assert_allclose(per_batch_loss([g1, g2], t, [300.0, 100.0]).numpy(), (0.6 - 0.5625) ** 2, rtol=1e-5)


def test_activation_loss_layer_adds_weighted_loss():
    layer = GateActivationLoss(target=0.2, weight=3.0, loss_kind="per_batch")
    outputs = tf.ones((2, 10))
    gates = tf.constant([[1.0, 1.0], [1.0, 0.0]])  # mean 0.75
    result = layer([outputs, gates])
    np.testing.assert_array_equal(result.numpy(), outputs.numpy())
    np.testing.assert_allclose(float(layer.losses[0]), 3.0 * (0.2 - 0.75) ** 2, rtol=1e-6)
    np.testing.assert_allclose(float(layer.activation_tracker.result()), 0.75)


def test_activation_loss_reads_the_config_name_before_loss_kind():
    layer = GateActivationLoss(target=0.3, loss_kind="per_gate", name="activation_loss")
    config = layer.get_config()
    assert config["loss_kind"] == "per_gate" and "mode" not in config
    old = {**{k: v for k, v in config.items() if k != "loss_kind"}, "mode": "per_gate"}  # .keras files saved earlier
    restored = GateActivationLoss.from_config(old)
    assert (restored.loss_kind, restored.target, restored.name) == ("per_gate", 0.3, "activation_loss")


def test_fit_reports_gate_activation_metric(fashion_mnist_small):
    x, y = fashion_mnist_small
    model = small_gated_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert "gate_activation" in history.history
    assert 0.8 < history.history["gate_activation"][0] <= 1.0  # gates start nearly open


def test_per_batch_loss_pulls_activation_to_target_on_fashion_mnist(fashion_mnist_small):
    """A few hundred real training steps move the mean activation from ~0.98 to t = 0.5."""
    x, y = fashion_mnist_small
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    h, z = tfgated.channel_gate(h, granularity=1, kind="independent", name="conv")
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    model = tfgated.gated_model(inputs, outputs, [z], target=0.5, weight=5.0)
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)  # 5 x 63 = 315 steps
    rates = history.history["gate_activation"]
    assert rates[0] > 0.6
    assert abs(rates[-1] - 0.5) <= 0.1


# -- serialization ------------------------------------------------------------------


@pytest.mark.slow
def test_save_and_safe_load_gives_identical_outputs(tmp_path, fashion_mnist_small):
    x, y = fashion_mnist_small
    model = small_gated_model(kind="dependent", target=0.4, loss_kind="per_gate", weight=2.0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    model.get_layer("block2_gate").logits.assign([-3.0])
    tfgated.set_inference_style(model, "threshold", threshold=0.4)
    path = tmp_path / "gated.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x[:32], verbose=0), loaded.predict(x[:32], verbose=0))
    gate = loaded.get_layer("block1_gate")
    assert gate.inference_style == "threshold" and gate.threshold == pytest.approx(0.4)
    loss_layer = loaded.get_layer("activation_loss")
    assert (loss_layer.target, loss_layer.loss_kind, loss_layer.weight) == (0.4, "per_gate", 2.0)


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GumbelGate(4, temperature=0.0), "Expected temperature > 0. Received: temperature=0.0"),
        (lambda: GumbelGate(4, kind="sometimes"), "Received: kind='sometimes'"),
        (lambda: GumbelGate(4, open_probability=1.0), "Received: open_probability=1.0"),
        (lambda: GumbelGate(4, inference_style="random"), "Received: style='random'"),
        (lambda: GateActivationLoss(target=1.5), "Expected target in [0, 1]. Received: target=1.5"),
        (lambda: GateActivationLoss(target=-0.1), "Received: target=-0.1"),
        (lambda: GateActivationLoss(loss_kind="per_layer"), "Received: loss_kind='per_layer'"),
        (lambda: GumbelGate(0), "Expected units to be a positive integer. Received: units=0"),
        (lambda: GumbelGate(4, hidden_units=2.5), "Expected hidden_units to be a positive integer. Received: hidden_units=2.5"),
        (lambda: GumbelGate(4, seed="7"), "Expected seed to be None or a non-negative integer. Received: seed='7'"),
        (lambda: ChannelMask(0), "Expected granularity to be a positive integer. Received: granularity=0"),
        (lambda: tfgated.channel_gate(keras.Input((4, 4, 8)), granularity=0),
         "Expected granularity to be a positive integer. Received: granularity=0"),
        (lambda: tfgated.channel_gate(keras.Input((4, 4, 8)), granularity=2.0),
         "Expected granularity to be a positive integer. Received: granularity=2.0"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


def test_granularity_must_divide_channels():
    features = keras.Input((8, 8, 64))
    with pytest.raises(ValueError, match=r"Expected granularity to divide 64 channels. Received: granularity=24"):
        tfgated.channel_gate(features, granularity=24)
    with pytest.raises(ValueError, match=r"Expected granularity to divide 64 channels. Received: granularity=24"):
        ChannelMask(24)([features, keras.Input((2,))])


def test_unknown_inference_style_on_model():
    model = small_gated_model()
    with pytest.raises(ValueError, match=r"Received: style='fastest'"):
        tfgated.set_inference_style(model, "fastest")


# -- per-gate hidden units and MAC-weighted targets ---------------------------------------------------


def test_per_gate_hidden_units_give_each_gate_its_own_network(tmp_path):
    context = np.random.default_rng(0).normal(size=(5, 4, 4, 6)).astype("float32")
    shared = GumbelGate(3, kind="dependent", hidden_units=4, name="shared")
    own = GumbelGate(3, kind="dependent", hidden_units=4, per_gate_hidden=True, name="own")
    shared(context), own(context)
    assert own.hidden.kernel.shape == (6, 12) and own.norm.gamma.shape == (12,)
    assert own.head.kernel.shape == (3, 4) and own.head.bias.shape == (3,)
    assert shared.hidden.kernel.shape == (6, 4) and shared.head.kernel.shape == (4, 3)
    # gate 1's logit depends only on hidden units 4..7: zero every other head weight and
    # change the others' hidden weights, gate 1 stays; change its own, it moves
    own.head.kernel.assign(np.ones((3, 4), "float32"))
    before = np.asarray(own.compute_logits(context))
    kernel = np.asarray(own.hidden.kernel).copy()
    kernel[:, [0, 1, 2, 3, 8, 9, 10, 11]] += 1.0
    own.hidden.kernel.assign(kernel)
    after = np.asarray(own.compute_logits(context))
    np.testing.assert_allclose(after[:, 1], before[:, 1], atol=1e-6)
    assert np.max(np.abs(after[:, [0, 2]] - before[:, [0, 2]])) > 1e-3
    np.testing.assert_allclose(tfgated.complexity.layer_macs(own, [(None, 4, 4, 6)], [(None, 3)]), 6 * 12 + 12)
    clone = GumbelGate.from_config(own.get_config())
    assert clone.per_gate_hidden is True
    saved_before = {k: v for k, v in shared.get_config().items() if k != "per_gate_hidden"}
    assert GumbelGate.from_config(saved_before).per_gate_hidden is False
    with pytest.raises(ValueError, match="per_gate_hidden"):
        GumbelGate(2, kind="dependent", per_gate_hidden="yes")


def test_gated_model_targets_a_fraction_of_the_gated_macs(tmp_path):
    from tfgated.complexity import gate_mac_weights
    from tfgated.gate_settings import GateSettings

    x = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(8, 1, name="a")(x)
    h, z1 = tfgated.channel_gate(h, 4, name="m1")
    h = keras.layers.Conv2D(2, 3, padding="same", name="b")(h)
    h, z2 = tfgated.channel_gate(h, 1, name="m2")
    y = keras.layers.Dense(3, name="fc")(keras.layers.Flatten(name="flat")(h))
    settings = GateSettings.from_config({"target": 0.3, "target_measure": "macs"})
    model = tfgated.gated_model(x, y, [z1, z2], **settings.loss_arguments())
    loss = model.get_layer("activation_loss")
    conv_a, conv_b, fc = 16 * 2 * 8, 16 * 9 * 8 * 2, 32 * 3
    # a gate weighs the MACs of the layer that makes its channels and of the one that reads them
    assert loss.gate_weights == gate_mac_weights(model) == [conv_a + conv_b, conv_b + fc]
    assert loss.gate_weights[0] != loss.gate_weights[1]  # the plain gate mean would weigh them alike
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path, safe_mode=True).get_layer("activation_loss").gate_weights == loss.gate_weights
    assert GateSettings.from_config({"target": 0.3}).loss_arguments().get("gate_weights") is None
    with pytest.raises(ValueError, match="target_measure"):
        GateSettings.from_config({"target_measure": "flops"})
    with pytest.raises(ValueError, match="one gate weight per gate tensor"):
        loss.set_gate_weights([1.0])


def test_harden_gates_fixes_each_gate_at_its_threshold_decision(fashion_mnist_small):
    x, _ = fashion_mnist_small
    model = small_gated_model(kind="independent")
    rng = np.random.default_rng(0)
    gates = tfgated.gate_layers(model)
    for gate in gates:
        gate.logits.assign(rng.normal(0.0, 1.5, gate.units).astype("float32"))
    decisions = [np.asarray(g.probabilities()) > g.threshold for g in gates]
    tfgated.set_inference_style(model, "threshold")
    before = model.predict(x[:32], verbose=0)
    assert tfgated.harden_gates(model) == len(gates) == 3
    for gate, decision in zip(gates, decisions):
        np.testing.assert_array_equal(np.asarray(gate.logits), np.where(decision, 10.0, -10.0))
    np.testing.assert_allclose(model.predict(x[:32], verbose=0), before, atol=1e-6)  # the same network
    # training samples it: with logits at +-10 a 1,000-sample draw agrees with the decisions
    gate = gates[1]
    samples = np.asarray(gate(np.zeros((1000, 1), "float32"), training=True))
    assert (samples == decisions[1].astype("float32")).all()


def test_harden_gates_refuses_what_it_cannot_fix():
    with pytest.raises(ValueError, match="data-dependent gates"):
        tfgated.harden_gates(small_gated_model(kind="dependent"))
    with pytest.raises(ValueError, match="no tfgated gates"):
        tfgated.harden_gates(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="Received: logit=0"):
        tfgated.harden_gates(small_gated_model(kind="independent"), logit=0)
