"""The model registry: families, presets, ``load``, ``list_models``, ``info``.

Contract between the registry and the family modules
=====================================================

A *family module* (``zoo/sipa.py``, ``zoo/resnet.py``, ``zoo/mobilenet_v2.py``,
``zoo/densenet.py``) defines

* builder functions, each registered with ``@register_family("NAME")``::

      @register_family("sipa", options=SipaConfig)
      def build_sipa(num_classes=100, input_shape=(32, 32, 3), gates=None, name=None, **config):
          config = make_options(SipaConfig, config)     # the architecture arguments
          ...
          return tfgated.gated_model(inputs, outputs, gates=zs, ...)   # keras.Model

  A builder takes its architecture arguments as keywords, either in its
  signature or as ``**config`` checked against an options dataclass
  (``options=``), so ``builder(num_classes=..., input_shape=..., **arch)``
  builds any preset.

  The builder returns an *uncompiled* ``keras.Model``. When ``gates`` is not
  ``None`` the model is built with :func:`tfgated.gated_model`, so it carries the
  activation loss (layer ``"activation_loss"``). ``gates`` is ``None`` or a
  gate-settings dict (:mod:`tfgated.gate_settings`: ``kind``, ``loss_kind``,
  ``target``, ``weight``, ``granularity`` and optional
  :class:`tfgated.GumbelGate` arguments); builders read it with
  :meth:`tfgated.gate_settings.GateSettings.from_config`, which fills the
  defaults and checks the values.

* a module-level ``PRESETS: dict[str, dict]``. A preset is plain data::

      {
          "family": "sipa",                       # a registered family
          "arch": {...},                          # builder keyword arguments
          "gates": {...} or None,                 # see above
          "dataset": "cifar100",                  # tfgated.data name
          "input_shape": [32, 32, 3],
          "num_classes": 100,
          "recipe": {"optimizer": "sgd", "learning_rate": 0.1, "epochs": 200,
                     "batch_size": 128, ...},     # tfgated.recipes.Recipe.from_preset vocabulary
          "weights": None or {"file": "NAME.weights.h5",  # under zoo/weights/
                              "sha256": "...", "url": optional},
          "paper": {"source": "...", "table": "...", "numbers": {...}},  # tfgated.zoo.papers
          "description": "one paragraph",
          "test_input_shape": optional smaller input for the zoo tests,
      }

The registry imports the family modules lazily, on the first call that needs
the presets (:data:`FAMILY_MODULES`). A family module that does not exist yet is
skipped; any error raised *inside* an existing module propagates.

Public API
==========

``load(name, weights="auto", num_classes=None, input_shape=None, compile=True, epochs=None, steps_per_epoch=None,
**overrides)``,
``build(name, ...)``, ``list_models(pattern="*")``, ``info(name)``, ``get_preset(name)``,
``preset_recipe(name)`` (the preset's :class:`tfgated.recipes.Recipe`, the one
translation of its ``recipe`` that ``load`` compiles with and training follows),
``compile_model(model, recipe)``, ``register_family(name, options=None)``,
``register_preset(name, preset)``, ``make_options(options, arguments)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import inspect
import json
import os
import warnings

from tfgated.gate_settings import SETTING_KEYS, GateSettings
from tfgated.io import ModelFileError, load_weights, read_json_object
from tfgated.recipes import Recipe
from tfgated.zoo.inputs import input_contract

FAMILY_MODULES = (
    "tfgated.zoo.sipa",
    "tfgated.zoo.resnet",
    "tfgated.zoo.mobilenet_v2",
    "tfgated.zoo.densenet",
)
ZOO_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(ZOO_DIR, "weights")
CARDS_DIR = os.path.join(ZOO_DIR, "cards")
GOLDEN_PATH = os.path.join(ZOO_DIR, "complexity.json")
#: Shipped weights: ``{preset name: weights entry}``, written by ``python -m tfgated.zoo.ship_weights``.
#: An entry here fills the preset's ``weights`` (the family module keeps ``None``).
WEIGHTS_INDEX = os.path.join(WEIGHTS_DIR, "index.json")

PRESET_REQUIRED = ("family", "arch", "input_shape", "num_classes", "recipe", "description")
PRESET_OPTIONAL = {"gates": None, "dataset": None, "weights": None, "paper": None, "input": None}

_FAMILIES: dict = {}
_OPTIONS: dict = {}
_PRESETS: dict = {}
_LOADED_MODULES: set = set()


# -- registration ----------------------------------------------------------------


def register_family(name, options=None):
    """Decorator registering ``builder`` as the builder of family ``name``.

    ``options``: the dataclass whose fields are the architecture arguments of a
    builder that takes them as ``**options`` (checked by :func:`build`).
    Registering the same function again (a module reload) is allowed; a
    different builder under a taken name raises ``ValueError``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected a non-empty family name. Received: name={name!r}")

    def decorator(builder):
        previous = _FAMILIES.get(name)
        if previous is not None and _qualname(previous) != _qualname(builder):
            raise ValueError(
                f"Family {name!r} is already registered by {_qualname(previous)}; "
                f"cannot register {_qualname(builder)}."
            )
        _FAMILIES[name] = builder
        if options is not None:
            _OPTIONS[name] = options
        return builder

    return decorator


