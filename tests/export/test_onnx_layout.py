"""The NHWC round trips tf2onnx leaves around the sparse form's gathers are removed from ONNX files."""

import numpy as np
import onnx
import pytest

import tfgated
from tfgated.export import export, onnx_layout
from tfgated.export.parity import run_file
from tiny_fixtures import residual_model, spread_gates, varied_images


@pytest.fixture(scope="module")
def images():
    return varied_images()


@pytest.fixture(scope="module")
def model(images):
    built = residual_model()
    spread_gates(built, images)
    tfgated.set_inference_style(built, "threshold")
    return built


def transposes_next_to_gathers(path):
    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    users = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    count = 0
    for n in graph.node:
        if n.op_type == "Gather" and producers.get(n.input[0]) is not None:
            count += producers[n.input[0]].op_type == "Transpose"
            count += any(u.op_type == "Transpose" for u in users.get(n.output[0], []))
    return count, sum(n.op_type == "Transpose" for n in graph.node)


@pytest.mark.slow
def test_sparse_onnx_file_has_no_layout_round_trips(model, images, tmp_path, monkeypatch):
    path = tmp_path / "sparse.onnx"
    result = export(model, path, form="sparse", parity_data=images)  # parity: the same outputs
    assert result.parity["passed"] and result.parity["max_abs_diff"] <= 1e-4
    near, transposes = transposes_next_to_gathers(path)
    assert near == 0
    # without the pass: tf2onnx's own file, two transposes around each of the 2 gates' gathers in and out
    monkeypatch.setattr(onnx_layout, "drop_batch_axis_transposes", lambda proto: 0)
    raw = tmp_path / "raw.onnx"
    export(model, raw, form="sparse", parity_data=images)
    raw_near, raw_transposes = transposes_next_to_gathers(raw)
    assert raw_near >= 4 and raw_transposes - transposes >= 4
    for batch in (1, 7, 64):
        assert np.max(np.abs(run_file(path, images[:batch]) - run_file(raw, images[:batch]))) <= 1e-5
