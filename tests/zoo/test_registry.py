"""The zoo registry: presets, lookup errors, load/compile, weights verification, CLI."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfgated
from tfgated.zoo import registry
from tfgated.cli.zoo import main as cli_main
from tfgated.gate_settings import GateSettings

TINY = "tiny_registry_test"


def build_tiny(num_classes=3, input_shape=(6, 6, 1), gates=None, units=8):
    """A small dense network with an optional channel gate, for registry tests."""
    settings = GateSettings.from_config(gates, default_granularity=2, extra_keys=())
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(units, activation="relu", name="hidden")(x)
    zs = []
    if settings is not None:
        x, z = tfgated.channel_gate(x, settings.granularity, kind=settings.kind, name="hidden")
        zs.append(z)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    if settings is None:
        return keras.Model(inputs, outputs, name="tiny")
    return tfgated.gated_model(inputs, outputs, zs, **settings.loss_arguments())


def _tiny_preset(**changes):
    preset = {
        "family": TINY,
        "arch": {"units": 8},
        "gates": None,
        "dataset": "generated",
        "input_shape": [6, 6, 1],
        "num_classes": 3,
        "recipe": {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "epochs": 1, "batch_size": 8},
        "weights": None,
        "paper": None,
        "description": "A tiny registry test model.",
    }
    preset.update(changes)
    return preset


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Register the tiny family and presets; weights live under a temporary folder."""
    registry._ensure_loaded()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", str(tmp_path / "weights"))
    os.makedirs(tmp_path / "weights")
    registry.register_family(TINY)(build_tiny)
    names = {
        TINY: _tiny_preset(),
        f"{TINY}_gated": _tiny_preset(gates={"kind": "independent", "target": 0.5}),
    }
    for name, preset in names.items():
        registry.register_preset(name, preset)
    yield tmp_path / "weights"
    for name in list(registry._PRESETS):
        if name.startswith(TINY):
            del registry._PRESETS[name]
    registry._FAMILIES.pop(TINY, None)


def _data(n=16, classes=3):
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 1), dtype=np.float32), rng.integers(0, classes, n)


# -- listing and lookup --------------------------------------------------------------


def test_list_models_filters_with_fnmatch_and_sorts():
    names = registry.list_models("sipa*")
    assert names == sorted(names)
    assert {"sipa_cifar100", "sipa_cifar100_exit", "sipa_fashion_mnist", "sipa_fashion_mnist_gated"} <= set(names)
    assert all(n.startswith("sipa") for n in names)
    assert registry.list_models("no_such_model_*") == []
    assert set(names) <= set(tfgated.zoo.list_models())
    assert "sipa" in tfgated.zoo.list_families()


def test_unknown_name_lists_closest_names():
    with pytest.raises(ValueError, match=r"Unknown model 'sipa_cifar10'.*Closest names: \['sipa_cifar100'"):
        tfgated.zoo.load("sipa_cifar10")
    with pytest.raises(ValueError, match="Unknown model"):
        registry.info("zzz")


def test_get_preset_returns_an_independent_copy():
    preset = registry.get_preset("sipa_fashion_mnist_gated")
    preset["gates"]["target"] = 0.1
    preset["arch"]["width"] = 3.0
    again = registry.get_preset("sipa_fashion_mnist_gated")
    assert again["gates"]["target"] == 0.5 and again["arch"]["width"] == 0.9
    for key in ("family", "arch", "gates", "dataset", "input_shape", "num_classes", "recipe", "weights", "paper",
                "description"):
        assert key in again


def test_every_registered_preset_follows_the_contract():
    for name in registry.list_models():
        preset = registry.get_preset(name)
        assert preset["family"] in registry.list_families(), name
        assert len(preset["input_shape"]) == 3, name
        assert isinstance(preset["num_classes"], int) and preset["num_classes"] > 1, name
        assert "optimizer" in preset["recipe"] and "learning_rate" in preset["recipe"], name
        assert preset["description"], name


# -- registration ----------------------------------------------------------------------


def test_register_preset_checks_the_data(tiny):
    with pytest.raises(ValueError, match=r"lacks the keys \['recipe'\]"):
        registry.register_preset("broken", {k: v for k, v in _tiny_preset().items() if k != "recipe"})
    with pytest.raises(ValueError, match="names family 'nope', which is not registered"):
        registry.register_preset("broken", _tiny_preset(family="nope"))
    with pytest.raises(ValueError, match="without a sha256"):
        registry.register_preset("broken", _tiny_preset(weights={"file": "x.weights.h5"}))
    with pytest.raises(ValueError, match="Received: kind='sometimes'"):
        registry.register_preset("broken", _tiny_preset(gates={"kind": "sometimes"}))
    assert "broken" not in registry.list_models()