def make_options(options, arguments):
    """``options(**arguments)`` for a family's options dataclass; unknown names raise
    ``ValueError`` listing the accepted ones."""
    accepted = [field.name for field in dataclasses.fields(options)]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown} for {options.__name__}. Accepted: {accepted}.")
    return options(**arguments)


def _qualname(function):
    return f"{function.__module__}.{function.__qualname__}"


def register_preset(name, preset):
    """Register one preset (plain data, see the module docstring) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected a non-empty preset name. Received: name={name!r}")
    if not isinstance(preset, dict):
        raise ValueError(f"Expected preset {name!r} to be a dict. Received: {type(preset).__name__}")
    missing = [key for key in PRESET_REQUIRED if key not in preset]
    if missing:
        raise ValueError(f"Preset {name!r} lacks the keys {missing}. Expected at least {list(PRESET_REQUIRED)}.")
    if preset["family"] not in _FAMILIES:
        raise ValueError(
            f"Preset {name!r} names family {preset['family']!r}, which is not registered. "
            f"Registered families: {sorted(_FAMILIES)}."
        )
    full = {**copy.deepcopy(PRESET_OPTIONAL), **copy.deepcopy(preset)}
    if full["input"] is None:
        full["input"] = input_contract(full["dataset"], full["input_shape"])
    GateSettings.from_config(full["gates"])  # validates
    Recipe.from_preset(full["recipe"])  # validates
    _check_weights_entry(name, full["weights"])
    _PRESETS[name] = full


def _check_weights_entry(name, weights):
    if weights is None:
        return
    if not isinstance(weights, dict) or not ("file" in weights or "url" in weights):
        raise ValueError(
            f"Expected preset {name!r} weights to be None or a dict with 'file' and 'sha256'. "
            f"Received: weights={weights!r}"
        )
    if "file" in weights and not weights.get("sha256"):
        raise ValueError(f"Preset {name!r} names weights file {weights['file']!r} without a sha256.")


def _ensure_loaded():
    """Import every family module once and register its ``PRESETS``."""
    for module_name in FAMILY_MODULES:
        if module_name in _LOADED_MODULES:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # that family is not written yet
            raise
        _LOADED_MODULES.add(module_name)
        shipped = weights_index()
        for name, preset in getattr(module, "PRESETS", {}).items():
            if name in shipped and preset.get("weights") is None:
                preset = {**preset, "weights": shipped[name]}
            register_preset(name, preset)


def weights_index():
    """The shipped-weights index ``zoo/weights/index.json`` as a dict ({} if absent)."""
    if not os.path.exists(WEIGHTS_INDEX):
        return {}
    return read_json_object(WEIGHTS_INDEX, f"the weights index {WEIGHTS_INDEX!r}")


# -- queries -----------------------------------------------------------------------


def list_models(pattern="*"):
    """Sorted preset names matching the shell-style ``pattern`` (fnmatch)."""
    _ensure_loaded()
    return sorted(name for name in _PRESETS if fnmatch.fnmatchcase(name, pattern))


def list_families():
    """Sorted names of the registered families."""
    _ensure_loaded()
    return sorted(_FAMILIES)


def is_preset_file(name):
    """True if ``name`` is a path to a preset JSON file rather than a registered name."""
    name = os.fspath(name)
    return name.endswith(".json") or os.path.isfile(name)


def read_preset_file(path):
    """The preset held by the JSON file at ``path`` (as ``python -m tfgated search`` writes it).

    The file is checked like a registered preset but not added to :func:`list_models`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset file {path!r} does not exist.")
    preset = read_json_object(path, f"preset file {path!r}")
    missing = [key for key in PRESET_REQUIRED if key not in preset]
    if missing:
        raise ValueError(f"Preset file {path!r} lacks the keys {missing}. Expected at least {list(PRESET_REQUIRED)}.")
    _ensure_loaded()
    if preset["family"] not in _FAMILIES:
        raise ValueError(
            f"Preset file {path!r} names family {preset['family']!r}. Expected one of {sorted(_FAMILIES)}."
        )
    # A preset file without an "input" entry (one written by `python -m tfgated search`, whose
    # trials trained on normalized images) builds a model that takes normalized images.
    return {"gates": None, "weights": None, "input": None, **preset}


