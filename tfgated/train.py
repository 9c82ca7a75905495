"""Training a built model with its recipe into a run folder, and evaluating it.

:func:`train_model` fits a built Keras model with a :class:`tfgated.recipes.Recipe`
into a *run folder* that :func:`open_run` prepared::

    RUN_DIR/.lock                the run's lock (:mod:`tfgated.runlock`): PID of the process writing it
    RUN_DIR/config.json          what the run records (its data settings, ...) and the recipe
    RUN_DIR/backup/              crash-safe BackupAndRestore state (:class:`tfgated.checkpoints.CrashSafeBackup`)
    RUN_DIR/history.csv          HistoryLogger (epoch from 0, loss, accuracy, top5, gate_activation, ...)
    RUN_DIR/gate_rates.csv       GateRateLogger (per-gate activation rate per epoch, epoch from 0)
    RUN_DIR/gates/               TensorBoard scalars of the gate rates
    RUN_DIR/main.keras           the model after the main phase
    RUN_DIR/model.keras          the final model (after the stabilization fine-tune, if any)
    RUN_DIR/metrics.json         final test metrics (threshold inference)
    RUN_DIR/*.png                history, gate rates over training, gate polarization

Killed (even with ``SIGKILL``, at any instant) and run again with the same ``config``, it
resumes from the last finished epoch with each epoch once in its logs; :func:`open_run`
returns the metrics of a finished run, so it is not trained again (``docs/reliability.md``).
The run folders themselves (:func:`open_run`, :class:`RunData`, ...) live in
:mod:`tfgated.runs` and are re-exported here. Which model to build (a zoo preset, a
``.keras`` file) is the caller's business: ``python -m tfgated train``
(:mod:`tfgated.cli.train`) resolves preset names.

:func:`evaluate_model` reports top-1/top-5 accuracy, mean gate activation and measured
MACs (from the gate values actually taken on the data) under an inference style; for
``stochastic``/``ensemble`` the mean and standard deviation over ``runs`` repetitions.
:func:`recalibrate_batch_norm` (from :mod:`tfgated.batch_norm`) re-estimates the batch-norm
moving statistics with the gates in an inference style.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from tfgated.batch_norm import recalibrate_batch_norm  # noqa: F401 - public here too (tfgated.train.recalibrate_batch_norm)
from tfgated.io import json_default, load_model, save_model, write_json
from tfgated.runs import (  # noqa: F401  (re-exported: the run folders are part of this module's API)
    CONFIG_FILE,
    MAIN_MODEL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RunData,
    check_dataset,
    finished_run,
    held_out_split,
    main_phase_done,
    open_run,
    run_config,
    training_split,
)

__all__ = [
    "RunData",
    "annealing_callbacks",
    "check_dataset",
    "class_labels",
    "evaluate_model",
    "finished_run",
    "held_out_split",
    "main_phase_done",
    "open_run",
    "recalibrate_batch_norm",
    "run_config",
    "train_model",
    "training_split",
    "transfer_weights",
    "warm_start",
]



def _write_sorted_json(path, data):
    write_json(path, data, sort_keys=True, default=json_default)


def transfer_weights(source, target, exclude=()):
    """Copy the weights of ``source``'s layers into ``target``'s layers of the same name and shapes.

    Keras 3 dropped ``load_weights(by_name=True)``; this is its replacement for warm starts,
    e.g. a gated network from its dense counterpart's trained weights: the gate layers, which
    the dense network lacks, keep their initialization. Layers named in ``exclude`` keep theirs
    too. Variables a layer lists in ``SETTING_VARIABLES`` (a gate's inference style and
    threshold, the activation loss's target rate) are settings of the model being trained,
    not weights, and are never copied; a layer that holds nothing else is skipped.

    Returns:
        ``(copied, skipped)``: names of the target layers that received weights, and
        ``{name: reason}`` for the layers with weights that did not.

    Raises:
        ValueError: when no layer could be copied (the two networks share nothing).
    """
    by_name = {layer.name: layer for layer in source.layers}
    copied, skipped = [], {}
    for layer in target.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if layer.name in exclude:
            skipped[layer.name] = "excluded"
            continue
        settings = set(getattr(layer, "SETTING_VARIABLES", ()))
        if all(w.name in settings for w in layer.weights):
            skipped[layer.name] = f"settings only ({', '.join(sorted(settings))}): they stay the model's own"
            continue
        if other is None:
            skipped[layer.name] = "not in the source model"
            continue
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            skipped[layer.name] = f"shapes differ: {mine} here, {theirs} in the source"
            continue
        for variable, value in zip(layer.weights, other.weights):
            if variable.name not in settings:
                variable.assign(value)
        copied.append(layer.name)
    if not copied:
        raise ValueError(
            f"No layer of {source.name!r} matches a layer of {target.name!r} by name and weight shapes; "
            "nothing to warm-start from."
        )
    return copied, skipped




def warm_start(model, source, label):
    """Initialize ``model`` from ``source`` (:func:`transfer_weights`) and print one line naming ``label``.

    Returns:
        ``(copied, skipped)`` as :func:`transfer_weights`.
    """
    copied, skipped = transfer_weights(source, model)
    more = ", ..." if len(skipped) > 6 else ""
    print(f"Warm start from {label}: {len(copied)} layers copied, {len(skipped)} kept their "
          f"initialization ({', '.join(sorted(skipped)[:6])}{more})", flush=True)
    return copied, skipped


# --------------------------------------------------------------------------- training


def train_model(model, recipe, run_dir, data, config=None, *, splits=None, anneal=None, verbose="auto",
                callbacks=(), chief=None):
    """Train the built ``model`` with ``recipe`` into ``run_dir``; returns the final metrics.

    Call :func:`open_run` first (it refuses a folder of another run and returns a finished
    run's metrics) while holding the folder's lock (:func:`tfgated.runlock.run_folder_lock`),
    and seed Keras (``keras.utils.set_random_seed``) before building the model. A run whose
    main phase is done (``main.keras``) continues from that file; one whose ``model.keras``
    is written only evaluates it. Every file is complete or absent after a kill at any
    instant (``docs/reliability.md``): the run resumes from its last finished epoch.

    Args:
        model: a built (and, for the recipe's model switches, prepared:
            :meth:`Recipe.prepare_model`) Keras model.
        recipe: the :class:`~tfgated.recipes.Recipe` of the main phase (and of the
            stabilization fine-tune, if it has one).
        run_dir: the run folder.
        data: the :class:`RunData` to train and test on.
        config: what the run records in ``config.json`` (the ``config`` given to
            :func:`open_run`); ``data.as_config()`` when None. The recipe is added.
        splits: ``data.splits(recipe)`` when the caller already loaded them.
        anneal: optional ``(start, end, epochs)`` of :class:`~tfgated.callbacks.TargetAnnealing`.
        verbose: Keras verbosity of ``fit``.
        callbacks: extra Keras callbacks (main phase).
        chief: whether this process writes ``run_dir``; None: True, except for a model built
            under a ``MultiWorkerMirroredStrategy``: then :func:`tfgated.runlock.is_chief`. A non-chief worker of a
            multi-worker cluster restores from ``run_dir`` but writes into a temporary folder
            that is removed at the end: it runs the same computations as the chief (the
            collective ops need every worker) and leaves the run folder to the chief.
    """
    import tempfile

    from tfgated.runlock import is_chief

    if chief is None:
        strategy = getattr(model, "distribute_strategy", None)
        chief = is_chief() if type(strategy).__name__.startswith("MultiWorker") else True
    if chief:
        return _train_model(model, recipe, _RunFolders(os.fspath(run_dir)), data, config, splits=splits,
                            anneal=anneal, verbose=verbose, callbacks=callbacks)
    with tempfile.TemporaryDirectory(prefix="tfgated-worker-") as scratch:
        folders = _RunFolders(os.fspath(run_dir), write_dir=scratch)
        return _train_model(model, recipe, folders, data, config, splits=splits, anneal=anneal,
                            verbose=verbose, callbacks=callbacks)


@dataclasses.dataclass(frozen=True)
class _RunFolders:
    """Where a run reads its state (``run_dir``) and writes (``write_dir``: the same, except on
    a non-chief worker of a cluster)."""

    run_dir: str
    write_dir: Optional[str] = None

    def read(self, name):
        return os.path.join(self.run_dir, name)

    def write(self, name):
        return os.path.join(self.write_dir or self.run_dir, name)

    @property
    def chief(self):
        return self.write_dir is None


def _train_model(model, recipe, folders, data, config, *, splits, anneal, verbose, callbacks):
    from tfgated.inference import gate_layers

    splits = data.splits(recipe) if splits is None else splits
    config = data.as_config() if config is None else config
    first = annealing_callbacks(anneal)
    _write_sorted_json(folders.write(CONFIG_FILE), {**config, "recipe": recipe.to_dict()})
    gated = bool(gate_layers(model))
    probe = splits.validation if splits.validation is not None else splits.test
    start = time.time()
    phase = _Phase(folders, probe if gated else None, verbose)
    if os.path.exists(folders.read(MODEL_FILE)):
        print(f"Training already done: evaluating {folders.read(MODEL_FILE)}")
        model = load_model(folders.read(MODEL_FILE))
    else:
        model = _fit_main_phase(model, recipe, splits, phase, first=first, callbacks=callbacks)
        stabilization = recipe.stabilization()
        if stabilization is not None:
            _fit(model, stabilization, data.splits(stabilization), phase, "_stabilize")
        model = recipe.finish_model(model)  # Keras' batch norm; precision_bits=16: weights at float16
        save_model(model, folders.write(MODEL_FILE))
        phase.remove_backup("_stabilize")
    train_seconds = time.time() - start
    # The final evaluation: the test split, threshold inference (deterministic).
    result = evaluate_model(model, data.test_split(), style="threshold" if gated else None, runs=1)
    metrics = {"test": result, "train_seconds": train_seconds, "recipe": recipe.to_dict(), "dataset": data.dataset}
    _write_plots(model, folders.write_dir or folders.run_dir, probe, gated)
    _write_sorted_json(folders.write(METRICS_FILE), metrics)
    print(json.dumps({"test": result}, indent=2, default=json_default))
    return metrics


def annealing_callbacks(anneal):
    """The :class:`~tfgated.callbacks.TargetAnnealing` callbacks of ``anneal`` (checked: raises
    ``ValueError`` before anything is written)."""
    from tfgated.callbacks import TargetAnnealing

    if not anneal:
        return []
    a_start, a_end, a_epochs = anneal
    if float(a_epochs) != int(a_epochs):
        raise ValueError(f"Expected the annealing epochs to be a whole number. Received: epochs={a_epochs}")
    return [TargetAnnealing(float(a_start), float(a_end), epochs=int(a_epochs))]


@dataclasses.dataclass(frozen=True)
class _Phase:
    """What every training phase of a run shares: its folders, the gate-rate probe (None
    for a model without gates) and Keras' verbosity."""

    folders: _RunFolders
    probe: object
    verbose: object

    def callbacks(self, tag):
        """The gate-rate log (with gates), the history CSV and the crash-safe backup of phase ``tag``.

        The backup follows them (and precedes the caller's callbacks): an epoch's log rows are on
        disk before its checkpoint commits, so a kill in between redoes the epoch and the loggers
        replace its rows.
        """
        from tfgated.callbacks import GateRateLogger, HistoryLogger

        cbs = [HistoryLogger(self.folders.write(f"history{tag}.csv"))]
        if self.probe is not None:
            cbs.insert(0, GateRateLogger(self.probe, self.folders.write_dir or self.folders.run_dir,
                                         max_examples=512, filename=f"gate_rates{tag}.csv"))
        return cbs

    def backup(self, tag):
        from tfgated.checkpoints import CrashSafeBackup

        return CrashSafeBackup(self.folders.read(f"backup{tag}"), delete_checkpoint=False, write=self.folders.chief)

    def remove_backup(self, tag):
        """Remove phase ``tag``'s backup, once the model it led to is saved (chief only)."""
        path = self.folders.read(f"backup{tag}")
        if self.folders.chief and os.path.isdir(path):
            shutil.rmtree(path)


def _fit(model, recipe, splits, phase, tag, first=(), extra=()):
    from tfgated.recipes import fit_recipe

    callbacks = list(first) + phase.callbacks(tag) + [phase.backup(tag)] + list(extra)
    fit_recipe(model, recipe, splits, callbacks=callbacks, verbose=phase.verbose)


def _fit_main_phase(model, recipe, splits, phase, first=(), callbacks=()):
    """The main phase, or the model it left in ``main.keras`` when it is done."""
    from tfgated.faults import fault_point

    main_path = phase.folders.read(MAIN_MODEL_FILE)
    if os.path.exists(main_path):
        print(f"Main phase already done: loading {main_path}")
        phase.remove_backup("")
        return load_model(main_path)
    _fit(model, recipe, splits, phase, "", first=first, extra=callbacks)
    save_model(model, phase.folders.write(MAIN_MODEL_FILE))
    fault_point("train.main_saved")
    phase.remove_backup("")
    return model


def _write_plots(model, run_dir, probe, gated):
    from tfgated import plots
    from tfgated.callbacks import probe_inputs

    history = os.path.join(run_dir, "history.csv")
    if os.path.exists(history):
        plots.plot_history(history, os.path.join(run_dir, "history.png"))
    if gated:
        rates = os.path.join(run_dir, "gate_rates.csv")
        if os.path.exists(rates):
            plots.plot_gate_rates(rates, os.path.join(run_dir, "gate_rates.png"))
        values = plots.gate_probability_values(model, probe_inputs(probe, 256))
        plots.plot_polarization(values, os.path.join(run_dir, "polarization.png"))


# --------------------------------------------------------------------------- evaluation


def class_labels(dataset):
    """The labels of a finite ``(images, labels)`` dataset as class ids (int64), whether the
    pipeline gave class ids or one-hot vectors (a recipe with label smoothing one-hots them)."""
    labels = np.concatenate([np.asarray(y) for _, y in dataset])
    return labels.argmax(axis=-1) if labels.ndim > 1 else labels.astype("int64")


def _top_k(probs, labels, k):
    k = min(k, probs.shape[-1])
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def _open_values(gates, values):
    """Gate values as "computation on": an exit gate's value 1 means "leave here", so exit
    gate k contributes the share of examples that pass exits 1..k (what ExitReach gives
    the activation loss in training); other gates are unchanged."""
    from tfgated.exits import ExitGate, exit_reach

    opened = {g.name: values[g.name] for g in gates}
    exits = [g.name for g in gates if isinstance(g, ExitGate)]
    opened.update(zip(exits, exit_reach([values[name] for name in exits])))
    return opened


def _exit_share_metrics(gates, values):
    """``exit_{k}_share`` and ``final_share`` for a model with exit gates (else ``{}``)."""
    from tfgated.exits import ExitGate, gate_exit_shares

    exits = [values[g.name] for g in gates if isinstance(g, ExitGate)]
    if not exits:
        return {}
    names = [f"exit_{k}_share" for k in range(1, len(exits) + 1)] + ["final_share"]
    return dict(zip(names, (float(share) for share in gate_exit_shares(exits))))


def evaluate_model(model, dataset, style="threshold", runs=5, samples=5, threshold=None, ensemble="vote"):
    """Accuracy, gate activation and measured MACs of ``model`` on ``dataset`` under inference ``style``.

    Args:
        model: a Keras model (gated or not; ``style`` is ignored without gates).
        dataset: batches of ``(images, labels)`` in a fixed order.
        style: an inference style (:data:`tfgated.inference.STYLES`) or None to keep the
            model's own; ``stochastic``/``ensemble`` are repeated ``runs`` times.
        samples: passes of the ``ensemble`` style.
        ensemble: how ``ensemble`` combines its passes (:data:`tfgated.inference.ENSEMBLES`):
            ``"vote"`` (the default: the paper's ensemble accuracy, a majority vote of the
            passes' top-1, and of their top-5 lists for top-5) or ``"mean"`` (the mean softmax).

    Returns:
        A dict with ``top1``, ``top5``, ``gate_activation`` (fraction of gate
        elements open, over examples and gates; for exit gates the share of
        examples passing them), ``exit_{k}_share`` and ``final_share`` for a
        model with exit gates, ``macs`` (expected MACs per
        example measured from the gates taken; ``ensemble`` counts all passes),
        ``dense_macs``, and for repeated styles ``*_std`` and ``per_run``.
        The style evaluated is under the key ``"mode"`` (None without gates), the key
        benchmark result files already use.
    """
    import keras

    from tfgated.complexity import expected_macs
    from tfgated.inference import STYLES, check_ensemble, gate_layers, set_inference_style, vote_shares

    check_ensemble(ensemble)
    gates = gate_layers(model)
    if style is not None and style not in STYLES:
        raise ValueError(f"Unknown inference style {style!r}. Expected one of {list(STYLES)} or None.")
    if gates and style is not None:
        set_inference_style(model, style, threshold=threshold, samples=samples)
    stochastic = bool(gates) and style in ("stochastic", "ensemble")
    repeats = runs if stochastic else 1
    passes = samples if (gates and style == "ensemble") else 1
    probe = keras.Model(model.inputs, [model.outputs[0]] + [g.output for g in gates]) if gates else model
    labels = class_labels(dataset)

    per_run = []
    for _ in range(repeats):
        predictions, values = [], {g.name: [] for g in gates}
        for _ in range(passes):
            outputs = probe.predict(dataset, verbose=0)
            if not gates:
                outputs = [outputs]
            predictions.append(np.asarray(outputs[0], dtype="float64"))
            for gate, v in zip(gates, outputs[1:]):
                values[gate.name].append(np.asarray(v, dtype="float64"))
        if passes > 1 and ensemble == "vote":  # ties go to the lowest class, as scipy.stats.mode
            top1_scores, top5_scores = vote_shares(predictions), vote_shares(predictions, 5)
        else:
            top1_scores = top5_scores = np.mean(predictions, axis=0)
        row = {"top1": _top_k(top1_scores, labels, 1), "top5": _top_k(top5_scores, labels, 5)}
        if gates:
            stacked = {k: np.concatenate(v) for k, v in values.items()}
            opened = _open_values(gates, stacked)
            row["gate_activation"] = float(
                sum(v.sum() for v in opened.values()) / sum(v.size for v in opened.values())
            )
            row.update(_exit_share_metrics(gates, stacked))
        report = expected_macs(model, gate_values=stacked) if gates else expected_macs(model)
        row["macs"] = float(report.expected) * passes
        row["dense_macs"] = int(report.dense)
        per_run.append(row)

    result = {"mode": style if gates else None, "examples": int(len(labels)), "runs": repeats}
    if passes > 1:
        result["samples"] = passes
        result["ensemble"] = ensemble
    for key in per_run[0]:
        vals = np.array([r[key] for r in per_run], dtype="float64")
        result[key] = float(vals.mean()) if key != "dense_macs" else int(vals[0])
        if repeats > 1 and key != "dense_macs":
            result[f"{key}_std"] = float(vals.std())
    if repeats > 1:
        result["per_run"] = per_run
    return result
