"""Folding gated models into plain Keras models: parity and channel removal."""

import os
import sys

import keras
import numpy as np
import pytest

import tfgated
from tfgated.export import FoldError, fold

sys.path.insert(0, os.path.dirname(__file__))
from models import close_gates, load_preset, mbconv_model, randomize, representative_presets, residual_model  # noqa: E402


def _inputs(model, n=16):
    return np.random.default_rng(3).random((n,) + tuple(model.input_shape[1:])).astype("float32")


def _assert_plain(model):
    for layer in model.layers:
        assert type(layer).__module__.startswith("keras."), layer


def _zero_bn_offsets(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.beta.assign(np.zeros(layer.beta.shape, "float32"))
            layer.moving_mean.assign(np.zeros(layer.beta.shape, "float32"))


def test_mbconv_channels_removed_and_parity():
    model = randomize(mbconv_model())
    _zero_bn_offsets(model)  # closed channels stay 0 through the batch norms: fully removable
    x = _inputs(model)
    folded, report = fold(model, return_report=True)
    _assert_plain(folded)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    # expand conv, depthwise, SE expand conv of block 1 lose the closed channels
    closed = int(np.sum(np.repeat(tfgated.gate_probabilities(model)["b1_expand_gate"] <= 0.5, 2)))
    assert closed > 0
    assert report.channels_removed["b1_expand"] == closed
    assert report.channels_removed["b1_se_expand"] == closed
    assert folded.get_layer("b1_dw").kernel.shape[2] == 32 - closed
    assert folded.get_layer("b1_se_reduce").kernel.shape[2] == 32 - closed
    assert folded.get_layer("b1_project").kernel.shape[2] == 32 - closed
    assert report.macs_after < report.macs_before
    assert "b2_out_mask" not in report.masked_constant  # it only reaches a convolution


def test_mbconv_random_batchnorm_parity_and_constant_masks():
    model = randomize(mbconv_model())
    x = _inputs(model)
    folded, report = fold(model, return_report=True)
    _assert_plain(folded)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    # a non-zero constant reaching the data-dependent SE product cannot be removed exactly
    assert report.masked_constant
    # the head conv reads b2_out channels: removed, constants folded into its bias
    assert "b2_project" in report.channels_removed


def test_force_open_and_granularity():
    model = randomize(mbconv_model(), close_fraction=1.0)
    x = _inputs(model)
    folded, report = fold(model, return_report=True)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    # b2's gate is force_open: one channel remains in its expansion
    assert folded.get_layer("b2_expand").filters >= 1


def test_residual_layer_gates_open_closed_dependent():
    model = randomize(residual_model(kinds=("independent", "independent", "dependent")))
    close_gates(model, ["r0_gate"])
    close_gates(model, ["r1_gate"], open_=True)
    x = _inputs(model, 32)
    folded, report = fold(model, return_report=True)
    _assert_plain(folded)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert report.branches_removed == ["r0_add"]
    assert report.branches_kept == ["r1_add"]
    assert report.dependent_masked == ["r2_gate"]
    assert [c["add"] for c in report.conditional] == ["r2_add"]
    names = {layer.name for layer in folded.layers}
    assert "r0_conv1" not in names and "r1_conv1" in names


def test_dependent_channel_gates_masked_parity():
    model = randomize(mbconv_model(kind="dependent"))
    x = _inputs(model, 32)
    folded = fold(model)
    _assert_plain(folded)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_always_on_and_fold_batchnorm():
    model = randomize(mbconv_model())
    x = _inputs(model)
    folded, report = fold(model, style="always_on", fold_batchnorm=True, return_report=True)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers if "stem" in layer.name)
    tfgated.set_inference_style(model, "always_on")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert report.channels_removed == {}
    assert tfgated.get_inference_style(model) == "always_on"


def test_stochastic_style_refused():
    model = mbconv_model()
    tfgated.set_inference_style(model, "stochastic")
    with pytest.raises(FoldError, match="stochastic"):
        fold(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", representative_presets())
def test_zoo_presets_fold(name):
    """One preset per family and gate kind (from the registry), folded with random gates."""
    from tfgated.exits import exit_gate_layers

    model = load_preset(name)
    if exit_gate_layers(model):  # exits are control flow: they export with export_exit_gates
        with pytest.raises(FoldError, match="export_exit_gates"):
            fold(model, style="threshold")
        return
    randomize(model)
    _zero_bn_offsets(model)  # closed channels stay exactly 0, so they can all be removed
    x = _inputs(model, 4)
    folded, report = fold(model, style="threshold", return_report=True)
    _assert_plain(folded)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    if all(g.kind == "independent" for g in tfgated.gate_layers(model)):
        assert report.macs_after < report.macs_before


def test_the_fold_report_says_when_constant_masks_cost_more_than_folding_saved():
    from tfgated.export.fold import FoldReport

    # the earlier sipa_fashion_mnist_gated (gates before the depthwise and SE): no channel removable, seven constant masks
    costly = FoldReport("threshold", macs_before=25_457_296, macs_after=25_634_896, masked_constant={"block3_expand_mask": 176})
    assert "costs 177,600 MACs more than the unfolded one" in str(costly)
    saving = FoldReport("threshold", macs_before=3_047_216, macs_after=656_026, masked_constant={"block_1_project_mask": 12})
    assert "more than the unfolded one" not in str(saving)


@pytest.mark.slow
def test_learned_pruning_sipa_preset_folds_away_what_its_gates_close():
    """``sipa_fashion_mnist_gated`` as training leaves it (nonzero batch-norm offsets): its gates sit
    after the depthwise activation, so a closed channel is zero into squeeze-and-excitation and the
    projection, and the folded graph computes the MACs the gates promise (gated right after the
    expansion, SE rescaled each closed channel's constant per image and nothing could be removed)."""
    from tfgated import zoo
    from tfgated.complexity import expected_macs

    model = randomize(zoo.build("sipa_fashion_mnist_gated"))
    x = _inputs(model, 4)
    folded, report = fold(model, style="threshold", return_report=True)
    _assert_plain(folded)
    tfgated.set_inference_style(model, "threshold")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert report.masked_constant == {}
    assert sum(report.channels_removed.values()) > 0
    promised = expected_macs(model, gate_values=tfgated.gate_values(model, x)).expected
    assert report.macs_after == pytest.approx(promised, rel=0.01)
    assert report.macs_after < 0.75 * report.macs_before
