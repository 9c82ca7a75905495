"""Early exits (SIPA "Accelerating"): exit heads, soft smoothing, calibration, split inference."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgated
from tfgated import complexity
from tfgated import early_exit as ee


def tiny_model(gated=False, name="tiny"):
    """12x12 grey input, stem, three residual blocks named block{k}_*, a long skip, 4 classes."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    stem = x
    zs = []
    for k in range(3):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"block{k}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{k}_bn")(y)
        if gated:
            y, z = tfgated.channel_gate(y, 4, "independent", name=f"block{k}", seed=k)
            zs.append(z)
        x = keras.layers.Add(name=f"block{k}_add")([x, y])
    x = keras.layers.Add(name="long_skip")([x, stem])  # crosses any split after block 0
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    if gated:
        return tfgated.gated_model(inputs, outputs, zs, target=0.5, name=name)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def small_data(fashion_mnist_small):
    """256 real Fashion-MNIST images cropped to 12x12, labels folded to 4 classes."""
    x, y = fashion_mnist_small
    return x[:256, 8:20, 8:20, :].copy(), (y[:256] % 4).astype("int64")


def _dataset(x, y, batch=32):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


# ----------------------------------------------------------------------------- soft smoothing


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


# ----------------------------------------------------------------------------- attaching and structure


def test_attach_exit_positions_structure_and_errors():
    model = tiny_model()
    assert ee.resolve_exit_layer(model, 1) == "block1_add"
    assert ee.resolve_exit_layer(model, "block1") == "block1_add"
    assert ee.resolve_exit_layer(model, "block1_bn") == "block1_bn"
    with pytest.raises(ValueError, match=r"'block7_'.*block0, block1, block2"):
        ee.resolve_exit_layer(model, 7)
    with_exit = ee.attach_exit(model, 1, channels=16)
    assert len(with_exit.outputs) == 2 and with_exit.outputs[1].shape[-1] == 4
    structure = ee.exit_structure(with_exit)
    assert [t.shape[-1] for t in structure.exit_points] == [8]
    assert len(structure.crossing) == 2  # block1 output and the stem's long skip
    assert structure.macs["main"] == complexity.count(model).macs
    assert structure.macs["head"] == 8 * 9 * 144 + 8 * 16 * 144 + 16 * 4
    assert structure.head_params == sum(layer.count_params() for layer in structure.head_layers)
    assert {layer.name for layer in structure.head_layers} >= {"exit_dwconv", "exit_conv", "exit_predictions"}
    with pytest.raises(ValueError, match="already use the exit name 'block0'"):
        ee.attach_exit(model, 1, name="block0")
    with pytest.raises(ValueError, match="two outputs"):
        ee.exit_structure(model)


# ----------------------------------------------------------------------------- training


def test_train_exit_keeps_main_weights_and_trains_head(small_data):
    x, y = small_data
    model = tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)  # non-trivial BN statistics
    with_exit = ee.attach_exit(model, 0, channels=16)
    structure = ee.exit_structure(with_exit)
    head_ids = {id(v) for layer in structure.head_layers for v in layer.weights}
    main_before = {v.path: v.numpy().copy() for v in with_exit.weights if id(v) not in head_ids}
    head_before = {v.path: v.numpy().copy() for v in with_exit.weights if id(v) in head_ids}
    history = ee.train_exit(with_exit, _dataset(x, y), epochs=2, loss="softsmoothing", verbose=0)
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


# ----------------------------------------------------------------------------- calibration


