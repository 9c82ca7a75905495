"""tfgated.exits.study: risk-coverage curves and the exit-position table."""

import numpy as np
import pytest

from tfgated import complexity
from tfgated import exits as ee


def test_risk_coverage_hand_example(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])  # correct, wrong, correct, wrong
    curve = ee.risk_coverage(probs, labels)
    np.testing.assert_allclose(curve.coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [0.0, 1 / 3, 0.5])
    np.testing.assert_allclose(curve.confidence, [0.9, 0.8, 0.6])
    assert curve.aurc == pytest.approx(0.25 * 0 + 0.5 / 3 + 0.25 * 0.5)
    assert curve.risk_at(0.5) == pytest.approx(1 / 3)
    assert curve.risk_at(1.0) == pytest.approx(0.5)
    path = ee.plot_risk_coverage({"ce": curve, "softsmoothing": curve}, str(tmp_path / "rc.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_exit_position_study_rows_and_table(small_data, tiny_model, dataset):
    x, y = small_data
    model = tiny_model()
    data = {"train": dataset(x[:64], y[:64]), "validation": dataset(x[64:128], y[64:128]),
            "test": dataset(x[128:192], y[128:192])}
    study = ee.exit_position_study(model, [0, 2], data, thresholds=(0.3, 0.5), epochs=1, max_accuracy_drop=0.05,
                                   head=None)
    assert [r["exit_layer"] for r in study.rows] == ["block0_add", "block2_add"]
    first, last = study.rows
    assert first["exit_path_macs"] < last["exit_path_macs"]
    assert first["main_macs"] == complexity.count(model).macs == study.main_macs
    assert [e["threshold"] for e in first["thresholds"]] == [0.3, 0.5]
    assert first["calibrated"]["validation"]["accuracy_drop"] <= 0.05 + 1e-12
    for row in study.rows:  # the validation saving follows the validation exit ratio
        macs = ee.exit_structure(study.models[row["position"]]).macs
        ratio = row["calibrated"]["validation"]["exit_ratio"]
        expected = 1.0 - (macs["part_a"] + macs["head"] + (1.0 - ratio) * macs["part_b"]) / macs["main"]
        assert row["calibrated"]["validation"]["mac_saving"] == pytest.approx(expected)
    assert study.table.count("\n| ") == 3 and "block2_add" in study.table
    assert set(study.models) == {0, 2}