def test_register_family_refuses_a_second_builder_under_a_taken_name(tiny):
    registry.register_family(TINY)(build_tiny)  # the same builder again: fine

    def other(num_classes=1, input_shape=(1,), gates=None):
        return None

    with pytest.raises(ValueError, match=f"Family '{TINY}' is already registered"):
        registry.register_family(TINY)(other)


def test_gate_settings_defaults_and_errors(tiny):
    settings = GateSettings.from_config({"kind": "dependent", "temperature": 0.5}, default_granularity=4)
    assert settings.kind == "dependent" and settings.loss_kind == "per_batch"
    assert settings.target == 0.5 and settings.granularity == 4
    assert settings.gate_kwargs == {"temperature": 0.5}
    assert settings.loss_arguments() == {"target": 0.5, "weight": 1.0, "loss_kind": "per_batch"}
    scaled = GateSettings.from_config({"gradient_scale": 100.0, "seed": 3})
    assert scaled.gate_kwargs == {"gradient_scale": 100.0, "seed": 3}
    assert GateSettings.from_config(None) is None
    assert GateSettings.from_config({"level": "layer"}).extra == {"level": "layer"}  # family keys pass the registry
    assert GateSettings.from_config(settings.to_config()) == settings
    # preset files and run folders written before the rename say "loss"
    assert GateSettings.from_config({"loss": "per_gate"}).loss_kind == "per_gate"
    with pytest.raises(ValueError, match=r"Unknown gate settings \['level'\]"):
        GateSettings.from_config({"level": "layer"}, extra_keys=())
    with pytest.raises(ValueError, match="Received: loss_kind='per_layer'"):
        GateSettings.from_config({"loss_kind": "per_layer"})
    with pytest.raises(ValueError, match="Received: kind='sometimes'"):
        GateSettings.from_config({"kind": "sometimes"})
    with pytest.raises(ValueError, match="Received: target=1.5"):
        GateSettings.from_config({"target": 1.5})
    with pytest.raises(ValueError, match="Received: weight=-1"):
        GateSettings.from_config({"weight": -1})
    with pytest.raises(ValueError, match="Received: target=1.5"):
        registry.register_preset(f"{TINY}_bad", _tiny_preset(gates={"target": 1.5}))


def test_family_modules_load_lazily_missing_skipped_broken_raises(monkeypatch, tmp_path):
    (tmp_path / "broken_family_for_test.py").write_text("import no_such_dependency_for_tfgated_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "FAMILY_MODULES", (*registry.FAMILY_MODULES, "tfgated.zoo.not_written_yet"))
    assert "sipa_cifar100" in registry.list_models()  # the missing module is skipped
    monkeypatch.setattr(registry, "FAMILY_MODULES", (*registry.FAMILY_MODULES, "broken_family_for_test"))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_for_tfgated_test"):
        registry.list_models()


# -- load -----------------------------------------------------------------------------


def test_load_compiles_per_recipe_so_fit_works(tiny):
    model = tfgated.zoo.load(TINY)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.9)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    x, y = _data()
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert {"loss", "accuracy", "top5"} <= set(history.history)
    gated = tfgated.zoo.load(f"{TINY}_gated")
    history = gated.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert "gate_activation" in history.history


def test_load_compiles_with_the_presets_recipe_object(tiny):
    from tfgated.recipes import Recipe

    registry.register_preset(TINY, _tiny_preset(recipe={
        "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.8, "nesterov": False, "weight_decay": 1e-3,
        "epochs": 4, "batch_size": 8, "schedule": "cosine", "label_smoothing": 0.1, "note": "not a switch",
    }))
    recipe, unused = registry.preset_recipe(TINY)  # the one translation, also what training uses
    assert recipe == Recipe(optimizer="sgd", learning_rate=0.05, momentum=0.8, nesterov=False, weight_decay=1e-3,
                            epochs=4, batch_size=8, cosine_decay=True, label_smoothing=0.1)
    assert unused == {"note": "not a switch"}
    model = tfgated.zoo.load(TINY)  # constant rate and integer labels: plain fit works at once
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert not model.optimizer.nesterov and model.optimizer.momentum == pytest.approx(0.8)
    assert float(model.optimizer.weight_decay) == pytest.approx(1e-3)
    # the recipe's label smoothing stays, on integer labels
    assert isinstance(model.loss, tfgated.SparseLabelSmoothingCrossentropy) and model.loss.label_smoothing == 0.1
    x, y = _data()
    assert np.isfinite(model.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"][0])
    with pytest.raises(ValueError, match="Received: learning_rate=-1"):  # checked when registered
        registry.register_preset(f"{TINY}_bad", _tiny_preset(recipe={**_tiny_preset()["recipe"], "learning_rate": -1}))


def test_load_overrides_arch_gates_classes_and_shape(tiny):
    model = tfgated.zoo.load(TINY, num_classes=5, input_shape=(4, 4, 2), units=6, compile=False)
    assert model.output.shape == (None, 5) and model.input.shape == (None, 4, 4, 2)
    assert model.get_layer("hidden").units == 6
    assert not model.compiled
    gated = tfgated.zoo.load(TINY, kind="dependent", granularity=4)
    (gate,) = tfgated.gate_layers(gated)
    assert gate.kind == "dependent" and gate.units == 2
    plain = tfgated.zoo.load(f"{TINY}_gated", gates=None)
    assert tfgated.gate_layers(plain) == []
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['depth'\] for model 'tiny_registry_test'.*units"):
        tfgated.zoo.load(TINY, depth=3)


def test_load_multi_output_models_compile_a_loss_per_output():
    model = tfgated.zoo.load("sipa_cifar100_exit", blocks=["r1_k3_s1_e1_i24_o16_se0.2", "r1_k3_s2_e2_i16_o24"],
                             exit_after=0)
    assert len(model.outputs) == 2
    assert model.outputs[0].shape == (None, 100) and model.outputs[1].shape == (None, 100)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.13)
    assert len(model.loss) == 2


