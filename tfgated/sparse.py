"""Gather-run-scatter execution of data-dependent residual gates and early exits.

A data-dependent residual gate computes ``x + z * f(x)`` with one gate value per example. The
masked form computes ``f`` for every example and multiplies by ``z``; gather-run-scatter
computes the gate for the batch, gathers the examples whose gate is open (``z > 0``), runs the
branch ``f`` on that sub-batch only, and scatters the products back::

    out = x + scatter(open, z[open] * f(x[open]))       # x itself where the gate is closed

which equals the masked form exactly (on an open example ``x + 1 * f(x)``, on a closed one
``x``). An early exit (a model ``[main_probs, exit_probs]``, :mod:`tfgated.exits`) gathers the
examples whose exit confidence is not above the threshold, runs the rest of the network on
them and stitches both outputs in order. A sub-batch may be empty.

* :class:`SparseModel` wraps a gated functional model and runs it this way; it is a Keras model
  (``predict``, ``save``; loadable with ``safe_mode=True``) that shares the wrapped model's
  weights. ``tfgated.predict(model, x, execution="sparse")`` uses it;
  :class:`tfgated.exits.SparseExitModel` is its early-exit counterpart.
* :func:`sparse_call` is the same walk over any functional model with given gated products;
  the exporter (:mod:`tfgated.export`) traces it over a folded model for the TFLite and ONNX
  files' ``"sparse"`` form.
* :func:`sparse_exit_call` stitches an early exit.

The graph helpers (:func:`functional_nodes`, :func:`graph_index`, :func:`run_node`,
:func:`exclusive_nodes`) read Keras' own nodes; the exporter's fold uses them too.
"""

from __future__ import annotations

import dataclasses
import weakref

import keras
from keras import ops

from tfgated.gates import GatedResidual, GumbelGate

__all__ = [
    "SparseBranch",
    "SparseModel",
    "exclusive_nodes",
    "functional_nodes",
    "graph_index",
    "open_indices",
    "residual_branches",
    "run_node",
    "sparse_call",
    "sparse_exit_call",
    "sparse_model",
]


# -- graph helpers ---------------------------------------------------------------------------


def functional_nodes(model, error=ValueError):
    """The non-input nodes of the functional ``model`` in topological order (``error`` otherwise)."""
    if not hasattr(model, "_nodes_by_depth"):
        raise error(f"Expected a functional Keras model. Received: {type(model).__name__} {model.name!r}")
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def graph_index(nodes):
    """``(producer, consumers)``: ``{id(tensor): node}`` and ``{id(tensor): [nodes reading it]}``."""
    producer, consumers = {}, {}
    for node in nodes:
        for t in node.outputs:
            producer[id(t)] = node
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    return producer, consumers


def run_node(node, values):
    """Call ``node``'s layer on the tensors in ``values`` (``{id(tensor): value}``); store its outputs."""
    args, kwargs = node.arguments.fill_in(values)
    outs = node.operation(*args, **kwargs)
    for t, v in zip(node.outputs, keras.tree.flatten(outs)):
        values[id(t)] = v


def _ancestors(start, producer):
    found, stack = set(), [start]
    while stack:
        node = stack.pop()
        if id(node) in found:
            continue
        found.add(id(node))
        stack.extend(producer[id(t)] for t in node.input_tensors if id(t) in producer)
    return found


def exclusive_nodes(nodes, consumers, outputs, branch_tensor, producer):
    """Ids of the nodes computing ``branch_tensor`` whose outputs nothing else uses."""
    exclusive = set()
    start = producer.get(id(branch_tensor))
    if start is None:
        return exclusive
    ancestors = _ancestors(start, producer)
    output_ids = {id(t) for t in outputs}
    for node in reversed(nodes):
        if id(node) not in ancestors:
            continue
        if node is start:
            if len(consumers.get(id(branch_tensor), [])) == 1 and id(branch_tensor) not in output_ids:
                exclusive.add(id(node))
            continue
        if any(id(t) in output_ids for t in node.outputs):
            continue
        users = [c for t in node.outputs for c in consumers.get(id(t), [])]
        if users and all(id(c) in exclusive for c in users):
            exclusive.add(id(node))
    return exclusive


# -- the gathered branch ------------------------------------------------------------------------


@dataclasses.dataclass
class SparseBranch:
    """One gated product run on the open examples only.

    Attributes:
        node: the node applying the gate: a :class:`~tfgated.GatedResidual` (output
            ``shortcut + z * branch``) or a ``Multiply`` (output ``branch * z``).
        branch: the branch tensor ``f(x)``.
        z: the gate tensor, shape ``(batch, 1)``.
        shortcut: the shortcut tensor (``None`` for a ``Multiply``).
        inner: the nodes only the branch needs, in order (they run on the sub-batch).
        external: the tensors those nodes read from outside the branch (gathered).
    """

    node: object
    branch: object
    z: object
    shortcut: object
    inner: list
    external: list

    @property
    def name(self):
        return self.node.operation.name


