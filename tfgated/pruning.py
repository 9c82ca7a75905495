"""Magnitude pruning for Keras 3 models (SIPA, Lee et al. 2019, "Pruning").

``tensorflow-model-optimization`` only prunes legacy ``tf_keras`` models and ranks
weights layer by layer. This module prunes plain Keras 3 models, keeps the names
tfmot users know (``ConstantSparsity``, ``PolynomialDecay``, ``prune_low_magnitude``,
``UpdatePruningStep``, ``strip_pruning``) and adds SIPA's global ranking.

Design: the model stays a plain Keras model. Pruning state (one non-trainable
0/1 mask per prunable kernel, keyed ``"<layer path>/<kernel attribute>"``) lives in
a :class:`PruningState` that is *associated* with the model (a weak registry, no
attribute or weight is added to the model), so ``model.save`` / ``load_model`` see
an ordinary model whose pruned weights are exact zeros. The
:class:`UpdatePruningStep` callback re-applies ``kernel.assign(kernel * mask)``
after every training batch (and updates masks when a schedule says so), so the
zeros survive fine-tuning.

Prunable kernels: ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and ``Dense`` kernels and
both kernels of ``SeparableConv1D/2D``. Biases, normalization layers and gate
layers are never pruned. A layer counts as a gate layer when its class name ends
in ``Gate`` or any component of its path is named like a gate (``gate``,
``stage2_block3_gate``, ``gate_fc``; not ``gated_block``), and every layer whose
attribute ``tfgated_prunable`` is ``False`` is skipped with its sublayers.

Rankings (``ranking=``):

* ``"global_normalized"`` (SIPA): every kernel's magnitudes are divided by that
  kernel's L2 norm, then all kernels are ranked together and the smallest scores
  are pruned. Raw magnitudes differ by orders of magnitude between layers (first
  convolutions, depthwise kernels and classifiers live on other scales), so a
  raw global threshold can remove a whole layer and cut the network; normalizing
  puts the layers on one scale while still letting large (redundant) layers give
  up more weights than small ones (a kernel of ``n`` weights has normalized scores
  of order ``1/sqrt(n)``). In addition the largest weight of every output channel
  is always kept (``min_weights_per_channel=1``), so no channel, and therefore no
  layer, is ever pruned to zero.
* ``"global"``: raw magnitudes ranked across all kernels (no per-channel guarantee
  unless ``min_weights_per_channel`` is given; shows the failure mode above).
* ``"layerwise"``: every kernel pruned to the same sparsity (tfmot's behaviour),
  with the per-channel guarantee.

Masks are monotone while the target sparsity grows: weights pruned once are ranked
below every surviving weight, so later rounds only add zeros.

Iterative pruning (:func:`iterative_pruning`) follows SIPA: prune to a round's
sparsity, fine-tune with masks applied, evaluate; one row per round, checkpointed
so a killed run resumes at the first unfinished round.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
import warnings
import weakref

import keras
import numpy as np

from tfgated.io import save_model, write_atomic

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruningState",
    "UpdatePruningStep",
    "RANKINGS",
    "compute_masks",
    "prunable_weights",
    "prune_low_magnitude",
    "prune_once",
    "strip_pruning",
    "get_pruning_state",
    "sparsity_report",
    "sipa_schedule",
    "iterative_pruning",
]

RANKINGS = ("global_normalized", "global", "layerwise")


# --------------------------------------------------------------------------- #
# Schedules (tfmot semantics)
# --------------------------------------------------------------------------- #


def _check_sparsity(name, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(value) < 1.0
    ):
        raise ValueError(
            f"Expected {name} to be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def _check_steps(begin_step, end_step, frequency, allow_end_minus_one):
    if not isinstance(begin_step, (int, np.integer)) or begin_step < 0:
        raise ValueError(
            f"Expected begin_step to be an integer >= 0. Received: begin_step={begin_step!r}"
        )
    if not isinstance(end_step, (int, np.integer)):
        raise ValueError(f"Expected end_step to be an integer. Received: end_step={end_step!r}")
    if end_step == -1 and not allow_end_minus_one:
        raise ValueError(
            "Expected end_step to be an integer >= begin_step; -1 (prune forever) is "
            f"only allowed for ConstantSparsity. Received: end_step={end_step!r}"
        )
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "Expected end_step to be -1 or >= begin_step. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )
    if not isinstance(frequency, (int, np.integer)) or frequency < 1:
        raise ValueError(
            f"Expected frequency to be an integer >= 1. Received: frequency={frequency!r}"
        )


class PruningSchedule:
    """Base class: ``schedule(step) -> (should_prune, sparsity)`` (as in tfmot)."""

    def _should_prune(self, step):
        """True when ``step`` is inside [begin_step, end_step] and on a frequency tick."""
        step = int(step)
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return bool(in_range and (step - self.begin_step) % self.frequency == 0)

    def __call__(self, step):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfgated")
class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` every ``frequency`` steps in [begin_step, end_step].

    ``end_step=-1`` prunes until training ends.
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_end_minus_one=True)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def __call__(self, step):
        """Returns ``(should_prune, target_sparsity)`` for training step ``step``."""
        return self._should_prune(step), self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfgated")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` (Zhu & Gupta 2017).

    ``sparsity(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``; masks are
    updated every ``frequency`` steps in [begin_step, end_step].
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_end_minus_one=False)
        if not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"Expected power to be a number > 0. Received: power={power!r}")
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = power
        self.frequency = int(frequency)

    def sparsity(self, step):
        """The schedule's sparsity at ``step`` (whether or not it is a pruning step)."""
        span = max(self.end_step - self.begin_step, 1)
        p = min(1.0, max(0.0, (int(step) - self.begin_step) / span))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - p
        ) ** self.power

    def __call__(self, step):
        """Returns ``(should_prune, sparsity)`` for training step ``step``."""
        return self._should_prune(step), self.sparsity(step)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def sipa_schedule(final=0.7, coarse_step=0.1, coarse_until=0.5, mid_step=0.025,
                  mid_until=0.6, fine_step=0.02):
    """SIPA's iterative pruning targets: coarse steps, then finer steps near the end.

    SIPA prunes 10% a round up to 50%, then 2.5% a round, then 2% a round. The
    paper gives the step sizes; the switch from 2.5% to 2% steps at 60% is our
    reading (``mid_until``). Defaults give
    ``[0.1, 0.2, 0.3, 0.4, 0.5, 0.525, 0.55, 0.575, 0.6, 0.62, ..., 0.7]``.
    The last value is always ``final``.
    """
    final = _check_sparsity("final", final)
    for name, value in (("coarse_step", coarse_step), ("mid_step", mid_step),
                        ("fine_step", fine_step)):
        if not value > 0:
            raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
    targets = []
    s = 0.0
    eps = 1e-9
    while True:
        if s + eps < coarse_until:
            step = coarse_step
        elif s + eps < mid_until:
            step = mid_step
        else:
            step = fine_step
        s = round(s + step, 6)
        if s >= final - eps:
            break
        targets.append(s)
    targets.append(round(final, 6))
    return targets


