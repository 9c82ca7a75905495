"""``zoo.load(name).fit`` and ``python -m tfgated train --model name`` follow one recipe.

The CLI path is taken as the command takes it: ``tfgated.cli.train.resolve_model_and_recipe``
translates the preset and ``tfgated.recipes.fit_recipe`` compiles (its ``model.fit`` is
stubbed out: only the compiled optimizer is compared).
"""

import types

import numpy as np
import pytest
import tensorflow as tf

import tfgated.zoo as zoo
from tfgated.cli.train import resolve_model_and_recipe
from tfgated.recipes import fit_recipe

EPOCHS, STEPS = 3, 7


def learning_rates(optimizer, steps):
    rates = []
    for step in steps:
        optimizer.iterations.assign(step)
        rates.append(float(np.asarray(optimizer.learning_rate)))
    optimizer.iterations.assign(0)
    return rates


def cli_compiled(name, epochs, steps_per_epoch):
    model, recipe, _ = resolve_model_and_recipe(name, {"epochs": epochs})
    model.fit = lambda *args, **kwargs: None  # compile only
    train = tf.data.Dataset.range(steps_per_epoch).batch(1)
    fit_recipe(model, recipe, types.SimpleNamespace(train=train, validation=None), verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gumbel_resnet_fashion_mnist", "sipa_fashion_mnist", "resnet110_cifar10"])
def test_zoo_load_and_train_cli_follow_the_same_learning_rate(name):
    steps = [0, 1, STEPS, EPOCHS * STEPS // 2, EPOCHS * STEPS - 1]
    mine = zoo.load(name, epochs=EPOCHS, steps_per_epoch=STEPS)
    cli = cli_compiled(name, EPOCHS, STEPS)
    assert type(mine.optimizer) is type(cli.optimizer)
    assert learning_rates(mine.optimizer, steps) == pytest.approx(learning_rates(cli.optimizer, steps), rel=1e-6)
    assert mine.optimizer.get_config()["weight_decay"] == cli.optimizer.get_config()["weight_decay"]
    if name == "gumbel_resnet_fashion_mnist":  # a cosine schedule really decays over E x S steps
        first, *_, last = learning_rates(mine.optimizer, steps)
        assert last < 0.01 * first


@pytest.mark.slow
def test_zoo_load_and_train_cli_smooth_the_labels_alike():
    name = "sipa_fashion_mnist"  # its recipe smooths labels (0.3 or 0.1)
    mine = zoo.load(name, weights=None, epochs=EPOCHS, steps_per_epoch=STEPS)
    cli = cli_compiled(name, EPOCHS, STEPS)
    assert cli.loss.get_config()["label_smoothing"] > 0
    rng = np.random.default_rng(0)
    pred = tf.nn.softmax(rng.normal(size=(8, 10)).astype("float32"))
    labels = rng.integers(0, 10, size=8)
    # zoo.load's model.fit takes integer labels, the CLI's pipeline one-hot ones: same loss
    assert float(mine.loss(labels, pred)) == pytest.approx(float(cli.loss(np.eye(10)[labels], pred)), rel=1e-5)


def test_load_checks_the_schedule_length_arguments():
    with pytest.raises(ValueError, match="compile=True"):
        zoo.load("resnet_fashion_mnist", compile=False, epochs=3)
    # a schedule over E epochs needs its steps per epoch, or it would silently stay constant
    recipe = zoo.preset_recipe("gumbel_resnet_fashion_mnist")[0]
    assert recipe.needs_steps_per_epoch
    with pytest.raises(ValueError, match="pass steps_per_epoch .* with epochs=3. Received: steps_per_epoch=None"):
        zoo.compile_model(None, recipe, epochs=3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        zoo.compile_model(None, zoo.preset_recipe("resnet_fashion_mnist")[0], steps_per_epoch=0)
