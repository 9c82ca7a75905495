"""``python -m tfgated train`` and ``python -m tfgated evaluate``.

``train`` fits a zoo preset (or an untrained ``.keras`` model file) with its
recipe (:class:`tfgated.recipes.Recipe`, overridable from the command line)
into a *run folder*::

    RUN_DIR/config.json          the arguments and the resolved recipe
    RUN_DIR/backup/              keras BackupAndRestore state (each epoch)
    RUN_DIR/history.csv          CSVLogger (loss, accuracy, top5, gate_activation, ...)
    RUN_DIR/gate_rates.csv       GateRateLogger (per-gate activation rate per epoch)
    RUN_DIR/gates/               TensorBoard scalars of the gate rates
    RUN_DIR/main.keras           the model after the main phase
    RUN_DIR/model.keras          the final model (after the stabilization fine-tune, if any)
    RUN_DIR/metrics.json         final test metrics (threshold inference)
    RUN_DIR/*.png                history, gate rates over training, gate polarization

Killed and re-run with the same arguments, it resumes from the last finished
epoch (``BackupAndRestore``); a finished run is not trained again.

``evaluate`` reports top-1/top-5 accuracy, mean gate activation and measured
MACs (from the gate values actually taken on the data) under an inference style;
for ``stochastic``/``ensemble`` the mean and standard deviation over ``--runs``
repetitions. ``--bn-recalibrate`` first re-estimates the batch-norm moving
statistics with the gates in that style (:func:`recalibrate_batch_norm`); ``--save`` keeps
the model so evaluated as a ``.keras`` file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time

import numpy as np

from tfgated.io import save_model, write_json

__all__ = [
    "class_labels",
    "evaluate_model",
    "main_evaluate",
    "main_train",
    "recalibrate_batch_norm",
    "train",
]

MODES = ("threshold", "always_on", "stochastic", "ensemble")


# --------------------------------------------------------------------------- helpers


def _atomic_json(path, data):
    write_json(path, data, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_key_values(items, flag="--set"):
    """``["weight=10", "augment=flip"]`` -> dict (values parsed as JSON when possible)."""
    values = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"Expected {flag} KEY=VALUE. Received: {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        values[key] = value
    return values


def _parse_sets(items):
    """``["label_smoothing=0.3", "augment=flip"]`` -> recipe switches (checked)."""
    from tfgated.recipes import Recipe

    values = parse_key_values(items)
    Recipe.check_switches(values)
    return values


def _is_model_path(text):
    return text.endswith(".keras") or os.path.isdir(text) or os.path.exists(text)


def training_split(model_path):
    """The data split a model was trained on, or None when nobody recorded it.

    A model saved by :func:`train` sits in a run folder whose ``config.json`` records the
    seed and ``validation_split`` of its validation carve-out. A benchmark that evaluates or
    calibrates on "validation" must use the same split, or its validation images include
    the model's own training images.

    Returns:
        ``{"seed": int, "validation_split": float, "limit": int | None}`` or None.
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
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


