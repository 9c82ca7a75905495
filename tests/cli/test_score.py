"""``python -m tfgated score``: the per-layer MicroNet breakdown of a ``.keras`` file, and its errors."""

import pytest

from tfgated.__main__ import main as cli_main
from tfgated.cli.score import parse_shape
from tfgated.micronet import micronet_score, wide_resnet


def test_score_prints_breakdown(tmp_path, capsys):
    model = wide_resnet(depth=10, width=1, num_classes=10, input_shape=(8, 8, 1))
    path = tmp_path / "wrn.keras"
    model.save(path)
    assert cli_main(["score", str(path), "--bits", "16"]) == 0
    out = capsys.readouterr().out
    assert "group1_block1_conv1" in out and "score =" in out and "16-bit" in out
    assert micronet_score(model, bits=16).table() in out


def test_score_user_errors_exit_2(tmp_path, capsys):
    assert cli_main(["score", str(tmp_path / "missing.keras")]) == 2
    assert "not found" in capsys.readouterr().err
    path = tmp_path / "wrn.keras"
    wide_resnet(depth=10, width=1, num_classes=10, input_shape=(8, 8, 1)).save(path)
    assert cli_main(["score", str(path), "--input-shape", "8,eight,1"]) == 2
    assert "Expected an input shape like 32,32,3. Received: '8,eight,1'" in capsys.readouterr().err


def test_parse_shape():
    assert parse_shape("32,32,3") == (32, 32, 3) and parse_shape("32x32x3") == (32, 32, 3)
    with pytest.raises(ValueError, match="Received: '0,4'"):
        parse_shape("0,4")
