"""tfgated.export: fold gates, write TFLite and ONNX, check parity, measure latency.

    from tfgated.export import fold, export
    folded, report = fold(model, return_report=True)
    export(model, "model.tflite", quantization="float16")

Command line: ``python -m tfgated.export --help``.
"""

from tfgated.export.fold import FoldError, FoldReport, count_macs, fold, fold_batchnorms
from tfgated.export.latency import bench, measure
from tfgated.export.parity import ParityError, check_parity, run_file, run_onnx, run_tflite
from tfgated.export.writers import (
    ExportResult,
    UnsupportedLayerError,
    export,
    export_function,
    export_onnx,
    export_tflite,
    write_atomic,
)

__all__ = [
    "ExportResult",
    "FoldError",
    "FoldReport",
    "ParityError",
    "UnsupportedLayerError",
    "bench",
    "check_parity",
    "count_macs",
    "export",
    "export_function",
    "export_onnx",
    "export_tflite",
    "fold",
    "fold_batchnorms",
    "measure",
    "run_file",
    "run_onnx",
    "run_tflite",
    "write_atomic",
]