def get_preset(name):
    """A deep copy of preset ``name`` (a registered name or a preset JSON file path);
    unknown names raise ``ValueError`` with the closest names."""
    _ensure_loaded()
    if name not in _PRESETS and is_preset_file(name):
        return read_preset_file(name)
    if name not in _PRESETS:
        close = difflib.get_close_matches(str(name), list(_PRESETS), n=5, cutoff=0.4)
        hint = f" Closest names: {close}." if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Known models: {len(_PRESETS)}; "
            f"see tfgated.zoo.list_models() or `python -m tfgated.zoo list`."
        )
    return copy.deepcopy(_PRESETS[name])


def golden():
    """The committed complexity file ``zoo/complexity.json`` as a dict ({} if absent)."""
    if not os.path.exists(GOLDEN_PATH):
        return {}
    with open(GOLDEN_PATH, encoding="utf-8") as f:
        return json.load(f)


def weights_status(name):
    """``"none"``, ``"available"`` (file present), ``"missing"`` (file named, absent) or ``"download"``."""
    entry = get_preset(name)["weights"]
    if entry is None:
        return "none"
    if "file" in entry and os.path.exists(os.path.join(WEIGHTS_DIR, entry["file"])):
        return "available"
    if entry.get("url"):
        return "download"
    return "missing"


def info(name):
    """The model card as data: the preset, measured complexity, weights status, card path."""
    preset = get_preset(name)
    card = os.path.join(CARDS_DIR, f"{name}.md")
    return {
        "name": name,
        **preset,
        "complexity": golden().get(name),
        "weights_status": weights_status(name),
        "card": card if os.path.exists(card) else None,
        "train_command": train_command(name),
    }


#: Early-exit presets: the script that trains the exit head on the shipped backbone.
_EXIT_TRAINERS = {"sipa_fashion_mnist_exit": "python benchmarks/train_sipa_exit.py"}


def exit_threshold(name):
    """The early-exit threshold in preset ``name``'s recipe (its ``exit`` entry; SIPA's 0.85 for
    ``sipa_fashion_mnist_exit``), or None for a preset without an early exit."""
    return ((get_preset(name).get("recipe") or {}).get("exit") or {}).get("threshold")


def train_command(name):
    """The command that trains preset ``name`` on this machine. An early-exit preset (an ``exit``
    entry in its recipe) trains in two steps, the backbone and then the head
    (:func:`tfgated.exits.train_exit`), which ``python -m tfgated train`` does not do."""
    if exit_threshold(name) is None:
        return f"python -m tfgated train --model {name}"
    if name in _EXIT_TRAINERS:
        return _EXIT_TRAINERS[name]
    backbone = name[: -len("_exit")] if name.endswith("_exit") else name
    return f"python -m tfgated train --model {backbone}`, then its exit head with `tfgated.exits.train_exit"


# -- building and loading ----------------------------------------------------------


def build(name, num_classes=None, input_shape=None, **overrides):
    """Build preset ``name`` (uncompiled, fresh weights) with optional overrides.

    ``overrides`` update the preset's ``arch`` keys; the gate keys
    (:data:`tfgated.gate_settings.SETTING_KEYS` and any key the preset's gates already
    have) update its ``gates`` (creating them on an ungated preset); ``gates=None`` or
    ``gates={...}`` replaces them entirely.
    """
    preset = get_preset(name)
    arch = dict(preset["arch"])
    gates = copy.deepcopy(preset["gates"])
    if "gates" in overrides:
        gates = copy.deepcopy(overrides.pop("gates"))
    gate_keys = set(SETTING_KEYS) | set(gates or {})
    gate_overrides = {key: overrides.pop(key) for key in list(overrides) if key in gate_keys}
    if gate_overrides:
        gates = {**(gates or {}), **gate_overrides}
    arch.update(overrides)
    builder = _FAMILIES[preset["family"]]
    _check_builder_arguments(name, builder, arch, _OPTIONS.get(preset["family"]))
    if preset.get("input") is not None and "preprocessing" in inspect.signature(builder).parameters:
        arch.setdefault("preprocessing", preset["input"])  # raw pixels in, normalized in the graph
    return builder(
        num_classes=preset["num_classes"] if num_classes is None else num_classes,
        input_shape=tuple(preset["input_shape"] if input_shape is None else input_shape),
        gates=gates,
        **arch,
    )


