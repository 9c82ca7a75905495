"""The sparse (gather-run-scatter) form of TFLite and ONNX files, in LiteRT and ONNX Runtime."""

import numpy as np
import pytest

import tfgated
from tfgated.export import ExportOptions, export
from tfgated.export.parity import run_file
from tiny_fixtures import residual_model, spread_gates, varied_images

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
    return varied_images()


@pytest.fixture(scope="module")
def model(images):
    built = residual_model()
    spread_gates(built, images)
    tfgated.set_inference_style(built, "threshold")
    return built


@pytest.mark.slow
@pytest.mark.parametrize("stitch", ["gather", "scatter"])
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_sparse_file_matches_keras_at_every_batch_size(model, images, fmt, stitch, tmp_path):
    path = tmp_path / f"sparse.{fmt}"
    result = export(model, path, form="sparse", parity_data=images, sparse_stitch=stitch)
    gates = result.sidecar["gates"]
    assert gates["dependent_form"] == "sparse" and set(gates["forms"].values()) == {"sparse"}
    assert gates["stitch"] == stitch
    assert result.sidecar["input_shape"][0] is None and result.parity["passed"]
    reference = model.predict(images, verbose=0)
    for batch in (1, 7, 64):
        assert np.max(np.abs(run_file(path, images[:batch]) - reference[:batch])) <= TOLERANCE


@pytest.mark.slow
def test_sub_batches_of_size_zero_and_all(model, images, tmp_path):
    """A file whose gates are closed (open) for every input runs its branches on 0 (all) examples."""
    for threshold in (0.999999, 1e-6):
        tfgated.set_inference_style(model, "threshold", threshold=threshold)
        try:
            for fmt in ("tflite", "onnx"):
                result = export(model, tmp_path / f"t.{fmt}", form="sparse", parity_data=images[:7],
                                sparse_max_open_rate=1.0)
                assert set(result.sidecar["gates"]["parity_open_rates"].values()) == {0.0 if threshold > 0.5 else 1.0}
                assert result.parity["max_abs_diff"] <= TOLERANCE
        finally:
            tfgated.set_inference_style(model, "threshold", threshold=0.5)


@pytest.mark.slow
def test_gates_open_too_often_keep_the_masked_form(model, images, tmp_path):
    result = export(model, tmp_path / "m.onnx", form="sparse", parity_data=images, sparse_max_open_rate=0.0)
    gates = result.sidecar["gates"]
    assert gates["dependent_form"] == "masked" and set(gates["forms"].values()) == {"masked"}
    assert all("open on" in why for why in gates["masked_because"].values())
    assert result.parity["passed"]


def test_sparse_options_are_checked():
    from tfgated.export.convert import FORMATS

    assert ExportOptions(form="sparse", batch_size=8).resolve_form(FORMATS["onnx"]) == "sparse"
    with pytest.raises(ValueError, match="sparse_max_open_rate in \\[0, 1\\]"):
        ExportOptions(sparse_max_open_rate=1.5)
    with pytest.raises(ValueError, match="sparse_stitch to be one of"):
        ExportOptions(sparse_stitch="add")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_sparse_early_exit_file_stitches_both_paths(model, images, fmt, tmp_path):
    from tfgated.exits import EarlyExitModel, attach_exit
    from tfgated.export import export_early_exit

    with_exit = attach_exit(model, "b0_add", channels=8)
    confidence = with_exit.predict(images, verbose=0)[1].max(axis=1)
    threshold = float(np.median(confidence))  # half of the images exit
    path = tmp_path / f"exit.{fmt}"
    result = export_early_exit(with_exit, path, threshold, form="sparse", parity_data=images)
    assert result.sidecar["early_exit"]["form"] == "sparse" and result.sidecar["input_shape"][0] is None
    expected = EarlyExitModel(with_exit, threshold).predict(images).probabilities
    for batch in (1, 7, 64):
        assert np.max(np.abs(run_file(path, images[:batch]) - expected[:batch])) <= TOLERANCE
    exits = images[confidence > threshold][:7]  # every example exits: part B on zero examples
    assert np.max(np.abs(run_file(path, exits) - expected[confidence > threshold][:7])) <= TOLERANCE
