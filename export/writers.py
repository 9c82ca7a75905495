"""The one-call export: prepare (fold), convert, verify in the real runtime, describe (sidecar).

:func:`export` is the path used by ``python -m tfgated.export``::

    result = export(model, "out.tflite", quantization="float16")
    result = export(model, "out.tflite", ExportOptions(quantization="float16", parity_data=x))

It runs four named steps:

1. :func:`prepare`: apply attached pruning masks and fold the gates
   (:func:`tfgated.export.fold.fold`);
2. convert: trace a ``tf.function`` with a fixed input signature (batch 1 by default) and
   hand it to the format's converter from the table :data:`tfgated.export.convert.FORMATS`;
3. verify: :func:`tfgated.export.parity.write_verified` runs the converted file in its real
   runtime against the Keras model and only then moves it into place;
4. :func:`describe`: the JSON sidecar ``<file>.json`` next to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import keras

from tfgated.export import sparse_form
from tfgated.export.convert import FORMATS, conditional_call, trace  # noqa: F401  (FORMATS re-exported)
from tfgated.export.fold import count_macs, fold as fold_gates
from tfgated.export.options import QUANTIZATIONS, ExportOptions  # noqa: F401  (re-exported)
from tfgated.export.parity import ParityError, write_verified  # noqa: F401  (re-exported)
from tfgated.io import json_default, write_atomic  # noqa: F401  (write_atomic re-exported)


class UnsupportedLayerError(ValueError):
    """The model has a layer the exporters cannot handle."""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` (or an exit export) wrote."""

    path: str
    sidecar_path: str
    sidecar: dict
    report: object = None
    parity: dict = None


# -- checks -----------------------------------------------------------------------------------


def check_exportable(model, allow_gates=False):
    """Raise :class:`UnsupportedLayerError` naming the first layer the exporters cannot take.

    Built-in Keras layers are supported; tfgated gate layers only when
    ``allow_gates`` (an unfolded export); any other custom layer is not.
    """
    from tfgated.inference import _walk

    for layer in _walk(model):
        if layer is model or isinstance(layer, keras.Model) and type(layer).__module__.startswith("keras."):
            continue
        module = type(layer).__module__
        if module.startswith("keras."):
            continue
        if allow_gates and module.startswith("tfgated."):
            continue
        if module.startswith("tfgated."):
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({type(layer).__name__}) is a tfgated layer left in a folded model."
            )
        raise UnsupportedLayerError(
            f"Cannot export layer {layer.name!r} of type {type(layer).__module__}.{type(layer).__name__}: "
            "only built-in Keras layers and tfgated gates are supported."
        )


@contextlib.contextmanager
def gate_style(model, style=None):
    """Set ``model``'s gates to ``style`` (if given) for the block; yield the style in force; restore."""
    import tfgated

    gates = tfgated.gate_layers(model)
    saved = [(g, g.inference_style, g.threshold) for g in gates]
    try:
        if style is not None and gates:
            tfgated.set_inference_style(model, style)
        yield tfgated.get_inference_style(model)
    finally:
        for g, s, t in saved:
            g.set_inference_style(s, threshold=t)


# -- the steps ---------------------------------------------------------------------------------


def prepare(model, options):
    """``(model to convert, FoldReport or None)``: the folded model (checked), or ``model`` itself."""
    check_exportable(model, allow_gates=True)
    if not options.fold:
        return model, None
    folded, report = fold_gates(
        model, fold_batchnorm=options.fold_batchnorm, remove_channels=options.remove_channels, return_report=True
    )
    check_exportable(folded)
    return folded, report


def _plain_call(model):
    def call(x):
        # Stochastic unfolded gates advance a seed state; a stateless scope
        # keeps that assignment out of the exported graph.
        with keras.StatelessScope():
            return model(x, training=False)

    return call


def convert(model, target, options, conditional=(), float32_scopes=(), sparse=None):
    """The file's bytes: ``model`` traced (``conditional`` residual branches under ``tf.cond``, or
    the gates of the :class:`~tfgated.export.sparse_form.SparsePlan` ``sparse`` gathered, with a
    dynamic batch) and converted by ``target`` (an entry of :data:`FORMATS`); a float16 TFLite
    file keeps the constants of the layers named in ``float32_scopes`` in float32."""
    if sparse is not None:
        call, batch_size = sparse_form.sparse_export_call(model, sparse, options.sparse_stitch), None
    else:
        call = conditional_call(model, conditional) if conditional else _plain_call(model)
        batch_size = options.batch_size
    return target.convert(trace(model, call, batch_size, float32_scopes=float32_scopes), options)


def gate_scopes(model, report):
    """Names of the gates whose networks a float16 file keeps in float32: the data-dependent
    gates of the fold ``report``, or every gate of an unfolded ``model``."""
    from tfgated.inference import gate_layers

    return tuple(report.dependent_masked) if report is not None else tuple(g.name for g in gate_layers(model))


def _precision_fields(data, target, options, scopes):
    """The sidecar's ``float32_constants``: what a float16 TFLite file stores in float32."""
    if target.name != "tflite" or options.quantization != "float16":
        return {}
    from tfgated.export.float16 import float32_constants

    return {"float32_constants": {"gate_scopes": list(scopes), "tensors": float32_constants(data)}}


