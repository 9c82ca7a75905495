"""Rebuilding a gated model as plain Keras layers from its :class:`~tfgated.export.fold_plan.FoldPlan`.

:class:`FoldBuilder` walks the live nodes in order and calls a plain built-in layer for each:
closed channels sliced out of convolutions, batch norms and depthwise convolutions (their
constants folded into the next layer's bias), constant masks where channels must stay,
residual gates as ``Add`` or removed branches, and data-dependent gates rebuilt as a gate
network with a hard step (:data:`STEP_SCALE`) in *masked* form.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfgated.export.fold_graph import FoldError, channels, is_static_gate, layer_kind
from tfgated.export.fold_plan import FoldPlan

#: Slope of the hard step that replaces a data-dependent gate's threshold.
#: Decisions agree with the gate except for logits within about 1/STEP_SCALE of
#: the threshold logit. Chosen to stay finite in float16.
STEP_SCALE = 6.0e4

L = keras.layers


class FoldBuilder(FoldPlan):
    """A :class:`FoldPlan` that rebuilds the model (:meth:`build`), filling ``report`` as it goes."""

    def __init__(self, model, report, remove_channels=True):
        super().__init__(model, remove_channels=remove_channels)
        self.report = report

    # -- rebuild -------------------------------------------------------------------------------

    def _select(self, t, target):
        """The new tensor for original ``t`` with exactly the channels ``target``."""
        new_t, idx = self.new[id(t)]
        if idx is None or (len(idx) == len(target) and np.array_equal(idx, target)):
            return new_t
        const = self.get_const(t)
        rank = len(t.shape)
        kernel = np.zeros((len(idx), len(target)), "float32")
        bias = np.zeros((len(target),), "float32")
        pos = {int(c): i for i, c in enumerate(idx)}
        for j, c in enumerate(target):
            if int(c) in pos:
                kernel[pos[int(c)], j] = 1.0
            elif not np.isnan(const[c]):
                bias[j] = const[c]
            else:  # pragma: no cover - guaranteed by the analysis
                raise FoldError(f"Internal error: channel {c} of {t.name} is missing and not constant.")
        name = self._unique(f"{t.name.split('/')[0]}_select")
        self.report.selections.append(name)
        if rank == 4:
            layer = L.Conv2D(len(target), 1, use_bias=True, name=name)
            out = layer(new_t)
            layer.set_weights([kernel[None, None], bias])
        else:
            layer = L.Dense(len(target), use_bias=True, name=name)
            out = layer(new_t)
            layer.set_weights([kernel, bias])
        return out

    def _full(self, t):
        c = channels(t)
        return self._select(t, np.arange(c)) if c else self.new[id(t)][0]

    def _unique(self, name):
        base, i = name, 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def _clone(self, layer, **changes):
        config = {**layer.get_config(), **changes}
        config["name"] = self._unique(config.get("name", layer.name))
        return type(layer).from_config(config)

    def _out_index(self, t):
        c = channels(t)
        p = self.present.get(id(t), np.ones((c,), bool))
        idx = np.flatnonzero(p)
        if len(idx) == 0:
            idx = np.array([0])
        return idx

    def build(self):
        self.new = {}
        self.names = set()
        new_inputs = []
        for t in self.model.inputs:
            layer = t._keras_history[0]
            x = keras.Input(shape=t.shape[1:], dtype=t.dtype, name=self._unique(layer.name))
            new_inputs.append(x)
            self.new[id(t)] = (x, np.arange(channels(t)) if channels(t) else None)
        for node in self.nodes:
            if id(node) not in self.live:
                continue
            self._rebuild_node(node)
        outputs = [self._full(t) for t in self.model.outputs]
        if len(outputs) == 1:
            outputs = outputs[0]
        folded = keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0], outputs, name=f"{self.model.name}_folded")
        return folded

    def _set(self, t, new_t, idx):
        self.new[id(t)] = (new_t, idx)

    def _rebuild_node(self, node):
        layer = node.operation
        kind = layer_kind(layer, node)
        ins = node.input_tensors
        out = node.outputs[0]
        if kind == "custom":
            raise FoldError(
                f"Cannot fold layer {layer.name!r} of type {type(layer).__name__}: only built-in Keras "
                "layers and tfgated gates are supported."
            )
        if kind == "gate":
            if is_static_gate(layer):
                return
            self._set(out, self._dependent_gate(layer, self._full(ins[0])), None)
            return
        if kind == "loss":
            self.new[id(out)] = self.new[id(ins[0])]
            return
        if kind == "mask":
            self._rebuild_mask(layer, ins, out)
            return
        if kind == "residual":
            self._rebuild_residual(layer, ins, out)
            return
        if kind == "linear":
            self._rebuild_linear(layer, ins[0], out)
            return
        if kind in ("depthwise", "batchnorm"):
            x, idx = self.new[id(ins[0])]
            new_layer = self._clone(layer)
            y = new_layer(x)
            new_layer.set_weights([w if w.ndim == 0 else (w[..., idx, :] if w.ndim == 4 else w[idx])
                                   for w in layer.get_weights()])
            self._set(out, y, idx)
            return
        if kind == "stateless":
            x, idx = self.new[id(ins[0])]
            self._set(out, self._clone(layer)(x), idx)
            return
        if kind == "reshape":
            x, idx = self.new[id(ins[0])]
            target = tuple(layer.target_shape)[:-1] + (len(idx),)
            self._set(out, self._clone(layer, target_shape=target)(x), idx)
            return
        if kind == "multiply":
            _, ia = self.new[id(ins[0])]
            _, ib = self.new[id(ins[1])]
            target = ia if np.array_equal(ia, ib) else np.intersect1d(ia, ib)
            p = self.present.get(id(out), np.ones((channels(out),), bool))
            if not set(np.flatnonzero(p)) <= set(target.tolist()):
                target = np.arange(channels(out))
            a, b = self._select(ins[0], target), self._select(ins[1], target)
            self._set(out, self._clone(layer)([a, b]), target)
            return
        # Any other built-in layer: every channel of every input, weights copied.
        args, kwargs = node.arguments.fill_in({id(t): self._full(t) for t in ins})
        new_layer = self._clone(layer)
        y = new_layer(*args, **kwargs)
        if layer.weights:
            new_layer.set_weights(layer.get_weights())
        for t, nt in zip(node.outputs, keras.tree.flatten(y)):
            self._set(t, nt, np.arange(channels(t)) if channels(t) else None)

    def _rebuild_linear(self, layer, t, out):
        x, idx = self.new[id(t)]
        const = self.get_const(t)
        weights = layer.get_weights()
        kernel = weights[0].astype("float64")
        bias = weights[1].astype("float64") if layer.use_bias else np.zeros(kernel.shape[-1])
        missing = np.setdiff1d(np.arange(kernel.shape[-2]), idx)
        if len(missing):
            values = const[missing]
            if np.isnan(values).any():  # pragma: no cover - guaranteed by the analysis
                raise FoldError(f"Internal error: non-constant channels missing before {layer.name}.")
            summed = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)
            bias = bias + values @ summed[missing]
        out_idx = self._out_index(out)
        new_kernel = kernel[..., idx, :][..., out_idx]
        new_bias = bias[out_idx]
        use_bias = layer.use_bias or bool(np.any(new_bias != 0))
        width = "filters" if not isinstance(layer, L.Dense) else "units"
        new_layer = self._clone(layer, **{width: int(len(out_idx)), "use_bias": use_bias})
        y = new_layer(x)
        new_weights = [new_kernel.astype("float32")] + ([new_bias.astype("float32")] if use_bias else [])
        new_layer.set_weights(new_weights)
        removed = kernel.shape[-1] - len(out_idx)
        if removed:
            self.report.channels_removed[layer.name] = removed
        self._set(out, y, out_idx)

    def _rebuild_mask(self, layer, ins, out):
        gate, values = self._gate_info(ins[1])
        x, idx = self.new[id(ins[0])]
        rank = len(ins[0].shape)
        if values is None:
            z = self.new[id(ins[1])][0]
            self.report.dependent_masked.append(gate.name)
            expand = np.zeros((gate.units, len(idx)), "float32")
            expand[idx // layer.granularity, np.arange(len(idx))] = 1.0
            dense = L.Dense(len(idx), use_bias=False, trainable=False, name=self._unique(f"{layer.name}_expand"))
            zc = dense(z)
            dense.set_weights([expand])
            if rank > 2:
                zc = L.Reshape((1,) * (rank - 2) + (len(idx),), name=self._unique(f"{layer.name}_reshape"))(zc)
            y = L.Multiply(name=self._unique(layer.name))([x, zc])
            self._set(out, y, idx)
            return
        m = np.repeat(values, layer.granularity)[idx]
        if np.all(m == 1):
            self._set(out, x, idx)
            return
        self.report.masked_constant[layer.name] = int(np.sum(m == 0))
        name = self._unique(layer.name)
        if rank == 4:
            mask_layer = L.DepthwiseConv2D(1, use_bias=False, trainable=False, name=name)
            y = mask_layer(x)
            mask_layer.set_weights([m.reshape(1, 1, -1, 1).astype("float32")])
        elif rank in (2, 3):
            mask_layer = L.Dense(len(idx), use_bias=False, trainable=False, name=name)
            y = mask_layer(x)
            mask_layer.set_weights([np.diag(m).astype("float32")])
        else:
            raise FoldError(f"Cannot fold ChannelMask {layer.name!r} on a rank-{rank} tensor.")
        self._set(out, y, idx)

    def _rebuild_residual(self, layer, ins, out):
        gate, values = self._gate_info(ins[2])
        if values is not None and values[0] == 0:
            self.report.branches_removed.append(layer.name)
            self.new[id(out)] = self.new[id(ins[0])]
            return
        shortcut, branch = self._full(ins[0]), self._full(ins[1])
        c = channels(out)
        if values is not None:
            self.report.branches_kept.append(layer.name)
            y = L.Add(name=self._unique(layer.name))([shortcut, branch])
            self._set(out, y, np.arange(c) if c else None)
            return
        self.report.dependent_masked.append(gate.name)
        z = self.new[id(ins[2])][0]
        rank = len(ins[1].shape)
        if rank > 2:
            z = L.Reshape((1,) * (rank - 1), name=self._unique(f"{layer.name}_gate_reshape"))(z)
        mul_name = self._unique(f"{layer.name}_branch")
        gated = L.Multiply(name=mul_name)([branch, z])
        add_name = self._unique(layer.name)
        y = L.Add(name=add_name)([shortcut, gated])
        self.report.conditional.append(
            {
                "gate": z._keras_history[0].name,
                "branch": branch._keras_history[0].name,
                "multiply": mul_name,
                "add": add_name,
            }
        )
        self._set(out, y, np.arange(c) if c else None)

    def _dependent_gate(self, gate, context):
        """The plain-layer version of a data-dependent gate in threshold style."""
        prefix = gate.name
        rank = len(context.shape)
        x = context
        if rank == 4:
            x = L.GlobalAveragePooling2D(name=self._unique(f"{prefix}_pool"))(x)
        elif rank == 3:
            x = L.GlobalAveragePooling1D(name=self._unique(f"{prefix}_pool"))(x)
        elif rank != 2:
            raise FoldError(f"Cannot fold gate {gate.name!r} on a rank-{rank} context.")
        hidden = L.Dense(gate.hidden_width, use_bias=False, name=self._unique(f"{prefix}_hidden"))
        x = hidden(x)
        hidden.set_weights(gate.hidden.get_weights())
        norm = self._clone(gate.norm, name=f"{prefix}_norm")
        x = norm(x)
        norm.set_weights(gate.norm.get_weights())
        x = L.ReLU(name=self._unique(f"{prefix}_relu"))(x)
        theta = math.log(gate.threshold / (1.0 - gate.threshold))
        head_kernel, head_bias = gate.head.get_weights()
        if gate.per_gate_hidden:  # (units, hidden) per gate -> the same map as one block-diagonal Dense
            head_kernel = _block_diagonal(head_kernel)
        head = L.Dense(gate.units, name=self._unique(f"{prefix}_logits"))
        logits = head(x)
        head.set_weights([head_kernel, (head_bias.astype("float64") - theta).astype("float32")])
        step = L.Rescaling(STEP_SCALE, name=self._unique(f"{prefix}_scale"))(logits)
        z = L.ReLU(max_value=1.0, name=self._unique(f"{prefix}_step"))(step)
        if gate.force_open and gate.units > 1:
            col = L.Reshape((gate.units, 1), name=self._unique(f"{prefix}_column"))(logits)
            best = L.GlobalMaxPooling1D(name=self._unique(f"{prefix}_max"))(col)
            diff = L.Subtract(name=self._unique(f"{prefix}_gap"))([logits, best])
            scaled = L.Rescaling(STEP_SCALE, offset=1.0, name=self._unique(f"{prefix}_argmax_scale"))(diff)
            onehot = L.ReLU(max_value=1.0, name=self._unique(f"{prefix}_argmax"))(scaled)
            z = L.Maximum(name=self._unique(f"{prefix}_force_open"))([z, onehot])
        return z


def _block_diagonal(per_gate_kernel):
    """The ``(units * hidden, units)`` Dense kernel computing what a per-gate head's
    ``(units, hidden)`` kernel computes on its ``(units, hidden)`` reshaped input: gate ``g``
    reads only hidden units ``g * hidden ... (g + 1) * hidden - 1``."""
    units, hidden = per_gate_kernel.shape
    kernel = np.zeros((units * hidden, units), dtype=per_gate_kernel.dtype)
    for g in range(units):
        kernel[g * hidden:(g + 1) * hidden, g] = per_gate_kernel[g]
    return kernel
