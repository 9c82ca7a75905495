"""Model-level inference styles, gate discovery and gate read-out.

The four styles of the Gumbel paper:

``threshold``   each gate on iff its open probability > threshold (default 0.5)
``always_on``   every gate on: the dense network
``stochastic``  a hard Gumbel sample per gate and call
``ensemble``    ``samples`` stochastic passes combined: by majority vote of their top-1
                classes (the authors' ``test_inference.py``) or by the mean of their
                softmax outputs (see :data:`ENSEMBLES`)

:func:`set_inference_style` switches a built model in place (no rebuild, no
retrace: the style lives in each gate's variables and is saved with the model);
:func:`predict` honours ``ensemble``; the exporter reads the same setting.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfgated.gates import GATE_STYLES, GumbelGate, check_seed, check_style, check_unit_interval
from tfgated.losses import GateActivationLoss

STYLES = GATE_STYLES + ("ensemble",)
#: How :func:`predict` runs data-dependent residual gates: ``"dense"`` (every branch for every
#: example, masked) or ``"sparse"`` (gather-run-scatter, :class:`tfgated.sparse.SparseModel`).
EXECUTIONS = ("dense", "sparse")
DEFAULT_ENSEMBLE_SAMPLES = 5
#: How the ``ensemble`` style combines its passes. ``vote``: each pass votes for its top-1
#: class (top-5: for its five), the most votes win, ties to the lowest class index, as
#: ``scipy.stats.mode`` breaks them in the authors' ``test_inference.py``; the paper's
#: ensemble accuracy, so the default of :func:`tfgated.train.evaluate_model` and
#: ``python -m tfgated evaluate``. ``mean``: the mean of the passes' softmax outputs, a
#: probability vector (votes of 5 passes are multiples of 0.2 and tie often), so the
#: default of :func:`predict`, whose callers use the outputs as probabilities.
ENSEMBLES = ("vote", "mean")


def check_ensemble(ensemble):
    """Raise ``ValueError`` unless ``ensemble`` is one of :data:`ENSEMBLES`."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"Expected ensemble to be one of {list(ENSEMBLES)}. Received: ensemble={ensemble!r}")


def vote_shares(passes, k=1):
    """Share of ``passes`` (arrays ``(examples, classes)``) whose top-``k`` classes hold
    each class: ``(examples, classes)``. With ``k=1`` its argmax is the majority vote."""
    passes = [np.asarray(p) for p in passes]
    shares = np.zeros(passes[0].shape, dtype="float64")
    rows = np.arange(shares.shape[0])[:, None]
    for outputs in passes:
        top = np.argsort(-outputs, axis=-1, kind="stable")[:, : min(k, shares.shape[-1])]
        shares[rows, top] += 1.0
    return shares / len(passes)


def combine_passes(passes, ensemble="mean"):
    """The ``ensemble`` combination of stochastic ``passes``: vote shares (``vote``,
    :func:`vote_shares`) or the mean of their probabilities (``mean``; outputs that are
    not already probabilities are passed through a softmax first)."""
    check_ensemble(ensemble)
    if ensemble == "vote":
        return vote_shares(passes)
    return sum(_as_probabilities(p) for p in passes) / len(passes)


def _walk(layer):
    yield layer
    for sub in getattr(layer, "_layers", None) or []:
        yield from _walk(sub)


def find_layers(model, layer_type):
    """All layers of ``layer_type`` in ``model``, nested models included, in model order."""
    seen, found = set(), []
    for layer in _walk(model):
        if isinstance(layer, layer_type) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def gate_layers(model):
    """Every :class:`~tfgated.gates.GumbelGate` of ``model``."""
    return find_layers(model, GumbelGate)


#: the logit magnitude :func:`harden_gates` sets: a Gumbel sample flips such a gate with probability ~exp(-10)
HARD_LOGIT = 10.0


