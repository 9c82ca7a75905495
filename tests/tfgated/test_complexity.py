"""Complexity counting: published counts, hand counts, gate structure, expected MACs."""

import keras
import numpy as np
import pytest

import tfgated
from tfgated.complexity import count, expected_macs, expected_macs_on_data, gate_mac_weights
from tfgated.graph import gate_structure, trace


# ----------------------------------------------------------------------------- published counts


@pytest.mark.parametrize(
    "builder, params, macs",
    [
        (keras.applications.ResNet50, 25_636_712, 3.86e9),
        (keras.applications.ResNet101, 44_707_176, 7.57e9),
        (keras.applications.MobileNetV2, 3_538_984, 300.8e6),
    ],
)
def test_published_counts(builder, params, macs):
    model = builder(weights=None)
    report = count(model)
    assert report.params == params == model.count_params()
    assert report.macs == pytest.approx(macs, rel=0.01)


def test_nested_functional_model_counts_inner_layers():
    inner = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    x = keras.Input((32, 32, 3))
    y = keras.layers.Dense(10, name="head")(inner(x))
    outer = keras.Model(x, y, name="outer")
    inner_report = count(inner)
    report = count(outer)
    assert report.params == outer.count_params()
    assert report.macs == inner_report.macs + inner_report.rows[-1].output_shape[-1] * 10
    assert report.row(f"{inner.name}/Conv1").macs == inner_report.row("Conv1").macs > 0
    assert report.row("head").params == inner.output.shape[-1] * 10 + 10


# ----------------------------------------------------------------------------- hand counts


def test_layer_hand_counts():
    x = keras.Input((10, 10, 8))
    a = keras.layers.Conv2D(16, 3, padding="same", groups=4, name="grouped")(x)  # 10*10*16*(9*8/4)
    b = keras.layers.SeparableConv2D(12, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(a)
    c = keras.layers.Conv2DTranspose(4, 2, strides=2, name="tconv")(b)  # in 5x5x12 -> 10x10x4
    d = keras.layers.DepthwiseConv2D(3, name="dw")(c)  # valid: 8x8x4
    e = keras.layers.Reshape((64, 4))(d)
    f = keras.layers.Conv1D(6, 3, name="conv1d")(e)  # 62 x 6
    g = keras.layers.Dense(5, name="dense3d")(f)  # 62 positions
    model = keras.Model(x, g)
    report = count(model)
    assert report.row("grouped").macs == 10 * 10 * 16 * 9 * 8 // 4
    assert report.row("sep").macs == 5 * 5 * 9 * 16 * 2 + 5 * 5 * 32 * 12
    assert report.row("tconv").macs == 5 * 5 * 12 * 2 * 2 * 4
    assert report.row("dw").macs == 8 * 8 * 9 * 4
    assert report.row("conv1d").macs == 62 * 6 * 3 * 4
    assert report.row("dense3d").macs == 62 * 6 * 5
    assert report.params == model.count_params()
    assert report.row("grouped").params == 3 * 3 * 2 * 16 + 16


def test_sequential_table_and_dict():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="d1"), keras.layers.ReLU(), keras.layers.Dense(2, name="d2")],
        name="seq",
    )
    report = count(model)
    assert (report.params, report.macs) == (15 + 8, 12 + 6)
    text = report.table()
    assert "d1" in text and "total" in text and "18" in text
    data = report.to_dict()
    assert data["macs"] == 18 and [r["name"] for r in data["layers"]][0] == "d1"


def test_unknown_spatial_size_needs_input_shape():
    x = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    model = keras.Model(x, keras.layers.GlobalAveragePooling2D()(y))
    with pytest.raises(ValueError, match="input_shape"):
        count(model)
    assert count(model, input_shape=(16, 16, 3)).macs == 16 * 16 * 4 * 27


def test_gate_bookkeeping_is_not_counted():
    x = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(4, 1, name="conv")(x)
    h, z = tfgated.channel_gate(h, 1, "dependent", name="g", hidden_units=8)
    y = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(h))
    model = tfgated.gated_model(x, y, [z])
    report = count(model)
    gate = report.row("g_gate")
    # hidden 4x8 (no bias) + BN 4*8 + head 8x4 + 4
    assert gate.params == 32 + 32 + 36
    assert gate.macs == 4 * 8 + 8 * 4
    assert gate.bookkeeping == 2
    assert report.row("activation_loss").params == 0
    assert report.params == model.count_params() - 2 - 1


# ----------------------------------------------------------------------------- gated models


def _gated_model():
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="r1")(h)
    h, z1 = tfgated.channel_gate(h, 2, "independent", name="g1")
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    d = keras.layers.Conv2D(8, 1, name="c2")(d)
    b = keras.layers.Conv2D(8, 3, padding="same", name="c3")(d)
    b = keras.layers.BatchNormalization(name="bn3")(b)
    out, z2 = tfgated.residual_gate(d, b, "dependent", name="res")
    h = keras.layers.Conv2D(6, 1, name="c4")(out)
    h, z3 = tfgated.channel_gate(h, 3, "independent", name="g3")
    p = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    y = keras.layers.Dense(10, activation="softmax", name="fc")(p)
    return tfgated.gated_model(x, y, [z1, z3, z2])