def describe(path, model, target, options, **fields):
    """Write the sidecar ``<path>.json`` (the common fields, then ``fields``); return ``(path, dict)``."""
    sidecar = {
        "file": os.path.basename(path),
        "format": target.name,
        "quantization": options.quantization,
        "model": model.name,
        "input_shape": [options.batch_size] + [int(d) for d in model.inputs[0].shape[1:]],
        "input_dtype": "float32",
        "input_range": _input_range(options.preprocessing),
        "preprocessing": options.preprocessing,
        "class_names": list(options.class_names) if options.class_names is not None else None,
        **fields,
    }
    sidecar_path = os.fspath(path) + ".json"
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=json_default) + "\n")
    return sidecar_path, sidecar


def amend_sidecar(sidecar_path, fields):
    """Add (or replace) ``fields`` in the sidecar at ``sidecar_path`` (written atomically)."""
    with open(sidecar_path, encoding="utf-8") as f:
        sidecar = json.load(f)
    sidecar.update(fields)
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=json_default) + "\n")
    return sidecar


def _input_range(preprocessing):
    """The value range the file's input takes, from the input contract (``None``: unknown)."""
    return list(preprocessing["range"]) if isinstance(preprocessing, dict) and "range" in preprocessing else None


def _apply_pruning_masks(model):
    """Apply attached pruning masks (the file then holds exact zeros); whether there were any."""
    from tfgated.pruning import get_pruning_state

    pruning = get_pruning_state(model)
    if pruning is not None:
        pruning.apply_masks()
    return pruning is not None


def _gate_fields(report, conditional, sparse, options):
    """The sidecar's ``gates``: the form of the data-dependent gates, and of each one."""
    if sparse is not None:
        forms = set(sparse.forms.values())
        form = forms.pop() if len(forms) == 1 else "mixed" if forms else None
        return {"dependent_form": form, "conditional": [], **sparse.fields(), "stitch": options.sparse_stitch}
    form = ("conditional" if conditional else "masked") if report and report.dependent_masked else None
    return {
        "dependent_form": form,
        "conditional": [c["add"] for c in conditional],
        "forms": {c["add"]: form for c in (report.conditional if report else [])},
    }


def _fold_fields(model, options, report, conditional, sparse=None):
    macs = (report.macs_before, report.macs_after) if report else (count_macs(model),) * 2
    return {
        "folded": bool(options.fold),
        "gates": _gate_fields(report, conditional, sparse, options),
        "macs_before_folding": int(macs[0]),
        "macs_after_folding": int(macs[1]),
        "fold_report": report.summary() if report else None,
    }


# -- one-call export ---------------------------------------------------------------------------------


def export(model, path, options=None, **overrides):
    """Fold, convert, check and write ``model`` to ``path`` (``.tflite`` or ``.onnx``).

    Args:
        model: a Keras functional model (gated or plain), one input, one output.
        path: output file; the format follows the extension unless ``options.format``.
        options: an :class:`~tfgated.export.options.ExportOptions` (default: its defaults).
        **overrides: :class:`ExportOptions` fields, applied over ``options``
            (``quantization="float16"``, ``parity_data=x``, ``form="masked"``, ...).

    A model with pruning masks attached (:mod:`tfgated.pruning`) gets its masks applied first, so
    the file holds exact zeros where the masks do (as after ``strip_pruning``; the masks stay
    attached). Data-dependent residual gates run under ``tf.cond`` in the conditional form
    (TFLite at batch size 1 by default), by gather-run-scatter in the sparse form (a dynamic
    batch dimension; :mod:`tfgated.export.sparse_form`), masked otherwise.

    Returns:
        :class:`ExportResult`.

    Raises:
        ParityError: the written file does not match Keras (no file is left behind).
        UnsupportedLayerError: a layer cannot be exported.
        ValueError: an option is out of range (before anything is converted).
    """
    options = ExportOptions.of(options, **overrides)
    target = options.resolve_format(path)
    form = options.resolve_form(target)
    pruned = _apply_pruning_masks(model)
    with gate_style(model, options.style) as inference_style:
        exported, report = prepare(model, options)
        conditional = list(report.conditional) if report is not None and form == "conditional" else []
        x = options.parity_inputs(model)
        sparse = _sparse_plan(exported, report, x, options) if form == "sparse" else None
        scopes = gate_scopes(model, report)
        data = convert(exported, target, options, conditional, scopes, sparse)
        parity = write_verified(
            path, data, target, options, x, lambda outputs: (model.predict(x, batch_size=64, verbose=0), {}), "export"
        )
    shape = {} if sparse is None else {"input_shape": [None] + [int(d) for d in model.inputs[0].shape[1:]]}
    sidecar_path, sidecar = describe(
        path, model, target, options, inference_style=inference_style, pruning_masks_applied=pruned,
        **_fold_fields(model, options, report, conditional, sparse), **_precision_fields(data, target, options, scopes),
        parity=parity, **shape,
    )
    return ExportResult(path=os.fspath(path), sidecar_path=sidecar_path, sidecar=sidecar, report=report, parity=parity)


def _sparse_plan(exported, report, x, options):
    """The sparse form's :class:`~tfgated.export.sparse_form.SparsePlan` (folded models only)."""
    if report is None:
        raise ValueError("The sparse form gathers the folded gates: it needs fold=True. Received: fold=False")
    return sparse_form.plan(exported, report, x, options.sparse_max_open_rate)


def export_tflite(model, path, options=None, **overrides):
    """:func:`export` to TFLite."""
    return export(model, path, options, **{**overrides, "format": "tflite"})


def export_onnx(model, path, options=None, **overrides):
    """:func:`export` to ONNX."""
    return export(model, path, options, **{**overrides, "format": "onnx"})
