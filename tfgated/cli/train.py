"""``python -m tfgated train``: fit a zoo preset (or an untrained ``.keras`` model file) with its recipe.

The recipe (:class:`tfgated.recipes.Recipe`) comes from the preset, overridable from the
command line; the run folder and its files are :func:`tfgated.train.train_model`'s. Killed
and re-run with the same arguments, it resumes from the last finished epoch; a finished
run is not trained again.

This module is the face: it resolves preset names with :mod:`tfgated.zoo` (the model, its
recipe, its dataset, a warm start from a preset's shipped weights) and hands the built
model to the mechanism.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from typing import Any, Optional

from tfgated.cli.common import add_debug_flag, parse_key_values, positive_float, positive_int, run_command

STRATEGIES = ("default", "mirrored", "multi_worker")
#: the gate settings of a fine-tune around fixed gates (``--harden-gates``)
FROZEN_GATES = {"gradient_scale": 0.0, "weight": 0.0}

__all__ = ["STRATEGIES", "TrainOptions", "build_parser", "main", "parse_sets", "resolve_model_and_recipe", "train"]


@dataclasses.dataclass
class TrainOptions:
    """How :func:`train` trains a model; everything but ``verbose`` and ``overwrite`` is recorded
    in the run's ``config.json``, so a run folder resumes only under the same options.

    Attributes:
        dataset: dataset name; None: the preset's, else ``fashion_mnist``.
        data_dir: the dataset's folder (required for TFDS datasets).
        limit: use only the first ``limit`` examples (smoke runs).
        validation_split: held-out fraction; None: the preset recipe's, else 0.1.
        overrides: recipe switches (``epochs``, ``batch_size``, ``learning_rate``, ...).
        gates: for a gated preset, gate settings that replace the preset's (``target``,
            ``weight``, ``open_probability``, ...).
        init_from: warm start: a ``.keras`` file or a zoo preset with shipped weights whose
            layers of the same name and shapes initialize the model
            (:func:`tfgated.train.transfer_weights`), e.g. ``"sipa_fashion_mnist"`` for
            ``"sipa_fashion_mnist_gated"``.
        harden_gates: after the warm start (``init_from`` required), fix every data-independent
            gate at its threshold decision (:func:`tfgated.inference.harden_gates`) and freeze
            the gates (``gradient_scale=0``, ``weight=0`` unless ``gates`` says otherwise): the
            fine-tune trains the pruned network as its export will run it.
        anneal: optional ``(start, end, epochs)`` of :class:`~tfgated.callbacks.TargetAnnealing`.
        seed: seed of the data split, the initialization and the shuffling.
        verbose: Keras verbosity: ``"auto"``, 0, 1 (progress bar) or 2.
        overwrite: start over in a folder that holds a run.
        strategy: ``"default"`` (one process), ``"mirrored"`` (``tf.distribute.MirroredStrategy``
            over the local devices) or ``"multi_worker"`` (``MultiWorkerMirroredStrategy``, the
            cluster from ``TF_CONFIG``; the chief alone writes the run folder). Not recorded:
            a run may resume under another strategy.
    """

    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    validation_split: Optional[float] = None
    overrides: dict = dataclasses.field(default_factory=dict)
    gates: Optional[dict] = None
    init_from: Optional[str] = None
    harden_gates: bool = False
    anneal: Optional[Any] = None
    seed: int = 42
    verbose: Any = "auto"
    overwrite: bool = False
    strategy: str = "default"


def is_model_path(text):
    """Whether ``--model`` names a file or folder rather than a zoo preset."""
    return text.endswith(".keras") or os.path.isdir(text) or os.path.exists(text)


def parse_sets(items):
    """``["label_smoothing=0.3", "augment=flip"]`` -> recipe switches (checked)."""
    from tfgated.recipes import Recipe

    values = parse_key_values(items)
    Recipe.check_switches(values)
    return values


def resolve_model_and_recipe(model, overrides=None, *, input_shape=None, num_classes=None, gates=None):
    """``(keras model, Recipe, preset or None)`` for a preset name or a ``.keras`` path.

    The model comes prepared for the recipe's model switches (:meth:`Recipe.prepare_model`).
    ``input_shape`` and ``num_classes`` (a preset only) rebuild it for another dataset;
    ``gates`` (a preset only) replaces some of the preset's gate settings, e.g.
    ``{"open_probability": 0.75, "weight": 10}``.
    """
    from tfgated import zoo
    from tfgated.io import load_model
    from tfgated.recipes import Recipe

    overrides = dict(overrides or {})
    if is_model_path(model):
        if gates:
            raise ValueError(f"gates= changes a zoo preset's gate settings; {model!r} is a model file.")
        recipe = Recipe.from_dict(overrides)
        if recipe.activation is not None:
            raise ValueError("activation is an architecture switch: it needs a zoo preset, not a model file.")
        loaded = load_model(model)
        if len(loaded.outputs) > 1:
            raise ValueError(_EXIT_MODEL.format(model=model, outputs=len(loaded.outputs)))
        return recipe.prepare_model(loaded), recipe, None
    preset = zoo.get_preset(model)
    if zoo.registry.exit_threshold(model) is not None:
        raise ValueError(_EXIT_MODEL.format(model=model, outputs=2))
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
    keras_model = zoo.load(model, weights=None, compile=False, **kwargs, **recipe.model_overrides())
    return recipe.prepare_model(keras_model), recipe, preset


_EXIT_MODEL = (
    "{model!r} has {outputs} outputs ([main, exit]); train fits a single-output classifier. Train the network "
    "without its exit (e.g. --model sipa_fashion_mnist), then the exit head on it with tfgated.exits.train_exit "
    "(benchmarks/train_sipa_exit.py does this for sipa_fashion_mnist_exit)."
)


def _warm_start_source(init_from):
    """The model whose weights start a run: a ``.keras`` file, or a zoo preset with its shipped weights."""
    from tfgated import zoo
    from tfgated.io import load_model

    if is_model_path(init_from):
        return load_model(init_from)
    return zoo.load(init_from, weights="default", compile=False)


def _run_data(preset, options):
    """The run's :class:`~tfgated.train.RunData`: the options', else the preset's, else the defaults."""
    from tfgated.train import RunData

    preset = preset or {}
    validation_split = options.validation_split
    if validation_split is None:
        validation_split = float(preset.get("recipe", {}).get("validation_split", 0.1))
    return RunData(
        dataset=options.dataset or preset.get("dataset") or "fashion_mnist",
        data_dir=options.data_dir,
        limit=options.limit,
        validation_split=validation_split,
        seed=options.seed,
        pixels="raw" if preset.get("input") else "normalized",  # zoo models normalize in their graph
    )


