"""The ``"sparse"`` (gather-run-scatter) form of exported files.

A folded model keeps each data-dependent residual gate as ``shortcut + branch * z``
(:attr:`tfgated.export.FoldReport.conditional`). In the sparse form the exported function
gathers the examples whose gate is open, runs the branch on them and scatters the products
back (:func:`tfgated.sparse.sparse_call`): ``WHERE``/``GATHER``/``SCATTER_ND`` in TFLite,
``NonZero``/``Gather``/``ScatterND`` in ONNX, with a dynamic batch dimension. A sub-batch may
be empty: LiteRT and ONNX Runtime both run convolutions on zero examples.

A gate keeps the masked form, and :func:`plan` says why, where gathering cannot pay: when it
is open on more than ``options.sparse_max_open_rate`` of the parity inputs, or when its branch
shares every layer with the rest of the network.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfgated.export.fold_graph import graph_index, nodes_in_order
from tfgated.sparse import make_branch, sparse_call

SPARSE = "sparse"
MASKED = "masked"


@dataclasses.dataclass
class SparsePlan:
    """Which gates of a folded model run gathered.

    Attributes:
        branches: the :class:`tfgated.sparse.SparseBranch` es run by gather-run-scatter.
        forms: ``{add layer name: "sparse" | "masked"}`` for every data-dependent gate.
        reasons: ``{add layer name: why it stays masked}``.
        open_rates: ``{add layer name: share of the parity inputs that open the gate}``.
    """

    branches: list
    forms: dict
    reasons: dict
    open_rates: dict

    def fields(self):
        """The sidecar's ``gates`` entries for the sparse form."""
        return {
            "forms": dict(self.forms),
            "masked_because": dict(self.reasons),
            "parity_open_rates": {k: round(v, 6) for k, v in self.open_rates.items()},
        }


def _open_rates(folded, gates, x):
    """``{add name: open rate on x}`` of the folded gates ``{add name: z tensor}``."""
    if not gates:
        return {}
    probe = keras.Model(folded.inputs, list(gates.values()))
    values = probe.predict(np.asarray(x, "float32"), batch_size=256, verbose=0)
    values = values if isinstance(values, (list, tuple)) else [values]
    return {name: float(np.mean(np.reshape(v, (len(v), -1))[:, 0] > 0)) for name, v in zip(gates, values)}


def plan(folded, report, x, max_open_rate):
    """The :class:`SparsePlan` of ``folded`` (its :class:`FoldReport` ``report``) on parity inputs ``x``."""
    nodes = nodes_in_order(folded)
    index = graph_index(nodes)
    by_name = {node.operation.name: node for node in nodes}
    muls = {c["add"]: by_name[c["multiply"]] for c in report.conditional}
    rates = _open_rates(folded, {name: mul.input_tensors[1] for name, mul in muls.items()}, x)
    branches, forms, reasons = [], {}, {}
    for name, mul in muls.items():
        branch, z = mul.input_tensors
        made = make_branch(nodes, index, folded.outputs, mul, branch, z)
        if made is None:
            reasons[name] = "its branch shares every layer with the rest of the network"
        elif rates[name] > max_open_rate:
            reasons[name] = (
                f"open on {rates[name]:.1%} of the parity inputs (> {max_open_rate:.0%}): gathering would "
                "cost more than the closed examples save"
            )
        else:
            branches.append(made)
        forms[name] = MASKED if name in reasons else SPARSE
    return SparsePlan(branches=branches, forms=forms, reasons=reasons, open_rates=rates)


def sparse_export_call(folded, sparse_plan, stitch="gather"):
    """The callable traced for a sparse-form file (inference, no random ops)."""
    call = sparse_call(folded, sparse_plan.branches, stitch=stitch)

    def run(x):
        with keras.StatelessScope():
            return call(x)

    return run
