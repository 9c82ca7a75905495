"""Training a built model with its recipe into a run folder, and evaluating it.

:func:`train_model` fits a built Keras model with a :class:`tfgated.recipes.Recipe`
into a *run folder* that :func:`open_run` prepared::

    RUN_DIR/config.json          what the run records (its data settings, ...) and the recipe
    RUN_DIR/backup/              keras BackupAndRestore state (each epoch)
    RUN_DIR/history.csv          CSVLogger (loss, accuracy, top5, gate_activation, ...)
    RUN_DIR/gate_rates.csv       GateRateLogger (per-gate activation rate per epoch)
    RUN_DIR/gates/               TensorBoard scalars of the gate rates
    RUN_DIR/main.keras           the model after the main phase
    RUN_DIR/model.keras          the final model (after the stabilization fine-tune, if any)
    RUN_DIR/metrics.json         final test metrics (threshold inference)
    RUN_DIR/*.png                history, gate rates over training, gate polarization

Killed and run again with the same ``config``, it resumes from the last finished epoch
(``BackupAndRestore``); :func:`open_run` returns the metrics of a finished run, so it is
not trained again. Which model to build (a zoo preset, a ``.keras`` file) is the caller's
business: ``python -m tfgated train`` (:mod:`tfgated.cli.train`) resolves preset names.

:func:`evaluate_model` reports top-1/top-5 accuracy, mean gate activation and measured
MACs (from the gate values actually taken on the data) under an inference style; for
``stochastic``/``ensemble`` the mean and standard deviation over ``runs`` repetitions.
:func:`recalibrate_batch_norm` re-estimates the batch-norm moving statistics with the
gates in an inference style.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from tfgated.io import json_default, load_model, save_model, write_json

__all__ = [
    "MODES",
    "RunData",
    "check_dataset",
    "class_labels",
    "evaluate_model",
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

MODES = ("threshold", "always_on", "stochastic", "ensemble")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MAIN_MODEL_FILE = "main.keras"
MODEL_FILE = "model.keras"


def _write_sorted_json(path, data):
    write_json(path, data, sort_keys=True, default=json_default)


# --------------------------------------------------------------------------- run folders


def check_dataset(name):
    """Raise ``ValueError`` unless ``name`` is a dataset :func:`tfgated.data.load_dataset` knows."""
    from tfgated.data import KNOWN_DATASETS

    if name not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(KNOWN_DATASETS)}.")


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data of a training run: the dataset and how its validation split is carved out.

    Attributes:
        dataset: a name :func:`tfgated.data.load_dataset` knows.
        data_dir: the dataset's folder (required for TFDS datasets).
        limit: use only the first ``limit`` examples (smoke runs), or None for all.
        validation_split: the fraction of the training images held out for validation.
        seed: the seed of the validation carve-out and of the shuffling.
        pixels: what the model takes (:func:`tfgated.data.load_dataset`'s ``pixels``):
            ``"raw"`` for a ``tfgated.zoo`` model, which normalizes inside its graph.
    """

    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    validation_split: float = 0.1
    seed: int = 42
    pixels: str = "normalized"

    def __post_init__(self):
        check_dataset(self.dataset)

    def as_config(self):
        """The settings as the plain dict a run's ``config.json`` records."""
        return dataclasses.asdict(self)

    def _load_kwargs(self):
        return dict(data_dir=self.data_dir, limit=self.limit, validation_split=self.validation_split,
                    pixels=self.pixels)

    def splits(self, recipe):
        """The train/validation/test batches under ``recipe`` (its batch size, labels, augmentation)."""
        return recipe.datasets(self.dataset, seed=self.seed, **self._load_kwargs())

    def test_split(self, batch_size=256):
        """The test batches in a fixed order, as :func:`evaluate_model` wants them."""
        from tfgated.data import load_dataset

        return load_dataset(self.dataset, batch_size=batch_size, seed=self.seed, **self._load_kwargs()).test