def _run_config(model, data, options, overrides):
    """What the run records in ``config.json`` (and what a resumed run must match)."""
    config = {
        "model": model,
        **data.as_config(),
        "overrides": overrides,
        "anneal": list(options.anneal) if options.anneal else None,
    }
    if options.gates:
        config["gates"] = dict(options.gates)  # only when given, so earlier run folders still resume
    if options.init_from:
        config["init_from"] = os.fspath(options.init_from)  # likewise
    if options.harden_gates:
        config["harden_gates"] = True  # likewise
    return config


def train(model, run_dir, options=None, callbacks=()):
    """Train ``model`` (a zoo preset name or a ``.keras`` path) into ``run_dir``; returns the final metrics.

    Everything that can refuse the command (the options, the data, the model, a folder of
    another run) is checked before anything is written: a failed start leaves no run folder.
    The folder is then locked for the whole run (:func:`tfgated.runlock.run_folder_lock`):
    a second process training into it is refused, naming the PID that holds it.

    Args:
        model: a zoo preset name, or a ``.keras`` file (or run folder) of an untrained model.
        run_dir: the run folder (:func:`tfgated.train.train_model` lists its files).
        options: a :class:`TrainOptions`; the defaults when None.
        callbacks: extra Keras callbacks (main phase).
    """
    from tfgated import zoo
    from tfgated.recipes import Recipe
    from tfgated.runlock import is_chief
    from tfgated.train import annealing_callbacks, finished_run

    options = options or TrainOptions()
    overrides = dict(options.overrides or {})
    Recipe.check_switches(overrides)
    annealing_callbacks(options.anneal)  # checks the annealing arguments
    preset = None if is_model_path(model) else zoo.get_preset(model)
    data = _run_data(preset, options)
    config = _run_config(model, data, options, overrides)
    if not options.overwrite:
        finished = finished_run(run_dir, config)  # reads only
        if finished is not None:
            return finished
    if options.overwrite and options.strategy == "multi_worker":
        raise ValueError("--overwrite cannot be coordinated across workers: delete the run folder, then launch "
                         "the workers without --overwrite.")
    strategy = _strategy(options.strategy)
    chief = is_chief() if options.strategy == "multi_worker" else True
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return _train_locked(model, run_dir, options, preset, data, config, callbacks, chief=chief)


def _strategy(name):
    """The ``tf.distribute`` strategy of ``--strategy`` (None for the default one)."""
    if name in (None, "default"):
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multi_worker reads the cluster from TF_CONFIG, which is not set.")
        from tfgated.distribute import enable_multi_worker_fit

        enable_multi_worker_fit()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}. Expected one of {list(STRATEGIES)}.")


