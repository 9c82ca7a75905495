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


def test_score_preset_by_name_matches_the_reference(capsys):
    """A preset without shipped weights is scored by name (the score counts the architecture):
    ``sipa_cifar100`` at 16 bits against the SIPA reference README's 0.014981."""
    assert cli_main(["score", "sipa_cifar100", "--bits", "16"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("storage") and float(last.rsplit("score = ", 1)[1]) == pytest.approx(0.014981, rel=1e-3)


def test_score_fold_refuses_a_preset_without_weights(capsys):
    assert cli_main(["score", "sipa_cifar100", "--fold"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ships no trained weights" in err[0] and "python -m tfgated train --model sipa_cifar100" in err[0]


def test_score_fold_counts_what_the_export_runs(capsys):
    """``--fold`` on the learned-pruning preset: the closed channels leave the count, so the
    score is the folded network's (the same as scoring ``fold``'s model), far below the
    unfolded one's, and the fold report is printed."""
    from tfgated import zoo
    from tfgated.export.fold import fold

    assert cli_main(["score", "sipa_fashion_mnist_gated", "--bits", "16"]) == 0
    unfolded = float(capsys.readouterr().out.rsplit("score = ", 1)[1])
    assert cli_main(["score", "sipa_fashion_mnist_gated", "--bits", "16", "--fold"]) == 0
    out = capsys.readouterr().out
    folded = float(out.rsplit("score = ", 1)[1])
    assert "folded (threshold): MACs" in out
    expected = micronet_score(fold(zoo.load("sipa_fashion_mnist_gated", compile=False), style="threshold"), bits=16)
    assert folded == pytest.approx(expected.score, abs=5e-7)  # printed to 6 decimals
    assert folded < 0.6 * unfolded
    from tfgated.zoo.registry import weights_index

    assert f"scores {folded:.6f} at 16 bits" in weights_index()["sipa_fashion_mnist_gated"]["note"]  # the card's figure
