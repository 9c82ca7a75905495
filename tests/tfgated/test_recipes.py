"""Recipes: every Improving piece does what it says, on tiny models and real data."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgated
from tfgated.smoothing import SmoothedCrossentropy
from tfgated import recipes
from tfgated.recipes import GhostBatchNormalization, Recipe


def tiny_gated_model(bn=True, kind="independent", activation="relu"):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    if bn:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation(activation)(x)
    x, z = tfgated.channel_gate(x, 2, kind, name="conv1")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, outputs, [z], target=0.5, name="tiny")


def test_unknown_switch_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown improving switch.*'shake_shake'.*Valid switches: epochs"):
        Recipe.from_dict({"shake_shake": True})
    with pytest.raises(ValueError, match="label_smoothing"):
        Recipe().replace(labl_smoothing=0.1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"augment": "cutout"}, "augment"),
        ({"activation": "gelu"}, "activation"),
        ({"ghost_batch_norm": -4}, "ghost_batch_norm"),
        ({"optimizer": "lamb"}, "optimizer"),
        ({"warmup_epochs": 10.0, "epochs": 5}, "warmup_epochs"),
    ],
)
def test_bad_values_name_the_switch(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(changes)


def test_from_dict_coerces_json_numbers_and_round_trips():
    r = Recipe.from_dict({"epochs": 3.0, "learning_rate": 1, "mixup": 0.2})
    assert r.epochs == 3 and isinstance(r.learning_rate, float)
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.one_hot and not Recipe().one_hot
    assert Recipe(activation="swish").model_overrides() == {"activation": "swish"}


def test_cosine_schedule_with_warmup():
    r = Recipe(epochs=10, learning_rate=0.1, warmup_epochs=1.0, cosine_decay=True)
    sched = r.learning_rate_schedule(steps_per_epoch=10)
    lr = [float(sched(s)) for s in (0, 5, 10, 55, 100)]
    assert lr[0] == pytest.approx(0.0, abs=1e-7)
    assert lr[1] == pytest.approx(0.05, rel=1e-4)  # halfway through warmup
    assert lr[2] == pytest.approx(0.1, rel=1e-4)  # warmup done
    assert lr[3] == pytest.approx(0.05, rel=1e-3)  # halfway through the decay
    assert lr[4] == pytest.approx(0.0, abs=1e-6)
    assert Recipe(cosine_decay=False).learning_rate_schedule() == 0.1
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Recipe().learning_rate_schedule()


def test_weight_decay_excludes_bias_bn_and_gates_separately():
    model = tiny_gated_model()
    by_path = lambda vs: {v.path for v in vs}  # noqa: E731
    all_ex = by_path(recipes.weight_decay_exclusions(model))
    assert "conv1/bias" in all_ex and "head/bias" in all_ex
    assert {"bn1/gamma", "bn1/beta"} <= all_ex
    assert "conv1_gate/logits" in all_ex
    assert "conv1/kernel" not in all_ex and "head/kernel" not in all_ex
    only_bn = by_path(recipes.weight_decay_exclusions(model, bias=False, gates=False))
    assert only_bn == {"bn1/gamma", "bn1/beta"}

    # Decoupled decay really spares the excluded variables: zero gradients, one step.
    r = Recipe(weight_decay=0.5, learning_rate=0.1, cosine_decay=False, momentum=0.0, bn_decay=False)
    opt = r.build_optimizer(model)
    for v in model.trainable_variables:
        v.assign(np.ones(v.shape, "float32"))
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    values = {v.path: float(np.asarray(v).ravel()[0]) for v in model.trainable_variables}
    assert values["conv1/kernel"] == pytest.approx(1 - 0.1 * 0.5)
    assert values["bn1/gamma"] == values["conv1/bias"] == values["conv1_gate/logits"] == 1.0
    # bn_decay=True decays BN parameters but still not biases
    model2 = tiny_gated_model()
    opt2 = r.replace(bn_decay=True).build_optimizer(model2)
    for v in model2.trainable_variables:
        v.assign(np.ones(v.shape, "float32"))
    opt2.apply_gradients([(tf.zeros_like(v), v) for v in model2.trainable_variables])
    values = {v.path: float(np.asarray(v).ravel()[0]) for v in model2.trainable_variables}
    # ... except beta, batch norm's bias: the reference's no-bias-decay skips every ".bias"
    assert values["bn1/gamma"] < 1.0 and values["conv1/bias"] == values["bn1/beta"] == 1.0


def test_ghost_batch_norm_normalizes_each_virtual_batch():
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=0.0, epsilon=1e-6)
    rng = np.random.default_rng(0)
    # two virtual batches with very different statistics, plus a smaller remainder
    x = np.concatenate(
        [rng.normal(5.0, 2.0, (4, 3, 3, 2)), rng.normal(-3.0, 0.5, (4, 3, 3, 2)), rng.normal(1, 1, (2, 3, 3, 2))]
    ).astype("float32")
    y = np.asarray(layer(x, training=True))
    for chunk in (slice(0, 4), slice(4, 8), slice(8, 10)):
        part = y[chunk]
        np.testing.assert_allclose(part.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(part.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # moving mean = mean of the virtual batches' means (momentum 0)
    expected = np.mean([x[c].mean(axis=(0, 1, 2)) for c in (slice(0, 4), slice(4, 8), slice(8, 10))], axis=0)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), expected, rtol=1e-4)
    # inference: ordinary BN with moving statistics
    plain = keras.layers.BatchNormalization(epsilon=1e-6)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), np.asarray(plain(x, training=False)), atol=1e-5)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        GhostBatchNormalization(virtual_batch_size=0)


def test_plain_batch_norm_undoes_ghost_batch_norm_with_the_weights():
    model = tiny_gated_model()
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 1)).astype("float32")
    model.get_layer("bn1").moving_variance.assign(np.full((8,), 2.0, "float32"))
    ghost = recipes.use_ghost_batch_norm(model, virtual_batch_size=4)
    plain = recipes.plain_batch_norm(ghost)
    assert type(plain.get_layer("bn1")) is keras.layers.BatchNormalization
    assert plain.get_layer("bn1").get_config() == model.get_layer("bn1").get_config()
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert recipes.plain_batch_norm(model) is model  # nothing to undo


def test_for_plain_fit_keeps_the_optimizer_schedule_and_label_smoothing_and_drops_mixup():
    r = Recipe(epochs=5, learning_rate=0.2, weight_decay=1e-4, cosine_decay=True, warmup_epochs=1.0,
               mixup=0.2, label_smoothing=0.1, lr_boundaries=(2, 4), momentum=0.8)
    plain = r.for_plain_fit()
    assert plain == r.replace(mixup=0.0)
    assert plain.needs_steps_per_epoch
    assert not Recipe(cosine_decay=False).needs_steps_per_epoch
    assert Recipe(cosine_decay=False, lr_boundaries=(3,)).needs_steps_per_epoch
    model = plain.compile(tiny_gated_model(), steps_per_epoch=4, integer_labels=True)
    schedule = r.learning_rate_schedule(steps_per_epoch=4)
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(0)))
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.nesterov
    assert float(model.optimizer.weight_decay) == pytest.approx(1e-4)
    assert isinstance(model.loss, tfgated.SparseLabelSmoothingCrossentropy) and model.loss.label_smoothing == 0.1


def test_use_ghost_batch_norm_keeps_weights_and_saves(tmp_path):
    model = tiny_gated_model()
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype("float32")
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(np.full((8,), 0.3, "float32"))
    ghost = recipes.use_ghost_batch_norm(model, virtual_batch_size=8)
    assert isinstance(ghost.get_layer("bn1"), GhostBatchNormalization)
    assert ghost.get_layer("bn1").virtual_batch_size == 8
    np.testing.assert_allclose(ghost.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    path = os.path.join(tmp_path, "ghost.keras")
    ghost.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("bn1"), GhostBatchNormalization)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ghost.predict(x, verbose=0), atol=1e-5)
    # and it trains with the gate loss
    Recipe(cosine_decay=False, learning_rate=0.01).compile(ghost)
    hist = ghost.fit(x, np.arange(16) % 10, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and "gate_activation" in hist.history


def test_mixup_mixes_images_and_labels_consistently():
    images = tf.constant(np.stack([np.zeros((4, 4, 1)), np.ones((4, 4, 1))]).astype("float32"))
    labels = tf.one_hot([0, 1], 2)
    mixed_x, mixed_y = recipes.mixup_batch(0.4, seed=3)(images, labels)
    mixed_x, mixed_y = np.asarray(mixed_x), np.asarray(mixed_y)
    # every image is a constant l, and its label puts weight l on class 1
    np.testing.assert_allclose(mixed_x[:, 0, 0, 0], mixed_y[:, 1], atol=1e-6)
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        recipes.mixup_batch(0.0)


@pytest.mark.parametrize("policy", [p for p in recipes.AUGMENT_POLICIES if p != "none"])
def test_augmentation_policies_run_on_grayscale_batches(policy):
    layer = recipes.augmentation_layer(policy, seed=1)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    y = np.asarray(layer(x, training=True))
    assert y.shape == x.shape and np.isfinite(y).all()
    assert recipes.augmentation_layer("none") is None


@pytest.mark.slow
def test_label_smoothing_mixup_and_augment_train_on_real_data(fashion_mnist_small):
    r = Recipe(
        epochs=1, batch_size=64, learning_rate=0.05, label_smoothing=0.3, mixup=0.2, augment="flip",
        weight_decay=1e-4, stabilize_epochs=1,
    )
    splits = r.datasets("fashion_mnist", limit=256, validation_split=0.25)
    # Mixed one-hot labels. A Beta(0.2, 0.2) draw rounds to exactly 0 or 1 in float32 in
    # about 4% of batches (no mixing), so look at every batch of two passes, not just one.
    label_peaks = [float(tf.reduce_min(tf.reduce_max(y, axis=1))) for _ in range(2) for _, y in splits.train]
    assert all(y.shape[-1] == 10 for _, y in splits.train.take(1))
    assert len(label_peaks) == 6 and min(label_peaks) < 1.0
    model = tiny_gated_model_28()
    hist = recipes.fit_recipe(model, r, splits, verbose=0)
    assert set(hist.history) >= {"loss", "accuracy", "top5", "gate_activation", "val_accuracy"}
    # the loss really is label-smoothed categorical cross-entropy (SIPA's form: over the other classes)
    loss, _ = r.loss_and_metrics()
    assert isinstance(loss, SmoothedCrossentropy) and loss.label_smoothing == 0.3 and loss.spread == "others"
    stab = r.stabilization()
    assert stab.epochs == 1 and stab.mixup == 0 and stab.learning_rate == r.stabilize_lr
    assert stab.augment == "flip" and not stab.cosine_decay and stab.stabilization() is None
    hist2 = recipes.fit_recipe(model, stab, stab.datasets("fashion_mnist", limit=256, validation_split=0.25), verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(r.stabilize_lr)
    assert np.isfinite(hist2.history["loss"][0])


def tiny_gated_model_28():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x, z = tfgated.channel_gate(x, 2, "independent", name="conv1")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, outputs, [z], target=0.5, name="tiny28")


def test_from_preset_translates_zoo_vocabulary():
    r, ignored = Recipe.from_preset(
        {
            "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
            "epochs": 164, "batch_size": 128,
            "schedule": {"kind": "piecewise", "boundaries_epochs": [82, 123], "factor": 0.1},
            "warmup": {"epochs": 1, "learning_rate": 0.01}, "augment": "pad4_crop_flip",
            "loss": "sparse_categorical_crossentropy", "note": "x", "validation_split": 0.1,
        },
        epochs=2,
    )
    assert r.epochs == 2 and not r.nesterov and not r.cosine_decay
    assert r.lr_boundaries == (82, 123) and r.warmup_epochs == 1.0 and r.augment == "pad4_crop_flip"
    assert set(ignored) == {"loss", "note", "validation_split"}
    sipa, _ = Recipe.from_preset(
        {"schedule": "cosine", "label_smoothing": 0.3, "mixup_alpha": 1.0, "no_bias_decay": True,
         "autoaugment": "cifar100", "optimizer": "adamw"}
    )
    assert sipa.cosine_decay and sipa.mixup == 1.0 and not sipa.bias_decay and sipa.augment == "autoaugment_micronet_crop_flip"
    assert sipa.optimizer == "adam"
    with pytest.raises(ValueError, match="Unknown improving switch"):
        Recipe.from_preset({}, warp_drive=1)


def test_step_decay_schedule():
    r = Recipe(cosine_decay=False, lr_boundaries=(2, 4), lr_decay_factor=0.1, epochs=6)
    sched = r.learning_rate_schedule(steps_per_epoch=10)
    assert [float(sched(s)) for s in (0, 25, 45)] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="lr_boundaries"):
        Recipe(lr_boundaries=(4, 2))


def test_pad_crop_flip_shifts_each_example_independently():
    fn = recipes.pad_crop_flip(2, seed=0)
    x = np.zeros((64, 8, 8, 1), "float32")
    x[:, 3:5, 3:5] = 1.0  # a centred square
    y = np.asarray(fn(tf.constant(x)))
    assert y.shape == x.shape
    assert np.allclose(y.sum(axis=(1, 2, 3)), 4.0)  # pad 2 never cuts the centred square
    centres = {tuple(np.argwhere(img[..., 0] > 0).mean(axis=0)) for img in y}
    assert len(centres) > 5  # offsets differ between examples
    assert max(abs(c - 3.5) for cs in centres for c in cs) <= 2


def test_warmup_then_step_decay_keeps_both():
    """A preset with warmup and step decay (the CIFAR ResNet recipe) warms up, then decays at the boundaries."""
    r = Recipe(epochs=6, learning_rate=0.1, cosine_decay=False, warmup_epochs=1.0, lr_boundaries=(3, 5))
    schedule = r.learning_rate_schedule(steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 29, 31, 51)]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.01, 0.001])
    restored = recipes.WarmupPiecewiseDecay.from_config(schedule.get_config())
    assert float(restored(31)) == pytest.approx(0.01)


def test_label_smoothing_over_the_other_classes_and_over_all_classes():
    from tfgated.smoothing import smooth_labels

    y = np.eye(4, dtype="float32")[[2]]
    others = np.asarray(smooth_labels(y, 0.3, "others"))
    keras_form = np.asarray(smooth_labels(y, 0.3, "all"))
    np.testing.assert_allclose(others, [[0.1, 0.1, 0.7, 0.1]], atol=1e-6)  # SIPA: 0.7 and 0.3 / (C - 1)
    np.testing.assert_allclose(keras_form, [[0.075, 0.075, 0.775, 0.075]], atol=1e-6)  # Keras: + 0.3 / C
    pred = np.array([[0.1, 0.2, 0.6, 0.1]], "float32")
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.3)(y, pred)
    assert float(SmoothedCrossentropy(0.3, "all")(y, pred)) == pytest.approx(float(keras_loss), rel=1e-5)
    assert float(SmoothedCrossentropy(0.3, "others")(y, pred)) == pytest.approx(-np.sum(others * np.log(pred)), rel=1e-5)
    # the recipe uses SIPA's form by default, Keras' on request; both serialize
    assert isinstance(Recipe(label_smoothing=0.3).loss_and_metrics()[0], SmoothedCrossentropy)
    assert isinstance(Recipe(label_smoothing=0.3, label_smoothing_spread="all").loss_and_metrics()[0],
                      keras.losses.CategoricalCrossentropy)
    restored = keras.losses.deserialize(keras.losses.serialize(SmoothedCrossentropy(0.2, "others")))
    assert restored.label_smoothing == 0.2 and restored.spread == "others"
    with pytest.raises(ValueError, match="label_smoothing_spread"):
        Recipe(label_smoothing_spread="uniform")
    assert Recipe().bn_decay is True and Recipe().bias_decay is False  # SIPA: only no-bias-decay helps


def test_train_on_validation_trains_on_both_splits():
    kwargs = {"limit": 200, "validation_split": 0.25}
    held_out = Recipe(batch_size=10).datasets("fashion_mnist", **kwargs)
    merged = Recipe(batch_size=10, train_on_validation=True).datasets("fashion_mnist", **kwargs)
    assert merged.validation is None and held_out.validation is not None
    assert sum(int(x.shape[0]) for x, _ in merged.train) == 200
    assert sum(int(x.shape[0]) for x, _ in held_out.train) == 150
    with pytest.raises(ValueError, match="train_on_validation"):
        Recipe().datasets("fashion_mnist", train_on_validation=True, **kwargs)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_label_smoothing_equals_categorical_smoothing_on_one_hot_labels(from_logits):
    from tfgated.smoothing import SparseLabelSmoothingCrossentropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype("float32")
    pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    labels = rng.integers(0, 5, size=6)
    reference = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.3)(np.eye(5)[labels], pred)
    loss = SparseLabelSmoothingCrossentropy(0.3, "all", from_logits=from_logits)
    for y in (labels, labels.reshape(-1, 1)):
        assert float(loss(y, pred)) == pytest.approx(float(reference), rel=1e-5)
    assert float(loss(labels, pred)) != pytest.approx(
        float(keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)(labels, pred)), rel=1e-3
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss), safe_mode=True)
    assert type(restored) is SparseLabelSmoothingCrossentropy and restored.label_smoothing == 0.3
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 1\). Received: label_smoothing=1.0"):
        SparseLabelSmoothingCrossentropy(1.0)


def test_a_plain_fit_compile_keeps_label_smoothing_and_refuses_mixup_on_integer_labels():
    from tfgated.smoothing import SparseLabelSmoothingCrossentropy

    loss, _ = Recipe(label_smoothing=0.1).for_plain_fit().loss_and_metrics(integer_labels=True)
    assert isinstance(loss, SparseLabelSmoothingCrossentropy) and loss.label_smoothing == 0.1
    assert Recipe(label_smoothing=0.1, mixup=0.2).for_plain_fit().mixup == 0.0
    with pytest.raises(ValueError, match="Mixup needs one-hot labels"):
        Recipe(mixup=0.2).loss_and_metrics(integer_labels=True)
