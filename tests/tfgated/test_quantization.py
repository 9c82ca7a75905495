"""16-bit quantization-aware training (tfgated.quantization) and its recipe switch."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgated.quantization import (
    FakeQuantize,
    QuantizeWrapper,
    fake_quantize,
    is_quantized,
    quantize_model,
    round_weights,
    strip_quantization,
)
from tfgated.recipes import Recipe


def _values():
    # not float16-representable: 1 + 2**-12 lies between two float16 neighbours, 1e-6 is subnormal
    return np.array([[1.0 + 2.0**-12, 0.1, -3.14159265, 1e-6, 60001.0, 2.0]], dtype="float32")


def _is_float16(array):
    array = np.asarray(array)
    return np.array_equal(array, array.astype(np.float16).astype(array.dtype))


def test_fake_quantize_forward_is_float16_rounding():
    x = _values()
    out = np.asarray(fake_quantize(keras.ops.convert_to_tensor(x), 16))
    np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))
    assert not np.array_equal(out, x)  # the rounding did something
    np.testing.assert_array_equal(np.asarray(fake_quantize(keras.ops.convert_to_tensor(x), 32)), x)
    np.testing.assert_array_equal(np.asarray(FakeQuantize()(x)), out)


def test_fake_quantize_gradient_passes_straight_through():
    x = tf.Variable(_values())
    w = tf.constant([[3.0, -2.0, 0.5, 7.0, 1.0, -1.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w * fake_quantize(x, 16) ** 2)
    grad = tape.gradient(loss, x).numpy()
    # d/dx w * q(x)^2 with dq/dx = 1: 2 * w * q(x)
    rounded = _values().astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(grad, 2 * w.numpy() * rounded, rtol=1e-6)


def test_bits_are_checked():
    with pytest.raises(ValueError, match=r"Expected bits to be one of \[16, 32\]. Received: bits=8"):
        fake_quantize(keras.ops.ones((2,)), 8)
    with pytest.raises(ValueError, match="bits=True"):
        QuantizeWrapper(keras.layers.Dense(2), bits=True)
    with pytest.raises(ValueError, match="precision_bits|bits=8"):
        Recipe(precision_bits=8)


def test_wrapper_uses_rounded_weights_and_trains_the_float32_ones():
    dense = keras.layers.Dense(3, use_bias=False)
    dense.build((None, 6))
    kernel = np.random.default_rng(0).normal(size=(6, 3)).astype("float32") + 2.0**-12
    dense.kernel.assign(kernel)
    wrapper = QuantizeWrapper(dense)
    x = _values()
    rounded_kernel = kernel.astype(np.float16).astype(np.float32)
    expected = (x.astype(np.float16).astype(np.float32) @ rounded_kernel).astype(np.float16).astype(np.float32)
    xq = x.astype(np.float16).astype(np.float32)  # the input as the previous wrapped layer hands it on
    with tf.GradientTape() as tape:
        out = wrapper(xq)
        loss = tf.reduce_sum(out)
    np.testing.assert_array_equal(np.asarray(out), expected)
    grad = tape.gradient(loss, dense.kernel.value)
    assert grad is not None
    np.testing.assert_allclose(np.asarray(grad), np.repeat(xq.T, 3, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(dense.kernel.numpy(), kernel)  # the float32 weights are untouched


def test_wrapper_applies_batch_norm_statistics_updates():
    bn = keras.layers.BatchNormalization(momentum=0.5)
    wrapper = QuantizeWrapper(bn)
    x = np.full((4, 2), 3.0, dtype="float32")
    wrapper(x, training=True)
    np.testing.assert_allclose(bn.moving_mean.numpy(), [1.5, 1.5])


def _small_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("swish", name="act")(x)
    skip = keras.layers.Conv2D(4, 1, name="skip")(x)
    x = keras.layers.Add(name="add")([x, skip])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))


@pytest.mark.slow
def test_quantized_model_trains_saves_reloads_safely_and_strips(tmp_path):
    model = _small_model()
    qat = quantize_model(model, bits=16)
    assert is_quantized(qat) and not is_quantized(model)
    assert quantize_model(model, bits=32) is model
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    before = model.get_layer("conv").kernel.numpy().copy()
    qat.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=2, batch_size=8, verbose=0)
    # the shared float32 weights trained (and moved by less than float16 steps in places)
    assert not np.array_equal(model.get_layer("conv").kernel.numpy(), before)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert is_quantized(loaded)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    plain = strip_quantization(qat)
    assert not is_quantized(plain) and [layer.name for layer in plain.layers] == [layer.name for layer in model.layers]
    assert all(_is_float16(w) for w in plain.get_weights())
    # only the activations' rounding differs between the quantized and the stripped network
    np.testing.assert_allclose(plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=2e-3)


def test_round_weights_rounds_in_place():
    layer = keras.layers.Dense(2)
    layer.build((None, 6))
    layer.kernel.assign(np.full((6, 2), 1.0 + 2.0**-12, dtype="float32"))
    assert not _is_float16(layer.kernel.numpy())
    assert round_weights(layer, 16) is layer
    assert _is_float16(layer.kernel.numpy()) and layer.kernel.numpy()[0, 0] == 1.0


def test_recipe_switch_quantizes_and_serializes_backwards_compatibly():
    recipe = Recipe(precision_bits=16)
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    old = {k: v for k, v in Recipe().to_dict().items() if k != "precision_bits"}  # a recipe JSON of before
    assert Recipe.from_dict(old).precision_bits == 32
    model = _small_model()
    assert is_quantized(recipe.prepare_model(model))
    assert not is_quantized(Recipe().prepare_model(model))
    # a preset's precision_bits is its deployment precision, not a training switch
    from_preset, ignored = Recipe.from_preset({"precision_bits": 16, "learning_rate": 0.05})
    assert from_preset.precision_bits == 32 and ignored == {"precision_bits": 16}
    assert Recipe.from_preset({"precision_bits": 16}, precision_bits=16)[0].precision_bits == 16