def test_gate_structure_roles():
    infos = {i.name: i for i in gate_structure(_gated_model())}
    g1, res, g3 = infos["g1_gate"], infos["res_gate"], infos["g3_gate"]
    assert (g1.apply, g1.apply_class, g1.units, g1.granularity, g1.channels) == ("g1_mask", "ChannelMask", 4, 2, 8)
    assert g1.layers("output") == ["c1", "bn1"]
    assert g1.layers("through") == ["dw"]
    assert g1.layers("input") == ["c2"]
    assert g1.channel_indices(1) == [2, 3]
    assert res.apply_class == "GatedResidual" and res.kind == "dependent"
    assert res.layers("branch") == ["c3", "bn3"]
    assert g3.layers("output") == ["c4"] and g3.layers("input") == ["fc"] and g3.layers("after") == ["gap"]
    assert [g1.loss_index, g3.loss_index, res.loss_index] == [0, 1, 2]
    assert isinstance(g1.to_dict()["controlled"][0], dict)


def test_expected_macs_half_rates_hand_count():
    model = _gated_model()
    rates = {"g1_gate": np.full(4, 0.5), "res_gate": np.array([0.5]), "g3_gate": np.array([1.0, 0.0])}
    result = expected_macs(model, rates=rates)
    c1, dw, c2, c3, gate, c4, fc = 64 * 8 * 27, 64 * 8 * 9, 64 * 8 * 8, 64 * 8 * 72, 8 * 16 + 16, 64 * 6 * 8, 60
    assert result.dense == c1 + dw + c2 + c3 + gate + c4 + fc == count(model).macs
    assert result.expected == pytest.approx(0.5 * (c1 + dw + c2 + c3) + gate + 0.5 * (c4 + fc))
    assert expected_macs(model).expected == result.dense
    assert gate_mac_weights(model) == [c1 + dw + c2, c4 + fc, c3]


def test_layer_under_two_gates_multiplies_fractions():
    x = keras.Input((4, 4, 4))
    h = keras.layers.Conv2D(4, 1, name="a")(x)
    h, z1 = tfgated.channel_gate(h, 1, name="m1")
    h = keras.layers.Conv2D(4, 1, name="b")(h)
    h, z2 = tfgated.channel_gate(h, 1, name="m2")
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten(name="flat")(h))
    model = tfgated.gated_model(x, y, [z1, z2])
    infos = {i.name: i for i in gate_structure(model)}
    assert infos["m2_gate"].layers("input") == ["fc"]
    rates = {"m1_gate": np.array([1, 1, 0, 0.0]), "m2_gate": np.array([1, 0, 0, 0.0])}
    per_layer = expected_macs(model, rates=rates).per_layer
    assert per_layer["b"] == pytest.approx(16 * 16 * 0.5 * 0.25)
    assert per_layer["fc"] == pytest.approx(64 * 2 * 0.25)


def test_per_example_macs_follow_dependent_gate_values():
    model = _gated_model()
    values = {"res_gate": np.array([[1.0], [0.0], [1.0]])}
    result = expected_macs(model, gate_values=values)
    c3 = 64 * 8 * 72
    assert result.per_example.shape == (3,)
    assert result.per_example[0] - result.per_example[1] == pytest.approx(c3)
    assert result.per_example[0] == result.dense
    assert result.expected == pytest.approx(result.dense - c3 / 3)
    # measured on data with stochastic, undecided (p = 0.5) dependent gates
    gate = model.get_layer("res_gate")
    gate.head.bias.assign(np.zeros(1, "float32"))
    tfgated.set_inference_style(model, "stochastic")
    x = np.random.default_rng(0).random((64, 8, 8, 3), dtype="float32")
    measured = expected_macs_on_data(model, x, per_example=True)
    assert len(set(measured.per_example.round().tolist())) > 1
    assert measured.per_example.min() < measured.dense


def test_expected_macs_rejects_unknown_gate():
    with pytest.raises(ValueError, match="Unknown gate names"):
        expected_macs(_gated_model(), rates={"nope": np.ones(1)})


def test_trace_names_nested_models():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="d")(inner_in), name="inner")
    x = keras.Input((4,))
    y = keras.layers.Add(name="add")([inner(x), keras.layers.Dense(3, name="d")(x)])
    graph = trace(keras.Model(x, y))
    assert [c.name for c in graph.calls] == ["inner/d", "d", "add"] or [c.name for c in graph.calls] == [
        "d",
        "inner/d",
        "add",
    ]
    assert graph.producer[graph.outputs[0]].name == "add"
