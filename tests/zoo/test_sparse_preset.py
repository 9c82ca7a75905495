"""Gather-run-scatter on the shipped gated ResNet, on real Fashion-MNIST test images."""

import numpy as np
import pytest

import tfgated

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def preset():
    from tfgated import zoo
    from tfgated.data import load_dataset

    model = zoo.load("gumbel_resnet_fashion_mnist", compile=False)
    tfgated.set_inference_style(model, "threshold")
    splits = load_dataset("fashion_mnist", batch_size=256, validation_split=0.0, limit=256, shuffle_buffer=0,
                          pixels="raw")
    images, _ = next(iter(splits.test))
    return model, np.asarray(images, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_sparse_predict_matches_threshold_model(preset, batch):
    model, x = preset
    x = x[:64]
    dense = model.predict(x, batch_size=batch, verbose=0)
    sparse = tfgated.predict(model, x, batch_size=batch, execution="sparse")
    assert np.max(np.abs(dense - sparse)) <= TOLERANCE


@pytest.mark.slow
def test_batches_whose_gate_is_closed_or_open_for_every_image(preset):
    model, x = preset
    values = {k: v[:, 0] for k, v in tfgated.gate_values(model, x).items()}
    # the gate whose decision varies most over the images
    name = max(values, key=lambda k: min(values[k].sum(), (1 - values[k]).sum()))
    closed, opened = x[values[name] == 0][:7], x[values[name] == 1][:7]
    assert len(closed) == len(opened) == 7
    for batch, expected in ((closed, 0), (opened, 7)):
        assert tfgated.gate_values(model, batch)[name].sum() == expected  # a sub-batch of 0 / 7 images
        dense = model.predict(batch, verbose=0)
        sparse = tfgated.predict(model, batch, batch_size=7, execution="sparse")
        assert np.max(np.abs(dense - sparse)) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_sparse_export_matches_threshold_model_in_its_runtime(preset, fmt, tmp_path):
    from tfgated.export import export
    from tfgated.export.parity import run_file

    model, x = preset
    path = tmp_path / f"sparse.{fmt}"
    result = export(model, path, form="sparse", parity_data=x)
    forms = result.sidecar["gates"]["forms"]
    assert "sparse" in forms.values() and set(forms) == set(result.sidecar["gates"]["parity_open_rates"])
    reference = model.predict(x, verbose=0)
    values = {k: v[:, 0] for k, v in tfgated.gate_values(model, x).items()}
    name = max(values, key=lambda k: min(values[k].sum(), (1 - values[k]).sum()))
    for batch in (x[:1], x[:7], x[:64], x[values[name] == 0][:7], x[values[name] == 1][:7]):
        index = [int(np.flatnonzero((x == image).all(axis=(1, 2, 3)))[0]) for image in batch]
        assert np.max(np.abs(run_file(path, batch) - reference[index])) <= TOLERANCE
