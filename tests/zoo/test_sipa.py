"""The SIPA family against its reference code: structure, counts, early exit, channel gates."""

import keras
import numpy as np
import pytest

import tfgated
import tfgated.zoo
from tfgated.zoo import sipa

KERNEL_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
# Reference README table: (input side, input channels, output channels) of MBConvBlock[0..9].
REFERENCE_BLOCKS = [
    (31, 24, 16), (31, 16, 24), (31, 24, 40), (15, 40, 40), (15, 40, 48),
    (15, 48, 64), (15, 64, 64), (15, 64, 80), (7, 80, 80), (7, 80, 96),
]
# The README prints 104,456 for block 9, but its rows then sum to 470,576, not its total 470,776:
# 80*480 + 9*480 + (480*16 + 16) + (16*480 + 480) + 480*96 = 104,656 is the consistent value.
REFERENCE_BLOCK_PARAMS = [820, 5379, 11812, 25448, 27368, 40329, 62220, 68364, 96976, 104656]
SMALL_BLOCKS = ["r1_k3_s1_e1_i24_o16_se0.2", "r1_k3_s2_e6_i16_o24_se0.2", "r1_k3_s1_e6_i24_o24_se0.2"]


def _kernel_params(model, prefix=""):
    """Convolution and dense weights plus biases (BatchNorm excluded), the reference's count."""
    return sum(l.count_params() for l in model.layers if isinstance(l, KERNEL_LAYERS) and l.name.startswith(prefix))


@pytest.fixture(scope="module")
def cifar():
    return tfgated.zoo.build("sipa_cifar100")


def test_helpers_follow_the_reference():
    assert [sipa.round_filters(f, 0.9) for f in (24, 16, 40, 56, 72, 88, 104, 150)] == [24, 16, 40, 48, 64, 80, 96, 136]
    assert sipa.round_filters(37, 1.0) == 37
    assert sipa.round_repeats(2, 1.0) == 2 and sipa.round_repeats(2, 1.2) == 3
    assert sipa.resolution_coefficient(1.4, 2) == 1.96
    assert sipa.upsampled_size(32, 1.4, 2) == 63
    assert sipa.upsampled_size(28, 1.4, 1) == 40
    assert sipa.static_same_padding(3, 2, 32) == (0, 1)
    assert sipa.static_same_padding(3, 1, 32) == (1, 1)
    assert sipa.decode_block("r2_k5_s2_e6_i24_o40_se0.25") == {
        "repeats": 2, "kernel": 5, "stride": 2, "expand": 6, "filters_in": 24, "filters_out": 40,
        "se_ratio": 0.25, "id_skip": True,
    }
    assert sipa.decode_block("r1_k3_s1_e1_i8_o8_noskip")["se_ratio"] is None
    with pytest.raises(ValueError, match="Expected a block string like"):
        sipa.decode_block("k3_s1")
    blocks = sipa.expand_blocks(sipa.REFERENCE_BLOCKS, width=0.9)
    assert [(b["filters_in"], b["filters_out"]) for b in blocks] == [(i, o) for _, i, o in REFERENCE_BLOCKS]
    assert [b["stride"] for b in blocks] == [1, 1, 2, 1, 1, 1, 1, 2, 1, 1]


def test_sipa_cifar100_matches_the_reference_structure(cifar):
    assert cifar.input.shape == (None, 32, 32, 3)
    assert cifar.output.shape == (None, 100)
    assert cifar.get_layer("upsample").output.shape == (None, 63, 63, 3)
    assert cifar.get_layer("stem_conv").output.shape == (None, 31, 31, 24)
    for index, (side, channels_in, channels_out) in enumerate(REFERENCE_BLOCKS):
        previous = "stem_activation" if index == 0 else f"block{index - 1}_project_bn"
        assert cifar.get_layer(previous).output.shape[1:] == (side, side, channels_in), index
        assert cifar.get_layer(f"block{index}_project_conv").filters == channels_out
        assert _kernel_params(cifar, f"block{index}_") == REFERENCE_BLOCK_PARAMS[index], index
    assert cifar.get_layer("block1_se_reduce").filters == 3  # max(1, int(16 * 0.2))
    assert cifar.get_layer("block0_se_reduce").filters == 4
    assert cifar.get_layer("top_conv").output.shape == (None, 7, 7, 136)
    assert _kernel_params(cifar) == 470776
    residual = {index for index in range(10) if _has_layer(cifar, f"block{index}_add")}
    assert residual == {3, 6, 8}
    assert cifar.get_layer("block3_drop").rate == pytest.approx(0.2 * 3 / 10)


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def test_forward_outputs_probabilities(cifar):
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    probabilities = cifar.predict(x, verbose=0)
    assert probabilities.shape == (2, 100)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