def harden_gates(model, logit=HARD_LOGIT):
    """Fix every data-independent gate of ``model`` at its threshold decision, in place.

    Each gate's logits become ``+logit`` where its open probability exceeds its threshold and
    ``-logit`` elsewhere: the same network at threshold inference (and so the same folded
    export), but training now samples it almost deterministically (a gate flips with
    probability about ``exp(-logit)``). Fine-tune afterwards with the gates frozen
    (``gradient_scale=0``, activation loss ``weight=0``; ``python -m tfgated train
    --harden-gates``) to train the pruned network as it will run.

    Returns:
        The number of gates hardened. Raises ``ValueError`` for a model without gates, or with
        data-dependent gates (their decision depends on the input: nothing to fix).
    """
    import numpy as np

    if not isinstance(logit, (int, float)) or isinstance(logit, bool) or not logit > 0:
        raise ValueError(f"Expected logit to be a positive number. Received: logit={logit!r}")
    gates = gate_layers(model)
    if not gates:
        raise ValueError(f"Model {model.name!r} has no tfgated gates to harden.")
    dependent = [g.name for g in gates if g.kind != "independent"]
    if dependent:
        raise ValueError(f"Only data-independent gates can be hardened: {dependent[:3]} decide per input. "
                         f"Received: a model with {len(dependent)} data-dependent gates.")
    for gate in gates:
        open_ = np.asarray(gate.probabilities()) > gate.threshold
        gate.logits.assign(np.where(open_, logit, -logit).astype(gate.logits.dtype))
    return len(gates)


def activation_loss_layers(model):
    """Every :class:`~tfgated.losses.GateActivationLoss` of ``model``."""
    return find_layers(model, GateActivationLoss)


def set_inference_style(model, style, threshold=None, samples=None):
    """Set the inference style of every gate of ``model`` in place.

    Args:
        model: a built Keras model containing tfgated gates.
        style: one of ``threshold``, ``always_on``, ``stochastic``, ``ensemble``.
        threshold: optional new threshold for the ``threshold`` style.
        samples: passes averaged by the ``ensemble`` style (default 5).

    Returns:
        ``model``, for chaining.
    """
    check_style(style, STYLES)
    if samples is not None and (not isinstance(samples, int) or samples < 1):
        raise ValueError(f"Expected samples to be a positive integer. Received: samples={samples}")
    gates = gate_layers(model)
    if not gates:
        raise ValueError(f"Model {model.name!r} has no tfgated gates to set an inference style on.")
    gate_style = "stochastic" if style == "ensemble" else style
    for gate in gates:
        gate.set_inference_style(gate_style, threshold=threshold)
    model._tfgated_style = style
    model._tfgated_samples = samples or getattr(model, "_tfgated_samples", DEFAULT_ENSEMBLE_SAMPLES)
    return model


def get_inference_style(model):
    """The model's inference style (``ensemble`` if it was set with :func:`set_inference_style`)."""
    gates = gate_layers(model)
    if not gates:
        return None
    styles = {g.inference_style for g in gates}
    if len(styles) > 1:
        return "mixed"
    style = styles.pop()
    if style == "stochastic" and getattr(model, "_tfgated_style", None) == "ensemble":
        return "ensemble"
    return style


def reset_gate_noise(model, seed=None):
    """Restart the noise of every gate of ``model``: from ``seed`` (gate ``i`` on stream
    ``i``, so the gates stay independent) or, with ``seed=None``, each gate from its own
    ``seed`` argument. The ``stochastic`` and ``ensemble`` outputs that follow are then
    exactly reproducible: the same calls on the same inputs give the same values, in
    this process or another. Returns ``model``.
    """
    check_seed(seed)
    gates = gate_layers(model)
    if not gates:
        raise ValueError(f"Model {model.name!r} has no tfgated gates whose noise to reset.")
    for stream, gate in enumerate(gates):
        if seed is None:
            gate.reset_noise()
        else:
            gate.reset_noise(seed, stream=stream)
    return model