def _check_builder_arguments(name, builder, arch, options=None):
    parameters = {
        key: p for key, p in inspect.signature(builder).parameters.items() if p.kind is not p.VAR_KEYWORD
    }
    if len(parameters) < len(inspect.signature(builder).parameters):  # a **options builder
        if options is None:
            return
        parameters.update({field.name: None for field in dataclasses.fields(options)})
    unknown = sorted(set(arch) - set(parameters))
    if unknown:
        accepted = sorted(set(parameters) - {"num_classes", "input_shape", "gates"})
        raise ValueError(
            f"Unknown argument(s) {unknown} for model {name!r}. "
            f"Accepted architecture arguments: {accepted}; gate settings: {list(SETTING_KEYS)}."
        )


def load(name, weights="auto", num_classes=None, input_shape=None, compile=True, epochs=None, steps_per_epoch=None,
         **overrides):
    """Build preset ``name``, load its weights, and compile it per its recipe.

    The model takes raw pixel values (``0``-``255``, NHWC; see the preset's ``input`` entry)
    and scales and normalizes them inside its graph.

    Args:
        name: a preset name (see :func:`list_models`) or the path of a preset
            JSON file (as written by ``python -m tfgated search --output``).
        weights: ``"auto"`` (default: the preset's shipped weights when it has them and the
            model is the preset's own -- no ``num_classes``/``input_shape``/architecture
            change --, else fresh weights, with a warning when shipped weights exist but do
            not fit the changed model), ``None`` (fresh initialization), ``"default"`` (the
            preset's file under ``zoo/weights/``, verified by sha256; an error when it has
            none) or a path to a ``.weights.h5`` / ``.keras`` file.
        num_classes, input_shape: replace the preset's values.
        compile: compile per the preset's recipe (:func:`compile_model`): the
            optimizer, schedule, loss and metrics ``python -m tfgated train`` uses.
        epochs, steps_per_epoch: the length of the recipe's learning-rate schedule
            (see :func:`compile_model`), e.g. ``load(name, epochs=E,
            steps_per_epoch=len(train_batches))`` then ``fit(..., epochs=E)``.
        **overrides: architecture or gate settings, see :func:`build`.

    Returns:
        A ``keras.Model``; ``model.fit`` works at once when compiled.
    """
    preset = get_preset(name)
    if not compile and (epochs is not None or steps_per_epoch is not None):
        raise ValueError("epochs and steps_per_epoch set the compiled schedule; they need compile=True.")
    if weights == "auto":
        weights = _automatic_weights(name, preset, num_classes, input_shape, overrides)
    path = None
    if weights is not None:
        path = resolve_weights(name, weights)  # fail before the (slow) build
    model = build(name, num_classes=num_classes, input_shape=input_shape, **overrides)
    if path is not None:
        try:
            load_weights(model, path)  # a damaged or mismatched file: ModelFileError naming it
        except ModelFileError as error:
            raise ModelFileError(
                f"Could not load weights {path!r} into model {name!r} "
                f"(num_classes={num_classes}, input_shape={input_shape}, overrides={overrides}): {error}"
            ) from error
    if compile:
        compile_model(model, preset["recipe"], epochs=epochs, steps_per_epoch=steps_per_epoch)
    return model


def has_shipped_weights(name):
    """Whether preset ``name`` ships a weights file (present or not) in its ``weights`` entry."""
    entry = get_preset(name)["weights"]
    return entry is not None and "file" in entry


