"""``python -m tfgated train``: run folders, resume, presets and their recipes, gate settings, warm starts, errors."""

import csv
import json
import os

import numpy as np
import pytest

import tfgated
from tfgated.__main__ import main as cli_main
from tfgated.cli.train import TrainOptions, resolve_model_and_recipe, train
from tfgated.data import load_dataset
from tfgated.io import load_model
from tfgated.train import held_out_split, training_split


@pytest.mark.slow
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
    assert test["mode"] == "threshold" and test["examples"] == 300 and test["macs"] <= test["dense_macs"]
    # the recorded accuracy is that of the written model on the run's 300 test images
    images, labels = load_dataset("fashion_mnist", limit=300, batch_size=300, shuffle_buffer=0).test.get_single_element()
    predicted = np.asarray(load_model(os.path.join(run, "model.keras")).predict(images, verbose=0)).argmax(-1)
    assert test["top1"] == pytest.approx(float(np.mean(predicted == np.asarray(labels))))
    assert test["top1"] <= test["top5"]
    assert metrics["recipe"]["label_smoothing"] == 0.1 and metrics["recipe"]["epochs"] == 2
    with open(os.path.join(run, "history.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    # benchmarks that calibrate on "validation" find the run's own held-out split
    saved = os.path.join(run, "model.keras")
    assert training_split(saved) == {"seed": 42, "validation_split": 0.1, "limit": 300}
    assert held_out_split(saved, default_seed=0) == (42, 0.1)
    assert held_out_split(saved, split_seed=7) == (7, 0.1)
    assert training_split(model_file) is None
    assert held_out_split(model_file, default_seed=3) == (3, 0.1)
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    # the same folder with other settings is refused
    assert cli_main(argv[:-4] + ["--lr", "0.5"]) == 2
    assert "different run" in capsys.readouterr().err


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
    assert not (tmp_path / "r").exists()  # refused before the run folder is created


def test_multi_worker_strategy_needs_tf_config(tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    rc = cli_main(["train", "--model", model_file, "--run-dir", str(tmp_path / "r"), "--strategy", "multi_worker"])
    assert rc == 2
    assert "reads the cluster from TF_CONFIG, which is not set" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_bad_epochs_and_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["train", "--model", "x", "--epochs", "0"])
    assert info.value.code == 2
    assert "--epochs: expected a positive integer, got '0'" in capsys.readouterr().err
    assert cli_main(["train", "--model", "gumbel_resnet_fashon_mnist", "--run-dir", str(tmp_path / "r")]) == 2
    assert "Unknown model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_a_two_output_exit_model_is_refused_in_one_line(tmp_path, capsys):
    """Its [main, exit] outputs take no single label: a clear refusal instead of Keras' structure error."""
    import keras

    assert cli_main(["train", "--model", "sipa_fashion_mnist_exit", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[main, exit]" in err and "tfgated.exits.train_exit" in err
    assert not (tmp_path / "r").exists()
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(x), keras.layers.Dense(3)(x)])
    two.save(tmp_path / "two.keras")
    assert cli_main(["train", "--model", str(tmp_path / "two.keras"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "2 outputs" in capsys.readouterr().err


def test_preset_recipe_is_translated():
    model, recipe, preset = resolve_model_and_recipe(
        "gumbel_resnet_fashion_mnist", overrides={"epochs": 1, "ghost_batch_norm": 16}
    )
    assert recipe.optimizer == "adam" and recipe.cosine_decay and recipe.augment == "pad2_crop_flip"
    assert recipe.epochs == 1 and recipe.weight_decay == preset["recipe"]["weight_decay"]
    from tfgated.recipes import GhostBatchNormalization

    assert tfgated.inference.find_layers(model, GhostBatchNormalization)


@pytest.mark.slow
def test_gate_settings_replace_the_presets_and_are_recorded(tmp_path):
    preset = "gumbel_resnet_fashion_mnist_ind_pb_t0.4"
    run = tmp_path / "run"
    gates = {"open_probability": 0.75, "weight": 10.0}
    train(preset, run, TrainOptions(limit=600, overrides={"epochs": 1, "batch_size": 64}, gates=gates, verbose=0))
    assert json.loads((run / "config.json").read_text())["gates"] == gates
    model, _, _ = resolve_model_and_recipe(preset, gates=gates)
    assert model.get_layer("activation_loss").weight == 10.0
    for gate in tfgated.gate_layers(model):
        np.testing.assert_allclose(np.asarray(gate.probabilities()), 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="has no gates"):
        resolve_model_and_recipe("resnet_fashion_mnist", gates=gates)
    with pytest.raises(ValueError, match="is a model file"):
        resolve_model_and_recipe(str(tmp_path / "m.keras"), gates=gates)


def test_gate_flag_reaches_the_options_and_a_dense_preset_refuses_it_in_one_line(tmp_path, capsys):
    from tfgated.cli.train import _options, build_parser

    args = build_parser().parse_args(["--model", "sipa_fashion_mnist_gated", "--gate", "gradient_scale=0",
                                      "--gate", "weight=0"])
    assert _options(args).gates == {"gradient_scale": 0, "weight": 0}
    assert _options(build_parser().parse_args(["--model", "sipa_fashion_mnist_gated"])).gates is None
    assert cli_main(["train", "--model", "resnet_fashion_mnist", "--gate", "weight=0",
                     "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no gates" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_init_from_warm_starts_the_run(tmp_path, model_file, capsys):
    import keras

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    dense = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x), name="dense")
    source = str(tmp_path / "dense.keras")
    dense.save(source)
    run = tmp_path / "run"
    argv = ["train", "--model", model_file, "--init-from", source, "--limit", "200", "--epochs", "1",
            "--batch-size", "64", "--run-dir", str(run), "--verbose", "0"]
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert f"Warm start from {source}: 3 layers copied" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["init_from"] == source


@pytest.mark.slow
def test_harden_gates_fine_tunes_the_pruned_network_as_it_will_run(tmp_path, capsys):
    """The walk of study 9's last phase by the CLI: warm start from a shipped Ind preset,
    ``--harden-gates``: the run's model keeps the source's threshold decisions as logits +-10,
    untouched by training (gates frozen), and the run records the switch."""
    from tfgated import zoo

    preset = "gumbel_resnet_fashion_mnist_ind_pb_t0.6"
    source = zoo.load(preset, compile=False)
    decisions = {g.name: np.asarray(g.probabilities()) > g.threshold for g in tfgated.gate_layers(source)}
    run = tmp_path / "run"
    argv = ["train", "--model", preset, "--init-from", preset, "--harden-gates", "--limit", "300", "--epochs", "1",
            "--batch-size", "64", "--run-dir", str(run), "--verbose", "0"]
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert f"Hardened {len(decisions)} gates at their threshold decisions; gates frozen." in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["harden_gates"] is True and config["init_from"] == preset
    trained = load_model(str(run / "model.keras"))
    for gate in tfgated.gate_layers(trained):
        np.testing.assert_array_equal(np.asarray(gate.logits), np.where(decisions[gate.name], 10.0, -10.0))
    assert trained.get_layer("activation_loss").weight == 0.0


def test_harden_gates_needs_a_warm_start_and_a_preset(tmp_path, model_file, capsys):
    for argv, message in (
        (["--model", "gumbel_resnet_fashion_mnist_ind_pb_t0.6"], "give it with --init-from"),
        (["--model", model_file, "--init-from", model_file], "is a model file"),
    ):
        capsys.readouterr()
        assert cli_main(["train", *argv, "--harden-gates", "--run-dir", str(tmp_path / "r"), "--limit", "64"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
        assert not (tmp_path / "r").exists()


def test_multi_worker_refuses_overwrite(tmp_path, model_file, capsys):
    rc = cli_main(["train", "--model", model_file, "--run-dir", str(tmp_path / "r"), "--strategy", "multi_worker",
                   "--overwrite"])
    assert rc == 2 and "--overwrite cannot be coordinated across workers" in capsys.readouterr().err
