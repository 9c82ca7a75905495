"""tfgated.exits.runtime: threshold calibration and inference that really stops early."""

import numpy as np
import pytest

from tfgated import exits as ee


def test_calibrate_threshold_meets_drop_and_is_maximal():
    rng = np.random.default_rng(0)
    n, c = 400, 5
    labels = rng.integers(0, c, n)
    main = rng.dirichlet(np.ones(c) * 0.3, n)
    main[np.arange(n), labels] += 0.8
    main /= main.sum(1, keepdims=True)
    exit_probs = rng.dirichlet(np.ones(c) * 0.5, n)
    exit_probs[np.arange(n)[: n // 2], labels[: n // 2]] += 1.0
    exit_probs /= exit_probs.sum(1, keepdims=True)
    full = (main.argmax(1) == labels).mean()
    candidates = np.concatenate([[0.0, 1.0], exit_probs.max(1)])
    for drop in (0.0, 0.01, 0.05):
        cal = ee.calibrate_threshold(exit_probs, main, labels, max_accuracy_drop=drop)
        probs, exited = ee.combine_predictions(exit_probs, main, cal.threshold)
        accuracy = (probs.argmax(1) == labels).mean()
        assert accuracy >= full - drop - 1e-12
        assert cal.accuracy == pytest.approx(accuracy) and cal.exit_ratio == pytest.approx(exited.mean())
        assert cal.full_accuracy == pytest.approx(full)
        # no threshold exits more samples while meeting the drop
        for t in candidates:
            p, e = ee.combine_predictions(exit_probs, main, t)
            if e.mean() > cal.exit_ratio:
                assert (p.argmax(1) == labels).mean() < full - drop
    cal = ee.calibrate_threshold(exit_probs, main, labels, target_exit_ratio=0.3)
    _, exited = ee.combine_predictions(exit_probs, main, cal.threshold)
    assert exited.mean() >= 0.3 and exited.mean() == pytest.approx(cal.exit_ratio)
    with pytest.raises(ValueError, match="exactly one"):
        ee.calibrate_threshold(exit_probs, main, labels)
    with pytest.raises(ValueError, match="target_exit_ratio=1.5"):
        ee.calibrate_threshold(exit_probs, main, labels, target_exit_ratio=1.5)


@pytest.mark.parametrize("gated", [False, True])
def test_early_exit_inference_matches_per_sample_selection(small_data, tiny_model, dataset, gated):
    x, y = small_data
    x = x[:100]
    model = tiny_model(gated=gated)
    with_exit = ee.attach_exit(model, 0, channels=16)
    main_probs, exit_probs = with_exit.predict(x, verbose=0)
    threshold = float(np.median(exit_probs.max(1)))
    runner = ee.EarlyExitModel(with_exit, threshold)
    if gated:  # gate tensors read by the activation loss layer must not be needed after the split
        assert ee.exit_structure(with_exit).main_output is not with_exit.outputs[0]
    seen = []
    part_b = runner.part_b

    def counting_part_b(inputs, training=False):
        seen.append(len(inputs[0]))
        return part_b(inputs, training=training)

    runner.part_b = counting_part_b
    result = runner.predict(x, labels=y[:100], batch_size=32)
    expected, exited = ee.combine_predictions(exit_probs, main_probs, threshold)
    np.testing.assert_array_equal(result.exited, exited)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(result.predictions, expected.argmax(1))
    assert 0 < result.exit_ratio < 1
    assert sum(seen) == int((~exited).sum())  # part B ran on the continuing samples only
    macs = result.macs
    assert result.mean_macs == pytest.approx(macs["part_a"] + macs["head"] + (1 - result.exit_ratio) * macs["part_b"])
    assert result.accuracy == pytest.approx((expected.argmax(1) == y[:100]).mean())
    # dataset input, and thresholds at the ends
    everyone = ee.early_exit_predict(with_exit, dataset(x, y[:100]), threshold=0.0)
    assert everyone.exit_ratio == 1.0 and everyone.mean_macs == macs["part_a"] + macs["head"]
    nobody = ee.early_exit_predict(with_exit, x, threshold=1.0)
    np.testing.assert_allclose(nobody.probabilities, main_probs, atol=1e-5)
    with pytest.raises(ValueError, match="threshold=1.2"):
        ee.EarlyExitModel(with_exit, 1.2)


def test_checks_of_labels_probabilities_and_thresholds():
    from tfgated.exits.runtime import check_probabilities, check_threshold, class_indices

    np.testing.assert_array_equal(class_indices([[0], [2]]), [0, 2])
    np.testing.assert_array_equal(class_indices(np.eye(3)[[2, 1]]), [2, 1])
    assert check_probabilities([[0.5, 0.5]], "probs").dtype == np.float64
    with pytest.raises(ValueError, match=r"exit_probs of shape \(N, classes\)"):
        check_probabilities([0.5, 0.5], "exit_probs")
    assert check_threshold(1) == 1.0
    for bad in (True, "0.5", float("nan"), -0.1):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)


def test_expected_operations_count_part_b_only_for_the_examples_that_stay(tiny_model):
    from tfgated.micronet import micronet_score

    with_exit = ee.attach_exit(tiny_model(), 0, channels=16)
    runner = ee.EarlyExitModel(with_exit, 0.5)
    report = micronet_score(with_exit, bits=16)
    part_b = {layer.name for layer in runner.part_b.layers}
    ops_b = sum(r.ops for r in report.rows if r.name in part_b)
    assert 0 < ops_b < report.ops
    assert runner.expected_ops(report, 0.0) == pytest.approx(report.ops)  # nobody exits: every layer
    assert runner.expected_ops(report, 1.0) == pytest.approx(report.ops - ops_b)  # everyone exits
    assert runner.expected_ops(report, 0.25) == pytest.approx(report.ops - 0.25 * ops_b)
