"""tfgated.export: fold gates, write TFLite and ONNX, check parity, measure latency.

    from tfgated.export import ExportOptions, export, fold
    folded, report = fold(model, return_report=True)
    export(model, "model.tflite", quantization="float16")
    export(model, "model.onnx", ExportOptions(parity_data=x, class_names=names))
    export_early_exit(model_with_exit, "exit.tflite", threshold=0.9)   # stops early at batch 1

The formats live in one table, :data:`tfgated.export.convert.FORMATS`. Command line:
``python -m tfgated.export --help`` (:mod:`tfgated.cli.export`).
"""

from tfgated.export.fold import FoldError, FoldReport, count_macs, fold, fold_batchnorms
from tfgated.export.convert import FORMATS, Format, export_function
from tfgated.export.options import ExportOptions
from tfgated.export.early_exit import early_exit_function, export_early_exit, export_exit_gates
from tfgated.export.latency import bench, measure, measure_inputs
from tfgated.export.parity import ParityError, check_parity, run_file, run_onnx, run_tflite, tflite_operators
from tfgated.export.writers import (
    ExportResult,
    UnsupportedLayerError,
    export,
    export_onnx,
    export_tflite,
    write_atomic,
)

__all__ = [
    "FORMATS",
    "ExportOptions",
    "ExportResult",
    "FoldError",
    "FoldReport",
    "Format",
    "ParityError",
    "UnsupportedLayerError",
    "bench",
    "check_parity",
    "count_macs",
    "early_exit_function",
    "export",
    "export_early_exit",
    "export_exit_gates",
    "export_function",
    "export_onnx",
    "export_tflite",
    "fold",
    "fold_batchnorms",
    "measure",
    "measure_inputs",
    "run_file",
    "run_onnx",
    "run_tflite",
    "tflite_operators",
    "write_atomic",
]
