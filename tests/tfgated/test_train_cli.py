"""``python -m tfgated train|evaluate``: run folders, resume after a kill, inference styles, BN recalibration, errors."""

import csv
import json
import os

import keras
import numpy as np
import pytest

import tfgated
from tfgated import train as train_mod
from tfgated.__main__ import main as cli_main


def tiny_model(path):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x, z = tfgated.channel_gate(x, 2, "dependent", name="conv1")
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = tfgated.gated_model(inputs, out, [z], target=0.6, name="tiny")
    model.save(path)
    return path


@pytest.fixture
def model_file(tmp_path):
    return tiny_model(str(tmp_path / "tiny.keras"))


def test_train_writes_run_folder_and_does_not_retrain(tmp_path, model_file, capsys):
    run = str(tmp_path / "run")
    argv = ["train", "--model", model_file, "--limit", "300", "--epochs", "2", "--batch-size", "64",
            "--run-dir", run, "--verbose", "0", "--set", "label_smoothing=0.1", "--set", "augment=\"flip\""]
    assert cli_main(argv) == 0
    for name in ("config.json", "history.csv", "gate_rates.csv", "main.keras", "model.keras", "metrics.json",
                 "history.png", "gate_rates.png", "polarization.png"):
        assert os.path.exists(os.path.join(run, name)), name
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    test = metrics["test"]
    assert 0 <= test["top1"] <= test["top5"] <= 1 and 0 <= test["gate_activation"] <= 1
    assert test["mode"] == "threshold" and test["examples"] == 300 and test["macs"] <= test["dense_macs"]
    assert metrics["recipe"]["label_smoothing"] == 0.1 and metrics["recipe"]["epochs"] == 2
    with open(os.path.join(run, "history.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    # benchmarks that calibrate on "validation" find the run's own held-out split
    saved = os.path.join(run, "model.keras")
    assert train_mod.training_split(saved) == {"seed": 42, "validation_split": 0.1, "limit": 300}
    assert train_mod.held_out_split(saved, default_seed=0) == (42, 0.1)
    assert train_mod.held_out_split(saved, split_seed=7) == (7, 0.1)
    assert train_mod.training_split(model_file) is None
    assert train_mod.held_out_split(model_file, default_seed=3) == (3, 0.1)
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    # the same folder with other settings is refused
    assert cli_main(argv[:-4] + ["--lr", "0.5"]) == 2
    assert "different run" in capsys.readouterr().err


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


def test_resumes_after_kill(tmp_path, model_file):
    run = str(tmp_path / "run")
    kwargs = dict(limit=200, overrides={"epochs": 3, "batch_size": 50, "cosine_decay": True}, verbose=0)
    with pytest.raises(Kill):
        train_mod.train(model_file, run, callbacks=[KillAfterEpoch(1)], **kwargs)
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    FirstEpoch.first = None
    metrics = train_mod.train(model_file, run, callbacks=[FirstEpoch()], **kwargs)
    assert FirstEpoch.first == 2  # epochs 0 and 1 were not redone
    with open(os.path.join(run, "gate_rates.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert "top1" in metrics["test"]


def test_evaluate_modes_and_json(tmp_path, model_file, capsys):
    run = str(tmp_path / "run")
    train_mod.train(model_file, run, limit=200, overrides={"epochs": 1, "batch_size": 50}, verbose=0)
    out = str(tmp_path / "eval" / "always.json")
    assert cli_main(["evaluate", "--model", run, "--mode", "always_on", "--json", out]) == 0
    with open(out) as f:
        always = json.load(f)
    assert always["gate_activation"] == 1.0 and always["macs"] == always["dense_macs"]
    assert always["examples"] == 200  # the run's --limit is reused
    capsys.readouterr()
    assert cli_main(["evaluate", "--model", run, "--mode", "stochastic", "--runs", "3"]) == 0
    stoch = json.loads(capsys.readouterr().out)
    assert stoch["runs"] == 3 and len(stoch["per_run"]) == 3 and "top1_std" in stoch and "macs_std" in stoch
    assert cli_main(["evaluate", "--model", os.path.join(run, "model.keras"), "--limit", "100",
                     "--batch-size", "32", "--mode", "ensemble", "--runs", "2", "--samples", "3", "--bn-recalibrate",
                     "--recalibrate-batches", "2", "--save", str(tmp_path / "recal.keras")]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["samples"] == 3 and ens["bn_recalibrated_batches"] == 2
    assert 0 < ens["macs"] <= 3 * ens["dense_macs"]  # ensemble MACs count all 3 passes
    # --save keeps the re-estimated batch-norm statistics, loadable in safe mode
    before = keras.saving.load_model(os.path.join(run, "model.keras"), safe_mode=True, compile=False)
    after = keras.saving.load_model(str(tmp_path / "recal.keras"), safe_mode=True, compile=False)
    bn = [layer.name for layer in after.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and any(not np.allclose(before.get_layer(n).moving_mean, after.get_layer(n).moving_mean) for n in bn)
    conv = next(layer.name for layer in after.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(before.get_layer(conv).kernel, after.get_layer(conv).kernel)
    assert cli_main(["evaluate", "--model", run, "--save", str(tmp_path / "recal.h5")]) == 2  # refused up front
    assert not (tmp_path / "recal.h5").exists()


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
    assert train_mod.recalibrate_batch_norm(model, ds, style="threshold", batches=10) == 4
    mean = np.asarray(bn.moving_mean)
    np.testing.assert_allclose(mean[:2], 0.0, atol=1e-6)
    np.testing.assert_allclose(mean[2:], conv_out[..., 2:].mean(axis=(0, 1, 2)), rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    assert "call" not in vars(model.get_layer("g_gate"))  # wrapper removed
    train_mod.recalibrate_batch_norm(model, ds, style="always_on")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), conv_out.mean(axis=(0, 1, 2)), rtol=1e-4)
    # the recalibrated statistics are those of the batches: per-batch variance averaged
    var = np.mean([conv_out[i:i + 10].var(axis=(0, 1, 2)) for i in range(0, 40, 10)], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), var, rtol=1e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "mnist_digits"], "Unknown dataset 'mnist_digits'"),
        (["--data-dir", "/nonexistent/fmnist"], "not found in '/nonexistent/fmnist'"),
        (["--dataset", "cifar10"], "needs data_dir"),
        (["--set", "shake_shake=1"], "Unknown improving switch"),
        (["--set", "label_smoothing=2"], "label_smoothing"),
    ],
)
def test_train_bad_input_messages(tmp_path, model_file, capsys, extra, message):
    rc = cli_main(["train", "--model", model_file, "--run-dir", str(tmp_path / "r"), "--limit", "50", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_train_bad_epochs_and_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["train", "--model", "x", "--epochs", "0"])
    assert info.value.code == 2
    assert "--epochs: expected a positive integer, got '0'" in capsys.readouterr().err
    assert cli_main(["train", "--model", "gumbel_resnet_fashon_mnist", "--run-dir", str(tmp_path / "r")]) == 2
    assert "Unknown model" in capsys.readouterr().err
    assert cli_main(["evaluate", "--model", str(tmp_path / "missing.keras")]) == 2
    assert "not found" in capsys.readouterr().err


def test_preset_recipe_is_translated():
    model, recipe, preset = train_mod.resolve_model_and_recipe(
        "gumbel_resnet_fashion_mnist", overrides={"epochs": 1, "ghost_batch_norm": 16}
    )
    assert recipe.optimizer == "adam" and recipe.cosine_decay and recipe.augment == "pad2_crop_flip"
    assert recipe.epochs == 1 and recipe.weight_decay == preset["recipe"]["weight_decay"]
    from tfgated.recipes import GhostBatchNormalization

    assert tfgated.inference.find_layers(model, GhostBatchNormalization)


def test_gate_settings_replace_the_presets_and_are_recorded(tmp_path):
    preset = "gumbel_resnet_fashion_mnist_ind_pb_t0.4"
    run = tmp_path / "run"
    gates = {"open_probability": 0.75, "weight": 10.0}
    train_mod.train(preset, run, limit=600, overrides={"epochs": 1, "batch_size": 64}, gates=gates, verbose=0)
    assert json.loads((run / "config.json").read_text())["gates"] == gates
    model, _, _ = train_mod.resolve_model_and_recipe(preset, gates=gates)
    assert model.get_layer("activation_loss").weight == 10.0
    for gate in tfgated.gate_layers(model):
        np.testing.assert_allclose(np.asarray(gate.probabilities()), 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="has no gates"):
        train_mod.resolve_model_and_recipe("resnet_fashion_mnist", gates=gates)
    with pytest.raises(ValueError, match="is a model file"):
        train_mod.resolve_model_and_recipe(str(tmp_path / "m.keras"), gates=gates)


def test_held_out_split_keeps_the_recorded_fraction_under_an_explicit_seed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 42, "validation_split": 0.2}))
    model_path = str(run / "model.keras")  # only its folder is read
    assert train_mod.held_out_split(model_path) == (42, 0.2)
    assert train_mod.held_out_split(model_path, split_seed=7) == (7, 0.2)
    assert train_mod.held_out_split(None, split_seed=7) == (7, 0.1)


