"""MicroNet scoring: the WRN-28-10 normaliser, hand counts, 16-bit, sparsity, CLI."""

import keras
import numpy as np
import pytest

import tfgated
from tfgated.micronet import micronet_score, wide_resnet


def test_wide_resnet_28_10_reproduces_the_normalisers():
    model = wide_resnet(depth=28, width=10, num_classes=100)
    report = micronet_score(model)
    assert report.params_storage == pytest.approx(36.5e6, rel=0.01)
    assert report.ops == pytest.approx(10.49e9, rel=0.01)
    assert report.score == pytest.approx(2.0, rel=0.02)
    assert "folded into stem_conv" in report.row("group1_block1_bn1").notes


def _dense_model(bias=True):
    x = keras.Input((4,))
    layer = keras.layers.Dense(3, use_bias=bias, name="fc", kernel_initializer="ones", bias_initializer="ones")
    return keras.Model(x, layer(x), name="one_dense")


def test_single_dense_hand_count():
    report = micronet_score(_dense_model())
    row = report.row("fc")
    assert (row.params, row.params_storage) == (15, 15.0)
    assert (row.mults, row.adds) == (12, 3 * 3 + 3)  # 3 dots of 4: 4 mults + 3 adds, + bias
    assert report.ops == 24
    assert report.score == pytest.approx(15 / 36.5e6 + 24 / 10.49e9)


def test_conv_batchnorm_swish_hand_count():
    x = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, use_bias=False, kernel_initializer="ones", name="conv")(x)  # 3x3x3 out
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("swish", name="swish")(h)
    report = micronet_score(keras.Model(x, h))
    outputs = 27
    conv = report.row("conv")
    assert conv.params_storage == 54 + 3  # kernel + the folded batch-norm bias
    assert (conv.mults, conv.adds) == (18 * outputs, 17 * outputs + outputs)
    assert report.row("bn").ops == 0 and "folded" in report.row("bn").notes
    assert (report.row("swish").mults, report.row("swish").adds) == (3 * outputs, outputs)
    assert report.mults == 21 * outputs and report.adds == 19 * outputs


def test_unfoldable_batchnorm_relu_pooling_add_multiply():
    x = keras.Input((4, 4, 2))
    h = keras.layers.BatchNormalization(name="bn")(x)  # no producer to fold into
    r = keras.layers.ReLU(name="relu")(h)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap")(r)
    m = keras.layers.Multiply(name="scale")([r, s])
    a = keras.layers.Add(name="add")([m, h])
    p = keras.layers.MaxPooling2D(2, name="pool")(a)
    report = micronet_score(keras.Model(x, p))
    e = 32
    assert report.row("bn").params_storage == 4 and (report.row("bn").mults, report.row("bn").adds) == (e, e)
    assert (report.row("relu").mults, report.row("relu").adds) == (e, 0)
    assert (report.row("gap").mults, report.row("gap").adds) == (2, 15 * 2)
    assert report.row("scale").mults == e and report.row("add").adds == e
    assert report.row("pool").adds == 3 * 8


def test_sixteen_bits_halve_storage_and_mults():
    model = _dense_model()
    full, half = micronet_score(model, bits=32), micronet_score(model, bits=16)
    assert half.params_storage == full.params_storage / 2
    assert half.ops == full.mults / 2 + full.adds
    with pytest.raises(ValueError, match="bits"):
        micronet_score(model, bits=8)


def test_half_zero_weights_halve_storage_plus_mask_and_skip_ops():
    x = keras.Input((64,))
    layer = keras.layers.Dense(32, use_bias=False, name="fc")
    model = keras.Model(x, layer(x))
    kernel = np.random.default_rng(0).normal(size=(64, 32)).astype("float32")
    layer.kernel.assign(kernel)
    dense = micronet_score(model)
    kernel[:, ::2] = 0.0
    layer.kernel.assign(kernel)
    sparse = micronet_score(model)
    assert dense.params_storage == 2048
    assert sparse.params_storage == 1024 + 2048 / 32
    assert sparse.row("fc").nonzero == 1024
    assert sparse.mults == dense.mults / 2 == 1024
    assert sparse.adds == 1024 - 32


def test_gated_model_counts_gates_and_masks():
    x = keras.Input((4, 4, 3))
    h = keras.layers.Conv2D(8, 1, name="conv")(x)
    h, z1 = tfgated.channel_gate(h, 2, "independent", name="ind")
    h, z2 = tfgated.channel_gate(h, 4, "dependent", name="dep", hidden_units=4)
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(h))
    report = micronet_score(tfgated.gated_model(x, y, [z1, z2]))
    assert report.row("ind_gate").params_storage == 4 and report.row("ind_gate").ops == 0
    dep = report.row("dep_gate")
    assert dep.params_storage == 8 * 4 + 4 + 4 * 2 + 2  # hidden + folded BN bias + head
    assert dep.mults == 8 + 32 + 4 + 8  # pool divide, hidden, ReLU, head
    assert report.row("ind_mask").mults == 128
    assert report.row("activation_loss").ops == 0


def test_input_shape_for_unknown_spatial_size():
    x = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(x)
    model = keras.Model(x, y)
    with pytest.raises(ValueError, match="input_shape"):
        micronet_score(model)
    assert micronet_score(model, input_shape=(2, 2, 3)).mults == 4 * 2 * 3


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth=27"):
        wide_resnet(depth=27)
