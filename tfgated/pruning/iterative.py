"""SIPA iterative magnitude pruning: prune, fine-tune, evaluate, one row per round, resumable.

:func:`iterative_pruning` takes its settings as an :class:`IterativePruningOptions`.
With ``checkpoint_dir`` every finished round leaves ``round_XXX.keras`` (the model,
pruned weights exact zeros), ``round_XXX_masks.npz`` and the table
``pruning_table.{json,csv}``, all written atomically with :mod:`tfgated.io`; a
rerun with the same folder loads the last finished round and goes on from there.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from tfgated.faults import fault_point
from tfgated.io import json_default, save_model, write_atomic, write_json
from tfgated.pruning.masks import _check_ranking, _to_numpy
from tfgated.pruning.schedules import _check_sparsity, sipa_schedule
from tfgated.pruning.state import UpdatePruningStep, _attach, sparsity_report

__all__ = ["IterativePruningOptions", "iterative_pruning"]

TABLE_JSON = "pruning_table.json"
TABLE_CSV = "pruning_table.csv"
INITIAL_WEIGHTS = "initial_weights.npz"


@dataclasses.dataclass
class IterativePruningOptions:
    """How :func:`iterative_pruning` prunes, fine-tunes, evaluates and checkpoints.

    Attributes:
      schedule: increasing target sparsities, one per round; ``None`` (default):
        :func:`sipa_schedule`. Stored as a tuple of floats.
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
        should pass ``callbacks`` to its training (pruned weights stay zero through
        any Keras optimizer's update, a variable constraint; the callback re-applies
        the masks when training begins and counts the steps).
      eval_fn: ``eval_fn(model) -> float | dict``; default ``model.evaluate``.
      fit_kwargs: extra keyword arguments for ``model.fit`` (``callbacks`` are
        appended to the pruning callback).
      exclude, min_weights_per_channel: see :func:`prune_once`.
      include_baseline: evaluate the unpruned model first as round 0.
      verbose: 0 silent, 1 a progress line per round (and Keras' bars for fit).
    """

    schedule: Optional[Sequence[float]] = None
    fine_tune_epochs: Union[int, Sequence[int]] = 1
    ranking: str = "global_normalized"
    reinitialize: bool = False
    initial_weights: Any = None
    checkpoint_dir: Optional[str] = None
    train_fn: Optional[Callable] = None
    eval_fn: Optional[Callable] = None
    fit_kwargs: Optional[dict] = None
    exclude: Any = None
    min_weights_per_channel: Optional[int] = None
    include_baseline: bool = True
    verbose: int = 1

    def __post_init__(self):
        targets = tuple(sipa_schedule() if self.schedule is None else self.schedule)
        self.schedule = tuple(_check_sparsity(f"schedule[{i}]", s) for i, s in enumerate(targets))
        _check_ranking(self.ranking)
        self.epochs_per_round()  # checks fine_tune_epochs
        for name in ("train_fn", "eval_fn"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"Expected {name} to be None or callable. Received: {name}={value!r}")
        if self.fit_kwargs is not None and not isinstance(self.fit_kwargs, dict):
            raise ValueError(f"Expected fit_kwargs to be None or a dict. Received: fit_kwargs={self.fit_kwargs!r}")

    def epochs_per_round(self):
        """``fine_tune_epochs`` as a list with one count per round of ``schedule``."""
        rounds, given = len(self.schedule), self.fine_tune_epochs
        if isinstance(given, (list, tuple)):
            epochs = list(given)
            if len(epochs) != rounds:
                raise ValueError(
                    f"Expected one fine_tune_epochs entry per round of the schedule ({rounds}). "
                    f"Received: fine_tune_epochs={given!r}"
                )
        else:
            epochs = [given] * rounds
        for e in epochs:
            if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0:
                raise ValueError(f"Expected fine_tune_epochs >= 0 (integers). Received: fine_tune_epochs={given!r}")
        return [int(e) for e in epochs]


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


def _write_table(directory, rows):
    """``pruning_table.json`` and ``.csv`` in ``directory`` (atomically)."""
    write_json(os.path.join(directory, TABLE_JSON), rows, default=json_default)
    buf = io.StringIO()
    # every key of every row, in first-seen order (rows resumed from an older run may lack newer keys)
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["round"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(directory, TABLE_CSV), buf.getvalue())


class _RoundCheckpoints:
    """The files of one run folder: per-round model and masks, the table, the initial weights."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def paths(self, r):
        stem = os.path.join(self.directory, f"round_{r:03d}")
        return f"{stem}.keras", f"{stem}_masks.npz"

    def finished_rows(self, rounds, target_of, ranking):
        """Rows of the finished rounds that begin ``rounds`` (checked to be the same run)."""
        path = os.path.join(self.directory, TABLE_JSON)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            recorded = {int(row["round"]): row for row in json.load(f)}
        for r, row in recorded.items():
            if r in target_of:  # a longer earlier run's later rounds are not asked for
                self._check_same_run(row, target_of[r], ranking)
        rows = []
        for r in rounds:  # finished rounds are a prefix of the requested rounds
            row = recorded.get(r)
            if row is None or not (r == 0 or all(os.path.exists(p) for p in self.paths(r))):
                break
            rows.append(row)
        return rows

    def _check_same_run(self, row, target, ranking):
        if not math.isclose(float(row["target_sparsity"]), target, abs_tol=1e-9) or row.get(
            "ranking", ranking
        ) != ranking:
            raise ValueError(
                f"Expected checkpoint_dir {self.directory!r} to hold the same run. "
                f"Received: its round {row['round']} pruned to {row['target_sparsity']} with "
                f"ranking {row.get('ranking')!r}, this call asks for "
                f"{target} with {ranking!r}; use a new checkpoint_dir."
            )

    def load_round(self, r, model, state):
        model_path, mask_path = self.paths(r)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)  # so its saved state loads too
        model.load_weights(model_path)
        state.load_masks(mask_path)

    def save_round(self, r, model, state):
        model_path, mask_path = self.paths(r)
        save_model(model, model_path)
        fault_point("pruning.round_saved")  # a kill here: no masks, so the round is redone
        state.save_masks(mask_path)

    @property
    def initial_weights_path(self):
        return os.path.join(self.directory, INITIAL_WEIGHTS)

    def load_initial_weights(self):
        path = self.initial_weights_path
        if not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            return [data[f"w_{i}"] for i in range(len(data.files))]

    def save_initial_weights(self, weights):
        if os.path.exists(self.initial_weights_path):
            return
        buf = io.BytesIO()
        np.savez(buf, **{f"w_{i}": w for i, w in enumerate(weights)})
        write_atomic(self.initial_weights_path, buf.getvalue())


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


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
    raise ValueError(f"Expected eval_fn to return a float or a dict of metrics. Received: {result!r}")


