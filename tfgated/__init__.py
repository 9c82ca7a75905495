"""tfgated: Gumbel-softmax gated efficient networks for Keras 3.

The mechanism lives here (gates, losses, inference styles, complexity, pruning,
training recipes, search, data); the models live in :mod:`tfgated.zoo` and
deployment in :mod:`tfgated.export`.

The public names below are resolved on first use (PEP 562). ``import tfgated`` in a
program still imports the modules that register tfgated's custom objects (gates, exit
gates, ghost batch norm, pruning schedules, the soft-smoothing loss), so
``keras.saving.load_model(path, safe_mode=True)`` reads any file tfgated wrote. Only
``python -m tfgated ...`` (the command line, which runs this file first) skips that
import: it makes the console quiet before TensorFlow loads, answers ``--help`` without
TensorFlow, and registers the custom objects (:func:`register_custom_objects`) before a
command runs.
"""

import importlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

#: public name -> the module defining it
_LAZY = {
    "ChannelMask": "tfgated.gates",
    "GatedResidual": "tfgated.gates",
    "GumbelGate": "tfgated.gates",
    "channel_gate": "tfgated.gates",
    "residual_gate": "tfgated.gates",
    "gate_layers": "tfgated.inference",
    "gate_probabilities": "tfgated.inference",
    "gate_rates": "tfgated.inference",
    "gate_values": "tfgated.inference",
    "get_inference_style": "tfgated.inference",
    "harden_gates": "tfgated.inference",
    "predict": "tfgated.inference",
    "reset_gate_noise": "tfgated.inference",
    "set_inference_style": "tfgated.inference",
    "GateActivationLoss": "tfgated.losses",
    "SparseLabelSmoothingCrossentropy": "tfgated.smoothing",
    "per_batch_loss": "tfgated.losses",
    "per_gate_loss": "tfgated.losses",
    "gated_model": "tfgated.models",
    "recalibrate_batch_norm": "tfgated.batch_norm",
    "SparseModel": "tfgated.sparse",
    "sparse_model": "tfgated.sparse",
}

#: Modules whose import registers custom objects with Keras (``package="tfgated"``).
REGISTERING_MODULES = ("tfgated.gates", "tfgated.losses", "tfgated.models", "tfgated.inference",
                       "tfgated.exits", "tfgated.pruning", "tfgated.recipes", "tfgated.sparse")

__all__ = sorted(_LAZY) + ["register_custom_objects"]


def register_custom_objects():
    """Import every module that registers a tfgated custom object (idempotent, cheap when done)."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        if f"tfgated.{name}" in REGISTERING_MODULES:  # tfgated.exits, tfgated.pruning, ...
            return importlib.import_module(f"tfgated.{name}")
        raise AttributeError(f"module 'tfgated' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if sys.argv[:1] == ["-m"]:
    # `python -m tfgated[.export|.zoo] ...` is being located: the command line. Quiet the
    # console before anything imports TensorFlow; the entry point registers what it needs.
    from tfgated.console import quiet_console

    quiet_console(sys.argv[1:])
else:
    register_custom_objects()