# --------------------------------------------------------------------------- #
# Finding prunable kernels
# --------------------------------------------------------------------------- #

_GATE_NAME = re.compile(r"(^|_)gates?($|_)")

# (layer class, kernel attributes, whether the kernel's last two axes are channels)
_PRUNABLE = (
    (keras.layers.SeparableConv1D, (("depthwise_kernel", True), ("pointwise_kernel", False))),
    (keras.layers.SeparableConv2D, (("depthwise_kernel", True), ("pointwise_kernel", False))),
    (keras.layers.DepthwiseConv1D, (("kernel", True),)),
    (keras.layers.DepthwiseConv2D, (("kernel", True),)),
    (keras.layers.Conv1D, (("kernel", False),)),
    (keras.layers.Conv2D, (("kernel", False),)),
    (keras.layers.Conv3D, (("kernel", False),)),
    (keras.layers.Dense, (("kernel", False),)),
)


def _children(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "_layers", []))


def _is_gate(layer):
    return type(layer).__name__.endswith("Gate") or bool(_GATE_NAME.search(layer.name))


def _excluded(path, layer, exclude):
    if exclude is None:
        return False
    if callable(exclude):
        return bool(exclude(path, layer))
    import fnmatch

    return any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


class _Kernel:
    """One prunable kernel: its key, variable and the shape of its channel view."""

    def __init__(self, key, layer, attr, variable, depthwise):
        self.key = key
        self.layer = layer
        self.attr = attr
        self.variable = variable
        shape = tuple(int(d) for d in variable.shape)
        channels = shape[-1] * shape[-2] if depthwise and len(shape) >= 2 else shape[-1]
        self.size = int(np.prod(shape))
        self.view = (self.size // channels, channels)  # rows x output channels
        self.mask = None  # keras.Variable, created by PruningState


def _find_kernels(model, exclude=None):
    if not model.built or not model.weights:
        raise ValueError(
            f"Expected a built model with weights to prune. Received: model '{model.name}' "
            "has no weights yet; call it on data or build it first."
        )
    if exclude is not None and not callable(exclude):
        if isinstance(exclude, str):
            exclude = (exclude,)
        exclude = tuple(exclude)
    found, seen = [], set()

    def visit(layer, prefix):
        for child in _children(layer):
            path = f"{prefix}{child.name}"
            if (
                id(child) in seen
                or _is_gate(child)
                or getattr(child, "tfgated_prunable", True) is False
                or _excluded(path, child, exclude)
            ):
                continue
            seen.add(id(child))
            for cls, attrs in _PRUNABLE:
                if isinstance(child, cls):
                    for attr, depthwise in attrs:
                        var = getattr(child, attr, None)
                        if isinstance(var, keras.Variable) and var.trainable:
                            found.append(_Kernel(f"{path}/{attr}", child, attr, var, depthwise))
                    break
            visit(child, path + "/")

    visit(model, "")
    keys = [k.key for k in found]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"Expected unique layer names to key pruning masks. Received duplicates: {dup}")
    return found


