"""Greedy Improving: logic with fake trainers, resume after a kill, one real tiny Keras run."""

import json
import os

import keras
import numpy as np
import pytest

import tfgated
from tfgated.improve import SIPA_GROUPS, Candidate, improve, keras_trainer, read_trials
from tfgated.recipes import Recipe

GROUPS = [
    ("lr", [Candidate("lr 0.05", {"learning_rate": 0.05}), Candidate("lr 0.2", {"learning_rate": 0.2})]),
    ("reg", [("smooth", {"label_smoothing": 0.3}), ("mixup", {"mixup": 0.2})]),
]


def fake_trainer(calls):
    """Accuracy is a known function of the recipe: lower lr is better, smoothing helps, mixup hurts."""

    def train_and_evaluate(recipe):
        calls.append(recipe)
        return 0.5 + (0.2 - recipe.learning_rate) + 0.1 * recipe.label_smoothing - 0.5 * recipe.mixup

    return train_and_evaluate


def test_greedy_adopts_only_improvements(tmp_path):
    calls = []
    result = improve(Recipe(learning_rate=0.1), GROUPS, fake_trainer(calls), tmp_path, verbose=False)
    assert [t.candidate for t in result.trials] == ["baseline", "lr 0.05", "lr 0.2", "smooth", "mixup"]
    assert [t.adopted for t in result.trials] == [True, True, False, True, False]
    assert result.adopted == ["lr 0.05", "smooth"]
    assert result.recipe == Recipe(learning_rate=0.05, label_smoothing=0.3)
    assert result.accuracy == pytest.approx(0.5 + 0.15 + 0.03)
    # each candidate is tried on top of the best so far
    assert calls[2].learning_rate == 0.2 and calls[3].learning_rate == 0.05 and calls[4].label_smoothing == 0.3
    with open(tmp_path / "best_recipe.json") as f:
        assert json.load(f)["adopted"] == ["lr 0.05", "smooth"]
    header = open(tmp_path / "trials.csv").readline().strip().split(",")
    assert header[:4] == ["index", "group", "candidate", "changes"]


def test_resume_skips_finished_trials(tmp_path):
    calls = []

    class Killed(Exception):
        pass

    def dies_on_fourth(recipe):
        if len(calls) == 3:
            raise Killed
        return fake_trainer(calls)(recipe)

    with pytest.raises(Killed):
        improve(Recipe(learning_rate=0.1), GROUPS, dies_on_fourth, tmp_path, verbose=False)
    assert len(read_trials(tmp_path)) == 3
    calls2 = []
    result = improve(Recipe(learning_rate=0.1), GROUPS, fake_trainer(calls2), tmp_path, verbose=False)
    assert len(calls2) == 2  # only "smooth" and "mixup" are trained
    assert result.adopted == ["lr 0.05", "smooth"]
    assert len(read_trials(tmp_path)) == 5
    # a finished run trains nothing again
    calls3 = []
    improve(Recipe(learning_rate=0.1), GROUPS, fake_trainer(calls3), tmp_path, verbose=False)
    assert calls3 == []
    # a different base recipe does not silently reuse the table
    with pytest.raises(ValueError, match="different run"):
        improve(Recipe(learning_rate=0.3), GROUPS, fake_trainer([]), tmp_path, verbose=False)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Unknown improving switch.*'dropblock'"):
        Candidate("dropblock", {"dropblock": 0.1})
    with pytest.raises(ValueError, match="at least one group"):
        improve(Recipe(), [], fake_trainer([]), "/tmp/never", verbose=False)
    with pytest.raises(ValueError, match="non-finite"):
        improve(Recipe(), GROUPS, lambda r: float("nan"), os.path.join("/tmp", f"nan_{os.getpid()}"), verbose=False)
    # the SIPA groups only use valid switches and apply cleanly on the default recipe
    for _, candidates in SIPA_GROUPS:
        for c in candidates:
            Recipe(epochs=3).replace(**c.changes)


@pytest.mark.slow
def test_real_tiny_keras_run(tmp_path, capsys):
    def build(recipe):
        inputs = keras.Input((28, 28, 1))
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation=recipe.activation or "relu")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x, z = tfgated.channel_gate(x, 2, "independent", name="conv")
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(10, activation="softmax")(x)
        return tfgated.gated_model(inputs, out, [z], target=0.7)

    trainer = keras_trainer(build, limit=300, validation_split=0.3)
    groups = [("norm", [Candidate("ghost bn", {"ghost_batch_norm": 16})])]
    result = improve(Recipe(epochs=1, batch_size=32, learning_rate=0.05), groups, trainer, tmp_path)
    assert len(result.trials) == 2
    assert all(0.0 <= t.accuracy <= 1.0 for t in result.trials)
    assert "[improve 2/2] norm / ghost bn" in capsys.readouterr().out
    assert np.isfinite(result.accuracy)
