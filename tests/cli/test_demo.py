"""The demo (``python -m tfgated demo``, tfgated.cli.demo) on real Fashion-MNIST images."""

import os

import numpy as np
import pytest

from tfgated.cli import demo

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Fashion-MNIST IDX files (Debian dataset-fashion-mnist) not installed",
)


@pytest.mark.slow
def test_demo_shows_closed_gates_macs_saved_and_accuracy_kept(monkeypatch, capsys):
    seen = {}
    measure = demo.measure_demo

    def spy(model, x, y):
        seen.update(model=model, x=x, y=y, result=measure(model, x, y))
        return seen["result"]

    monkeypatch.setattr(demo, "measure_demo", spy)
    assert demo.main([]) == 0  # the shipped weights, no training
    out = capsys.readouterr().out
    result = seen["result"]
    # measured on the first 1,000 test images; the accuracy is the model's own top-1 on them (threshold)
    assert len(seen["y"]) == demo.PROBE_EXAMPLES == 1000
    predictions = seen["model"].predict(seen["x"], batch_size=256, verbose=0)
    assert result["accuracy"] == pytest.approx(float(np.mean(predictions.argmax(axis=1) == seen["y"])), abs=1e-6)
    # the shipped gumbel_resnet_fashion_mnist closes gates: fewer MACs, accuracy kept
    assert result["closed_gates"], result["gate_rates"]
    assert result["expected_macs"] < 0.9 * result["dense_macs"]
    assert result["accuracy"] > 0.85 and result["dense_accuracy"] > 0.5
    assert "gumbel_resnet_fashion_mnist: shipped weights" in out
    for name, rate in result["gate_rates"].items():
        assert f"  {name:<28} {rate:6.3f}" in out
    assert "closed" in out and "saved)" in out and "every gate open" in out


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(ValueError, match="Received: examples=0"):
        demo.run_demo(examples=0)
    with pytest.raises(SystemExit) as error:
        demo.main(["--examples", "0"])
    assert error.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "-1"])
    assert "expected a non-negative integer, got '-1'" in capsys.readouterr().err
