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


def test_every_sipa_candidate_changes_the_paper_baseline():
    """Under --budget paper, no candidate of SIPA_GROUPS is already on in the base recipe."""
    from tfgated.cli.pipeline import get_budget
    from tfgated.improve import SIPA_BASE, noop_candidates

    paper = get_budget("paper")
    assert paper.improve_groups == "sipa"
    base = Recipe.from_dict(paper.base_recipe, epochs=paper.improve_epochs, batch_size=paper.batch_size)
    assert Recipe.from_dict(SIPA_BASE, batch_size=paper.batch_size) == Recipe.from_dict(paper.base_recipe)
    assert noop_candidates(base, SIPA_GROUPS) == []
    # the check itself catches each kind of no-op
    swish_on = base.replace(activation="swish", cosine_decay=True, weight_decay=0.0)
    assert noop_candidates(swish_on, SIPA_GROUPS) == ["cosine decay", "no bias decay", "no bn decay", "swish"]
    assert noop_candidates(base.replace(batch_size=32), SIPA_GROUPS) == ["ghost batch norm"]
    # the paper's values: mixup alpha 1.0 (the authors'), label smoothing 0.3 over the other classes
    changes = {c.name: c.changes for _, cs in SIPA_GROUPS for c in cs}
    assert changes["mixup"] == {"mixup": 1.0} and changes["label smoothing"] == {"label_smoothing": 0.3}
    assert base.replace(**changes["label smoothing"]).label_smoothing_spread == "others"


def test_seeds_average_runs_and_adopt_on_the_difference_of_means(tmp_path):
    # candidate "b" wins with seed 0 alone but loses on the mean over seeds 0, 1, 2
    scores = {(0.1, 0): 0.50, (0.1, 1): 0.60, (0.1, 2): 0.70, (0.2, 0): 0.55, (0.2, 1): 0.50, (0.2, 2): 0.60}
    calls = []

    def trainer(recipe, seed):
        calls.append((recipe.learning_rate, seed))
        return scores[(recipe.learning_rate, seed)]

    groups = [("lr", [Candidate("b", {"learning_rate": 0.2})])]
    single = improve(Recipe(learning_rate=0.1), groups, lambda r: trainer(r, 0), tmp_path / "one", verbose=False)
    assert single.adopted == ["b"]
    calls.clear()
    result = improve(Recipe(learning_rate=0.1), groups, trainer, tmp_path / "three", verbose=False, seeds=[0, 1, 2])
    assert result.adopted == [] and result.accuracy == pytest.approx(0.6)
    assert result.trials[1].accuracies == [0.55, 0.50, 0.60] and result.trials[1].accuracy == pytest.approx(0.55)
    assert sorted(calls) == sorted(scores)
    # resumed from the table with the same seeds: nothing trains again; other seeds: refused
    calls.clear()
    again = improve(Recipe(learning_rate=0.1), groups, trainer, tmp_path / "three", verbose=False, seeds=[0, 1, 2])
    assert calls == [] and again.accuracy == result.accuracy
    with pytest.raises(ValueError, match="different run"):
        improve(Recipe(learning_rate=0.1), groups, trainer, tmp_path / "three", verbose=False, seeds=[0, 1])
    for bad in (3, [], [1, 1], ["a"]):
        with pytest.raises(ValueError, match="seeds"):
            improve(Recipe(), groups, trainer, tmp_path / "bad", verbose=False, seeds=bad)
