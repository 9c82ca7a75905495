"""The demo (`python -m tfgated demo`) on real Fashion-MNIST images."""

import pytest

from tfgated.demo import run_demo


def test_demo_trains_and_reports_gates_and_macs():
    result = run_demo(examples=512, epochs=1, batch_size=64, verbose=0)
    assert result["train_examples"] == 512
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["gate_rates"] and all(0.0 <= r <= 1.0 for r in result["gate_rates"].values())
    assert 0 < result["expected_macs"] <= result["dense_macs"]


def test_demo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Received: examples=0"):
        run_demo(examples=0)