def make_branch(nodes, index, outputs, node, branch, z, shortcut=None):
    """The :class:`SparseBranch` of ``node`` (``index``: :func:`graph_index` of ``nodes``), or
    ``None`` when the branch shares every node with the rest of the network."""
    producer, consumers = index
    ids = exclusive_nodes(nodes, consumers, outputs, branch, producer)
    inner = [n for n in nodes if id(n) in ids]
    if not inner:
        return None
    made = {id(t) for n in inner for t in n.outputs}
    external, seen = [], set()
    for n in inner:
        for t in n.input_tensors:
            if id(t) not in made and id(t) not in seen:
                seen.add(id(t))
                external.append(t)
    return SparseBranch(node=node, branch=branch, z=z, shortcut=shortcut, inner=inner, external=external)


def _dependent_gate(producer, z):
    node = producer.get(id(z))
    return node is not None and isinstance(node.operation, GumbelGate) and node.operation.kind != "independent"


def residual_branches(model, nodes=None):
    """A :class:`SparseBranch` for every :class:`~tfgated.GatedResidual` of ``model`` whose gate
    is data-dependent (independent gates decide for the whole batch at once)."""
    nodes = functional_nodes(model) if nodes is None else nodes
    index = graph_index(nodes)
    found = []
    for node in nodes:
        if isinstance(node.operation, GatedResidual) and _dependent_gate(index[0], node.input_tensors[2]):
            shortcut, branch, z = node.input_tensors
            made = make_branch(nodes, index, model.outputs, node, branch, z, shortcut)
            if made is not None:
                found.append(made)
    return found


def open_indices(mask):
    """int32 indices ``(n,)`` of the true entries of the boolean vector ``mask`` (``n`` may be 0)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # keras.ops.nonzero unstacks int64 indices, an op TFLite has no kernel for.
        return tf.reshape(tf.cast(tf.where(mask), "int32"), [-1])
    return ops.cast(ops.nonzero(mask)[0], "int32")


def take_rows(x, idx):
    """The rows ``idx`` (non-negative int32) of ``x`` along the batch axis."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # keras.ops.take also maps negative indices (Shape, Less, Add, Select: four more nodes for
        # each gather in an exported graph, and a Shape that pins the layout of its input)
        return tf.gather(x, idx, axis=0)
    return ops.take(x, idx, axis=0)


def gathered_branch(branch, values, run):
    """``(open, idx, z * f(x))`` of ``branch``: the boolean gate decisions of the batch, the int32
    indices of the open examples and the gated products of that sub-batch only. ``run(node,
    values)`` runs one inner node."""
    z = ops.reshape(values[id(branch.z)], (-1,))  # one gate value per example
    mask = z > 0
    idx = open_indices(mask)
    local = {id(t): take_rows(values[id(t)], idx) for t in branch.external}
    for node in branch.inner:
        run(node, local)
    part = local[id(branch.branch)]
    z_part = ops.reshape(take_rows(z, idx), (-1,) + (1,) * (len(part.shape) - 1))
    return mask, idx, part * ops.cast(z_part, part.dtype)


def sub_batch_rows(mask):
    """int32 ``(batch,)``: for each example its row in the gathered sub-batch where ``mask`` is
    true, else the row after the last (``n`` open examples: row ``n``)."""
    m = ops.cast(mask, "int32")
    return ops.where(mask, ops.cumsum(m) - 1, ops.sum(m))


def run_branch(branch, values, run, stitch="gather"):
    """The product ``z * f(x)`` of ``branch`` for the whole batch: computed on the examples with
    ``z > 0``, zero elsewhere. ``stitch``: ``"scatter"`` (``ScatterNd`` into zeros) or
    ``"gather"`` (a zero row appended to the products and every example gathering its row,
    :func:`sub_batch_rows`: TensorFlow's CPU scatter kernels copy row by row on one thread,
    its gather runs on all of them). ``run(node, values)`` runs one inner node."""
    mask, idx, product = gathered_branch(branch, values, run)
    if stitch == "gather":
        zero = ops.zeros((1,) + tuple(product.shape[1:]), product.dtype)
        return take_rows(ops.concatenate([product, zero]), sub_batch_rows(mask))
    shape = (ops.shape(mask)[0],) + tuple(ops.shape(product)[1:])
    return ops.scatter(ops.expand_dims(idx, 1), product, shape)


#: Ways back from a sub-batch (:func:`run_branch`); "gather" is the default of Keras and of the
#: exporter (``ExportOptions.sparse_stitch``).
STITCHES = ("gather", "scatter")