def _automatic_weights(name, preset, num_classes, input_shape, overrides):
    """``"default"`` when ``load(name, weights="auto", ...)`` can use the shipped weights, else ``None``."""
    if not has_shipped_weights(name):
        return None
    changed = sorted(overrides)
    if num_classes is not None and num_classes != preset["num_classes"]:
        changed.append("num_classes")
    if input_shape is not None and tuple(input_shape) != tuple(preset["input_shape"]):
        changed.append("input_shape")
    if not changed:
        return "default"
    warnings.warn(
        f"Model {name!r} ships trained weights, but they do not fit the changed {changed}: "
        "returning fresh (random) weights. Pass weights=None to ask for them without this warning.",
        stacklevel=3,
    )
    return None


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(name, weights):
    """The verified local path of ``weights`` for preset ``name`` (see :func:`load`)."""
    if weights != "default":
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file {path!r} for model {name!r} does not exist.")
        return path
    preset = get_preset(name)
    entry = preset["weights"]
    recipe = json.dumps(preset["recipe"], sort_keys=True)
    train_hint = f"Train them here with `{train_command(name)}` (recipe: {recipe})."
    if entry is None:
        raise ValueError(f"Model {name!r} has no pretrained weights. {train_hint}")
    if "file" not in entry:
        raise ValueError(
            f"The weights of model {name!r} are only published at {entry['url']} and need the "
            f"internet, which tfgated does not use. Download them yourself, or train them here "
            f"with `{train_command(name)}` (recipe: {recipe})."
        )
    path = os.path.join(WEIGHTS_DIR, entry["file"])
    if not os.path.isfile(path):
        where = f" Download them from {entry['url']} to {path}, or" if entry.get("url") else ""
        raise FileNotFoundError(
            f"Weights file {path!r} of model {name!r} is missing.{where} {train_hint}"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"Weights file {path!r} of model {name!r} is corrupt or outdated: sha256 {actual} "
            f"does not match the preset's {entry['sha256']}. Delete it and retrain: {train_hint}"
        )
    return path


def preset_recipe(name):
    """The :class:`tfgated.recipes.Recipe` of preset ``name`` (the one translation of its
    ``recipe`` entry, :meth:`~tfgated.recipes.Recipe.from_preset`) and the entry's keys
    that are not training switches (e.g. ``loss_weights``, ``pruning``)."""
    return Recipe.from_preset(get_preset(name)["recipe"])


def compile_model(model, recipe, loss_weights=None, *, epochs=None, steps_per_epoch=None):
    """Compile ``model`` so that a plain ``model.fit`` on integer labels follows ``recipe``.

    The compile path is the one ``python -m tfgated train`` uses
    (:meth:`tfgated.recipes.Recipe.compile` through
    :func:`tfgated.recipes.fit_recipe`): the same optimizer, learning-rate
    schedule, weight-decay exclusions, label smoothing (on the integer labels:
    :class:`tfgated.smoothing.SparseLabelSmoothingCrossentropy`) and metrics. Only mixup is
    left out (:meth:`~tfgated.recipes.Recipe.for_plain_fit`: it mixes the images of
    :meth:`~tfgated.recipes.Recipe.datasets`).

    Args:
        model: the model to compile.
        recipe: a :class:`tfgated.recipes.Recipe`, or a preset's ``recipe`` dict
            (translated by :meth:`~tfgated.recipes.Recipe.from_preset`; its
            ``loss_weights`` weigh the outputs of a multi-output model).
        loss_weights: weights of the outputs' losses (overrides the dict's).
        epochs: the epochs the schedule spans (default: the recipe's); pass the
            same number to ``model.fit(epochs=...)``.
        steps_per_epoch: batches per training epoch. The schedule's length is
            ``epochs * steps_per_epoch``; a recipe whose schedule needs it (cosine
            decay, warmup, step decay) refuses ``epochs`` without it, and without
            either is compiled at its constant initial learning rate (a model for
            inference or a quick fit, not the recipe's training).

    Returns ``model``.
    """
    if isinstance(recipe, dict):
        recipe, unused = Recipe.from_preset(recipe)
        loss_weights = unused.get("loss_weights") if loss_weights is None else loss_weights
    if not isinstance(recipe, Recipe):
        raise ValueError(f"Expected recipe to be a Recipe or a preset's recipe dict. Received: recipe={recipe!r}")
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1
    ):
        raise ValueError(
            f"Expected steps_per_epoch to be a positive integer or None. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    plain = recipe.for_plain_fit() if epochs is None else recipe.for_plain_fit().replace(epochs=epochs)
    if steps_per_epoch is None and plain.needs_steps_per_epoch and epochs is not None:
        raise ValueError(
            f"The recipe's learning-rate schedule spans epochs x steps_per_epoch steps: pass steps_per_epoch "
            f"(batches per epoch, e.g. len(train_batches)) with epochs={epochs}. Received: steps_per_epoch=None"
        )
    if steps_per_epoch is None and plain.needs_steps_per_epoch:
        plain = plain.replace(cosine_decay=False, lr_boundaries=(), warmup_epochs=0.0)
    compile_kwargs = {} if loss_weights is None or len(model.outputs) == 1 else {"loss_weights": loss_weights}
    return plain.compile(model, steps_per_epoch=steps_per_epoch, integer_labels=True, **compile_kwargs)
