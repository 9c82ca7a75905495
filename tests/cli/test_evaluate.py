"""``python -m tfgated evaluate``: inference styles, the run's data settings, BN recalibration, --save, errors."""

import json
import os

import keras
import numpy as np
import pytest

from tfgated.__main__ import main as cli_main
from tfgated.cli.train import TrainOptions, train


@pytest.mark.slow
def test_evaluate_modes_and_json(tmp_path, model_file, capsys):
    run = str(tmp_path / "run")
    train(model_file, run, TrainOptions(limit=200, overrides={"epochs": 1, "batch_size": 50}, verbose=0))
    out = str(tmp_path / "eval" / "always.json")
    assert cli_main(["evaluate", "--model", run, "--style", "always_on", "--json", out]) == 0
    with open(out) as f:
        always = json.load(f)
    assert always["gate_activation"] == 1.0 and always["macs"] == always["dense_macs"]
    assert always["examples"] == 200  # the run's --limit is reused
    capsys.readouterr()
    assert cli_main(["evaluate", "--model", run, "--style", "stochastic", "--runs", "3"]) == 0
    stoch = json.loads(capsys.readouterr().out)
    assert stoch["runs"] == 3 and len(stoch["per_run"]) == 3 and "top1_std" in stoch and "macs_std" in stoch
    # --mode: the earlier name of --style, kept as a hidden alias
    assert cli_main(["evaluate", "--model", os.path.join(run, "model.keras"), "--limit", "100",
                     "--batch-size", "32", "--mode", "ensemble", "--runs", "2", "--samples", "3", "--bn-recalibrate",
                     "--recalibrate-batches", "2", "--save", str(tmp_path / "recal.keras")]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["samples"] == 3 and ens["bn_recalibrated_batches"] == 2
    assert 0 < ens["macs"] <= 3 * ens["dense_macs"]  # ensemble MACs count all 3 passes
    # --save keeps the re-estimated batch-norm statistics, loadable in safe mode
    before = keras.saving.load_model(os.path.join(run, "model.keras"), safe_mode=True, compile=False)
    after = keras.saving.load_model(str(tmp_path / "recal.keras"), safe_mode=True, compile=False)
    bn = [layer.name for layer in after.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and any(not np.allclose(before.get_layer(n).moving_mean, after.get_layer(n).moving_mean) for n in bn)
    conv = next(layer.name for layer in after.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(before.get_layer(conv).kernel, after.get_layer(conv).kernel)
    assert cli_main(["evaluate", "--model", run, "--save", str(tmp_path / "recal.h5")]) == 2  # refused up front
    assert not (tmp_path / "recal.h5").exists()


def test_evaluate_missing_model(tmp_path, capsys):
    assert cli_main(["evaluate", "--model", str(tmp_path / "missing.keras")]) == 2
    assert "not found" in capsys.readouterr().err