def test_calibrate_threshold_meets_drop_and_is_maximal():
    rng = np.random.default_rng(0)
    n, c = 400, 5
    labels = rng.integers(0, c, n)
    main = rng.dirichlet(np.ones(c) * 0.3, n)
    main[np.arange(n), labels] += 0.8
    main /= main.sum(1, keepdims=True)
    exit_probs = rng.dirichlet(np.ones(c) * 0.5, n)
    exit_probs[np.arange(n)[: n // 2], labels[: n // 2]] += 1.0
    exit_probs /= exit_probs.sum(1, keepdims=True)
    full = (main.argmax(1) == labels).mean()
    candidates = np.concatenate([[0.0, 1.0], exit_probs.max(1)])
    for drop in (0.0, 0.01, 0.05):
        cal = ee.calibrate_threshold(exit_probs, main, labels, max_accuracy_drop=drop)
        probs, exited = ee.combine_predictions(exit_probs, main, cal.threshold)
        accuracy = (probs.argmax(1) == labels).mean()
        assert accuracy >= full - drop - 1e-12
        assert cal.accuracy == pytest.approx(accuracy) and cal.exit_ratio == pytest.approx(exited.mean())
        assert cal.full_accuracy == pytest.approx(full)
        # no threshold exits more samples while meeting the drop
        for t in candidates:
            p, e = ee.combine_predictions(exit_probs, main, t)
            if e.mean() > cal.exit_ratio:
                assert (p.argmax(1) == labels).mean() < full - drop
    cal = ee.calibrate_threshold(exit_probs, main, labels, target_exit_ratio=0.3)
    _, exited = ee.combine_predictions(exit_probs, main, cal.threshold)
    assert exited.mean() >= 0.3 and exited.mean() == pytest.approx(cal.exit_ratio)
    with pytest.raises(ValueError, match="exactly one"):
        ee.calibrate_threshold(exit_probs, main, labels)
    with pytest.raises(ValueError, match="target_exit_ratio=1.5"):
        ee.calibrate_threshold(exit_probs, main, labels, target_exit_ratio=1.5)


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("gated", [False, True])
def test_early_exit_inference_matches_per_sample_selection(small_data, gated):
    x, y = small_data
    x = x[:100]
    model = tiny_model(gated=gated)
    with_exit = ee.attach_exit(model, 0, channels=16)
    main_probs, exit_probs = with_exit.predict(x, verbose=0)
    threshold = float(np.median(exit_probs.max(1)))
    runner = ee.EarlyExitModel(with_exit, threshold)
    if gated:  # gate tensors read by the activation loss layer must not be needed after the split
        assert ee.exit_structure(with_exit).main_output is not with_exit.outputs[0]
    seen = []
    part_b = runner.part_b

    def counting_part_b(inputs, training=False):
        seen.append(len(inputs[0]))
        return part_b(inputs, training=training)

    runner.part_b = counting_part_b
    result = runner.predict(x, labels=y[:100], batch_size=32)
    expected, exited = ee.combine_predictions(exit_probs, main_probs, threshold)
    np.testing.assert_array_equal(result.exited, exited)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(result.predictions, expected.argmax(1))
    assert 0 < result.exit_ratio < 1
    assert sum(seen) == int((~exited).sum())  # part B ran on the continuing samples only
    macs = result.macs
    assert result.mean_macs == pytest.approx(macs["part_a"] + macs["head"] + (1 - result.exit_ratio) * macs["part_b"])
    assert result.accuracy == pytest.approx((expected.argmax(1) == y[:100]).mean())
    # dataset input, and thresholds at the ends
    everyone = ee.early_exit_predict(with_exit, _dataset(x, y[:100]), threshold=0.0)
    assert everyone.exit_ratio == 1.0 and everyone.mean_macs == macs["part_a"] + macs["head"]
    nobody = ee.early_exit_predict(with_exit, x, threshold=1.0)
    np.testing.assert_allclose(nobody.probabilities, main_probs, atol=1e-5)
    with pytest.raises(ValueError, match="threshold=1.2"):
        ee.EarlyExitModel(with_exit, 1.2)


def test_two_output_model_saves_and_loads_in_safe_mode(small_data, tmp_path):
    x, y = small_data
    model = tiny_model()
    with_exit = ee.attach_exit(model, 1, channels=16)
    ee.train_exit(with_exit, _dataset(x[:64], y[:64]), epochs=1, verbose=0)
    path = str(tmp_path / "with_exit.keras")
    with_exit.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(with_exit.predict(x[:16], verbose=0), loaded.predict(x[:16], verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert ee.exit_structure(loaded).macs == ee.exit_structure(with_exit).macs
    a = ee.early_exit_predict(with_exit, x[:32], 0.4)
    b = ee.early_exit_predict(loaded, x[:32], 0.4)
    np.testing.assert_array_equal(a.exited, b.exited)


# ----------------------------------------------------------------------------- risk-coverage, study


def test_risk_coverage_hand_example(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])  # correct, wrong, correct, wrong
    curve = ee.risk_coverage(probs, labels)
    np.testing.assert_allclose(curve.coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [0.0, 1 / 3, 0.5])
    np.testing.assert_allclose(curve.confidence, [0.9, 0.8, 0.6])
    assert curve.aurc == pytest.approx(0.25 * 0 + 0.5 / 3 + 0.25 * 0.5)
    assert curve.risk_at(0.5) == pytest.approx(1 / 3)
    assert curve.risk_at(1.0) == pytest.approx(0.5)
    path = ee.plot_risk_coverage({"ce": curve, "softsmoothing": curve}, str(tmp_path / "rc.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_exit_position_study_rows_and_table(small_data):
    x, y = small_data
    model = tiny_model()
    data = {"train": _dataset(x[:64], y[:64]), "validation": _dataset(x[64:128], y[64:128]),
            "test": _dataset(x[128:192], y[128:192])}
    study = ee.exit_position_study(model, [0, 2], data, thresholds=(0.3, 0.5), epochs=1, max_accuracy_drop=0.05,
                                   head=None)
    assert [r["exit_layer"] for r in study.rows] == ["block0_add", "block2_add"]
    first, last = study.rows
    assert first["exit_path_macs"] < last["exit_path_macs"]
    assert first["main_macs"] == complexity.count(model).macs == study.main_macs
    assert [e["threshold"] for e in first["thresholds"]] == [0.3, 0.5]
    assert first["calibrated"]["validation"]["accuracy_drop"] <= 0.05 + 1e-12
    for row in study.rows:  # the validation saving follows the validation exit ratio
        macs = ee.exit_structure(study.models[row["position"]]).macs
        ratio = row["calibrated"]["validation"]["exit_ratio"]
        expected = 1.0 - (macs["part_a"] + macs["head"] + (1.0 - ratio) * macs["part_b"]) / macs["main"]
        assert row["calibrated"]["validation"]["mac_saving"] == pytest.approx(expected)
    assert study.table.count("\n| ") == 3 and "block2_add" in study.table
    assert set(study.models) == {0, 2}
