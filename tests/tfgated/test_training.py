"""The training mechanism (:mod:`tfgated.train`): run folders of a built model, resume after a
kill, warm starts, batch-norm recalibration, held-out splits, labels."""

import csv
import json
import os

import keras
import numpy as np
import pytest

import tfgated
from tfgated.recipes import Recipe
from tiny_fixtures import tiny_gated_model
from tfgated.train import (
    RunData,
    class_labels,
    held_out_split,
    open_run,
    recalibrate_batch_norm,
    train_model,
    transfer_weights,
)


class Kill(Exception):
    pass


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.kill_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.kill_epoch:
            raise Kill


class FirstEpoch(keras.callbacks.Callback):
    first = None

    def on_epoch_begin(self, epoch, logs=None):
        if FirstEpoch.first is None:
            FirstEpoch.first = epoch


def _train(run, callbacks):
    """One attempt at the run, as a caller of the mechanism makes it: open, seed, build, train."""
    data = RunData(limit=200)
    config = {"model": "tiny", **data.as_config()}
    finished = open_run(run, config)
    if finished is not None:
        return finished
    keras.utils.set_random_seed(data.seed)
    recipe = Recipe.from_dict({"epochs": 3, "batch_size": 50, "cosine_decay": True})
    return train_model(tiny_gated_model(), recipe, run, data, config, verbose=0, callbacks=callbacks)


def test_train_model_resumes_after_kill_and_does_not_retrain(tmp_path, capsys):
    run = str(tmp_path / "run")
    with pytest.raises(Kill):
        _train(run, [KillAfterEpoch(1)])
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    FirstEpoch.first = None
    metrics = _train(run, [FirstEpoch()])
    assert FirstEpoch.first == 2  # epochs 0 and 1 were not redone
    for log in ("gate_rates.csv", "history.csv"):  # each epoch once, counted from 0 in both logs
        with open(os.path.join(run, log)) as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"], log
    assert not os.path.exists(os.path.join(run, "backup"))  # removed once main.keras was written
    assert metrics["test"]["examples"] == 200 and metrics["recipe"]["epochs"] == 3
    recorded = json.loads(open(os.path.join(run, "config.json")).read())
    assert recorded["limit"] == 200 and recorded["recipe"]["cosine_decay"] is True
    capsys.readouterr()
    assert _train(run, [KillAfterEpoch(0)])["test"] == metrics["test"]  # finished: not trained again
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds a different run"):
        open_run(run, {"model": "tiny", **RunData(limit=100).as_config()})
    assert open_run(run, {"model": "other"}, overwrite=True) is None
    assert os.listdir(run) == []


def test_run_data_checks_the_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist_digits'"):
        RunData(dataset="mnist_digits")


def test_bn_recalibration_follows_the_gate_style():
    """conv -> channel gate -> BN: closed channels have zero mean only when the gates really close."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x, z = tfgated.channel_gate(x, 2, "independent", name="g")
    x = keras.layers.BatchNormalization(name="bn")(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = tfgated.gated_model(inputs, out, [z])
    model.get_layer("g_gate").logits.assign(np.array([-5.0, 5.0], "float32"))  # group 0 closed
    rng = np.random.default_rng(0)
    x_data = (rng.normal(size=(40, 6, 6, 2)) + 1.0).astype("float32")
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x_data, np.zeros(40))).batch(10)
    conv_out = np.asarray(keras.Model(inputs, model.get_layer("conv").output)(x_data))
    bn = model.get_layer("bn")
    assert recalibrate_batch_norm(model, ds, style="threshold", batches=10) == 4
    mean = np.asarray(bn.moving_mean)
    np.testing.assert_allclose(mean[:2], 0.0, atol=1e-6)
    np.testing.assert_allclose(mean[2:], conv_out[..., 2:].mean(axis=(0, 1, 2)), rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    assert "call" not in vars(model.get_layer("g_gate"))  # wrapper removed
    recalibrate_batch_norm(model, ds, style="always_on")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), conv_out.mean(axis=(0, 1, 2)), rtol=1e-4)
    # the recalibrated statistics are those of the batches: per-batch variance averaged
    var = np.mean([conv_out[i:i + 10].var(axis=(0, 1, 2)) for i in range(0, 40, 10)], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), var, rtol=1e-3)


def test_held_out_split_keeps_the_recorded_fraction_under_an_explicit_seed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 42, "validation_split": 0.2}))
    model_path = str(run / "model.keras")  # only its folder is read
    assert held_out_split(model_path) == (42, 0.2)
    assert held_out_split(model_path, split_seed=7) == (7, 0.2)
    assert held_out_split(None, split_seed=7) == (7, 0.1)


def test_class_labels_reads_class_ids_and_one_hot_batches_alike():
    import tensorflow as tf

    ids = np.array([3, 0, 9, 9, 1], dtype="int64")
    images = np.zeros((5, 2, 2, 1), "float32")
    sparse = tf.data.Dataset.from_tensor_slices((images, ids)).batch(2)
    one_hot = tf.data.Dataset.from_tensor_slices((images, np.eye(10, dtype="float32")[ids])).batch(2)
    np.testing.assert_array_equal(class_labels(sparse), ids)
    np.testing.assert_array_equal(class_labels(one_hot), ids)


def test_warm_start_copies_the_same_named_layers():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    dense = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x), name="dense")
    gated = tiny_gated_model()
    copied, skipped = transfer_weights(dense, gated)
    assert sorted(copied) == ["bn1", "conv1", "head"]
    assert skipped["conv1_gate"] == "not in the source model"
    for name in copied:
        for mine, theirs in zip(gated.get_layer(name).get_weights(), dense.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    copied, skipped = transfer_weights(dense, gated, exclude=["head"])
    assert "head" not in copied and skipped["head"] == "excluded"
    # from a gated model with another target and style, the gates' logits come along but the
    # settings (target rate, inference style, threshold) do not
    other = tiny_gated_model()
    other.get_layer("activation_loss").set_target(0.2)
    tfgated.set_inference_style(other, "stochastic", threshold=0.3)
    other_gate = other.get_layer("conv1_gate")
    for variable in other_gate.trainable_weights:
        variable.assign(variable + 0.5)
    copied, skipped = transfer_weights(other, gated)
    assert "conv1_gate" in copied and "activation_loss" in skipped
    assert float(gated.get_layer("activation_loss").target_value.numpy()) == pytest.approx(0.6)
    gate = gated.get_layer("conv1_gate")
    for mine, theirs in zip(gate.trainable_weights, other_gate.trainable_weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert int(gate.style_id.numpy()) != int(other_gate.style_id.numpy())
    assert float(gate.threshold_value.numpy()) == pytest.approx(0.5)
    narrow = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")])
    with pytest.raises(ValueError, match="nothing to warm-start from"):
        transfer_weights(narrow, gated)