def predict(model, x, style=None, samples=None, batch_size=256, verbose=0, seed=None, ensemble="mean",
            execution="dense", exit_threshold=None):
    """``model.predict`` that honours the ``ensemble`` style.

    With ``execution="sparse"`` each data-dependent residual gate runs its branch only on the
    examples whose gate is open (gather-run-scatter, :mod:`tfgated.sparse`): the same outputs
    up to float rounding, less computation where gates close.

    With ``exit_threshold`` the model is an early-exit model with outputs ``[main, exit]``
    (e.g. ``zoo.load("sipa_fashion_mnist_exit")`` at its recipe's threshold,
    ``zoo.registry.exit_threshold``) and the result is one array: for each example the exit's
    probabilities where their maximum is above the threshold, else the main output's. Dense
    execution computes both outputs for every example; sparse execution runs the rest of the
    network only on the examples that stay (:class:`tfgated.exits.SparseExitModel`).

    For ``ensemble`` the model runs ``samples`` times with stochastic gates and
    the passes are combined by ``ensemble`` (:data:`ENSEMBLES`): ``"mean"`` (the
    default) averages the softmax outputs (outputs that are not already
    probabilities are passed through a softmax first); ``"vote"`` returns each
    class's share of the passes' top-1 votes, whose argmax is the authors'
    majority vote. With an integer ``seed``
    the gate noise restarts from it first (:func:`reset_gate_noise`): two calls
    with one seed give identical ``stochastic``/``ensemble`` outputs, across
    processes too. Without it every call draws fresh noise.
    """
    check_seed(seed)
    check_ensemble(ensemble)
    if execution not in EXECUTIONS:
        raise ValueError(f"Expected execution to be one of {list(EXECUTIONS)}. Received: execution={execution!r}")
    if exit_threshold is not None:
        exit_threshold = _check_exit_model(model, exit_threshold)
    runner = model
    if execution == "sparse":
        from tfgated.sparse import sparse_model

        runner = sparse_model(model, exit_threshold)
    elif exit_threshold is not None:
        runner = _MaskedExit(model, exit_threshold)
    previous = get_inference_style(model)
    if style is not None:
        set_inference_style(model, style, samples=samples)
    if seed is not None and gate_layers(model):
        reset_gate_noise(model, seed)
    try:
        if get_inference_style(model) != "ensemble":
            return runner.predict(x, batch_size=batch_size, verbose=verbose)
        n = samples or getattr(model, "_tfgated_samples", DEFAULT_ENSEMBLE_SAMPLES)
        passes = [runner.predict(x, batch_size=batch_size, verbose=verbose) for _ in range(n)]
        return combine_passes(passes, ensemble)
    finally:
        if style is not None and previous not in (None, "mixed"):
            set_inference_style(model, previous)


def _check_exit_model(model, threshold):
    """``threshold`` as a float in [0, 1]; a ValueError unless ``model`` has two outputs."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 2:
        raise ValueError(
            f"exit_threshold needs an early-exit model with two outputs [main, exit]; {model.name!r} has "
            f"{len(outputs)}. Received: exit_threshold={threshold!r}"
        )
    return check_unit_interval("exit_threshold", threshold)


class _MaskedExit:
    """Dense execution of an early exit: both outputs for every example, then a per-example choice."""

    def __init__(self, model, threshold):
        self.model, self.threshold = model, threshold

    def predict(self, x, batch_size=None, verbose=0):
        main, exit_probs = self.model.predict(x, batch_size=batch_size, verbose=verbose)
        leave = np.max(exit_probs, axis=-1, keepdims=True) > self.threshold
        return np.where(leave, exit_probs, main)


def _as_probabilities(outputs):
    outputs = np.asarray(outputs, dtype="float64")
    sums = outputs.sum(axis=-1)
    if np.all(outputs >= 0) and np.allclose(sums, 1.0, atol=1e-3):
        return outputs
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def gate_model(model):
    """A model mapping ``model``'s inputs to a dict ``{gate name: gate values}``.

    Works for functional models whose gates are called once.
    """
    gates = gate_layers(model)
    if not gates:
        raise ValueError(f"Model {model.name!r} has no tfgated gates.")
    return keras.Model(model.inputs, {g.name: g.output for g in gates}, name=f"{model.name}_gates")


def gate_values(model, x, batch_size=256):
    """Per-example gate values ``{gate name: array (examples, units)}`` in the current style."""
    return {k: np.asarray(v) for k, v in gate_model(model).predict(x, batch_size=batch_size, verbose=0).items()}


def gate_rates(model, x, batch_size=256):
    """Mean activation rate of every gate element over ``x``: ``{gate name: array (units,)}``."""
    return {k: v.mean(axis=0) for k, v in gate_values(model, x, batch_size=batch_size).items()}


def gate_probabilities(model):
    """Open probabilities of the data-independent gates: ``{gate name: array (units,)}``."""
    return {
        g.name: np.asarray(ops.convert_to_numpy(g.probabilities()))
        for g in gate_layers(model)
        if g.kind == "independent"
    }