def test_early_exit_head_after_block_4_main_output_first():
    model = tfgated.zoo.build("sipa_cifar100_exit")
    assert [o.shape for o in model.outputs] == [(None, 100), (None, 100)]
    assert model.outputs[0] is model.get_layer("predictions").output
    assert model.outputs[1] is model.get_layer("exit_head_predictions").output
    assert model.get_layer("exit_head_dwconv").input is model.get_layer("block4_project_bn").output
    assert model.get_layer("exit_head_conv").filters == 136
    assert _kernel_params(model, "exit_head_") == 20660  # reference README
    assert _kernel_params(model) == 491436
    with pytest.raises(ValueError, match="Received: exit_after=9"):
        tfgated.zoo.build("sipa_cifar100", exit_after=9)


def test_fashion_mnist_presets_resize_inside_the_model():
    model = tfgated.zoo.build("sipa_fashion_mnist")
    assert model.input.shape == (None, 28, 28, 1)
    assert model.get_layer("upsample").output.shape == (None, 40, 40, 1)
    # static padding computed for 28: the stride-2 stem pads 0 before, 1 after: 41 -> 20
    assert model.get_layer("stem_conv").output.shape == (None, 20, 20, 24)
    assert model.output.shape == (None, 10)
    assert tfgated.gate_layers(model) == []


def test_upsampling_interpolation_is_a_switch_that_survives_saving(tmp_path):
    image = np.zeros((1, 28, 28, 1), "float32")
    image[0, 10, 10, 0] = 255.0  # one bright pixel: nearest copies it, bilinear blends it
    nearest = tfgated.zoo.build("sipa_fashion_mnist")
    bilinear = tfgated.zoo.build("sipa_fashion_mnist", upsampling="bilinear")
    assert nearest.get_layer("upsample").get_config()["interpolation"] == "nearest"  # SIPA's default
    up = {name: keras.Model(m.input, m.get_layer("upsample").output)(image).numpy()
          for name, m in (("nearest", nearest), ("bilinear", bilinear))}
    assert len(np.unique(up["nearest"])) == 2  # the normalized background and the pixel
    assert len(np.unique(up["bilinear"])) > 2
    bilinear.save(tmp_path / "bilinear.keras")
    loaded = keras.models.load_model(tmp_path / "bilinear.keras", safe_mode=True)
    assert loaded.get_layer("upsample").get_config()["interpolation"] == "bilinear"
    with pytest.raises(ValueError, match="upsampling in"):
        tfgated.zoo.build("sipa_fashion_mnist", upsampling="bicubic")


def test_gated_preset_gates_every_block_and_keeps_non_residual_blocks_open():
    model = tfgated.zoo.build("sipa_fashion_mnist_gated")
    gates = {g.name: g for g in tfgated.gate_layers(model)}
    assert sorted(gates) == sorted(f"block{i}_expand_gate" for i in range(10))
    assert gates["block0_expand_gate"].units == 3  # 24 depthwise channels of block 0 / 8
    assert gates["block9_expand_gate"].units == 60  # 480 expansion channels / 8
    assert {name for name, g in gates.items() if not g.force_open} == {
        "block3_expand_gate", "block6_expand_gate", "block8_expand_gate"}
    assert all(g.kind == "independent" for g in gates.values())
    # after the depthwise activation, before squeeze-and-excitation: a closed channel is zero into both
    mask = model.get_layer("block5_expand_mask")
    assert mask.input[0] is model.get_layer("block5_activation").output
    assert model.get_layer("block5_se_squeeze").input is mask.output
    loss = model.get_layer("activation_loss")
    assert loss.loss_kind == "per_batch" and loss.target == pytest.approx(0.5)
    # the target is a fraction of the gated MACs: each gate tensor weighs the MACs it controls
    assert loss.gate_weights[5] > loss.gate_weights[0] > 0


