"""pycls-style complexity: parameters and multiply-accumulates (MACs) per layer.

:func:`count` walks the functional graph (nested functional models included)
and states, for every layer call, its parameters and its MACs **per example**
(the batch axis is excluded). This is the classic count used in papers:

* MACs are counted for Conv1D/2D/3D (``groups`` too), DepthwiseConv,
  SeparableConv (depthwise + pointwise), ConvTranspose and Dense (on inputs of
  any rank: one matrix product per position). Bias additions, batch norm,
  activations, pooling, residual additions and the gate apply layers count
  **zero** MACs, as in pycls / torchvision tables. (The MicroNet score in
  :mod:`tfgated.micronet` counts every operation.)
* A dependent :class:`~tfgated.gates.GumbelGate` counts the MACs of its gate
  network's two Dense layers; an independent gate counts none; a gate with a
  ``compute_macs(input_shape)`` method (``tfgated.exits.ExitGate``) counts itself.
* Parameters are all weights of a layer, non-trainable included (Keras'
  ``count_params`` convention, so batch-norm moving statistics count), except
  the gates' bookkeeping variables (``style_id``, ``threshold_value``) and the
  activation loss's ``target_value``, which are reported separately as
  ``bookkeeping``.

Gate-aware counts: :func:`expected_macs` multiplies each layer's MACs by the
expected open fraction of the gates controlling it (structure from
:func:`tfgated.graph.gate_structure`), and :func:`gate_mac_weights` gives the
MACs each gate controls, for ``GateActivationLoss(gate_weights=...)``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv

from tfgated.gates import GumbelGate
from tfgated.graph import gate_structure, trace
from tfgated.inference import gate_values as measure_gate_values
from tfgated.losses import GateActivationLoss


# ----------------------------------------------------------------------------- helpers


def _prod(values):
    return int(math.prod(int(v) for v in values))


def _known(shape, name, what):
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"Cannot count {what} of layer {name!r}: its shape {shape} has unknown dimensions. "
            "Build the model with a fixed input shape or pass input_shape=..."
        )
    return shape


def _spatial(shape, data_format):
    """Spatial dims of a batch-first conv tensor shape."""
    if data_format == "channels_first":
        return shape[2:]
    return shape[1:-1]


def bookkeeping_variables(layer):
    """The tfgated bookkeeping variables of ``layer`` (not parameters)."""
    found = []
    if isinstance(layer, GumbelGate) and layer.built:
        found += [layer.style_id, layer.threshold_value]
    if isinstance(layer, GateActivationLoss) and layer.built:
        found.append(layer.target_value)
        found += list(layer.activation_tracker.variables)
    return found


def layer_parameters(layer):
    """``(params, bookkeeping)`` of ``layer``: weight element counts."""
    skip = {id(v) for v in bookkeeping_variables(layer)}
    params = sum(_prod(v.shape) for v in layer.weights if id(v) not in skip)
    bookkeeping = sum(_prod(v.shape) for v in bookkeeping_variables(layer) if v.shape is not None)
    return int(params), int(bookkeeping)


def layer_macs(layer, input_shapes, output_shapes, name=None):
    """MACs per example of one call of ``layer`` (see module docstring)."""
    name = name or layer.name
    if isinstance(layer, BaseSeparableConv):
        out = _known(output_shapes[0], name, "MACs")
        inp = _known(input_shapes[0], name, "MACs")
        fmt = layer.data_format
        channels_in = inp[1] if fmt == "channels_first" else inp[-1]
        spatial = _prod(_spatial(out, fmt))
        depthwise = spatial * _prod(layer.kernel_size) * channels_in * layer.depth_multiplier
        pointwise = spatial * channels_in * layer.depth_multiplier * layer.filters
        return depthwise + pointwise
    if isinstance(layer, BaseDepthwiseConv):
        out = _known(output_shapes[0], name, "MACs")
        fmt = layer.data_format
        channels_out = out[1] if fmt == "channels_first" else out[-1]
        return _prod(_spatial(out, fmt)) * _prod(layer.kernel_size) * channels_out
    if isinstance(layer, BaseConvTranspose):
        inp = _known(input_shapes[0], name, "MACs")
        fmt = layer.data_format
        channels_in = inp[1] if fmt == "channels_first" else inp[-1]
        return _prod(_spatial(inp, fmt)) * _prod(layer.kernel_size) * channels_in * layer.filters
    if isinstance(layer, BaseConv):
        out = _known(output_shapes[0], name, "MACs")
        inp = _known(input_shapes[0], name, "MACs")
        fmt = layer.data_format
        channels_in = inp[1] if fmt == "channels_first" else inp[-1]
        per_output = _prod(layer.kernel_size) * channels_in // layer.groups
        return _prod(_spatial(out, fmt)) * layer.filters * per_output
    if isinstance(layer, keras.layers.Dense):
        inp = _known(input_shapes[0], name, "MACs")
        return _prod(inp[1:-1]) * inp[-1] * layer.units
    if isinstance(layer, GumbelGate) and hasattr(layer, "compute_macs"):
        # Gates with a network of their own (e.g. tfgated.exits.ExitGate) count it themselves.
        return int(layer.compute_macs(_known(input_shapes[0], name, "MACs")))
    if isinstance(layer, GumbelGate) and layer.kind == "dependent":
        channels = input_shapes[0][-1]
        return channels * layer.hidden_width + layer.hidden_units * layer.units
    return 0


# ----------------------------------------------------------------------------- report


@dataclasses.dataclass
class LayerRow:
    """Complexity of one layer call."""

    name: str
    class_name: str
    params: int
    macs: int
    output_shape: tuple
    bookkeeping: int = 0

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["output_shape"] = list(self.output_shape)
        return data


def _human(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def find_row(rows, name, where):
    """The row of layer call ``name`` among report ``rows``; ``ValueError`` naming ``where`` when absent."""
    for r in rows:
        if r.name == name:
            return r
    raise ValueError(f"No layer named {name!r} in {where}.")


def report_dict(report, keys):
    """A report's JSON form: ``{key: report.<key>}`` for ``keys``, then ``layers``, each row's ``to_dict()``."""
    return {**{key: getattr(report, key) for key in keys}, "layers": [r.to_dict() for r in report.rows]}


def mac_fraction(macs, dense):
    """``macs / dense``; 1.0 for a model without dense MACs."""
    return macs / dense if dense else 1.0


class ComplexityReport:
    """Per-layer rows and totals; ``params`` and ``macs`` (per example)."""

    def __init__(self, name, rows):
        self.name = name
        self.rows = list(rows)
        self.params = int(sum(r.params for r in self.rows))
        self.macs = int(sum(r.macs for r in self.rows))
        self.bookkeeping = int(sum(r.bookkeeping for r in self.rows))

    def row(self, name):
        """The row of layer call ``name``."""
        return find_row(self.rows, name, f"the complexity report of {self.name!r}")

    def table(self, skip_empty=False):
        """A fixed-width text table, one line per layer plus the totals."""
        header = f"{'layer':<40} {'class':<24} {'output shape':<22} {'params':>12} {'MACs':>14}"
        lines = [f"Complexity of {self.name} (MACs per example)", header, "-" * len(header)]
        for r in self.rows:
            if skip_empty and not r.params and not r.macs:
                continue
            shape = str(tuple(r.output_shape[1:]))
            lines.append(f"{r.name:<40} {r.class_name:<24} {shape:<22} {r.params:>12,} {r.macs:>14,}")
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<40} {'':<24} {'':<22} {self.params:>12,} {self.macs:>14,}"
            f"   ({_human(self.params)} params, {_human(self.macs)} MACs)"
        )
        if self.bookkeeping:
            lines.append(f"(not counted: {self.bookkeeping} gate/loss bookkeeping values)")
        return "\n".join(lines)

    def to_dict(self):
        return report_dict(self, ("name", "params", "macs", "bookkeeping"))

    def __repr__(self):
        return f"ComplexityReport({self.name!r}, params={self.params:,}, macs={self.macs:,})"


def count(model, input_shape=None, graph=None):
    """Count parameters and MACs per example of a functional Keras model.

    Args:
        model: a built functional or Sequential model (nested functional models
            are counted layer by layer).
        input_shape: optional input shape without the batch axis, for models
            built with unknown spatial size.
        graph: optional pre-computed :func:`tfgated.graph.trace`.

    Returns:
        :class:`ComplexityReport`. A layer shared by several calls counts its
        parameters once (at its first call) and its MACs at every call.
    """
    graph = graph or trace(model, input_shape=input_shape)
    rows, seen = [], set()
    for call in graph.calls:
        params, bookkeeping = (0, 0) if id(call.layer) in seen else layer_parameters(call.layer)
        seen.add(id(call.layer))
        macs = layer_macs(call.layer, call.input_shapes, call.output_shapes, call.name)
        rows.append(
            LayerRow(
                call.name, call.class_name, params, int(macs), tuple(call.output_shapes[0]), bookkeeping
            )
        )
    return ComplexityReport(model.name, rows)


# ----------------------------------------------------------------------------- gate-aware counts


@dataclasses.dataclass
class ExpectedMacs:
    """Gate-aware MACs.

    Attributes:
        dense: MACs with every gate open.
        expected: expected MACs per example (mean of ``per_example`` when
            gate values were given).
        per_example: array (N,) of MACs per example, or ``None`` when computed
            from rates.
        per_layer: ``{layer call name: expected MACs}``.
        gated: dense MACs of the layers controlled by at least one gate.
    """

    dense: int
    expected: float
    per_example: object
    per_layer: dict
    gated: int

    def to_dict(self):
        """The report as JSON-friendly values."""
        return {
            "dense": self.dense,
            "gated": self.gated,
            "expected": float(self.expected),
            "fraction": float(self.fraction),
            "per_example": None if self.per_example is None else [float(v) for v in self.per_example],
            "per_layer": {k: float(v) for k, v in self.per_layer.items()},
        }

    @property
    def fraction(self):
        """``expected / dense``."""
        return mac_fraction(self.expected, self.dense)


def _gate_fraction(info, values):
    """Open fraction of a gate's controlled work from rates (units,) or values (N, units)."""
    values = np.asarray(values, dtype="float64")
    if values.shape[-1] != info.units:
        raise ValueError(
            f"Expected {info.units} values per example for gate {info.name!r}. "
            f"Received: shape={values.shape}"
        )
    if info.apply_class == "EarlyExitCombine":  # z = 1 leaves: the rest runs for 1 - z
        return 1.0 - values.mean(axis=-1)
    return values.mean(axis=-1)