def run_config(folder):
    """The ``config.json`` of the run folder ``folder`` as a dict; ``{}`` when it has none."""
    path = os.path.join(os.fspath(folder), CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_split(model_path):
    """The data split a model was trained on, or None when nobody recorded it.

    A model saved by :func:`train_model` sits in a run folder whose ``config.json`` records the
    seed and ``validation_split`` of its validation carve-out. A benchmark that evaluates or
    calibrates on "validation" must use the same split, or its validation images include
    the model's own training images.

    Returns:
        ``{"seed": int, "validation_split": float, "limit": int | None}`` or None.
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    config = run_config(folder)
    if "seed" not in config or "validation_split" not in config:
        return None
    limit = config.get("limit")
    return {"seed": int(config["seed"]), "validation_split": float(config["validation_split"]),
            "limit": None if limit is None else int(limit)}


def held_out_split(model_path, split_seed=None, default_seed=0, default_fraction=0.1):
    """``(seed, validation_split)`` for evaluating or calibrating ``model_path`` on "validation".

    The explicit ``split_seed`` wins (with the recorded fraction, if any); else the split its
    training run recorded (:func:`training_split`), so the validation images really are held
    out; else ``default_seed``. Prints which one it uses when it comes from the run.
    """
    recorded = training_split(model_path) if model_path else None
    if split_seed is not None:
        return int(split_seed), float(recorded["validation_split"] if recorded else default_fraction)
    if recorded is not None:
        print(f"Validation split of the model's training run: seed {recorded['seed']}, "
              f"fraction {recorded['validation_split']}", flush=True)
        return recorded["seed"], recorded["validation_split"]
    return int(default_seed), float(default_fraction)



def open_run(run_dir, config, overwrite=False):
    """Make ``run_dir`` ready for the run that ``config`` describes; the metrics if it already finished.

    Args:
        run_dir: the run folder (created when missing).
        config: the run's settings as plain data (JSON-serializable with
            :func:`tfgated.io.json_default`); a folder holding another run is refused.
        overwrite: delete a folder that holds a run (any run) and start over.

    Returns:
        The finished run's ``metrics.json`` as a dict, or None when it still has to be trained.

    Raises:
        ValueError: ``run_dir`` holds a run with another ``config``.
    """
    run_dir = os.fspath(run_dir)
    if overwrite and os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        return None
    previous = run_config(run_dir)
    previous.pop("recipe", None)
    if previous != json.loads(json.dumps(config, default=json_default)):
        raise ValueError(
            f"Run folder {run_dir!r} holds a different run ({previous}). Use another --run-dir or --overwrite."
        )
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    print(f"Run {run_dir!r} already finished: {json.dumps(metrics.get('test', metrics))}")
    return metrics


def main_phase_done(run_dir):
    """Whether the run in ``run_dir`` finished its main phase (``main.keras`` exists): a warm
    start then has nothing left to initialize."""
    return os.path.exists(os.path.join(os.fspath(run_dir), MAIN_MODEL_FILE))


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


def train_model(model, recipe, run_dir, data, config=None, *, splits=None, anneal=None, verbose="auto", callbacks=()):
    """Train the built ``model`` with ``recipe`` into ``run_dir``; returns the final metrics.

    Call :func:`open_run` first (it refuses a folder of another run and returns a finished
    run's metrics), and seed Keras (``keras.utils.set_random_seed``) before building the
    model. A run whose main phase is done (``main.keras``) continues from that file.

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
    """
    from tfgated.inference import gate_layers

    run_dir = os.fspath(run_dir)
    splits = data.splits(recipe) if splits is None else splits
    config = data.as_config() if config is None else config
    _write_sorted_json(os.path.join(run_dir, CONFIG_FILE), {**config, "recipe": recipe.to_dict()})
    gated = bool(gate_layers(model))
    probe = splits.validation if splits.validation is not None else splits.test
    start = time.time()
    phase = _Phase(run_dir, probe if gated else None, verbose)
    model = _fit_main_phase(model, recipe, splits, phase, anneal=anneal, callbacks=callbacks)
    stabilization = recipe.stabilization()
    if stabilization is not None:
        _fit(model, stabilization, data.splits(stabilization), phase, "_stabilize")
    save_model(model, os.path.join(run_dir, MODEL_FILE))
    train_seconds = time.time() - start
    # The final evaluation: the test split, threshold inference (deterministic).
    result = evaluate_model(model, data.test_split(), mode="threshold" if gated else None, runs=1)
    metrics = {"test": result, "train_seconds": train_seconds, "recipe": recipe.to_dict(), "dataset": data.dataset}
    _write_plots(model, run_dir, probe, gated)
    _write_sorted_json(os.path.join(run_dir, METRICS_FILE), metrics)
    print(json.dumps({"test": result}, indent=2, default=json_default))
    return metrics


@dataclasses.dataclass(frozen=True)
class _Phase:
    """What every training phase of a run shares: its folder, the gate-rate probe (None
    for a model without gates) and Keras' verbosity."""

    run_dir: str
    probe: object
    verbose: object

    def callbacks(self, tag):
        """Resumable state, the history CSV and, with gates, the gate-rate log of phase ``tag``."""
        import keras

        from tfgated.callbacks import GateRateLogger

        cbs = [
            keras.callbacks.BackupAndRestore(os.path.join(self.run_dir, f"backup{tag}")),
            keras.callbacks.CSVLogger(os.path.join(self.run_dir, f"history{tag}.csv"), append=True),
        ]
        if self.probe is not None:
            cbs.insert(0, GateRateLogger(self.probe, self.run_dir, max_examples=512))
        return cbs


def _fit(model, recipe, splits, phase, tag, first=(), extra=()):
    from tfgated.recipes import fit_recipe

    callbacks = list(first) + phase.callbacks(tag) + list(extra)
    fit_recipe(model, recipe, splits, callbacks=callbacks, verbose=phase.verbose)


def _fit_main_phase(model, recipe, splits, phase, anneal=None, callbacks=()):
    """The main phase, or the model it left in ``main.keras`` when it is done."""
    from tfgated.callbacks import TargetAnnealing

    main_path = os.path.join(phase.run_dir, MAIN_MODEL_FILE)
    if os.path.exists(main_path):
        print(f"Main phase already done: loading {main_path}")
        return load_model(main_path)
    first = []
    if anneal:
        a_start, a_end, a_epochs = anneal
        first.append(TargetAnnealing(float(a_start), float(a_end), epochs=int(a_epochs)))
    _fit(model, recipe, splits, phase, "", first=first, extra=callbacks)
    save_model(model, main_path)
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


@contextlib.contextmanager
def _gates_in_inference_mode(model):
    """Within the block, gates (and dropout-like layers) run their inference branch.

    Their ``call`` is wrapped on the instance to force ``training=False``,
    so a ``model(x, training=True)`` call trains only batch norm's
    statistics. Eager calls only (the wrapper is removed on exit).
    """
    import keras

    from tfgated.inference import gate_layers

    layers = list(gate_layers(model))
    layers += [
        layer for layer in model._flatten_layers()  # noqa: SLF001
        if isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout))
    ]
    patched = []
    try:
        for layer in layers:
            original = layer.call

            def call(*args, _original=original, **kwargs):
                kwargs["training"] = False
                return _original(*args, **kwargs)

            layer.call = call
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.call


