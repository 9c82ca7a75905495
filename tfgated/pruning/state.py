"""Pruning state attached to a model, the callback that keeps it applied, and the entry points.

The model stays a plain Keras model: its :class:`PruningState` (one non-trainable
0/1 mask per prunable kernel) lives in a weak registry keyed by the model, so
``model.save`` sees ordinary weights whose pruned entries are exact zeros.

Masks are kept applied inside the compiled training step, not by Python work
after every batch: each pruned kernel gets a variable constraint
(``kernel * mask``, after the kernel's own constraint if it has one), and Keras
optimizers apply variable constraints right after their update. Masks are only
recomputed (in NumPy) on the steps the schedule names.
"""

from __future__ import annotations

import io
import json
import os
import weakref

import keras
import numpy as np

from tfgated.io import write_atomic
from tfgated.pruning.masks import _check_ranking, _find_kernels, _to_numpy, compute_masks, prunable_weights
from tfgated.pruning.schedules import ConstantSparsity, _check_sparsity

_STATES = weakref.WeakKeyDictionary()


class _MaskConstraint:
    """Variable constraint ``w -> inner(w) * mask``, applied by the optimizer after each update."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return keras.ops.multiply(w, self.mask)


def _forget_compiled_steps(model):
    """Drops the traced train step, so the next ``fit`` sees changed variable constraints."""
    if getattr(model, "train_function", None) is not None:
        model.train_function = None


class PruningState:
    """Pruning masks and schedule for one model (the model itself is untouched).

    Attributes:
      ranking: one of :data:`RANKINGS`.
      schedule: a :class:`PruningSchedule` or ``None`` (masks stay fixed).
      step: training batches seen by :class:`UpdatePruningStep`.
      sparsity: target sparsity of the last mask update.
      pruned: whether masks were computed or loaded (all ones before).
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
        self.pruned = False
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
            k.own_constraint = k.variable.constraint
            k.variable.constraint = _MaskConstraint(k.mask, k.own_constraint)
        _forget_compiled_steps(model)

    def detach(self):
        """Applies the masks a last time and gives every kernel back its own constraint."""
        self.apply_masks()
        for k in self.kernels:
            if isinstance(k.variable.constraint, _MaskConstraint):
                k.variable.constraint = k.own_constraint
        model = self.model_ref()
        if model is not None:
            _forget_compiled_steps(model)

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
        self.pruned = True
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
        self.pruned = True
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
    """Advances the pruning step during ``fit`` and updates masks when the schedule says so.

    The same callback as tfmot's ``UpdatePruningStep()``: add it to ``model.fit``
    after :func:`prune_low_magnitude`. Before each training batch, if the
    schedule's ``should_prune`` holds for the current step, the masks are
    recomputed at the scheduled sparsity (in NumPy, only on those steps, and only
    when the target changed). The only other per-batch work is that schedule
    lookup: the optimizer itself keeps pruned weights at zero (a variable
    constraint, see :mod:`tfgated.pruning.state`), and the callback has no
    batch-end hook, so Keras may dispatch batches asynchronously.
    With ``steps_per_execution > 1`` the schedule is consulted once per execution.

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
            # masks are monotone, so the same target gives the same masks: skip the work
            if should_prune and (not state.pruned or sparsity != state.sparsity):
                state.update_masks(sparsity)
        state.step += 1


class PruningSummaries(keras.callbacks.TensorBoard):
    """TensorBoard callback that also logs pruning sparsity (tfmot's ``PruningSummaries``).

    At the end of every epoch, besides the usual TensorBoard logs, writes the
    measured sparsity of every prunable kernel (``pruning/<key>/sparsity``), the
    total (``pruning/total/sparsity``) and the schedule's target
    (``pruning/target_sparsity``) at the pruning step.

    Args:
      log_dir: folder for the TensorBoard event files.
      update_freq: as for ``keras.callbacks.TensorBoard`` (``"epoch"``, ``"batch"``
        or a number of batches).
      **kwargs: other ``keras.callbacks.TensorBoard`` arguments.
    """

    def __init__(self, log_dir, update_freq="epoch", **kwargs):
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"Expected log_dir to be a folder path. Received: log_dir={log_dir!r}")
        super().__init__(log_dir=log_dir, update_freq=update_freq, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        state = get_pruning_state(self.model)
        if state is None:
            return
        report = sparsity_report(self.model, state.exclude)
        with self._train_writer.as_default():
            for key, row in report["layers"].items():
                self.summary.scalar(f"pruning/{key}/sparsity", row["sparsity"], step=state.step)
            self.summary.scalar("pruning/total/sparsity", report["total"]["sparsity"], step=state.step)
            self.summary.scalar("pruning/target_sparsity", state.sparsity, step=state.step)


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #


def prune_low_magnitude(model, pruning_schedule=None, ranking="layerwise",
                        exclude=None, min_weights_per_channel=None):
    """Prepares ``model`` for magnitude pruning during ``fit``; returns the model.

    Used as tfmot's function is::

        model = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, begin_step=0))
        model.compile(...)
        model.fit(x, y, callbacks=[UpdatePruningStep()])
        model = strip_pruning(model)

    Unlike tfmot, the returned model is the same object (no wrapper layers), so
    it need not be compiled again if it already was. Prunable kernels, gate
    layers and excluded layers are described in :mod:`tfgated.pruning`.

    Args:
      model: a built ``keras.Model``.
      pruning_schedule: a :class:`PruningSchedule`; default
        ``ConstantSparsity(0.5, begin_step=0)`` (as in tfmot).
      ranking: ``"layerwise"`` (default; tfmot's behaviour: every kernel pruned to
        the target sparsity), ``"global_normalized"`` (SIPA: kernels ranked together
        after dividing each by its L2 norm) or ``"global"`` (raw magnitudes).
      exclude: glob patterns over layer paths, or ``callable(path, layer) -> bool``,
        naming layers never pruned.
      min_weights_per_channel: weights always kept per output channel; default 1
        (0 for ``"global"``).

    Returns:
      ``model``, with a :class:`PruningState` attached (see :func:`get_pruning_state`).
    """
    schedule = pruning_schedule if pruning_schedule is not None else ConstantSparsity(0.5)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model to prune. Received: {type(model).__name__} "
            "(wrap a single layer in a keras.Sequential first)."
        )
    _attach(model, ranking, schedule, exclude, min_weights_per_channel)
    return model


def prune_once(model, sparsity, ranking="layerwise", exclude=None,
               min_weights_per_channel=None):
    """One-shot pruning to ``sparsity`` (fraction of prunable weights set to zero).

    Masks are attached to the model (fixed, no schedule) and kept by the
    optimizer, so a later ``model.fit`` keeps the zeros. ``ranking`` and the other
    arguments are as for :func:`prune_low_magnitude`. Returns ``model``.
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    state = _attach(model, ranking, None, exclude, min_weights_per_channel)
    state.update_masks(sparsity)
    return model


def strip_pruning(model):
    """Bakes the masks into the weights and detaches all pruning state (as tfmot's).

    Afterwards ``model`` is an ordinary Keras model whose pruned weights are exact
    zeros and whose kernels have their own constraints back; it saves and loads
    with ``keras.saving.load_model(safe_mode=True)``. Returns ``model`` (a model
    without pruning state is returned unchanged).
    """
    state = _STATES.pop(model, None)
    if state is not None:
        state.detach()
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