def _controllers(infos):
    """``{layer call name: [gate name, ...]}`` (a gate counted once per layer)."""
    by_layer = {}
    for info in infos:
        for c in info.controlled:
            gates = by_layer.setdefault(c.name, [])
            if info.name not in gates:
                gates.append(info.name)
    return by_layer


def expected_macs(model, rates=None, gate_values=None, input_shape=None):
    """Expected MACs per example under the gates.

    Each layer's MACs are multiplied by the open fraction of every gate that
    controls it (its masked output channels, masked input channels, enclosing
    gated residual branches, the stages after an exit gate, whose fraction is
    ``1 - z``; see :func:`tfgated.graph.gate_structure`). Different gates are
    assumed independent when ``rates`` are given (for exits an approximation:
    the later exit's rate then includes examples that left before); with
    ``gate_values`` the product is taken per example, which is exact.

    Args:
        model: a built functional model with tfgated gates (or none).
        rates: ``{gate name: array (units,)}`` mean open rates, e.g.
            :func:`tfgated.gate_rates`. ``None``: every gate open (dense MACs).
            Gates missing from the dict count as open.
        gate_values: ``{gate name: array (N, units)}`` per-example gate values,
            e.g. :func:`tfgated.gate_values`; gives ``per_example`` MACs.
        input_shape: see :func:`count`.

    Returns:
        :class:`ExpectedMacs`.
    """
    if rates is not None and gate_values is not None:
        raise ValueError("Pass either rates or gate_values, not both.")
    graph = trace(model, input_shape=input_shape)
    report = count(model, graph=graph)
    infos = {info.name: info for info in gate_structure(model, graph=graph)}
    source = gate_values if gate_values is not None else rates
    source = dict(source or {})
    unknown = sorted(set(source) - set(infos))
    if unknown:
        raise ValueError(f"Unknown gate names {unknown}. Expected some of {sorted(infos)}.")
    fractions = {name: _gate_fraction(infos[name], v) for name, v in source.items()}
    sizes = {np.shape(f) for f in fractions.values() if np.ndim(f)}
    if len(sizes) > 1:
        raise ValueError(f"Expected the same number of examples for every gate. Received: {sorted(sizes)}")
    controllers = _controllers(infos.values())
    per_example = None if gate_values is None else 0.0
    per_layer, expected, gated = {}, 0.0, 0
    for row in report.rows:
        factor = 1.0
        for gate in controllers.get(row.name, []):
            factor = factor * fractions.get(gate, 1.0)
        if row.name in controllers:
            gated += row.macs
        layer_expected = row.macs * factor
        per_layer[row.name] = float(np.mean(layer_expected))
        expected += per_layer[row.name]
        if per_example is not None:
            per_example = per_example + layer_expected
    if per_example is not None:
        examples = next(iter(sizes))[0] if sizes else 1
        per_example = np.broadcast_to(np.asarray(per_example, dtype="float64"), (examples,)).copy()
    return ExpectedMacs(
        dense=report.macs, expected=float(expected), per_example=per_example, per_layer=per_layer, gated=gated
    )


