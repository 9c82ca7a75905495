"""Training under tf.distribute.MirroredStrategy on 2 logical CPU devices.

TensorFlow's logical devices must be configured before TF initializes, so the
work runs in a fresh subprocess and reports JSON; the other tests are not
disturbed.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import tfgated
    from tfgated.recipes import Recipe, fit_recipe

    def build(bn):
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
        if bn:
            x = keras.layers.BatchNormalization(name="bn1")(x)
        x = keras.layers.ReLU()(x)
        x, z1 = tfgated.channel_gate(x, 2, "independent", name="conv1")
        y = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
        x, z2 = tfgated.residual_gate(x, y, "independent", name="block2")
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(10, activation="softmax", name="head")(x)
        model = tfgated.gated_model(inputs, out, [z1, z2], target=0.3, weight=2.0)
        # nearly deterministic gates: 3 of 4 channel groups open, the residual gate closed
        model.get_layer("conv1_gate").logits.assign(np.array([12.0, 12.0, -12.0, 12.0], "float32"))
        model.get_layer("block2_gate").logits.assign(np.array([-12.0], "float32"))
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}

    def run(bn, distributed):
        keras.utils.set_random_seed(1)
        if distributed:
            with strategy.scope():
                model = build(bn)
                model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        else:
            model = build(bn)
            model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        return model

    single, mirrored = run(False, False), run(False, True)
    mirrored.set_weights(single.get_weights())
    for name, model in (("single", single), ("mirrored", mirrored)):
        ev = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        fit = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
        ce = keras.losses.sparse_categorical_crossentropy(y, model.predict(x, verbose=0)).numpy().mean()
        out[name] = {"eval": ev, "fit_loss": fit["loss"][0], "fit_gate_activation": fit["gate_activation"][0],
                     "ce": float(ce)}

    # a full recipe run (BN, weight decay, cosine schedule, label smoothing) trains under the strategy
    with strategy.scope():
        model = build(True)
        recipe = Recipe(epochs=2, batch_size=16, learning_rate=0.05, weight_decay=1e-4, label_smoothing=0.1)
        recipe.compile(model, steps_per_epoch=4)
    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 10))).batch(16)
    hist = model.fit(ds, epochs=2, verbose=0).history
    out["recipe_fit"] = {k: [float(v) for v in vals] for k, vals in hist.items()}
    print("RESULT" + json.dumps(out, default=float))
    '''
)


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])


@pytest.mark.slow
def test_two_replicas(result):
    assert result["replicas"] == 2


@pytest.mark.slow
def test_gate_loss_and_metric_match_single_device(result):
    single, mirrored = result["single"], result["mirrored"]
    # expected activation: 3 of 4 groups open and the residual gate closed -> mean of 5 elements = 3/5
    assert single["eval"]["gate_activation"] == pytest.approx(0.6, abs=1e-4)
    assert mirrored["eval"]["gate_activation"] == pytest.approx(0.6, abs=1e-4)
    assert mirrored["fit_gate_activation"] == pytest.approx(single["fit_gate_activation"], abs=1e-4)
    # total loss = cross-entropy + weight * (target - activation)^2 = ce + 2 * 0.09, not doubled by replicas
    gate_loss = 2.0 * (0.3 - 0.6) ** 2
    assert single["eval"]["loss"] == pytest.approx(single["ce"] + gate_loss, rel=1e-4)
    assert mirrored["eval"]["loss"] == pytest.approx(single["eval"]["loss"], rel=1e-4)
    assert mirrored["fit_loss"] == pytest.approx(single["fit_loss"], rel=1e-4)


@pytest.mark.slow
def test_recipe_training_runs_under_the_strategy(result):
    hist = result["recipe_fit"]
    assert len(hist["loss"]) == 2 and all(v == v and v < 10 for v in hist["loss"])
    assert all(0.0 <= v <= 1.0 for v in hist["gate_activation"])
