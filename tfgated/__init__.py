"""tfgated: Gumbel-softmax gated efficient networks for Keras 3.

The mechanism lives here (gates, losses, inference styles, complexity, pruning,
training recipes, search, data); the models live in :mod:`tfgated.zoo` and
deployment in :mod:`tfgated.export`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfgated.gates import ChannelMask, GatedResidual, GumbelGate, channel_gate, residual_gate  # noqa: E402
from tfgated.inference import (  # noqa: E402
    gate_layers,
    gate_probabilities,
    gate_rates,
    gate_values,
    get_inference_style,
    predict,
    set_inference_style,
)
from tfgated.losses import GateActivationLoss, per_batch_loss, per_gate_loss  # noqa: E402
from tfgated.models import gated_model  # noqa: E402
from tfgated.batch_norm import recalibrate_batch_norm  # noqa: E402

# Modules whose custom objects (exit gates, ghost batch norm, pruning schedules, the soft
# smoothing loss) must be registered before keras.saving.load_model(..., safe_mode=True)
# reads a file that uses them: `import tfgated` is then enough to load any tfgated model.
from tfgated import exits, pruning, recipes  # noqa: E402,F401

__version__ = "0.1.0"

__all__ = [
    "ChannelMask",
    "GateActivationLoss",
    "GatedResidual",
    "GumbelGate",
    "channel_gate",
    "gate_layers",
    "gate_probabilities",
    "gate_rates",
    "gate_values",
    "gated_model",
    "get_inference_style",
    "per_batch_loss",
    "per_gate_loss",
    "predict",
    "recalibrate_batch_norm",
    "residual_gate",
    "set_inference_style",
]
