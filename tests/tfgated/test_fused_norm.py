"""The fused batch-norm training path: Keras' results, faster, and gone from what users get."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgated.fused_norm import FusedBatchNormalization, use_fused_batch_norm
from tfgated.quantization import quantize_model
from tfgated.recipes import Recipe


def _train_step(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))
    return y, tape.gradient(loss, [x, *layer.trainable_weights]), [v.numpy() for v in layer.weights]


@pytest.mark.parametrize("scale_center", [True, False])
def test_fused_layer_matches_keras_batch_norm_in_training_and_inference(scale_center):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (16, 5, 5, 7)).astype("float32"))
    kwargs = {"momentum": 0.9, "epsilon": 1e-3, "scale": scale_center, "center": scale_center}
    keras_bn, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    keras_bn.build(x.shape)
    fused.build(x.shape)
    weights = [rng.normal(size=v.shape).astype("float32") for v in keras_bn.weights]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
    keras_bn.set_weights(weights)
    fused.set_weights(weights)
    (y_k, g_k, w_k), (y_f, g_f, w_f) = _train_step(keras_bn, x), _train_step(fused, x)
    np.testing.assert_allclose(y_f, y_k, atol=1e-5)
    for a, b in zip(g_f, g_k):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    for a, b in zip(w_f, w_k):  # moving statistics updated with the biased variance, like Keras
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused(x, training=False), keras_bn(x, training=False), rtol=1e-6, atol=1e-5)


def _model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))


@pytest.mark.parametrize("bits", [32, 16])
def test_recipe_trains_with_the_fused_layer_like_keras_and_hands_back_keras_batch_norm(tmp_path, bits):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    recipe = Recipe(epochs=2, batch_size=16, learning_rate=0.1, cosine_decay=False, precision_bits=bits)
    results = []
    for prepare in (recipe.prepare_model, lambda model: quantize_model(model, bits=bits)):  # fused, Keras' own
        prepared = prepare(_model())
        layers = [getattr(layer, "layer", layer) for layer in prepared.layers]
        results.append(any(isinstance(layer, FusedBatchNormalization) for layer in layers))
        recipe.compile(prepared, steps_per_epoch=4)
        prepared.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(Recipe.finish_model(prepared))
    fused_used, finished, keras_used, reference = results
    assert fused_used and not keras_used
    assert type(finished.get_layer("bn")) is keras.layers.BatchNormalization
    for a, b in zip(finished.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    path = str(tmp_path / "m.keras")
    finished.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), finished.predict(x, verbose=0), atol=1e-6)


def test_models_without_batch_norm_are_returned_as_is_and_finish_model_swaps_back():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert use_fused_batch_norm(model) is model
    fused = use_fused_batch_norm(_model())
    assert isinstance(fused.get_layer("bn"), FusedBatchNormalization)
    assert Recipe.finish_model(fused).get_layer("bn").__class__ is keras.layers.BatchNormalization
