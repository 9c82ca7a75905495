"""Run exported files in their real runtimes and compare them with Keras.

* TFLite files run in LiteRT (``ai_edge_litert.interpreter.Interpreter``);
* ONNX files run in ONNX Runtime (``onnxruntime.InferenceSession``).

Checks (per quantization):

``float32``  max absolute difference <= 1e-4
``float16``  top-1 agreement >= 99.5 % on the decisive examples: those whose Keras top-2
             margin exceeds the float16 rounding (:func:`decisive_examples`), so that near
             ties, which float16 may legitimately flip, never fail an export
``int8``     reported only (max difference and top-1 agreement)

A failed check raises :class:`ParityError` unless ``allow_mismatch=True``.
"""

from __future__ import annotations

import os

import numpy as np

FLOAT32_TOLERANCE = 1e-4
#: Examples per run of a file with a dynamic batch dimension.
DYNAMIC_BATCH = 64
FLOAT16_MIN_AGREEMENT = 0.995
#: float16 rounding of a score (its machine epsilon 2**-10, on both of the top two scores):
#: an example whose Keras top-2 margin is within it may flip in float16 without any error.
FLOAT16_MARGIN = 2 * 2.0**-10


def decisive_examples(reference, margin=FLOAT16_MARGIN):
    """A boolean mask of the examples whose top-2 margin in ``reference`` (2-D scores) exceeds
    ``margin`` times the row's largest absolute score: the examples whose top-1 class float16
    rounding cannot flip. Ties and near ties are not decisive."""
    reference = np.asarray(reference, "float32")
    top2 = np.sort(reference, axis=-1)[:, -2:]
    scale = np.maximum(np.abs(reference).max(axis=-1), 1.0)
    return (top2[:, 1] - top2[:, 0]) > margin * scale


class ParityError(RuntimeError):
    """An exported file does not compute what the Keras model computes."""


def _batches(x, batch_size):
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        if len(chunk) < batch_size:  # pad the last batch to the fixed batch size
            pad = np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)
            yield np.concatenate([chunk, pad]), len(chunk)
        else:
            yield chunk, batch_size


def litert_interpreter(path, threads=None):
    """A LiteRT interpreter of ``path`` with its tensors allocated.

    A file with a dynamic batch dimension (the sparse form) runs on LiteRT's builtin kernels:
    the default XNNPACK delegate cannot resize the data-dependent sub-batches ("BytesRequired
    number of elements overflowed"); every other file gets the default delegate.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=threads)
    if int(interpreter.get_input_details()[0]["shape_signature"][0]) == -1:
        interpreter = Interpreter(
            model_path=os.fspath(path), num_threads=threads,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(path, x, threads=None):
    """Outputs of the TFLite file ``path`` on ``x`` (any number of examples), in LiteRT."""
    interpreter = litert_interpreter(path, threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    batch = int(inp["shape"][0]) or 1
    if int(inp["shape_signature"][0]) == -1:  # a dynamic batch (the sparse form): one run per 64 examples
        batch = min(DYNAMIC_BATCH, max(len(x), 1))
        interpreter.resize_tensor_input(inp["index"], [batch] + [int(d) for d in inp["shape"][1:]])
        interpreter.allocate_tensors()
    results = []
    for chunk, n in _batches(np.asarray(x), batch):
        if inp["dtype"] != np.float32:  # fully integer model
            scale, zero = inp["quantization"]
            chunk = np.clip(np.round(chunk / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
        interpreter.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype("float32") - zero) * scale
        results.append(np.array(y[:n], dtype="float32"))
    return np.concatenate(results)


def run_onnx(path, x, threads=None):
    """Outputs of the ONNX file ``path`` on ``x``, in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    results = []
    if batch is None:
        return np.asarray(session.run(None, {inp.name: np.asarray(x, "float32")})[0], "float32")
    for chunk, n in _batches(np.asarray(x), batch):
        results.append(np.asarray(session.run(None, {inp.name: chunk.astype("float32")})[0][:n], "float32"))
    return np.concatenate(results)


def run_file(path, x, threads=None):
    """Outputs of a ``.tflite`` or ``.onnx`` file on ``x``."""
    kind = file_format(path)
    return run_tflite(path, x, threads) if kind == "tflite" else run_onnx(path, x, threads)


