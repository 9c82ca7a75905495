"""``python -m tfgated.export bench --conditional``: argument errors and the goals it records."""

import pytest

from tfgated.cli.export import main as export_main
from tfgated.export import conditional_bench


@pytest.mark.parametrize(
    "argv, says",
    [
        (["bench"], "or --conditional MODEL"),
        (["bench", "a.tflite", "--conditional", "gumbel_resnet_fashion_mnist"], "either files or --conditional"),
        (["bench", "--conditional", "gumbel_resnet_fashion_mnist", "--batch-sizes", "1,x"], "--batch-sizes as comma"),
        (["bench", "--conditional", "gumbel_resnet_fashion_mnist", "--thread-counts", "0"], "--thread-counts as comma"),
    ],
)
def test_bench_user_errors_are_one_line(argv, says, capsys):
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def _row(runtime, batch, sparse, masked=1.0, threads=1):
    return {"runtime": runtime, "threads": threads, "batch": batch, "sparse_over_dense": sparse,
            "masked_over_dense": masked, "sparse_over_masked": sparse / masked}


def test_goals_compare_latency_with_the_mac_ratio():
    macs = {"sparse": 0.6}  # the goals allow 1.25 x 0.6 = 0.75 of dense
    keras = {"sparse_over_masked": 1.4}
    rows = [_row("litert", 64, 0.7), _row("litert", 256, 0.74), _row("onnxruntime", 64, 0.6),
            _row("onnxruntime", 256, 0.7), _row("onnxruntime", 1, 0.8), _row("litert", 8, 0.9)]
    goals = conditional_bench.goals(rows, macs, keras)
    assert goals["latency_batch_64_256"]["goal_met"] is True
    assert goals["latency_onnx_batch_1"]["goal_met"] is False  # 0.8 > 0.75
    assert goals["keras_predict_batch_256"]["goal_met"] is True
    assert goals["never_slower_than_masked"]["goal_met"] is True
    slower = conditional_bench.goals(rows + [_row("litert", 1, 1.2, masked=1.0)], macs, {"sparse_over_masked": 1.1})
    assert slower["never_slower_than_masked"]["slower"][0]["batch"] == 1
    assert not slower["never_slower_than_masked"]["goal_met"] and not slower["keras_predict_batch_256"]["goal_met"]
