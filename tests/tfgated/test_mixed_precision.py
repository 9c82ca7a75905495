"""16-bit training from the start through Keras' ``mixed_float16`` dtype policy."""

import keras
import numpy as np
import pytest

import tfgated


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.slow
def test_gated_model_trains_and_evaluates_under_mixed_float16(mixed_float16, fashion_mnist_small):
    x, y = fashion_mnist_small
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    h, z1 = tfgated.channel_gate(h, granularity=4, kind="independent", name="conv")
    branch = keras.layers.Conv2D(16, 3, padding="same", name="branch")(h)
    h, z2 = tfgated.residual_gate(h, branch, kind="dependent", name="block")
    h = keras.layers.GlobalAveragePooling2D()(h)
    logits = keras.layers.Dense(10, name="logits")(h)
    # The classifier's softmax stays in float32, as Keras' mixed-precision guide advises.
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    model = tfgated.gated_model(inputs, outputs, [z1, z2], target=0.5)
    assert model.get_layer("conv").compute_dtype == "float16"
    assert model.get_layer("conv").kernel.dtype == "float32"  # variables stay float32
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    history = model.fit(x[:1536], y[:1536], batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    result = model.evaluate(x[1536:], y[1536:], verbose=0, return_dict=True)
    assert np.isfinite(result["loss"]) and result["accuracy"] > 0.25  # chance is 0.1
    assert 0.0 < result["gate_activation"] <= 1.0
    probs = tfgated.predict(model, x[:8], style="threshold")
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_zoo_presets_train_under_mixed_float16_with_float32_probabilities(mixed_float16, fashion_mnist_small):
    """A zoo model compiled by its recipe (accuracy and top-5 metrics) trains under the policy:
    the classifier keeps float32, as Keras' mixed-precision guide advises."""
    from tfgated import zoo

    x, y = fashion_mnist_small
    model = zoo.load("gumbel_resnet_fashion_mnist")
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.outputs[0].dtype == "float32"
    assert any(layer.compute_dtype == "float16" for layer in model.layers if layer.weights)
    history = model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1]) and "top5" in history.history
    probs = model.predict(x[:8], verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
