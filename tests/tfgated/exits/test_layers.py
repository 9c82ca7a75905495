"""tfgated.exits.layers as the graph sees them: tfgated.graph recognises exit gates and their
combine by class attributes (it does not import the exits package, which builds on it).

The layers' own behaviour (routing, reach, styles, training) is tested on the early-exit
DenseNet in tests/zoo/test_densenet.py.
"""

import keras
import pytest

from tfgated import complexity
from tfgated.exits import EarlyExitCombine, ExitGate, ExitReach, exit_gate_layers
from tfgated.graph import gate_structure


def _two_stage_model(combine=True):
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stage1_conv")(inputs)
    z = ExitGate(filters=4, pool_size=2, name="exit1_gate", seed=1)(x)
    early = keras.layers.Dense(3, activation="softmax", name="exit1_classifier")(
        keras.layers.GlobalAveragePooling2D(name="exit1_pool")(x))
    y = keras.layers.Conv2D(4, 3, padding="same", name="stage2_conv")(x)
    final = keras.layers.Dense(3, activation="softmax", name="predictions")(
        keras.layers.GlobalAveragePooling2D(name="pool")(y))
    if not combine:
        return keras.Model(inputs, [final, ExitReach(name="reach")(z)])
    return keras.Model(inputs, EarlyExitCombine(name="early_exit")([early, z, final]))


def test_gate_structure_finds_exit_gates_by_their_class_attributes():
    assert ExitGate.exits_early is True and EarlyExitCombine.routes_exits is True
    model = _two_stage_model()
    (info,) = gate_structure(model)
    assert (info.name, info.apply, info.apply_class) == ("exit1_gate", "early_exit", "EarlyExitCombine")
    assert (info.units, info.granularity, info.channels, info.context) == (1, 1, 1, "stage1_conv")
    assert set(info.layers("rest")) == {"stage2_conv", "pool", "predictions"}
    assert [g.name for g in exit_gate_layers(model)] == ["exit1_gate"]
    rows = {r.name: r.macs for r in complexity.count(model).rows}
    half = complexity.expected_macs(model, rates={"exit1_gate": [0.5]})
    rest = rows["stage2_conv"] + rows["predictions"]
    assert half.expected == pytest.approx(sum(rows.values()) - 0.5 * rest)


def test_an_exit_gate_without_its_combine_is_an_error():
    with pytest.raises(ValueError, match="'exit1_gate' to feed exactly one EarlyExitCombine"):
        gate_structure(_two_stage_model(combine=False))