def prunable_weights(model, exclude=None):
    """Dict ``{"<layer path>/<attr>": kernel variable}`` of the kernels that are pruned.

    ``exclude``: glob patterns matched against layer paths (``"head*"``), or a
    callable ``(path, layer) -> bool``; matching layers and their sublayers are
    skipped.
    """
    return {k.key: k.variable for k in _find_kernels(model, exclude)}


# --------------------------------------------------------------------------- #
# Masks
# --------------------------------------------------------------------------- #


def _check_ranking(ranking):
    if ranking not in RANKINGS:
        raise ValueError(
            f"Expected ranking to be one of {RANKINGS}. Received: ranking={ranking!r}"
        )


def _to_numpy(variable):
    tensor = keras.ops.convert_to_tensor(variable)
    if hasattr(tensor, "numpy"):  # TF eager tensor: avoids NumPy 2's __array__ copy warning
        return np.asarray(tensor.numpy())
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _smallest(scores, k):
    """Boolean array marking exactly ``k`` entries with the smallest scores."""
    out = np.zeros(scores.shape, dtype=bool)
    if k <= 0:
        return out
    if k >= scores.size:
        out[:] = True
        return out
    idx = np.argpartition(scores, k - 1)[:k]
    out[idx] = True
    return out


def compute_masks(weights, sparsity, ranking="global_normalized", previous=None,
                  views=None, min_weights_per_channel=None):
    """Pure NumPy mask computation (used by :class:`PruningState`).

    Args:
      weights: dict key -> kernel array.
      sparsity: fraction of all entries (``global*``) or of each kernel
        (``layerwise``) to set to zero.
      ranking: one of :data:`RANKINGS`.
      previous: optional dict key -> 0/1 mask; entries already pruned rank lowest
        so masks only grow while the sparsity grows.
      views: dict key -> ``(rows, channels)``: how to read a kernel as output
        channels (default: last axis).
      min_weights_per_channel: weights always kept per output channel; default 1
        for ``global_normalized`` and ``layerwise``, 0 for ``global``.

    Returns:
      dict key -> float32 0/1 mask of the kernel's shape.
    """
    _check_ranking(ranking)
    sparsity = _check_sparsity("sparsity", sparsity)
    if min_weights_per_channel is None:
        min_weights_per_channel = 0 if ranking == "global" else 1
    keys = list(weights)
    scores, forced = {}, {}
    for key in keys:
        w = np.asarray(weights[key], dtype=np.float64)
        rows, channels = (views or {}).get(key, (w.size // max(w.shape[-1], 1), w.shape[-1]))
        score = np.abs(w).reshape(-1)
        if ranking == "global_normalized":
            norm = float(np.sqrt(np.sum(score**2)))
            if norm > 0:
                score = score / norm
        if previous is not None and key in previous:
            score = np.where(np.asarray(previous[key]).reshape(-1) > 0, score, -1.0)
        keep = np.zeros(score.shape, dtype=bool)
        m = min(int(min_weights_per_channel), rows)
        if m > 0:
            grid = score.reshape(rows, channels)
            top = np.argpartition(-grid, m - 1, axis=0)[:m]  # (m, channels)
            chosen = np.zeros(grid.shape, dtype=bool)
            np.put_along_axis(chosen, top, True, axis=0)
            keep = (chosen & (grid >= 0)).reshape(-1)
        scores[key], forced[key] = score, keep

    pruned = {}
    if ranking == "layerwise":
        for key in keys:
            s, keep = scores[key], forced[key]
            k = int(round(sparsity * s.size))
            k = min(k, s.size - int(keep.sum()))
            pruned[key] = _smallest(np.where(keep, np.inf, s), k)
    else:
        all_scores = np.concatenate([np.where(forced[k], np.inf, scores[k]) for k in keys])
        n_forced = int(sum(int(forced[k].sum()) for k in keys))
        k = int(round(sparsity * all_scores.size))
        if k > all_scores.size - n_forced:
            warnings.warn(
                f"Sparsity {sparsity} keeps fewer weights than one per output channel; "
                f"pruning {all_scores.size - n_forced} of {all_scores.size} instead.",
                stacklevel=3,
            )
            k = all_scores.size - n_forced
        flat = _smallest(all_scores, k)
        offset = 0
        for key in keys:
            n = scores[key].size
            pruned[key] = flat[offset : offset + n]
            offset += n
    return {
        key: (~pruned[key]).astype(np.float32).reshape(np.shape(weights[key])) for key in keys
    }


_STATES = weakref.WeakKeyDictionary()


class PruningState:
    """Pruning masks and schedule for one model (the model itself is untouched).

    Attributes:
      ranking: one of :data:`RANKINGS`.
      schedule: a :class:`PruningSchedule` or ``None`` (masks stay fixed).
      step: training batches seen by :class:`UpdatePruningStep`.
      sparsity: target sparsity of the last mask update.
      kernels: list of prunable kernels (``.key``, ``.variable``, ``.mask``).
    """

    def __init__(self, model, ranking="global_normalized", schedule=None, exclude=None,
                 min_weights_per_channel=None):
        _check_ranking(ranking)
        if schedule is not None and not callable(schedule):
            raise ValueError(
                "Expected schedule to be a PruningSchedule (ConstantSparsity, PolynomialDecay) "
                f"or None. Received: schedule={schedule!r}"
            )
        self.model_ref = weakref.ref(model)
        self.ranking = ranking
        self.schedule = schedule
        self.exclude = exclude
        self.min_weights_per_channel = min_weights_per_channel
        self.step = 0
        self.sparsity = 0.0
        self.kernels = _find_kernels(model, exclude)
        if not self.kernels:
            raise ValueError(
                f"Expected at least one prunable kernel (Conv/Depthwise/Separable/Dense) in "
                f"model '{model.name}'. Received: none outside gate/excluded layers."
            )
        for k in self.kernels:
            k.mask = keras.Variable(
                np.ones(k.variable.shape, dtype=np.float32),
                trainable=False,
                dtype=k.variable.dtype,
                name=f"{k.attr}_pruning_mask",
            )

    @property
    def keys(self):
        return [k.key for k in self.kernels]

    def get_masks(self):
        """Dict key -> 0/1 NumPy mask."""
        return {k.key: _to_numpy(k.mask) for k in self.kernels}

    def set_masks(self, masks):
        """Loads masks (dict key -> array); keys and shapes must match, then applies them."""
        missing = sorted(set(self.keys) - set(masks))
        extra = sorted(set(masks) - set(self.keys))
        if missing or extra:
            raise ValueError(
                f"Expected masks for exactly the prunable kernels. Missing: {missing}; "
                f"unexpected: {extra}"
            )
        for k in self.kernels:
            m = np.asarray(masks[k.key])
            if tuple(m.shape) != tuple(k.variable.shape):
                raise ValueError(
                    f"Expected mask for '{k.key}' of shape {tuple(k.variable.shape)}. "
                    f"Received shape {tuple(m.shape)}"
                )
            k.mask.assign(m.astype(np.float32))
        self.apply_masks()

    def update_masks(self, sparsity):
        """Recomputes masks at ``sparsity`` from the current weights and applies them."""
        weights = {k.key: _to_numpy(k.variable) for k in self.kernels}
        masks = compute_masks(
            weights,
            sparsity,
            self.ranking,
            previous=self.get_masks(),
            views={k.key: k.view for k in self.kernels},
            min_weights_per_channel=self.min_weights_per_channel,
        )
        for k in self.kernels:
            k.mask.assign(masks[k.key])
        self.sparsity = float(sparsity)
        self.apply_masks()

    def apply_masks(self):
        """Sets every pruned weight to zero: ``kernel.assign(kernel * mask)``."""
        for k in self.kernels:
            k.variable.assign(keras.ops.multiply(k.variable, k.mask))

    def save_masks(self, path):
        """Writes masks and state (ranking, sparsity, step) to an ``.npz`` file atomically."""
        arrays = {f"mask_{i}": m for i, m in enumerate(self.get_masks().values())}
        meta = {"keys": self.keys, "ranking": self.ranking, "sparsity": self.sparsity,
                "step": self.step}
        buf = io.BytesIO()
        np.savez_compressed(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        write_atomic(path, buf.getvalue())

    def load_masks(self, path):
        """Reads a file written by :meth:`save_masks` and applies its masks."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"No pruning mask file at {path!r}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["__meta__"]))
                masks = {key: data[f"mask_{i}"] for i, key in enumerate(meta["keys"])}
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"Expected a pruning mask file written by save_masks at {path!r}: {e}") from e
        self.set_masks(masks)
        self.sparsity = float(meta.get("sparsity", 0.0))
        self.step = int(meta.get("step", 0))


def get_pruning_state(model):
    """The :class:`PruningState` attached to ``model``, or ``None``."""
    return _STATES.get(model)


def _attach(model, ranking, schedule, exclude, min_weights_per_channel):
    state = _STATES.get(model)
    if state is None:
        state = PruningState(model, ranking, schedule, exclude, min_weights_per_channel)
        _STATES[model] = state
    else:
        _check_ranking(ranking)
        state.ranking = ranking
        state.schedule = schedule
        state.min_weights_per_channel = min_weights_per_channel
    return state


class UpdatePruningStep(keras.callbacks.Callback):
    """Keeps pruning masks applied during ``fit`` and follows the pruning schedule.

    Before each training batch, if the state's schedule says ``should_prune`` for
    the current step, masks are recomputed at the scheduled sparsity. After each
    batch, ``kernel.assign(kernel * mask)`` zeroes pruned weights again (the
    optimizer moved them), so evaluation and saved checkpoints see exact zeros.
    With ``steps_per_execution > 1`` this happens once per execution.

    Args:
      state: a :class:`PruningState`; default: the one attached to the model being
        fitted (by :func:`prune_low_magnitude` or :func:`prune_once`).
    """

    def __init__(self, state=None):
        super().__init__()
        self.state = state

    def _state(self):
        if self.state is None:
            self.state = get_pruning_state(self.model)
            if self.state is None:
                raise ValueError(
                    f"Expected model '{self.model.name}' to be prepared with "
                    "prune_low_magnitude() or prune_once() before fitting with UpdatePruningStep."
                )
        return self.state

    def on_train_begin(self, logs=None):
        self._state().apply_masks()

    def on_train_batch_begin(self, batch, logs=None):
        state = self._state()
        if state.schedule is not None:
            should_prune, sparsity = state.schedule(state.step)
            if should_prune:
                state.update_masks(sparsity)

    def on_train_batch_end(self, batch, logs=None):
        state = self._state()
        state.apply_masks()
        state.step += 1


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #


def prune_low_magnitude(model, pruning_schedule=None, ranking="global_normalized",
                        exclude=None, min_weights_per_channel=None):
    """Attaches magnitude pruning to ``model``; returns ``(model, callback)``.

    The returned model is the same object, still a plain Keras model. Pass the
    callback (an :class:`UpdatePruningStep`) to ``model.fit``; it prunes according
    to ``pruning_schedule`` (default ``ConstantSparsity(0.5, begin_step=0)``) and
    keeps masks applied. Call :func:`strip_pruning` when done.
    """
    schedule = pruning_schedule if pruning_schedule is not None else ConstantSparsity(0.5)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model to prune. Received: {type(model).__name__} "
            "(wrap a single layer in a keras.Sequential first)."
        )
    state = _attach(model, ranking, schedule, exclude, min_weights_per_channel)
    return model, UpdatePruningStep(state)


def prune_once(model, sparsity, ranking="global_normalized", exclude=None,
               min_weights_per_channel=None):
    """One-shot pruning to ``sparsity`` (fraction of prunable weights set to zero).

    Masks are attached to the model (fixed, no schedule), so a later
    ``model.fit(..., callbacks=[UpdatePruningStep()])`` keeps the zeros. Returns
    ``model``.
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    state = _attach(model, ranking, None, exclude, min_weights_per_channel)
    state.update_masks(sparsity)
    return model


def strip_pruning(model):
    """Bakes the masks into the weights and detaches all pruning state.

    Afterwards ``model`` is an ordinary Keras model whose pruned weights are exact
    zeros; it saves and loads with ``keras.saving.load_model(safe_mode=True)``.
    Returns ``model`` (a model without pruning state is returned unchanged).
    """
    state = _STATES.pop(model, None)
    if state is not None:
        state.apply_masks()
    return model


def sparsity_report(model, exclude=None):
    """Zeros per prunable kernel and in total (zeros / prunable entries).

    Works on any model (pruned, stripped or loaded): it counts actual zeros.

    Returns:
      ``{"layers": {key: {"zeros", "total", "sparsity"}}, "total": {...}}``.
    """
    layers, zeros, total = {}, 0, 0
    for key, var in prunable_weights(model, exclude).items():
        w = _to_numpy(var)
        z, n = int(np.count_nonzero(w == 0)), int(w.size)
        layers[key] = {"zeros": z, "total": n, "sparsity": z / n if n else 0.0}
        zeros, total = zeros + z, total + n
    return {
        "layers": layers,
        "total": {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0},
    }


def _nonzero_params(model):
    return int(sum(np.count_nonzero(_to_numpy(w)) for w in model.weights))


# --------------------------------------------------------------------------- #
# Iterative pruning (SIPA)
# --------------------------------------------------------------------------- #


def _write_table(directory, rows):
    write_atomic(
        os.path.join(directory, "pruning_table.json"),
        json.dumps(rows, indent=2).encode("utf-8"),
    )
    buf = io.StringIO()
    # every key of every row, in first-seen order (rows resumed from an older run may lack newer keys)
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["round"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(directory, "pruning_table.csv"), buf.getvalue().encode())


def _accuracy_from(result):
    if result is None or isinstance(result, (int, float, np.floating)):
        return None if result is None else float(result)
    if isinstance(result, dict):
        for key in ("accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "acc"):
            if key in result:
                return float(result[key])
        for key, value in result.items():
            if "acc" in key:
                return float(value)
        return None
    raise ValueError(
        f"Expected eval_fn to return a float or a dict of metrics. Received: {result!r}"
    )


def _bar(done, total, width=20):
    filled = int(round(width * done / max(total, 1)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _epochs_per_round(fine_tune_epochs, rounds):
    """``fine_tune_epochs`` (an int, or one int per round) as a list of ``rounds`` counts."""
    if isinstance(fine_tune_epochs, (list, tuple)):
        epochs = list(fine_tune_epochs)
        if len(epochs) != rounds:
            raise ValueError(
                f"Expected one fine_tune_epochs entry per round of the schedule ({rounds}). "
                f"Received: fine_tune_epochs={fine_tune_epochs!r}"
            )
    else:
        epochs = [fine_tune_epochs] * rounds
    for e in epochs:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0:
            raise ValueError(
                f"Expected fine_tune_epochs >= 0 (integers). Received: fine_tune_epochs={fine_tune_epochs!r}"
            )
    return [int(e) for e in epochs]


def iterative_pruning(
    model,
    train_data=None,
    val_data=None,
    *,
    schedule=None,
    fine_tune_epochs=1,
    ranking="global_normalized",
    reinitialize=False,
    initial_weights=None,
    checkpoint_dir=None,
    train_fn=None,
    eval_fn=None,
    fit_kwargs=None,
    exclude=None,
    min_weights_per_channel=None,
    include_baseline=True,
    verbose=1,
):
    """SIPA iterative magnitude pruning: prune, fine-tune, evaluate, per round.

    Each round ``r`` prunes the current weights to ``schedule[r-1]`` (ranked by
    ``ranking``; pruned weights stay pruned), fine-tunes with masks kept applied,
    evaluates, and records a row. With ``include_baseline`` a round 0 row
    evaluates the unpruned model first.

    Args:
      model: a built (normally trained and compiled) Keras model; pruned in place.
      train_data, val_data: datasets for ``model.fit`` / ``model.evaluate``
        (ignored where ``train_fn`` / ``eval_fn`` are given).
      schedule: increasing target sparsities; default :func:`sipa_schedule`.
      fine_tune_epochs: epochs of ``model.fit`` per round (0: no fine-tuning), or a
        list with one count per round of ``schedule``.
      ranking: one of :data:`RANKINGS`.
      reinitialize: lottery-ticket rewinding: after pruning, all weights go back
        to ``initial_weights`` (pruned ones stay zero) and the round trains from
        there instead of fine-tuning the current weights.
      initial_weights: ``model.get_weights()`` at initialization, or a path to a
        ``.weights.h5`` file; required with ``reinitialize`` (kept in
        ``checkpoint_dir`` for resuming).
      checkpoint_dir: where ``round_XXX.keras``, ``round_XXX_masks.npz`` and
        ``pruning_table.{json,csv}`` go; rerunning with the same directory skips
        finished rounds (the last finished round's weights and masks are loaded).
      train_fn: ``train_fn(model, callbacks) -> None`` replacing ``model.fit``; it
        must pass ``callbacks`` (which keep masks applied) to its training.
      eval_fn: ``eval_fn(model) -> float | dict``; default ``model.evaluate``.
      fit_kwargs: extra keyword arguments for ``model.fit`` (``callbacks`` are
        appended to the pruning callback).
      exclude, min_weights_per_channel: see :func:`prune_once`.
      verbose: 0 silent, 1 a progress line per round (and Keras' bars for fit).

    Returns:
      list of dicts, one per round: ``round``, ``target_sparsity``, ``sparsity``
      (measured zeros over prunable weights), ``val_accuracy``,
      ``prunable_nonzero``, ``params_nonzero`` (all model weights), ``seconds``.
    """
    targets = list(sipa_schedule() if schedule is None else schedule)
    for i, s in enumerate(targets):
        _check_sparsity(f"schedule[{i}]", s)
    epochs_of = _epochs_per_round(fine_tune_epochs, len(targets))
    if train_fn is None and any(epochs_of) and train_data is None:
        raise ValueError("Expected train_data or train_fn to fine-tune between pruning rounds.")
    _check_ranking(ranking)
    fit_kwargs = dict(fit_kwargs or {})
    user_callbacks = list(fit_kwargs.pop("callbacks", []) or [])
    fit_kwargs.setdefault("verbose", 1 if verbose else 0)

    rounds = ([0] if include_baseline else []) + list(range(1, len(targets) + 1))
    target_of = {r: (0.0 if r == 0 else float(targets[r - 1])) for r in rounds}

    def log(msg):
        if verbose:
            print(msg, file=sys.stdout, flush=True)

    # ---- checkpoint bookkeeping / resume
    rows = []
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        table_path = os.path.join(checkpoint_dir, "pruning_table.json")
        if os.path.exists(table_path):
            with open(table_path, encoding="utf-8") as f:
                old = json.load(f)
            for row in old:
                r = int(row["round"])
                if r not in target_of:
                    continue  # a longer earlier run; its later rounds are not asked for
                if not math.isclose(
                    float(row["target_sparsity"]), target_of[r], abs_tol=1e-9
                ) or row.get("ranking", ranking) != ranking:
                    raise ValueError(
                        f"Expected checkpoint_dir {checkpoint_dir!r} to hold the same run. "
                        f"Received: its round {r} pruned to {row['target_sparsity']} with "
                        f"ranking {row.get('ranking')!r}, this call asks for "
                        f"{target_of[r]} with {ranking!r}; use a new checkpoint_dir."
                    )
                rows.append(row)

    def paths(r):
        return (os.path.join(checkpoint_dir, f"round_{r:03d}.keras"),
                os.path.join(checkpoint_dir, f"round_{r:03d}_masks.npz"))

    done = []
    for row in rows:
        r = int(row["round"])
        if r == 0 or all(os.path.exists(p) for p in paths(r)):
            done.append(r)
    rows = [row for row in rows if int(row["round"]) in done]
    # finished rounds must be a prefix of the requested rounds
    prefix = []
    for r in rounds:
        if r in done:
            prefix.append(r)
        else:
            break
    rows = [row for row in rows if int(row["round"]) in prefix]

    state = _attach(model, ranking, None, exclude, min_weights_per_channel)
    last_pruned = max([r for r in prefix if r > 0], default=None)
    if last_pruned is not None:
        model_path, mask_path = paths(last_pruned)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)  # so its saved state loads too
        model.load_weights(model_path)
        state.load_masks(mask_path)
        log(f"Resuming pruning from {checkpoint_dir}: rounds {prefix[0]}..{prefix[-1]} done.")

    # ---- initial weights for rewinding
    if reinitialize:
        init_path = os.path.join(checkpoint_dir, "initial_weights.npz") if checkpoint_dir else None
        if initial_weights is None and init_path and os.path.exists(init_path):
            with np.load(init_path, allow_pickle=False) as data:
                initial_weights = [data[f"w_{i}"] for i in range(len(data.files))]
        if initial_weights is None:
            raise ValueError(
                "Expected initial_weights (model.get_weights() at initialization, or a "
                ".weights.h5 path) with reinitialize=True. Received: initial_weights=None"
            )
        if isinstance(initial_weights, (str, os.PathLike)):
            if not os.path.exists(initial_weights):
                raise FileNotFoundError(f"No initial weights file at {initial_weights!r}")
            current = model.get_weights()
            model.load_weights(initial_weights)
            loaded = model.get_weights()
            model.set_weights(current)
            initial_weights = loaded
        initial_weights = [np.asarray(w) for w in initial_weights]
        if init_path and not os.path.exists(init_path):
            buf = io.BytesIO()
            np.savez(buf, **{f"w_{i}": w for i, w in enumerate(initial_weights)})
            write_atomic(init_path, buf.getvalue())

    callback = UpdatePruningStep(state)
    total = len(rounds)
    for i, r in enumerate(rounds):
        if r in prefix:
            continue
        start = time.time()
        target = target_of[r]
        log(f"Pruning round {r} {_bar(i, total)} {i}/{total}: target sparsity {target:.1%}"
            f" ({ranking})")
        if r > 0:
            state.update_masks(target)
            if reinitialize:
                model.set_weights(initial_weights)
                state.apply_masks()
            if epochs_of[r - 1] > 0 or train_fn is not None:
                if train_fn is not None:
                    train_fn(model, [callback] + user_callbacks)
                else:
                    model.fit(train_data, epochs=epochs_of[r - 1],
                              callbacks=[callback] + user_callbacks, **fit_kwargs)
                state.apply_masks()
        if eval_fn is not None:
            acc = _accuracy_from(eval_fn(model))
        elif val_data is not None:
            acc = _accuracy_from(model.evaluate(val_data, return_dict=True,
                                                verbose=fit_kwargs["verbose"]))
        else:
            acc = None
        report = sparsity_report(model, exclude)["total"]
        row = {
            "round": r,
            "target_sparsity": target,
            "sparsity": report["sparsity"],
            "val_accuracy": acc,
            "fine_tune_epochs": 0 if r == 0 or train_fn is not None else epochs_of[r - 1],
            "prunable_nonzero": report["total"] - report["zeros"],
            "params_nonzero": _nonzero_params(model),
            "ranking": ranking,
            "seconds": round(time.time() - start, 3),
        }
        if checkpoint_dir is not None:
            if r > 0:
                model_path, mask_path = paths(r)
                save_model(model, model_path)
                state.save_masks(mask_path)
            rows.append(row)
            _write_table(checkpoint_dir, rows)
        else:
            rows.append(row)
        acc_text = "n/a" if acc is None else f"{acc:.4f}"
        log(f"Pruning round {r} {_bar(i + 1, total)} {i + 1}/{total}: sparsity "
            f"{row['sparsity']:.1%}, val_accuracy {acc_text}, prunable nonzero "
            f"{row['prunable_nonzero']:,} ({row['seconds']:.1f}s)")
    return rows
