"""ExportOptions and the table of formats: every bad request fails before any conversion."""

import os

import keras
import numpy as np
import pytest

from tfgated.export import FORMATS, ExportOptions, export, export_exit_gates


def _tiny():
    inputs = keras.Input((4, 4, 1))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)), name="tiny")


def test_formats_table():
    assert sorted(FORMATS) == ["onnx", "tflite"]
    assert FORMATS["tflite"].runtime == "litert" and FORMATS["onnx"].runtime == "onnxruntime"
    assert FORMATS["tflite"].conditional and not FORMATS["onnx"].conditional
    assert FORMATS["onnx"].quantizations == ("float32",)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"format": "coreml"}, "format"),
        ({"quantization": "int4"}, "quantization"),
        ({"batch_size": 0}, "batch_size"),
        ({"style": "stochastic"}, "style"),
        ({"form": "lazy"}, "form"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        ExportOptions(**fields)


def test_keywords_override_an_options_object():
    base = ExportOptions(quantization="float16", class_names=["a", "b"])
    merged = ExportOptions.of(base, quantization="float32")
    assert merged.quantization == "float32" and merged.class_names == ["a", "b"]
    assert base.quantization == "float16"
    with pytest.raises(TypeError, match="conditionall"):
        ExportOptions.of(base, conditionall=False)


def test_form_follows_format_and_batch_size():
    assert ExportOptions().resolve_form(FORMATS["tflite"]) == "conditional"
    assert ExportOptions().resolve_form(FORMATS["onnx"]) == "masked"
    assert ExportOptions(batch_size=4).resolve_form(FORMATS["tflite"]) == "masked"
    with pytest.raises(ValueError, match="form='masked'"):
        ExportOptions(form="conditional").resolve_form(FORMATS["onnx"])
    with pytest.raises(ValueError, match="batch_size=1"):
        ExportOptions(form="conditional", batch_size=2).resolve_form(FORMATS["tflite"])


def test_requests_fail_before_writing(tmp_path):
    model = _tiny()
    with pytest.raises(ValueError, match="ONNX export supports float32 only"):
        export(model, tmp_path / "m.onnx", quantization="float16")
    with pytest.raises(ValueError, match=r"\.tflite or \.onnx"):
        export(model, tmp_path / "m.pb")
    with pytest.raises(ValueError, match="float16"):
        export_exit_gates(model, tmp_path / "m.tflite", ExportOptions(quantization="int8"))
    assert os.listdir(tmp_path) == []


def test_parity_inputs_default_and_given():
    model = _tiny()
    x = ExportOptions().parity_inputs(model)
    assert x.shape == (256, 4, 4, 1) and x.dtype == np.float32
    given = np.zeros((3, 4, 4, 1))
    assert ExportOptions(parity_data=given).parity_inputs(model).dtype == np.float32