def test_class_labels_reads_class_ids_and_one_hot_batches_alike():
    import tensorflow as tf

    ids = np.array([3, 0, 9, 9, 1], dtype="int64")
    images = np.zeros((5, 2, 2, 1), "float32")
    sparse = tf.data.Dataset.from_tensor_slices((images, ids)).batch(2)
    one_hot = tf.data.Dataset.from_tensor_slices((images, np.eye(10, dtype="float32")[ids])).batch(2)
    np.testing.assert_array_equal(train_mod.class_labels(sparse), ids)
    np.testing.assert_array_equal(train_mod.class_labels(one_hot), ids)


def test_warm_start_copies_the_same_named_layers(tmp_path, model_file, capsys):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    dense = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x), name="dense")
    gated = keras.saving.load_model(model_file)
    copied, skipped = train_mod.transfer_weights(dense, gated)
    assert sorted(copied) == ["bn1", "conv1", "head"]
    assert skipped["conv1_gate"] == "not in the source model"
    for name in copied:
        for mine, theirs in zip(gated.get_layer(name).get_weights(), dense.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    copied, skipped = train_mod.transfer_weights(dense, gated, exclude=["head"])
    assert "head" not in copied and skipped["head"] == "excluded"
    # from a gated model with another target and style, the gates' logits come along but the
    # settings (target rate, inference style, threshold) do not
    other = keras.saving.load_model(model_file)
    other.get_layer("activation_loss").set_target(0.2)
    tfgated.set_inference_style(other, "stochastic", threshold=0.3)
    other_gate = other.get_layer("conv1_gate")
    for variable in other_gate.trainable_weights:
        variable.assign(variable + 0.5)
    copied, skipped = train_mod.transfer_weights(other, gated)
    assert "conv1_gate" in copied and "activation_loss" in skipped
    assert float(gated.get_layer("activation_loss").target_value.numpy()) == pytest.approx(0.6)
    gate = gated.get_layer("conv1_gate")
    for mine, theirs in zip(gate.trainable_weights, other_gate.trainable_weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert int(gate.style_id.numpy()) != int(other_gate.style_id.numpy())
    assert float(gate.threshold_value.numpy()) == pytest.approx(0.5)
    narrow = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")])
    with pytest.raises(ValueError, match="nothing to warm-start from"):
        train_mod.transfer_weights(narrow, gated)

    source = str(tmp_path / "dense.keras")
    dense.save(source)
    run = tmp_path / "run"
    argv = ["train", "--model", model_file, "--init-from", source, "--limit", "200", "--epochs", "1",
            "--batch-size", "64", "--run-dir", str(run), "--verbose", "0"]
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert f"Warm start from {source}: 3 layers copied" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["init_from"] == source
