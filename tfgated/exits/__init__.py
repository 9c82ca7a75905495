"""Early exit, in one package: a sample that is answered early skips the rest of the network.

Two kinds of exits share it:

* Gumbel exits (Herrmann et al., ECCV 2020, supplement section 1.2), trained end to end with
  the network: :mod:`tfgated.exits.layers` (:class:`ExitGate`, :class:`EarlyExitCombine`,
  :class:`ExitReach` and helpers that measure where examples leave) and
  :func:`fit_exit_classifiers` to warm-start their classifiers.
* SIPA's exit head (Lee et al., MicroNet Challenge 2019, "Accelerating"), attached to a
  trained network and answered when confident: :mod:`tfgated.exits.heads` (attach, split),
  :mod:`tfgated.exits.training` (soft smoothing loss, head-only training),
  :mod:`tfgated.exits.runtime` (threshold calibration, split inference) and
  :mod:`tfgated.exits.study` (risk-coverage, the exit-position table).

Importing this package registers its Keras serializables (``ExitGate``,
``EarlyExitCombine``, ``ExitReach``, ``SoftSmoothingLoss``, package ``"tfgated"``).
"""

from tfgated.exits.layers import (
    DEFAULT_EXIT_PROBABILITY,
    EXIT_FILTERS,
    EarlyExitCombine,
    ExitGate,
    ExitReach,
    exit_classifier_outputs,
    exit_gate_layers,
    exit_reach,
    exit_shares,
    exit_weights,
    gate_exit_shares,
    msdnet_exit_classifier,
)
from tfgated.exits.heads import (
    DEFAULT_EXIT_CHANNELS,
    ExitStructure,
    attach_exit,
    exit_structure,
    freeze_main,
    resolve_exit_layer,
    sipa_exit_head,
)
from tfgated.exits.training import (
    LOSSES,
    ExitTrainer,
    SoftSmoothingLoss,
    exit_loss,
    fit_exit_classifiers,
    label_spec,
    prune_exit,
    train_exit,
)
from tfgated.exits.runtime import (
    EarlyExitModel,
    EarlyExitResult,
    SparseExitModel,
    ThresholdCalibration,
    calibrate_threshold,
    combine_predictions,
    early_exit_predict,
)
from tfgated.exits.study import (
    ExitStudy,
    RiskCoverage,
    exit_position_study,
    plot_risk_coverage,
    risk_coverage,
    study_table,
)

__all__ = [
    "DEFAULT_EXIT_CHANNELS",
    "DEFAULT_EXIT_PROBABILITY",
    "EXIT_FILTERS",
    "LOSSES",
    "EarlyExitCombine",
    "EarlyExitModel",
    "SparseExitModel",
    "EarlyExitResult",
    "ExitGate",
    "ExitReach",
    "ExitStructure",
    "ExitStudy",
    "ExitTrainer",
    "RiskCoverage",
    "SoftSmoothingLoss",
    "ThresholdCalibration",
    "attach_exit",
    "calibrate_threshold",
    "combine_predictions",
    "early_exit_predict",
    "exit_classifier_outputs",
    "exit_gate_layers",
    "exit_loss",
    "exit_position_study",
    "exit_reach",
    "exit_shares",
    "exit_structure",
    "exit_weights",
    "fit_exit_classifiers",
    "freeze_main",
    "gate_exit_shares",
    "label_spec",
    "msdnet_exit_classifier",
    "plot_risk_coverage",
    "prune_exit",
    "resolve_exit_layer",
    "risk_coverage",
    "sipa_exit_head",
    "study_table",
    "train_exit",
]