def test_closed_gates_zero_their_expansion_channels():
    model = tfgated.zoo.build("sipa_fashion_mnist_gated")
    gate = model.get_layer("block3_expand_gate")
    logits = np.full(gate.units, 6.0, dtype=np.float32)
    logits[::2] = -6.0  # close every other group of 8 channels
    gate.logits.assign(logits)
    probe = keras.Model(model.input, model.get_layer("block3_expand_mask").output)
    x = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    features = probe.predict(x, verbose=0).reshape(2, -1, gate.units, 8)
    assert np.all(features[:, :, ::2, :] == 0)
    assert np.any(features[:, :, 1::2, :] != 0)


def test_dependent_gates_read_the_block_input():
    model = tfgated.zoo.build("sipa_fashion_mnist_gated", kind="dependent", granularity=4)
    gate = model.get_layer("block2_expand_gate")
    assert gate.kind == "dependent" and gate.units == 144 // 4
    assert gate.input is model.get_layer("block1_project_bn").output


def test_granularity_errors_name_the_value():
    with pytest.raises(ValueError, match=r"Expected granularity to divide 24 channels \(block 0\). Received: granularity=5"):
        tfgated.zoo.build("sipa_fashion_mnist_gated", granularity=5)
    with pytest.raises(ValueError, match=r"Expected one granularity per MBConv block \(10\)"):
        tfgated.zoo.build("sipa_fashion_mnist_gated", granularity=[8, 8])
    with pytest.raises(ValueError, match=r"Unknown gate settings \['level'\]"):
        tfgated.zoo.build("sipa_fashion_mnist_gated", gates={"kind": "independent", "level": "layer"})
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['level'\] for model 'sipa_fashion_mnist'"):
        tfgated.zoo.build("sipa_fashion_mnist", level="layer")
    per_block = [24, 48, 48, 48, 48, 48, 48, 48, 48, 48]
    model = tfgated.zoo.build("sipa_fashion_mnist_gated", granularity=per_block)
    assert model.get_layer("block9_expand_gate").units == 10


def test_gate_layer_settings_reach_every_gate():
    model = tfgated.zoo.build("sipa_fashion_mnist_gated", gates={"gradient_scale": 50.0, "open_probability": 0.9})
    gates = [layer for layer in model.layers if isinstance(layer, tfgated.GumbelGate)]
    assert len(gates) == 10
    assert {gate.gradient_scale for gate in gates} == {50.0}
    assert {gate.open_probability for gate in gates} == {0.9}


@pytest.mark.slow
def test_a_small_gated_exit_variant_trains_with_fit():
    """Gates, exit head and activation loss train together through plain fit."""
    model = tfgated.zoo.load(
        "sipa_fashion_mnist_gated", blocks=SMALL_BLOCKS, exit_after=1, width=1.0, resolution=1.0
    )
    gate = model.get_layer("block1_expand_gate")
    before = np.array(gate.logits.numpy())
    x = np.random.default_rng(2).random((16, 28, 28, 1), dtype=np.float32)
    y = np.random.default_rng(3).integers(0, 10, 16)
    history = model.fit(x, [y, y], epochs=1, batch_size=8, verbose=0)
    assert "gate_activation" in history.history
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(gate.logits.numpy(), before)
    assert not _has_layer(model, "upsample")


def test_micronet_score_matches_the_paper(cifar):
    from tfgated.micronet import micronet_score

    full = micronet_score(cifar, bits=32)
    # The counter's exact count. The reference README's hand count is 60,456,692
    # multiplications + 57,132,604 additions = 117,589,296 math operations at 32 bits;
    # ours is 0.94% higher, nearly all in additions (the biases of folded BatchNorm).
    assert (full.mults, full.adds, full.ops) == (60_468_799, 58_230_471, 118_699_270)
    half = micronet_score(cifar, bits=16)
    assert (half.params_storage, half.ops) == (238_492, 88_464_870.5)
    # the reference README's 16-bit scores before pruning: storage 0.006534, math 0.008447, 0.014981
    assert round(half.params_storage / 36.5e6, 6) == 0.006534
    assert half.ops / 10.49e9 == pytest.approx(0.008447, rel=2e-3)
    assert half.score == pytest.approx(0.014981, rel=1e-3)