# -- weights ---------------------------------------------------------------------------


def test_default_weights_are_verified_by_sha256(tiny):
    x, _ = _data(4)
    trained = tfgated.zoo.load(TINY)
    weights_dir = tiny
    path = weights_dir / "tiny.weights.h5"
    trained.save_weights(str(path))
    digest = registry.sha256_file(str(path))
    registry.register_preset(TINY, _tiny_preset(weights={"file": "tiny.weights.h5", "sha256": digest}))
    assert registry.weights_status(TINY) == "available"
    loaded = tfgated.zoo.load(TINY, weights="default")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)

    registry.register_preset(TINY, _tiny_preset(weights={"file": "tiny.weights.h5", "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="corrupt or outdated: sha256"):
        tfgated.zoo.load(TINY, weights="default")

    registry.register_preset(TINY, _tiny_preset(weights={"file": "absent.weights.h5", "sha256": digest}))
    assert registry.weights_status(TINY) == "missing"
    with pytest.raises(FileNotFoundError, match=f"python -m tfgated train --model {TINY}"):
        tfgated.zoo.load(TINY, weights="default")
    assert sorted(os.listdir(weights_dir)) == ["tiny.weights.h5"]  # nothing partial left behind


def test_weights_that_need_the_internet_or_do_not_exist(tiny):
    registry.register_preset(TINY, _tiny_preset(weights={"url": "https://example.org/tiny.weights.h5"}))
    assert registry.weights_status(TINY) == "download"
    with pytest.raises(ValueError, match=r"need the internet.*python -m tfgated train --model tiny_registry_test"):
        tfgated.zoo.load(TINY, weights="default")
    with pytest.raises(ValueError, match=r"has no pretrained weights.*python -m tfgated train --model"):
        tfgated.zoo.load("gumbel_densenet_cifar10_exit", weights="default")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfgated.zoo.load(TINY, weights=str(tiny / "nope.weights.h5"))


def test_weights_from_a_path_and_a_mismatch(tiny):
    x, _ = _data(4)
    source = tfgated.zoo.load(TINY)
    path = str(tiny / "mine.weights.h5")
    source.save_weights(path)
    loaded = tfgated.zoo.load(TINY, weights=path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="Could not load weights"):
        tfgated.zoo.load(TINY, weights=path, units=5)


# -- info and CLI ----------------------------------------------------------------------


def test_info_has_the_card_data_and_measured_complexity():
    data = tfgated.zoo.info("sipa_cifar100")
    assert data["name"] == "sipa_cifar100" and data["family"] == "sipa"
    assert data["complexity"]["params_without_bn"] == 470776
    assert data["complexity"]["macs"] > 0
    assert data["weights_status"] == "none"
    assert data["card"] and os.path.exists(data["card"])
    assert data["train_command"] == "python -m tfgated train --model sipa_cifar100"
    # an early-exit preset trains in two steps, which `python -m tfgated train` refuses to fake
    assert tfgated.zoo.info("sipa_fashion_mnist_exit")["train_command"] == "python benchmarks/train_sipa_exit.py"
    with pytest.raises(ValueError, match="train --model sipa_cifar100`, then its exit head with `tfgated.exits.train_exit"):
        tfgated.zoo.registry.resolve_weights("sipa_cifar100_exit", "default")


def test_cli_list_and_info(capsys):
    assert cli_main(["list", "sipa*"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["name", "family", "dataset", "params", "MACs", "weights"]
    assert "sipa_fashion_mnist_gated" in out and "0.496M" in out  # sipa_cifar100: 495,608 parameters
    assert cli_main(["list", "nothing_matches*"]) == 1
    assert cli_main(["info", "sipa_cifar100"]) == 0
    assert "470,776" in capsys.readouterr().out
    assert cli_main(["info", "sipa_cifar10"]) == 2
    assert "Closest names" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "tfgated.zoo", "list", "sipa_cifar100*"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    assert "sipa_cifar100_exit" in result.stdout