def _load_model_file(path):
    """A ``.keras`` file, or a run folder holding ``model.keras``."""
    import keras

    import tfgated  # noqa: F401  (registers the custom objects)

    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file {path!r} not found.")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def _run(main):
    """Turn user errors into a message and exit status 2."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- training


def _check_dataset(name):
    from tfgated.data import KNOWN_DATASETS

    if name not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(KNOWN_DATASETS)}.")


def resolve_model_and_recipe(model, dataset=None, overrides=None, input_shape=None, num_classes=None, gates=None):
    """``(keras model, Recipe, preset or None)`` for a preset name or a ``.keras`` path.

    ``gates`` (a preset only) replaces some of the preset's gate settings, e.g.
    ``{"open_probability": 0.75, "weight": 10}``.
    """
    from tfgated.recipes import Recipe

    overrides = dict(overrides or {})
    if _is_model_path(model):
        if gates:
            raise ValueError(f"gates= changes a zoo preset's gate settings; {model!r} is a model file.")
        recipe = Recipe.from_dict(overrides)
        if recipe.activation is not None:
            raise ValueError("activation is an architecture switch: it needs a zoo preset, not a model file.")
        return recipe.prepare_model(_load_model_file(model)), recipe, None
    from tfgated import zoo  # the CLI may import the zoo, lazily

    preset = zoo.get_preset(model)
    recipe, _ignored = Recipe.from_preset(preset["recipe"], **overrides)
    kwargs = {}
    if input_shape is not None and tuple(input_shape) != tuple(preset["input_shape"]):
        kwargs["input_shape"] = tuple(input_shape)
    if num_classes is not None and num_classes != preset["num_classes"]:
        kwargs["num_classes"] = num_classes
    if gates:
        if not preset.get("gates"):
            raise ValueError(f"gates= changes a gated preset's gate settings; {model!r} has no gates.")
        kwargs["gates"] = {**preset["gates"], **gates}
    keras_model = zoo.load(model, compile=False, **kwargs, **recipe.model_overrides())
    return recipe.prepare_model(keras_model), recipe, preset


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


def _warm_start_source(init_from):
    """The model whose weights start a run: a ``.keras`` file, or a zoo preset with its shipped weights."""
    if _is_model_path(init_from):
        return _load_model_file(init_from)
    from tfgated import zoo

    return zoo.load(init_from, weights="default", compile=False)


def train(
    model,
    run_dir,
    dataset=None,
    data_dir=None,
    limit=None,
    validation_split=None,
    overrides=None,
    anneal=None,
    seed=42,
    verbose="auto",
    overwrite=False,
    callbacks=(),
    gates=None,
    init_from=None,
):
    """Train ``model`` (preset name or ``.keras`` path) into ``run_dir``; returns the final metrics.

    Args:
        overrides: recipe switches (``epochs``, ``batch_size``, ``learning_rate``, ...).
        gates: for a gated preset, gate settings that replace the preset's (``target``,
            ``weight``, ``open_probability``, ...); recorded in the run's ``config.json``.
        init_from: warm start: a ``.keras`` file or a zoo preset with shipped weights whose
            layers of the same name and shapes initialize the model (:func:`transfer_weights`),
            e.g. ``"sipa_fashion_mnist"`` for ``"sipa_fashion_mnist_gated"``.
        anneal: optional ``(start, end, epochs)`` of :class:`~tfgated.callbacks.TargetAnnealing`.
        callbacks: extra Keras callbacks (main phase).
    """
    import keras

    from tfgated.callbacks import GateRateLogger, TargetAnnealing
    from tfgated.data import load_dataset
    from tfgated.inference import gate_layers
    from tfgated.recipes import Recipe, fit_recipe

    run_dir = os.fspath(run_dir)
    overrides = dict(overrides or {})
    Recipe.check_switches(overrides)
    if overwrite and os.path.exists(os.path.join(run_dir, "config.json")):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)

    # Resolve the preset's dataset before touching data.
    preset = None
    if not _is_model_path(model):
        from tfgated import zoo

        preset = zoo.get_preset(model)
    dataset = dataset or (preset or {}).get("dataset") or "fashion_mnist"
    _check_dataset(dataset)
    if validation_split is None:
        validation_split = float((preset or {}).get("recipe", {}).get("validation_split", 0.1))
    config = {
        "model": model,
        "dataset": dataset,
        "data_dir": data_dir,
        "limit": limit,
        "validation_split": validation_split,
        "overrides": overrides,
        "anneal": list(anneal) if anneal else None,
        "seed": seed,
    }
    if gates:
        config["gates"] = dict(gates)  # only when given, so earlier run folders still resume
    if init_from:
        config["init_from"] = os.fspath(init_from)  # likewise
    config_path = os.path.join(run_dir, "config.json")
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            previous = json.load(f)
        previous.pop("recipe", None)
        if previous != json.loads(json.dumps(config, default=_json_default)):
            raise ValueError(
                f"Run folder {run_dir!r} holds a different run ({previous}). "
                "Use another --run-dir or --overwrite."
            )
        if os.path.exists(metrics_path):
            with open(metrics_path, encoding="utf-8") as f:
                metrics = json.load(f)
            print(f"Run {run_dir!r} already finished: {json.dumps(metrics.get('test', metrics))}")
            return metrics

    keras.utils.set_random_seed(seed)
    # A first pass for the input shape and class count of the dataset.
    base_recipe, _ = (Recipe.from_dict(overrides), None) if preset is None else Recipe.from_preset(preset["recipe"], **overrides)
    load_kwargs = dict(data_dir=data_dir, limit=limit, validation_split=validation_split)
    splits = base_recipe.datasets(dataset, seed=seed, **load_kwargs)
    info = splits.info
    keras_model, recipe, _ = resolve_model_and_recipe(
        model, dataset, overrides, input_shape=info.input_shape, num_classes=info.num_classes, gates=gates
    )
    if init_from and not os.path.exists(os.path.join(run_dir, "main.keras")):
        source = _warm_start_source(init_from)
        copied, skipped = transfer_weights(source, keras_model)
        del source
        print(f"Warm start from {init_from}: {len(copied)} layers copied, {len(skipped)} kept their "
              f"initialization ({', '.join(sorted(skipped)[:6])}{', ...' if len(skipped) > 6 else ''})", flush=True)
    _atomic_json(config_path, {**config, "recipe": recipe.to_dict()})

    gated = bool(gate_layers(keras_model))
    probe_source = splits.validation if splits.validation is not None else splits.test

    def phase_callbacks(tag):
        cbs = [
            keras.callbacks.BackupAndRestore(os.path.join(run_dir, f"backup{tag}")),
            keras.callbacks.CSVLogger(os.path.join(run_dir, f"history{tag}.csv"), append=True),
        ]
        if gated:
            cbs.insert(0, GateRateLogger(probe_source, run_dir, max_examples=512))
        return cbs

    start = time.time()
    main_path = os.path.join(run_dir, "main.keras")
    if os.path.exists(main_path):
        print(f"Main phase already done: loading {main_path}")
        keras_model = _load_model_file(main_path)
    else:
        cbs = phase_callbacks("")
        if anneal:
            a_start, a_end, a_epochs = anneal
            cbs.insert(0, TargetAnnealing(float(a_start), float(a_end), epochs=int(a_epochs)))
        fit_recipe(keras_model, recipe, splits, callbacks=cbs + list(callbacks), verbose=verbose)
        save_model(keras_model, main_path)

    stab = recipe.stabilization()
    if stab is not None:
        stab_splits = stab.datasets(dataset, seed=seed, **load_kwargs)
        fit_recipe(keras_model, stab, stab_splits, callbacks=phase_callbacks("_stabilize"), verbose=verbose)
    save_model(keras_model, os.path.join(run_dir, "model.keras"))
    train_seconds = time.time() - start

    # Final evaluation on the test split, threshold inference (deterministic).
    test_ds = load_dataset(dataset, batch_size=256, seed=seed, **load_kwargs).test
    result = evaluate_model(keras_model, test_ds, mode="threshold" if gated else None, runs=1)
    metrics = {"test": result, "train_seconds": train_seconds, "recipe": recipe.to_dict(), "dataset": dataset}
    _write_plots(keras_model, run_dir, probe_source, gated)
    _atomic_json(metrics_path, metrics)
    print(json.dumps({"test": result}, indent=2, default=_json_default))
    return metrics


def _write_plots(model, run_dir, probe, gated):
    from tfgated import plots
    from tfgated.callbacks import _probe_inputs

    history = os.path.join(run_dir, "history.csv")
    if os.path.exists(history):
        plots.plot_history(history, os.path.join(run_dir, "history.png"))
    if gated:
        rates = os.path.join(run_dir, "gate_rates.csv")
        if os.path.exists(rates):
            plots.plot_gate_rates(rates, os.path.join(run_dir, "gate_rates.png"))
        values = plots.gate_probability_values(model, _probe_inputs(probe, 256))
        plots.plot_polarization(values, os.path.join(run_dir, "polarization.png"))


def build_train_parser():
    p = argparse.ArgumentParser(prog="python -m tfgated train", description="Train a zoo preset with its recipe.")
    p.add_argument("--model", required=True, help="zoo preset name, or an (untrained) .keras model file")
    p.add_argument("--dataset", default=None, help="dataset name (default: the preset's, else fashion_mnist)")
    p.add_argument("--data-dir", default=None, help="dataset folder (required for TFDS datasets)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=None, help="initial learning rate")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/MODEL)")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N examples (smoke runs)")
    p.add_argument("--validation-split", type=float, default=None)
    p.add_argument(
        "--set", action="append", default=[], metavar="SWITCH=VALUE",
        help="override an improving switch, e.g. --set label_smoothing=0.3 --set augment=flip",
    )
    p.add_argument("--anneal-target", nargs=3, type=float, metavar=("START", "END", "EPOCHS"), default=None)
    p.add_argument(
        "--init-from", default=None, metavar="MODEL",
        help="warm start: copy the weights of same-named layers from a .keras file or a zoo preset's "
             "shipped weights (e.g. train sipa_fashion_mnist_gated from sipa_fashion_mnist)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--verbose", default="auto", help="Keras verbosity: auto, 0, 1 (progress bar), 2")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    return p


def main_train(argv=None):
    """Entry point of ``python -m tfgated train``; returns the exit status."""
    args = build_train_parser().parse_args(argv)

    def run():
        overrides = _parse_sets(args.set)
        for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate", args.lr)):
            if value is not None:
                overrides[key] = value
        if args.dataset is not None:
            _check_dataset(args.dataset)
        verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
        run_dir = args.run_dir or os.path.join("runs", os.path.basename(args.model).replace(".keras", ""))
        train(
            args.model,
            run_dir,
            dataset=args.dataset,
            data_dir=args.data_dir,
            limit=args.limit,
            validation_split=args.validation_split,
            overrides=overrides,
            anneal=args.anneal_target,
            seed=args.seed,
            verbose=verbose,
            overwrite=args.overwrite,
            init_from=args.init_from,
        )
        return 0

    return _run(run)


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
    try:
        from tfgated.complexity import expected_macs
    except ImportError:  # pragma: no cover - complexity is part of the package
        expected_macs = None

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
        if expected_macs is not None:
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


def build_evaluate_parser():
    p = argparse.ArgumentParser(
        prog="python -m tfgated evaluate", description="Evaluate a model under a gate inference style."
    )
    p.add_argument("--model", required=True, help="a .keras file, a run folder, or a zoo preset name")
    p.add_argument("--weights", default=None, help="for a preset: 'default' or a weights file")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--mode", choices=MODES, default="threshold")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--samples", type=_positive_int, default=5, help="passes of the ensemble style")
    p.add_argument("--runs", type=_positive_int, default=5, help="repetitions of stochastic/ensemble")
    p.add_argument("--bn-recalibrate", action="store_true", help="re-estimate BN statistics under --mode first")
    p.add_argument("--recalibrate-batches", type=_positive_int, default=20)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="save the evaluated model as a .keras file (with --bn-recalibrate: its new statistics)")
    p.add_argument("--seed", type=int, default=42)
    return p


def main_evaluate(argv=None):
    """Entry point of ``python -m tfgated evaluate``; returns the exit status."""
    args = build_evaluate_parser().parse_args(argv)

    def run():
        import keras

        from tfgated.data import load_dataset

        if args.save and not args.save.endswith(".keras"):
            raise ValueError(f"Expected --save to name a .keras file. Received: {args.save!r}")
        keras.utils.set_random_seed(args.seed)
        config = {}
        if _is_model_path(args.model):
            folder = args.model if os.path.isdir(args.model) else None
            if folder and os.path.exists(os.path.join(folder, "config.json")):
                with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                    config = json.load(f)  # evaluate with the data settings the run trained with
            model = _load_model_file(args.model)
            dataset = args.dataset or config.get("dataset") or "fashion_mnist"
        else:
            from tfgated import zoo

            preset = zoo.get_preset(args.model)
            dataset = args.dataset or preset.get("dataset") or "fashion_mnist"
            model = None
        _check_dataset(dataset)
        splits = load_dataset(
            dataset,
            data_dir=args.data_dir or config.get("data_dir"),
            batch_size=args.batch_size,
            limit=args.limit if args.limit is not None else config.get("limit"),
            validation_split=config.get("validation_split", 0.1),
            seed=config.get("seed", 42),
            shuffle_buffer=0,
        )
        if model is None:
            model = zoo.load(
                args.model, weights=args.weights, compile=False,
                input_shape=splits.info.input_shape, num_classes=splits.info.num_classes,
            )
        data = splits.test if args.split == "test" else splits.validation
        if data is None:
            raise ValueError("No validation split for this data configuration; use --split test.")
        from tfgated.inference import gate_layers

        recalibrated = 0
        if args.bn_recalibrate:
            recalibrated = recalibrate_batch_norm(
                model, splits.train, style=args.mode if gate_layers(model) else None,
                batches=args.recalibrate_batches, samples=args.samples,
            )
        result = evaluate_model(
            model, data, mode=args.mode, runs=args.runs, samples=args.samples, threshold=args.threshold
        )
        result.update({"model": args.model, "dataset": dataset, "split": args.split, "bn_recalibrated_batches": recalibrated})
        text = json.dumps(result, indent=2, sort_keys=True, default=_json_default)
        print(text)
        if args.json:
            folder = os.path.dirname(os.path.abspath(args.json))
            os.makedirs(folder, exist_ok=True)
            _atomic_json(args.json, result)
        if args.save:
            save_model(model, args.save)
            print(f"Saved the evaluated model to {args.save}", file=sys.stderr, flush=True)
        return 0

    return _run(run)
