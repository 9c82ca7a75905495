"""Remove the NHWC round trips that tf2onnx leaves around batch-axis operations.

TensorFlow graphs are NHWC and ONNX convolutions NCHW, so tf2onnx wraps each convolution in
``Transpose`` nodes and then moves them through the operations it knows. It does not move them
through ``Gather``, so the gather-run-scatter form (:mod:`tfgated.sparse`) and a gate's product
keep pairs like::

    Relu (NCHW) -> Transpose [0,2,3,1] -> Gather axis 0 -> Transpose [0,3,1,2] -> Conv
    Conv -> Transpose [0,2,3,1] -> Mul by z (n,1,1,1) -> Concat axis 0 with zeros -> Gather axis 0
         -> Transpose [0,3,1,2] -> Add

Every operation between such a pair acts along the batch axis only (or broadcasts a per-example
value over the others), which is axis 0 in either layout: the pair can go, the chain then runs
on the NCHW tensor (a constant joined by ``Concat`` is transposed once, here). Each pair removed
saves two full passes over an activation tensor.
"""

from __future__ import annotations

import numpy as np

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return tuple(a.ints) if a.ints else a.i
    return default


def _per_example(name, producers, constants):
    """Whether tensor ``name`` is a Reshape to ``(-1, 1, 1, 1)`` (one value per example)."""
    node = producers.get(name)
    if node is None or node.op_type != "Reshape" or node.input[1] not in constants:
        return False
    shape = constants[node.input[1]]
    return shape.ndim == 1 and len(shape) == 4 and bool(np.all(shape[1:] == 1))


def _along_batch(node, tensor, producers, constants):
    """Whether ``node`` treats its input ``tensor`` along axis 0 only (so NHWC or NCHW is all one)."""
    if node.op_type == "Gather":
        return node.input[0] == tensor and _attr(node, "axis", 0) == 0
    if node.op_type == "Concat":
        others = [i for i in node.input if i != tensor]
        return _attr(node, "axis") == 0 and all(i in constants and constants[i].ndim == 4 for i in others)
    if node.op_type in ("Mul", "Add"):
        others = [i for i in node.input if i != tensor]
        return len(others) == 1 and _per_example(others[0], producers, constants)
    return False


def _chain(start, consumers, producers, constants, outputs=()):
    """The batch-axis nodes after Transpose ``start`` up to a Transpose back, or None."""
    chain, tensor = [], start.output[0]
    while True:
        users = consumers.get(tensor, [])
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type == "Transpose":
            return chain if chain and _attr(node, "perm") == TO_NCHW and node.output[0] not in outputs else None
        if not _along_batch(node, tensor, producers, constants):
            return None
        chain.append(node)
        tensor = node.output[0]


def drop_batch_axis_transposes(model):
    """Remove every ``Transpose [0,2,3,1] -> batch-axis ops -> Transpose [0,3,1,2]`` pair from the
    ``onnx.ModelProto`` ``model`` in place; returns how many pairs went."""
    from onnx import numpy_helper

    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    removed = 0
    while True:
        producers = {o: n for n in graph.node for o in n.output}
        consumers = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        found = None
        for node in graph.node:
            if node.op_type == "Transpose" and _attr(node, "perm") == TO_NHWC:
                chain = _chain(node, consumers, producers, constants, {o.name for o in graph.output})
                if chain is not None:
                    found = node, chain
                    break
        if found is None:
            if removed:  # the NHWC constants the chains no longer read
                used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
                for init in [i for i in graph.initializer if i.name not in used]:
                    graph.initializer.remove(init)
            return removed
        first, chain = found
        back = consumers[chain[-1].output[0]][0]
        _rewire(graph, first, chain, back, constants, consumers)
        removed += 1


def _rewire(graph, first, chain, back, constants, consumers):
    from onnx import numpy_helper

    chain[0].input[list(chain[0].input).index(first.output[0])] = first.input[0]
    for node in chain:
        if node.op_type == "Concat":
            for k, name in enumerate(node.input):
                if name in constants and constants[name].ndim == 4:
                    nchw = f"{name}__nchw"
                    if nchw not in constants:
                        constants[nchw] = np.ascontiguousarray(np.transpose(constants[name], TO_NCHW))
                        graph.initializer.append(numpy_helper.from_array(constants[nchw], nchw))
                    node.input[k] = nchw
    for user in consumers.get(back.output[0], []):
        for k, name in enumerate(user.input):
            if name == back.output[0]:
                user.input[k] = chain[-1].output[0]
    stale = {n.output[0] for n in chain}  # their recorded NHWC shapes no longer hold
    for info in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(info)
    graph.node.remove(first)
    graph.node.remove(back)
