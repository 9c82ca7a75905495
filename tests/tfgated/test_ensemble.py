"""The ensemble style's two combinations: the authors' majority vote and the mean softmax."""

import numpy as np
import pytest
import tensorflow as tf

import tfgated
from tfgated.inference import combine_passes, vote_shares
from tiny_fixtures import tiny_gated_model

#: Three passes over one example: two weakly for class 0, one sure of class 1.
PASSES = [np.array([[0.40, 0.35, 0.25]]), np.array([[0.40, 0.35, 0.25]]), np.array([[0.0, 1.0, 0.0]])]


def test_vote_and_mean_differ_where_a_confident_pass_is_outvoted():
    voted = combine_passes(PASSES, "vote")
    averaged = combine_passes(PASSES, "mean")
    np.testing.assert_allclose(voted, [[2 / 3, 1 / 3, 0.0]])
    np.testing.assert_allclose(averaged, [[0.8 / 3, 1.7 / 3, 0.5 / 3]])
    assert voted.argmax() == 0 and averaged.argmax() == 1


def test_vote_breaks_ties_like_the_authors_scipy_mode():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    passes = [rng.dirichlet(np.ones(4), size=500) for _ in range(4)]  # 4 passes: many 2-2 ties
    tops = np.stack([p.argmax(axis=1) for p in passes], axis=1)
    expected = stats.mode(tops, axis=1, keepdims=False).mode
    assert np.any(np.sort(tops, axis=1)[:, 0] != np.sort(tops, axis=1)[:, -1])  # the passes disagree
    np.testing.assert_array_equal(vote_shares(passes).argmax(axis=1), expected)


def test_top5_votes_count_every_pass_top5_list():
    passes = [np.array([[0.5, 0.2, 0.1, 0.1, 0.06, 0.04]]), np.array([[0.04, 0.06, 0.1, 0.1, 0.2, 0.5]])]
    np.testing.assert_allclose(vote_shares(passes, k=5), [[0.5, 1.0, 1.0, 1.0, 1.0, 0.5]])


def test_unknown_ensemble_is_refused():
    with pytest.raises(ValueError, match="Expected ensemble to be one of \\['vote', 'mean'\\]. Received: ensemble='median'"):
        combine_passes(PASSES, "median")


@pytest.mark.slow
def test_predict_votes_over_the_same_passes_it_would_average(fashion_mnist_small):
    x, _ = fashion_mnist_small
    model = tiny_gated_model()
    gate = tfgated.gate_layers(model)[0]
    gate.set_weights([w * 0 for w in gate.get_weights()])  # open probability 0.5: the passes differ
    voted = tfgated.predict(model, x[:64], style="ensemble", samples=5, seed=7, ensemble="vote")
    averaged = tfgated.predict(model, x[:64], style="ensemble", samples=5, seed=7)  # default: mean
    tfgated.set_inference_style(model, "stochastic")
    tfgated.reset_gate_noise(model, 7)
    passes = [model.predict(x[:64], batch_size=256, verbose=0) for _ in range(5)]  # as predict batches
    assert not np.allclose(passes[0], passes[1])
    np.testing.assert_allclose(voted, vote_shares(passes))
    np.testing.assert_allclose(averaged, np.mean(passes, axis=0), atol=1e-6)


@pytest.mark.slow
def test_evaluate_model_reports_the_vote_by_default(fashion_mnist_small):
    from tfgated.train import evaluate_model

    x, y = fashion_mnist_small
    model = tiny_gated_model()
    gate = tfgated.gate_layers(model)[0]
    gate.set_weights([w * 0 for w in gate.get_weights()])
    data = tf.data.Dataset.from_tensor_slices((x[:200], y[:200])).batch(50)
    results = {}
    for ensemble in ("vote", "mean"):
        tfgated.reset_gate_noise(model, 3)
        kwargs = {} if ensemble == "vote" else {"ensemble": "mean"}
        results[ensemble] = evaluate_model(model, data, style="ensemble", runs=1, samples=5, **kwargs)
    tfgated.set_inference_style(model, "stochastic")
    tfgated.reset_gate_noise(model, 3)
    passes = [model.predict(data, verbose=0) for _ in range(5)]
    assert results["vote"]["ensemble"] == "vote" and results["mean"]["ensemble"] == "mean"
    assert results["vote"]["top1"] == pytest.approx(np.mean(vote_shares(passes).argmax(axis=1) == y[:200]))
    assert results["mean"]["top1"] == pytest.approx(np.mean(np.mean(passes, axis=0).argmax(axis=1) == y[:200]))