def _train_locked(model, run_dir, options, preset, data, config, callbacks, chief):
    """Build the model and data, then lock and open the run folder and train (the chief only
    locks and writes it; see :func:`tfgated.train.train_model`)."""
    import keras

    from tfgated.inference import activation_loss_layers
    from tfgated.recipes import Recipe
    from tfgated.runlock import run_folder_lock
    from tfgated.train import main_phase_done, open_run, train_model, warm_start

    keras.utils.set_random_seed(data.seed)
    # The recipe's data first: the model is built for its input shape and class count.
    recipe = Recipe.from_dict(dict(config["overrides"])) if preset is None else Recipe.from_preset(
        preset["recipe"], **config["overrides"])[0]
    splits = data.splits(recipe)
    gates = options.gates
    if options.harden_gates:
        if not options.init_from:
            raise ValueError("--harden-gates fixes the gate decisions of a trained model: give it with --init-from.")
        if is_model_path(model):
            raise ValueError(f"--harden-gates freezes a zoo preset's gates; {model!r} is a model file: train the "
                             "preset it was built from, with --init-from the file.")
        gates = {**FROZEN_GATES, **(gates or {})}
    keras_model, recipe, _ = resolve_model_and_recipe(
        model, config["overrides"], input_shape=splits.info.input_shape, num_classes=splits.info.num_classes,
        gates=gates,
    )
    if options.anneal and not activation_loss_layers(keras_model):
        raise ValueError(f"--anneal-target moves the gates' target rate; {model!r} has no activation loss to anneal.")
    source = _warm_start_source(options.init_from) if options.init_from else None
    with run_folder_lock(run_dir) if chief else contextlib.nullcontext():
        finished = open_run(run_dir, config, overwrite=options.overwrite) if chief else None
        if finished is not None:
            return finished
        if source is not None and not main_phase_done(run_dir):
            warm_start(keras_model, source, options.init_from)
            if options.harden_gates:
                from tfgated.inference import harden_gates

                print(f"Hardened {harden_gates(keras_model)} gates at their threshold decisions; gates frozen.",
                      flush=True)
        return train_model(
            keras_model, recipe, run_dir, data, config, splits=splits, anneal=options.anneal,
            verbose=options.verbose, callbacks=callbacks, chief=chief,
        )


def build_parser():
    """The arguments of ``python -m tfgated train``."""
    p = argparse.ArgumentParser(prog="python -m tfgated train", description="Train a zoo preset with its recipe.")
    p.add_argument("--model", required=True, help="zoo preset name, or an (untrained) .keras model file")
    p.add_argument("--dataset", default=None, help="dataset name (default: the preset's, else fashion_mnist)")
    p.add_argument("--data-dir", default=None, help="dataset folder (required for TFDS datasets)")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None, help="initial learning rate")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/MODEL)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N examples (smoke runs)")
    p.add_argument("--validation-split", type=float, default=None)
    p.add_argument(
        "--set", action="append", default=[], metavar="SWITCH=VALUE",
        help="override an improving switch, e.g. --set label_smoothing=0.3 --set augment=flip",
    )
    p.add_argument(
        "--gate", action="append", default=[], metavar="SETTING=VALUE",
        help="change a gated preset's gate setting, e.g. --gate gradient_scale=0 --gate weight=0 (freeze the "
             "gates and fine-tune around them)",
    )
    p.add_argument(
        "--harden-gates", action="store_true",
        help="with --init-from: fix every data-independent gate at its threshold decision (logits +-10) and "
             "freeze the gates, then fine-tune the pruned network as its export will run it",
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
    p.add_argument(
        "--strategy", choices=STRATEGIES, default="default",
        help="default: this process; mirrored: all local devices; multi_worker: the cluster in TF_CONFIG "
             "(run the same command on every worker; the chief writes the run folder)",
    )
    return add_debug_flag(p)


def _options(args):
    """The :class:`TrainOptions` of parsed arguments."""
    overrides = parse_sets(args.set)
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate", args.lr)):
        if value is not None:
            overrides[key] = value
    return TrainOptions(
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit,
        validation_split=args.validation_split,
        overrides=overrides,
        gates=parse_key_values(args.gate, "--gate") or None,
        init_from=args.init_from,
        harden_gates=args.harden_gates,
        anneal=args.anneal_target,
        seed=args.seed,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
        overwrite=args.overwrite,
        strategy=args.strategy,
    )


def main(argv=None):
    """Entry point of ``python -m tfgated train``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def run():
        run_dir = args.run_dir or os.path.join("runs", os.path.basename(args.model).replace(".keras", ""))
        train(args.model, run_dir, _options(args))
        return 0

    return run_command(run, debug=args.debug)