def sparse_call(model, branches, nodes=None, stitch="gather"):
    """A callable ``x -> outputs`` running the functional ``model`` node by node, each of
    ``branches`` (:class:`SparseBranch`) by gather-run-scatter. Inference only (``training``
    is whatever each node was called with). ``stitch``: how the sub-batch's products return
    to the batch (:func:`run_branch`)."""
    if stitch not in STITCHES:
        raise ValueError(f"Expected stitch to be one of {list(STITCHES)}. Received: stitch={stitch!r}")
    nodes = functional_nodes(model) if nodes is None else nodes
    plans = {id(b.node): b for b in branches}
    skipped = {id(n) for b in branches for n in b.inner}

    def run(node, values):
        plan = plans.get(id(node))
        if plan is None:
            run_node(node, values)
            return
        product = run_branch(plan, values, run, stitch)
        if plan.shortcut is not None:
            product = values[id(plan.shortcut)] + ops.cast(product, values[id(plan.shortcut)].dtype)
        values[id(node.outputs[0])] = product

    def call(x):
        inputs = keras.tree.flatten(x)
        values = {id(t): v for t, v in zip(model.inputs, inputs)}
        for node in nodes:
            if id(node) not in skipped:
                run(node, values)
        outputs = [values[id(t)] for t in model.outputs]
        return outputs[0] if len(outputs) == 1 else outputs

    return call


def sparse_exit_call(part_a, part_b, threshold, stitch="gather"):
    """A callable ``x -> probabilities`` of an early exit split into ``part_a`` (input -> exit
    probabilities and the crossing tensors) and ``part_b`` (crossing tensors -> main output, or
    ``None`` when the main output itself crosses): part B runs on the examples whose maximum
    exit probability is not above ``threshold``, gather-run-scatter inside it too."""
    rest = None if part_b is None else sparse_call(part_b, residual_branches(part_b), stitch=stitch)

    def call(x):
        outs = keras.tree.flatten(part_a(x, training=False))
        exit_probs, crossing = outs[0], outs[1:]
        stay = ops.max(exit_probs, axis=-1) <= threshold
        idx = open_indices(stay)
        gathered = [take_rows(c, idx) for c in crossing]
        main = gathered[0] if rest is None else rest(gathered if len(gathered) > 1 else gathered[0])
        main = ops.cast(main, exit_probs.dtype)
        scattered = ops.scatter(ops.expand_dims(idx, 1), main, ops.shape(exit_probs))
        return ops.where(ops.expand_dims(stay, 1), scattered, exit_probs)

    return call


# -- the model ----------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfgated")
class SparseModel(keras.Model):
    """A gated functional model run by gather-run-scatter (see the module docstring).

    Shares ``model``'s weights and gates (their inference style decides; in ``threshold`` style
    the outputs equal ``model``'s up to float rounding). For an early-exit model see
    :class:`tfgated.exits.SparseExitModel`.

    Args:
        model: a functional Keras model.
        stitch: how each sub-batch's products return to the batch (:data:`STITCHES`):
            ``"gather"`` (the default; a zero row appended, then one gather) or ``"scatter"``.
    """

    def __init__(self, model, stitch="gather", **kwargs):
        kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_sparse")
        super().__init__(**kwargs)
        check_functional_model(model)
        self.model = model
        self.stitch = stitch
        self.branches = residual_branches(model)
        self._call = sparse_call(model, self.branches, stitch=stitch)

    def call(self, inputs, training=False):
        check_inference(training)
        return self._call(inputs)

    def get_config(self):
        return {"name": self.name, "stitch": self.stitch, "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)


def check_functional_model(model):
    """A ValueError unless ``model`` is a functional Keras model."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(f"Expected a functional Keras model. Received: {type(model).__name__}")


def check_inference(training):
    """A ValueError when a sparse model is called for training."""
    if training:
        raise ValueError("A sparse model runs inference only: train the wrapped model. Received: training=True")


_CACHE = weakref.WeakKeyDictionary()
#: The early-exit runner (:class:`tfgated.exits.SparseExitModel`), registered by ``tfgated.exits``
#: when it is imported: it imports this module, so this module cannot import it.
_EXIT_RUNNERS = []


def register_exit_runner(factory):
    """Make ``factory(model_with_exit, threshold)`` the runner of :func:`sparse_model`'s early exits."""
    _EXIT_RUNNERS[:] = [factory]


def sparse_model(model, exit_threshold=None):
    """The :class:`SparseModel` of ``model`` (cached per model, so its traced predict function is
    reused); with ``exit_threshold``, the :class:`tfgated.exits.SparseExitModel` of an early-exit
    model ``[main, exit]`` at that threshold."""
    key = (exit_threshold,)
    runners = _CACHE.setdefault(model, {})
    if key not in runners:
        if exit_threshold is None:
            runners[key] = SparseModel(model)
        else:
            if not _EXIT_RUNNERS:
                import tfgated

                tfgated.register_custom_objects()  # imports tfgated.exits, which registers its runner
            runners[key] = _EXIT_RUNNERS[0](model, exit_threshold)
    return runners[key]
