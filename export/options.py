"""One options object for every export: :class:`ExportOptions`.

:func:`tfgated.export.export`, :func:`tfgated.export.export_early_exit` and
:func:`tfgated.export.export_exit_gates` take the same options, either as an object or as
keywords (``export(model, path, quantization="float16")`` is
``export(model, path, ExportOptions(quantization="float16"))``)::

    options = ExportOptions(quantization="float16", parity_data=x, class_names=names)
    export(model, "model.tflite", options)
    export(model, "model.onnx", options, quantization="float32")   # keywords override fields

The values are checked when the object is made, before anything is converted or written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from tfgated.sparse import STITCHES

QUANTIZATIONS = ("float32", "float16", "int8")
STYLES = ("threshold", "always_on")
#: How data-dependent decisions (residual gates, exits) run in the file: ``"conditional"``
#: (``tf.cond``, batch 1, TFLite: the skipped computation is really skipped), ``"masked"``
#: (every path runs and a product or ``tf.where`` selects) or ``"sparse"`` (gather-run-scatter,
#: :mod:`tfgated.sparse`: a branch runs on the examples that need it; any batch size, both
#: formats; the file's batch dimension is dynamic).
FORMS = ("conditional", "masked", "sparse")
#: A gate open on more of the parity inputs than this stays masked in the sparse form: gathering
#: and scattering would cost more than the few closed examples save.
DEFAULT_SPARSE_MAX_OPEN_RATE = 0.9
DEFAULT_PARITY_EXAMPLES = 256


@dataclasses.dataclass
class ExportOptions:
    """How to write a model (every field has a default).

    Attributes:
        format: ``"tflite"`` or ``"onnx"``; ``None`` takes it from the file extension.
        quantization: ``"float32"``, ``"float16"`` (weights) or ``"int8"`` (TFLite only; not
            for exits).
        batch_size: fixed batch size of the exported signature; ``None``: a dynamic batch
            dimension (the sparse form always has one).
        style: ``"threshold"`` or ``"always_on"`` to export the gates in that style; ``None``
            keeps the model's style (it must be one of these when folding).
        fold: fold the gates into plain layers (``False`` exports the gated model as is).
        form: ``"conditional"``, ``"masked"``, ``"sparse"`` or ``None`` (conditional for TFLite
            at batch size 1, masked otherwise); see :data:`FORMS`. tf2onnx cannot convert
            convolutions inside conditionals, so ONNX files are masked or sparse.
        sparse_max_open_rate: in the sparse form, a gate open on more of the parity inputs
            than this keeps the masked form (the sidecar says so).
        sparse_stitch: how the sparse form returns a sub-batch's results to the batch:
            ``"gather"`` (default: every example gathers its row, a zero row for the closed
            ones) or ``"scatter"`` (``SCATTER_ND``/``ScatterND`` into zeros). On
            ``gumbel_resnet_fashion_mnist`` the gather file takes 0.83-1.03x the scatter
            file's time in LiteRT and ONNX Runtime at batch 1, 64 and 256
            (``benchmarks/sparse_stitch.py``).
        fold_batchnorm: fold batch norms into the preceding convolutions.
        remove_channels: physically remove closed channels; ``False`` gives the plain
            *masked* model (constant masks, every channel kept).
        representative_data: example inputs for int8 calibration.
        parity_data: inputs of the parity check (default: 256 uniform random inputs).
        check: run the parity check in the real runtime; a failure is an error unless
            ``allow_mismatch``.
        allow_mismatch: write the file even when the parity check fails (still reported).
        threads: runtime threads for the parity run.
        class_names, preprocessing: recorded in the sidecar.
        opset: ONNX opset (tf2onnx's default if ``None``).
    """

    format: Optional[str] = None
    quantization: str = "float32"
    batch_size: Optional[int] = 1
    style: Optional[str] = None
    fold: bool = True
    form: Optional[str] = None
    sparse_max_open_rate: float = DEFAULT_SPARSE_MAX_OPEN_RATE
    sparse_stitch: str = "gather"
    fold_batchnorm: bool = False
    remove_channels: bool = True
    representative_data: Any = None
    parity_data: Any = None
    check: bool = True
    allow_mismatch: bool = False
    threads: Optional[int] = None
    class_names: Optional[Sequence[str]] = None
    preprocessing: Optional[dict] = None
    opset: Optional[int] = None

    def __post_init__(self):
        from tfgated.export.convert import FORMATS

        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"Expected format to be one of {list(FORMATS)}. Received: format={self.format!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"Expected quantization to be one of {list(QUANTIZATIONS)}. Received: {self.quantization!r}"
            )
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(
                f"Expected batch_size to be a positive integer or None (dynamic). Received: batch_size={self.batch_size}"
            )
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"Expected style to be one of {list(STYLES)} or None. Received: style={self.style!r}")
        if self.form is not None and self.form not in FORMS:
            raise ValueError(f"Expected form to be one of {list(FORMS)}. Received: form={self.form!r}")
        if isinstance(self.sparse_max_open_rate, bool) or not 0.0 <= float(self.sparse_max_open_rate) <= 1.0:
            raise ValueError(
                f"Expected sparse_max_open_rate in [0, 1]. Received: sparse_max_open_rate={self.sparse_max_open_rate!r}"
            )
        if self.sparse_stitch not in STITCHES:
            raise ValueError(f"Expected sparse_stitch to be one of {list(STITCHES)}. Received: sparse_stitch={self.sparse_stitch!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"Expected threads to be a positive integer or None. Received: threads={self.threads!r}")

    @classmethod
    def of(cls, options=None, **overrides):
        """``options`` (or the defaults) with the keyword ``overrides`` applied, checked."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"Expected options to be an ExportOptions. Received: {type(options).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"Unknown export option(s) {unknown}. Expected some of {sorted(names)}")
        return dataclasses.replace(options or cls(), **overrides)

    @property
    def verifies(self):
        """Whether the written file runs through the parity check (also when mismatches are allowed)."""
        return bool(self.check or self.allow_mismatch)

    def resolve_format(self, path):
        """The :class:`tfgated.export.convert.Format` entry for ``path``, quantization checked."""
        from tfgated.export import parity
        from tfgated.export.convert import FORMATS

        name = self.format or parity.file_format(path)
        target = FORMATS[name]
        if self.quantization not in target.quantizations:
            supported = " and ".join(target.quantizations)
            raise ValueError(f"{target.title} export supports {supported} only. Received: quantization={self.quantization!r}")
        return target

    def resolve_form(self, target):
        """``"conditional"``, ``"masked"`` or ``"sparse"`` for the format ``target`` (see :attr:`form`)."""
        if self.form is None:
            return "conditional" if self.batch_size == 1 and target.conditional else "masked"
        if self.form == "conditional" and not target.conditional:
            raise ValueError(
                "tf2onnx cannot convert convolutions inside a conditional branch, so an ONNX file "
                f"uses form='masked' or 'sparse'. Received: form='conditional' with format={target.name!r}"
            )
        if self.form == "conditional" and self.batch_size != 1:
            raise ValueError(
                "The conditional form decides per example, so it needs batch_size=1. "
                f"Received: batch_size={self.batch_size} (use form='masked' or 'sparse' for larger batches)"
            )
        return self.form

    def parity_inputs(self, model, seed=0):
        """``parity_data`` as float32, or :data:`DEFAULT_PARITY_EXAMPLES` uniform random inputs."""
        import numpy as np

        if self.parity_data is not None:
            return np.asarray(self.parity_data, "float32")
        shape = tuple(model.inputs[0].shape[1:])
        return np.random.default_rng(seed).random((DEFAULT_PARITY_EXAMPLES,) + shape).astype("float32")