def recalibrate_batch_norm(model, dataset, style=None, batches=20, samples=None):
    """Re-estimate every batch-norm moving mean/variance under an inference style.

    The moving statistics are reset, then ``batches`` batches of ``dataset``
    run forward with batch norm in training mode (it normalizes with, and
    accumulates, batch statistics) while the gates follow ``style``
    (``threshold``: deterministic; ``stochastic``/``ensemble``: sampled). The
    momentum is set to ``1 - 1/k`` at batch ``k``, so the result is the exact
    average of the batches' statistics. Batch norm inside gate networks is
    left alone (the gate decisions stay those of the trained model). Nothing
    else is trained.

    Returns:
        The number of batches used.
    """
    import keras

    from tfgated.inference import gate_layers, set_inference_style

    if style is not None:
        set_inference_style(model, style, samples=samples)
    inside_gates = set()
    for gate in gate_layers(model):
        for layer in gate._flatten_layers():  # noqa: SLF001
            inside_gates.add(id(layer))
    bns = [
        layer for layer in model._flatten_layers()  # noqa: SLF001
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in inside_gates
    ]
    if not bns:
        raise ValueError(f"Model {model.name!r} has no batch-norm layers to recalibrate.")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    used = 0
    try:
        with _gates_in_inference_mode(model):
            for element in dataset.take(batches):
                x = element[0] if isinstance(element, (tuple, list)) else element
                used += 1
                for bn in bns:
                    bn.momentum = 1.0 - 1.0 / used
                model(x, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    if used == 0:
        raise ValueError("The recalibration dataset is empty.")
    return used


def class_labels(dataset):
    """The labels of a finite ``(images, labels)`` dataset as class ids (int64), whether the
    pipeline gave class ids or one-hot vectors (a recipe with label smoothing one-hots them)."""
    labels = np.concatenate([np.asarray(y) for _, y in dataset])
    return labels.argmax(axis=-1) if labels.ndim > 1 else labels.astype("int64")


def _top_k(probs, labels, k):
    k = min(k, probs.shape[-1])
    top = np.argsort(-probs, axis=-1)[:, :k]
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


def evaluate_model(model, dataset, mode="threshold", runs=5, samples=5, threshold=None):
    """Accuracy, gate activation and measured MACs of ``model`` on ``dataset`` under ``mode``.

    Args:
        model: a Keras model (gated or not; ``mode`` is ignored without gates).
        dataset: batches of ``(images, labels)`` in a fixed order.
        mode: an inference style; ``stochastic``/``ensemble`` are repeated ``runs`` times.
        samples: passes averaged by ``ensemble``.

    Returns:
        A dict with ``top1``, ``top5``, ``gate_activation`` (fraction of gate
        elements open, over examples and gates; for exit gates the share of
        examples passing them), ``exit_{k}_share`` and ``final_share`` for a
        model with exit gates, ``macs`` (expected MACs per
        example measured from the gates taken; ``ensemble`` counts all passes),
        ``dense_macs``, and for repeated modes ``*_std`` and ``per_run``.
    """
    import keras

    from tfgated.complexity import expected_macs
    from tfgated.inference import gate_layers, set_inference_style

    gates = gate_layers(model)
    if mode is not None and mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}. Expected one of {list(MODES)}.")
    if gates and mode is not None:
        set_inference_style(model, mode, threshold=threshold, samples=samples)
    stochastic = bool(gates) and mode in ("stochastic", "ensemble")
    repeats = runs if stochastic else 1
    passes = samples if (gates and mode == "ensemble") else 1
    probe = keras.Model(model.inputs, [model.outputs[0]] + [g.output for g in gates]) if gates else model
    labels = class_labels(dataset)

    per_run = []
    for _ in range(repeats):
        prob_sum, values = 0.0, {g.name: [] for g in gates}
        for _ in range(passes):
            outputs = probe.predict(dataset, verbose=0)
            if not gates:
                outputs = [outputs]
            prob_sum = prob_sum + np.asarray(outputs[0], dtype="float64")
            for gate, v in zip(gates, outputs[1:]):
                values[gate.name].append(np.asarray(v, dtype="float64"))
        probs = prob_sum / passes
        row = {"top1": _top_k(probs, labels, 1), "top5": _top_k(probs, labels, 5)}
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

    result = {"mode": mode if gates else None, "examples": int(len(labels)), "runs": repeats}
    if passes > 1:
        result["samples"] = passes
    for key in per_run[0]:
        vals = np.array([r[key] for r in per_run], dtype="float64")
        result[key] = float(vals.mean()) if key != "dense_macs" else int(vals[0])
        if repeats > 1 and key != "dense_macs":
            result[f"{key}_std"] = float(vals.std())
    if repeats > 1:
        result["per_run"] = per_run
    return result