def _bar(done, total, width=20):
    filled = int(round(width * done / max(total, 1)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _nonzero_params(model):
    return int(sum(np.count_nonzero(_to_numpy(w)) for w in model.weights))


def _weights_from_file(model, path):
    """The weights a ``.weights.h5`` file holds for ``model`` (the model's own weights are kept)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No initial weights file at {path!r}")
    current = model.get_weights()
    model.load_weights(path)
    loaded = model.get_weights()
    model.set_weights(current)
    return loaded


class _PruningRun:
    """One call of :func:`iterative_pruning`: its rounds, pruning state, checkpoints and rows."""

    def __init__(self, model, train_data, val_data, options):
        self.model, self.train_data, self.val_data, self.options = model, train_data, val_data, options
        self.epochs_of = options.epochs_per_round()
        if options.train_fn is None and any(self.epochs_of) and train_data is None:
            raise ValueError("Expected train_data or train_fn to fine-tune between pruning rounds.")
        fit_kwargs = dict(options.fit_kwargs or {})
        self.user_callbacks = list(fit_kwargs.pop("callbacks", []) or [])
        fit_kwargs.setdefault("verbose", 1 if options.verbose else 0)
        self.fit_kwargs = fit_kwargs
        self.rounds = ([0] if options.include_baseline else []) + list(range(1, len(options.schedule) + 1))
        self.target_of = {r: (0.0 if r == 0 else float(options.schedule[r - 1])) for r in self.rounds}
        self.checkpoints = None if options.checkpoint_dir is None else _RoundCheckpoints(options.checkpoint_dir)
        self.state = None
        self.initial_weights = None
        self.rows = []

    def log(self, message):
        if self.options.verbose:
            print(message, file=sys.stdout, flush=True)

    def resume(self):
        """Attaches the pruning state; loads the last finished round of ``checkpoint_dir``."""
        options = self.options
        if self.checkpoints is not None:
            self.rows = self.checkpoints.finished_rows(self.rounds, self.target_of, options.ranking)
        self.state = _attach(self.model, options.ranking, None, options.exclude, options.min_weights_per_channel)
        finished = [int(row["round"]) for row in self.rows]
        last_pruned = max([r for r in finished if r > 0], default=None)
        if last_pruned is not None:
            self.checkpoints.load_round(last_pruned, self.model, self.state)
            self.log(
                f"Resuming pruning from {options.checkpoint_dir}: rounds {finished[0]}..{finished[-1]} done."
            )

    def prepare_rewinding(self):
        """The weights every round rewinds to (``reinitialize``), kept in ``checkpoint_dir``."""
        weights = self.options.initial_weights
        if weights is None and self.checkpoints is not None:
            weights = self.checkpoints.load_initial_weights()
        if weights is None:
            raise ValueError(
                "Expected initial_weights (model.get_weights() at initialization, or a "
                ".weights.h5 path) with reinitialize=True. Received: initial_weights=None"
            )
        if isinstance(weights, (str, os.PathLike)):
            weights = _weights_from_file(self.model, weights)
        self.initial_weights = [np.asarray(w) for w in weights]
        if self.checkpoints is not None:
            self.checkpoints.save_initial_weights(self.initial_weights)

    def prune_and_tune(self, r, callback):
        """Round ``r > 0``: new masks at its target, rewinding if asked, fine-tuning."""
        options = self.options
        self.state.update_masks(self.target_of[r])
        if options.reinitialize:
            self.model.set_weights(self.initial_weights)
            self.state.apply_masks()
        if self.epochs_of[r - 1] == 0 and options.train_fn is None:
            return
        callbacks = [callback] + self.user_callbacks
        if options.train_fn is not None:
            options.train_fn(self.model, callbacks)
        else:
            self.model.fit(self.train_data, epochs=self.epochs_of[r - 1], callbacks=callbacks, **self.fit_kwargs)
        self.state.apply_masks()

    def evaluate(self):
        if self.options.eval_fn is not None:
            return _accuracy_from(self.options.eval_fn(self.model))
        if self.val_data is not None:
            result = self.model.evaluate(self.val_data, return_dict=True, verbose=self.fit_kwargs["verbose"])
            return _accuracy_from(result)
        return None

    def row(self, r, accuracy, start):
        report = sparsity_report(self.model, self.options.exclude)["total"]
        tuned = r > 0 and self.options.train_fn is None
        return {
            "round": r,
            "target_sparsity": self.target_of[r],
            "sparsity": report["sparsity"],
            "val_accuracy": accuracy,
            "fine_tune_epochs": self.epochs_of[r - 1] if tuned else 0,
            "prunable_nonzero": report["total"] - report["zeros"],
            "params_nonzero": _nonzero_params(self.model),
            "ranking": self.options.ranking,
            "seconds": round(time.time() - start, 3),
        }

    def run_round(self, index, r, callback):
        start = time.time()
        total = len(self.rounds)
        self.log(f"Pruning round {r} {_bar(index, total)} {index}/{total}: target sparsity "
                 f"{self.target_of[r]:.1%} ({self.options.ranking})")
        if r > 0:
            self.prune_and_tune(r, callback)
        row = self.row(r, self.evaluate(), start)
        self.rows.append(row)
        if self.checkpoints is not None:
            if r > 0:
                self.checkpoints.save_round(r, self.model, self.state)
            _write_table(self.checkpoints.directory, self.rows)
        acc_text = "n/a" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
        self.log(f"Pruning round {r} {_bar(index + 1, total)} {index + 1}/{total}: sparsity "
                 f"{row['sparsity']:.1%}, val_accuracy {acc_text}, prunable nonzero "
                 f"{row['prunable_nonzero']:,} ({row['seconds']:.1f}s)")

    def run(self):
        self.resume()
        if self.options.reinitialize:
            self.prepare_rewinding()
        callback = UpdatePruningStep(self.state)
        finished = {int(row["round"]) for row in self.rows}
        for index, r in enumerate(self.rounds):
            if r not in finished:
                self.run_round(index, r, callback)
        return self.rows


def iterative_pruning(model, train_data=None, val_data=None, options=None):
    """SIPA iterative magnitude pruning: prune, fine-tune, evaluate, per round.

    Each round ``r`` prunes the current weights to ``options.schedule[r-1]``
    (ranked by ``options.ranking``; pruned weights stay pruned), fine-tunes with
    masks kept applied, evaluates, and records a row. With
    ``options.include_baseline`` a round 0 row evaluates the unpruned model first.

    Args:
      model: a built (normally trained and compiled) Keras model; pruned in place.
      train_data, val_data: datasets for ``model.fit`` / ``model.evaluate``
        (ignored where ``options.train_fn`` / ``options.eval_fn`` are given).
      options: an :class:`IterativePruningOptions` (default: its defaults, SIPA's
        schedule with one fine-tuning epoch per round).

    Returns:
      list of dicts, one per round: ``round``, ``target_sparsity``, ``sparsity``
      (measured zeros over prunable weights), ``val_accuracy``,
      ``fine_tune_epochs``, ``prunable_nonzero``, ``params_nonzero`` (all model
      weights), ``ranking``, ``seconds``.
    """
    if options is None:
        options = IterativePruningOptions()
    if not isinstance(options, IterativePruningOptions):
        raise ValueError(
            f"Expected options to be an IterativePruningOptions. Received: options of type {type(options).__name__}"
        )
    return _PruningRun(model, train_data, val_data, options).run()