def check_loadable(path):
    """Raise ``FileNotFoundError`` or a ``ValueError`` naming ``path`` unless its runtime
    (LiteRT for ``.tflite``, ONNX Runtime for ``.onnx``) can load it."""
    kind = file_format(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Exported file {path!r} not found.")
    try:
        if kind == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            Interpreter(model_path=path).allocate_tensors()
        else:
            import onnxruntime as ort

            ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # each runtime has its own error types
        runtime = "LiteRT" if kind == "tflite" else "ONNX Runtime"
        detail = " ".join(str(error).split())[:200]
        raise ValueError(
            f"Exported file {path!r} cannot be loaded by {runtime}: it is truncated or corrupt ({detail}). "
            "Export it again."
        ) from error
    return path


def file_format(path):
    """``"tflite"`` or ``"onnx"`` from the file name."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".tflite":
        return "tflite"
    if ext == ".onnx":
        return "onnx"
    raise ValueError(f"Expected a .tflite or .onnx file. Received: {os.fspath(path)!r}")


def compare(reference, outputs, quantization="float32"):
    """Parity numbers and the verdict for ``outputs`` against ``reference``."""
    reference = np.asarray(reference, "float32")
    outputs = np.asarray(outputs, "float32")
    if reference.shape != outputs.shape:
        raise ParityError(f"Output shape {outputs.shape} differs from the Keras output shape {reference.shape}.")
    max_diff = float(np.max(np.abs(reference - outputs))) if reference.size else 0.0
    result = {"quantization": quantization, "examples": int(len(reference)), "max_abs_diff": max_diff}
    agreement = None
    if reference.ndim == 2 and reference.shape[-1] > 1:
        agrees = reference.argmax(-1) == outputs.argmax(-1)
        decisive = decisive_examples(reference)
        result["top1_agreement"] = float(np.mean(agrees))
        result["decisive_examples"] = int(decisive.sum())
        if decisive.any():
            agreement = float(np.mean(agrees[decisive]))
            result["top1_agreement_decisive"] = agreement
    if quantization == "float32":
        result["threshold"] = {"max_abs_diff": FLOAT32_TOLERANCE}
        result["passed"] = bool(max_diff <= FLOAT32_TOLERANCE)
    elif quantization == "float16":
        if agreement is None:  # no class scores, or every example a near tie
            agreement = 1.0 if max_diff <= 1e-2 else 0.0
        result["threshold"] = {"top1_agreement_decisive": FLOAT16_MIN_AGREEMENT, "top2_margin": FLOAT16_MARGIN}
        result["passed"] = bool(agreement >= FLOAT16_MIN_AGREEMENT)
    else:
        result["threshold"] = None
        result["passed"] = True  # report only
    return result


def _numbers(result):
    keys = ("max_abs_diff", "top1_agreement", "top1_agreement_decisive", "decisive_examples")
    return ", ".join(f"{k}={result[k]:.4g}" for k in keys if k in result)


def check_parity(path, reference, x, quantization="float32", allow_mismatch=False, threads=None):
    """Run ``path`` on ``x`` and compare with the Keras outputs ``reference``.

    Raises:
        ParityError: the check failed and ``allow_mismatch`` is false.
    """
    outputs = run_file(path, x, threads=threads)
    result = compare(reference, outputs, quantization)
    result["runtime"] = "litert" if file_format(path) == "tflite" else "onnxruntime"
    if not result["passed"] and not allow_mismatch:
        raise ParityError(
            f"Parity check failed for {os.fspath(path)!r} ({quantization}): "
            + _numbers(result)
            + f"; expected {result['threshold']}. Pass allow_mismatch=True (--no-check) to write it anyway."
        )
    return result


def tflite_operators(path):
    """The operators of each subgraph of a TFLite file, as ``collections.Counter`` objects.

    Subgraph 0 is the entry point; a ``tf.cond`` becomes an ``IF`` operator there whose
    branches are further subgraphs. Read with LiteRT's flatbuffer schema.
    """
    import collections

    from ai_edge_litert import schema_py_generated as schema

    with open(os.fspath(path), "rb") as f:
        buf = f.read()
    model = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    # Newer files keep codes above 127 in BuiltinCode and a placeholder in the deprecated field.
    kinds = [names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "CUSTOM") for c in codes]
    result = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        result.append(collections.Counter(kinds[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())))
    return result


def _runtime_outputs(path, x, threads):
    """The file's outputs on ``x`` in its runtime (a seam for tests)."""
    return run_file(path, x, threads=threads)


def write_verified(path, data, target, options, x, expected_for, what="export"):
    """Write ``data`` to ``path`` only after it matches Keras in its runtime (or the check is waived).

    The bytes go to a temporary file next to ``path`` (with the format's extension, which the
    runtimes need); when ``options.verifies`` it runs on ``x`` and ``expected_for(outputs)``
    returns ``(expected outputs, extra parity fields)``; then ``os.replace`` moves it into
    place. Nothing is left behind on failure.

    Args:
        path: the destination file.
        data: the converted model's bytes.
        target: the :class:`tfgated.export.convert.Format` of the file.
        options: :class:`tfgated.export.options.ExportOptions` (quantization, check,
            allow_mismatch, threads).
        x: parity inputs.
        expected_for: ``outputs -> (expected, extra fields)``.
        what: how the error message names the export.

    Returns:
        The parity record (``None`` when not checked).

    Raises:
        ParityError: the check failed, ``options.check`` is set and mismatches are not allowed.
    """
    from tfgated.io import _remove_quietly, _replace, _temp_file

    fd, tmp = _temp_file(path, suffix=".tmp" + os.path.splitext(os.fspath(path))[1])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        parity = None
        if options.verifies:
            outputs = _runtime_outputs(tmp, x, options.threads)
            expected, extra = expected_for(outputs)
            parity = compare(expected, outputs, options.quantization)
            parity["runtime"] = target.runtime
            parity.update(extra)
            if not parity["passed"] and options.check and not options.allow_mismatch:
                raise ParityError(
                    f"Parity check failed for the {what} {os.fspath(path)!r} ({options.quantization}): "
                    f"{_numbers(parity)}; expected {parity['threshold']}. Pass allow_mismatch=True (--no-check) to write it anyway."
                )
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return parity
