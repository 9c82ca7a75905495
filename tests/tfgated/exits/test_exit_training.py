"""tfgated.exits.training: SIPA's soft smoothing loss, head-only training, the loss helpers."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgated import exits as ee


def test_soft_smoothing_hand_value_and_label_formats():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], "float32")
    labels = np.array([0, 1])
    expected = ((1 + 0.7) * -math.log(0.7) + (1 + 0.6) * -math.log(0.3)) / 2
    loss = ee.SoftSmoothingLoss()
    assert float(loss(labels, probs)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(np.eye(3)[labels], probs)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(labels[:, None], probs)) == pytest.approx(expected, rel=1e-5)
    # reference smoothing convention: 1 - s on the true class, s / (C - 1) elsewhere
    s = 0.2
    ce0 = -(0.8 * math.log(0.7) + 0.1 * math.log(0.2) + 0.1 * math.log(0.1))
    ce1 = -(0.1 * math.log(0.1) + 0.8 * math.log(0.3) + 0.1 * math.log(0.6))
    smoothed = ((1.7 * ce0) + (1.6 * ce1)) / 2
    assert float(ee.SoftSmoothingLoss(label_smoothing=s)(labels, probs)) == pytest.approx(smoothed, rel=1e-5)
    logits = np.log(probs)
    assert float(ee.SoftSmoothingLoss(from_logits=True)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        ee.SoftSmoothingLoss(label_smoothing=1.5)


def _numeric_grad(logits, label):
    def f(z):
        p = np.exp(z - z.max())
        p /= p.sum()
        return (1 + p.max()) * -np.log(p[label])

    grad = np.zeros_like(logits)
    for i in range(len(logits)):
        step = np.zeros_like(logits)
        step[i] = 1e-6
        grad[i] = (f(logits + step) - f(logits - step)) / 2e-6
    return grad


def test_soft_smoothing_confidence_is_differentiated_like_the_reference():
    logits = np.array([[1.5, 0.2, -0.4]], "float64")
    grads = {}
    for stop in (False, True):
        z = tf.Variable(logits.astype("float32"))
        with tf.GradientTape() as tape:
            value = ee.SoftSmoothingLoss(from_logits=True, stop_gradient_confidence=stop)([1], z)
        grads[stop] = tape.gradient(value, z).numpy()[0]
    np.testing.assert_allclose(grads[False], _numeric_grad(logits[0], 1), atol=1e-4)
    assert not np.allclose(grads[False], grads[True], atol=1e-3)


def test_soft_smoothing_serializes():
    loss = ee.SoftSmoothingLoss(label_smoothing=0.1, stop_gradient_confidence=True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss), safe_mode=True)
    assert isinstance(restored, ee.SoftSmoothingLoss)
    assert restored.get_config() == loss.get_config()


@pytest.mark.slow
def test_train_exit_keeps_main_weights_and_trains_head(small_data, tiny_model, dataset):
    x, y = small_data
    model = tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)  # non-trivial BN statistics
    with_exit = ee.attach_exit(model, 0, channels=16)
    structure = ee.exit_structure(with_exit)
    head_ids = {id(v) for layer in structure.head_layers for v in layer.weights}
    main_before = {v.path: v.numpy().copy() for v in with_exit.weights if id(v) not in head_ids}
    head_before = {v.path: v.numpy().copy() for v in with_exit.weights if id(v) in head_ids}
    history = ee.train_exit(with_exit, dataset(x, y), epochs=2, loss="softsmoothing", verbose=0,
                            update_main_statistics=False)
    assert len(history.history["loss"]) == 2
    for v in with_exit.weights:
        if id(v) in head_ids:
            continue
        np.testing.assert_array_equal(v.numpy(), main_before[v.path], err_msg=v.path)
    assert any(not np.array_equal(v.numpy(), head_before[v.path]) for v in with_exit.weights if id(v) in head_ids)
    assert all(not layer.trainable for layer in structure.main_layers)
    assert all(layer.trainable for layer in structure.head_layers)
    trainable = {id(v) for v in with_exit.trainable_weights}
    assert trainable and trainable <= head_ids
    # compiled with a loss on the exit output only
    results = with_exit.evaluate(x[:64], (y[:64], y[:64]), verbose=0, return_dict=True)
    assert any("accuracy" in key for key in results)
    expected = float(ee.SoftSmoothingLoss()(y[:64], with_exit.predict(x[:64], verbose=0)[1]))
    assert results["loss"] == pytest.approx(expected, rel=1e-3)


def _trained_with_exit(tiny_model, x, y):
    model = tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    return ee.attach_exit(model, 0, channels=16)


@pytest.mark.slow
def test_train_exit_updates_the_frozen_networks_batch_norm_statistics_as_the_reference(
        small_data, tiny_model, dataset):
    """The reference trains the exit with the main network frozen but in training mode: every
    batch norm of the main network, before and after the exit point, updates its moving
    statistics ("batchnorm stabilization"); kernels, gamma and beta stay as they were."""
    x, y = small_data
    with_exit = _trained_with_exit(tiny_model, x, y)
    structure = ee.exit_structure(with_exit)
    head_ids = {id(v) for layer in structure.head_layers for v in layer.weights}
    before = {v.path: v.numpy().copy() for v in with_exit.weights if id(v) not in head_ids}
    ee.train_exit(with_exit, dataset(x * 2.0 + 0.5, y), epochs=1, verbose=0)  # shifted inputs: new statistics
    changed = {v.path for v in with_exit.weights if id(v) not in head_ids
               and not np.array_equal(v.numpy(), before[v.path])}
    for k in range(3):  # block 0 feeds the exit, blocks 1-2 come after it
        assert {f"block{k}_bn/moving_mean", f"block{k}_bn/moving_variance"} <= changed, changed
    assert all("moving_" in path for path in changed), changed
    # frozen again afterwards; unfreezing the layer makes gamma and beta trainable again
    assert not any(layer.trainable for layer in structure.main_layers)
    assert {id(v) for v in with_exit.trainable_weights} <= head_ids
    bn = with_exit.get_layer("block0_bn")
    bn.trainable = True
    assert bn.gamma.trainable and bn.beta.trainable


@pytest.mark.slow
def test_prune_exit_prunes_only_the_head_and_restabilizes(small_data, tiny_model, dataset):
    x, y = small_data
    with_exit = _trained_with_exit(tiny_model, x, y)
    ee.train_exit(with_exit, dataset(x, y), epochs=1, verbose=0)
    structure = ee.exit_structure(with_exit)
    head_ids = {id(layer) for layer in structure.head_layers}
    main_kernels = {layer.name: layer.kernel.numpy().copy() for layer in structure.main_layers
                    if hasattr(layer, "kernel") and id(layer) not in head_ids}
    rows = ee.prune_exit(with_exit, [0.3, 0.5], dataset(x, y), epochs=1, verbose=0)
    assert [r["sparsity"] for r in rows] == [0.3, 0.5] and all(np.isfinite(r["loss"]) for r in rows)
    head_kernels = [w.numpy() for layer in structure.head_layers for w in layer.weights
                    if w.path.endswith("kernel")]
    zeros = sum(int((k == 0).sum()) for k in head_kernels) / sum(k.size for k in head_kernels)
    assert zeros == pytest.approx(0.5, abs=0.05)
    for name, kernel in main_kernels.items():
        np.testing.assert_array_equal(with_exit.get_layer(name).kernel.numpy(), kernel, err_msg=name)
    from tfgated.pruning import get_pruning_state

    assert get_pruning_state(with_exit) is None  # masks baked in: a plain model again
    with pytest.raises(ValueError, match="increasing sparsities"):
        ee.prune_exit(with_exit, [0.5, 0.3], dataset(x, y))


def test_exit_loss_and_label_spec_choose_the_cross_entropy_for_the_labels(dataset):
    x = np.zeros((4, 2), "float32")
    sparse = dataset(x, np.array([0, 1, 2, 0]))
    dense = dataset(x, np.eye(3, dtype="float32")[[0, 1, 2, 0]])
    assert ee.label_spec(sparse).shape.as_list() == [None]
    assert ee.label_spec(dense).shape.as_list() == [None, 3]
    assert ee.label_spec(x) is None
    assert isinstance(ee.exit_loss("crossentropy", ee.label_spec(sparse), 3), keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(ee.exit_loss("crossentropy", ee.label_spec(dense), 3), keras.losses.CategoricalCrossentropy)
    assert isinstance(ee.exit_loss("softsmoothing"), ee.SoftSmoothingLoss)
    given = keras.losses.Huber()
    assert ee.exit_loss(given) is given
    with pytest.raises(ValueError, match="loss='hinge'"):
        ee.exit_loss("hinge")
