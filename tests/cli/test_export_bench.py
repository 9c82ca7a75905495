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


@pytest.mark.slow
def test_bench_conditional_times_an_early_exit_model(tmp_path, capsys):
    """``bench --conditional`` on a two-output model: dense (no exit), masked and sparse files of
    it, the exit share and MAC ratio measured on the same images, a threshold required."""
    import json

    import numpy as np

    import tfgated
    from tfgated.cli.export import fashion_mnist_inputs
    from tfgated.exits import EarlyExitModel, attach_exit
    from tiny_fixtures import residual_model, spread_gates

    images = fashion_mnist_inputs((28, 28, 1), n=16)
    model = residual_model()
    spread_gates(model, images)
    tfgated.set_inference_style(model, "threshold")
    with_exit = attach_exit(model, "b0_add", channels=8)
    threshold = float(np.median(with_exit.predict(images, verbose=0)[1].max(axis=1)))
    path = tmp_path / "exit.keras"
    with_exit.save(path)
    common = ["bench", "--conditional", str(path), "--images", "16", "--keras-images", "16", "--batch-sizes", "1,8",
              "--thread-counts", "1", "--repeats", "1"]
    assert export_main(common) == 2  # a .keras file has no recipe: the threshold must be given
    assert "--exit-threshold" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    assert export_main(common + ["--exit-threshold", str(threshold), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["exit_threshold"] == threshold
    expected = EarlyExitModel(with_exit, threshold).predict(images)
    macs = result["macs"]
    assert macs["exit_ratio"] == pytest.approx(expected.exit_ratio) and 0 < macs["exit_ratio"] < 1
    assert macs["sparse"] == pytest.approx(expected.mean_macs / expected.macs["main"], rel=1e-6)
    assert macs["masked"] > 1.0 > macs["sparse"]  # both paths and the head, against the exit's saving
    assert {(r["runtime"], r["batch"]) for r in result["latency"]} == {
        (rt, b) for rt in ("litert", "onnxruntime") for b in (1, 8)}
    assert result["keras_predict_images_per_s"]["images"] == 16


@pytest.mark.slow
def test_bench_runs_an_early_exit_model_without_gates(tmp_path):
    """SIPA's early exit has no Gumbel gates: nothing to set an inference style on."""
    import keras
    import numpy as np

    from tfgated.exits import attach_exit

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="block0_conv")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(x)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    with_exit = attach_exit(keras.Model(inputs, out), "block0_conv", channels=4)
    images = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype("float32")
    threshold = float(np.median(with_exit.predict(images, verbose=0)[1].max(axis=1)))
    result = conditional_bench.run(with_exit, images, str(tmp_path), batch_sizes=(1, 8), threads=(1,), repeats=1,
                                   formats=("onnx",), exit_threshold=threshold)
    assert result["macs"]["exit_ratio"] == pytest.approx(0.5)  # the median: half of the images exit
    assert [r["batch"] for r in result["latency"]] == [1, 8]