def expected_macs_on_data(model, x, batch_size=256, per_example=False):
    """:func:`expected_macs` with gate values measured on ``x`` (current inference style).

    With ``per_example=True`` the result carries the per-example MACs (exact
    for data-dependent gates); otherwise it uses the mean rates.
    """
    values = measure_gate_values(model, x, batch_size=batch_size)
    if per_example:
        return expected_macs(model, gate_values=values)
    return expected_macs(model, rates={k: v.mean(axis=0) for k, v in values.items()})


def gate_mac_weights(model, input_shape=None):
    """MACs each gate controls, in the order of the activation loss's gate inputs.

    The order is that of the GateActivationLoss layer's gate tensors
    (its inbound ``inputs[1:]``), so the list can be passed as
    ``GateActivationLoss(gate_weights=...)`` / ``gated_model(gate_weights=...)``
    to target the expected fraction of gated MACs. A layer controlled by two
    gates counts fully for each.

    Raises:
        ValueError: if the model has no GateActivationLoss.
    """
    graph = trace(model, input_shape=input_shape)
    report = count(model, graph=graph)
    macs = {r.name: r.macs for r in report.rows}
    infos = gate_structure(model, graph=graph)
    loss_calls = [c for c in graph.calls if isinstance(c.layer, GateActivationLoss)]
    if not loss_calls:
        raise ValueError(f"Model {model.name!r} has no GateActivationLoss layer.")
    n = len(loss_calls[0].inputs) - 1
    weights = [0.0] * n
    for info in infos:
        if info.loss_index is not None:
            weights[info.loss_index] = float(sum(macs[c.name] for c in info.controlled))
    return weights
