"""Magnitude pruning for Keras 3 models (SIPA, Lee et al. 2019, "Pruning").

``tensorflow-model-optimization`` only prunes legacy ``tf_keras`` models. This
package prunes plain Keras 3 models with tfmot's API: ``prune_low_magnitude(model,
pruning_schedule=ConstantSparsity(0.5, begin_step=0))`` returns the model, ranks
weights layer by layer, and training follows the schedule with the
``UpdatePruningStep()`` callback; ``PruningSummaries(log_dir=...)`` logs sparsity to
TensorBoard and ``strip_pruning(model)`` returns the plain pruned model. SIPA's
global layer-normalized ranking is the argument ``ranking="global_normalized"``
(what :func:`iterative_pruning` and the pipeline use).

Design: the model stays a plain Keras model. Pruning state (one non-trainable
0/1 mask per prunable kernel, keyed ``"<layer path>/<kernel attribute>"``) lives in
a :class:`PruningState` that is *associated* with the model (a weak registry, no
attribute or weight is added to the model), so ``model.save`` / ``load_model`` see
an ordinary model whose pruned weights are exact zeros. Every pruned kernel gets a
variable constraint ``kernel * mask`` that the optimizer applies right after its
update, inside the compiled training step, so the zeros survive fine-tuning with
no per-batch Python work; masks are recomputed only on the steps the schedule
names, and only when the target sparsity changed.

Prunable kernels: ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and ``Dense`` kernels and
both kernels of ``SeparableConv1D/2D``. Biases, normalization layers and gate
layers are never pruned. A layer counts as a gate layer when its class name ends
in ``Gate`` or any component of its path is named like a gate (``gate``,
``stage2_block3_gate``, ``gate_fc``; not ``gated_block``), and every layer whose
attribute ``tfgated_prunable`` is ``False`` is skipped with its sublayers.

Rankings (``ranking=``):

* ``"global_normalized"`` (SIPA): every kernel's magnitudes are divided by that
  kernel's L2 norm, then all kernels are ranked together and the smallest scores
  are pruned. Raw magnitudes differ by orders of magnitude between layers (first
  convolutions, depthwise kernels and classifiers live on other scales), so a
  raw global threshold can remove a whole layer and cut the network; normalizing
  puts the layers on one scale while still letting large (redundant) layers give
  up more weights than small ones (a kernel of ``n`` weights has normalized scores
  of order ``1/sqrt(n)``). In addition the largest weight of every output channel
  is always kept (``min_weights_per_channel=1``), so no channel, and therefore no
  layer, is ever pruned to zero.
* ``"global"``: raw magnitudes ranked across all kernels (no per-channel guarantee
  unless ``min_weights_per_channel`` is given; shows the failure mode above).
* ``"layerwise"`` (default of :func:`prune_low_magnitude` and :func:`prune_once`):
  every kernel pruned to the same sparsity (tfmot's behaviour), with the
  per-channel guarantee.

Masks are monotone while the target sparsity grows: weights pruned once are ranked
below every surviving weight, so later rounds only add zeros.

Iterative pruning (:func:`iterative_pruning`, settings in
:class:`IterativePruningOptions`) follows SIPA: prune to a round's sparsity,
fine-tune with masks applied, evaluate; one row per round, checkpointed so a
killed run resumes at the first unfinished round.

Modules: :mod:`~tfgated.pruning.schedules` (schedules, :func:`sipa_schedule`),
:mod:`~tfgated.pruning.masks` (prunable kernels, :func:`compute_masks`),
:mod:`~tfgated.pruning.state` (:class:`PruningState`, :class:`UpdatePruningStep`,
:class:`PruningSummaries`, the entry points), :mod:`~tfgated.pruning.iterative` (:func:`iterative_pruning`).
"""


from tfgated.pruning.iterative import IterativePruningOptions, iterative_pruning
from tfgated.pruning.masks import RANKINGS, compute_masks, prunable_weights
from tfgated.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule, sipa_schedule
from tfgated.pruning.state import (
    PruningState,
    PruningSummaries,
    UpdatePruningStep,
    get_pruning_state,
    prune_low_magnitude,
    prune_once,
    sparsity_report,
    strip_pruning,
)

__all__ = [
    "ConstantSparsity",
    "IterativePruningOptions",
    "PolynomialDecay",
    "PruningSchedule",
    "PruningState",
    "PruningSummaries",
    "UpdatePruningStep",
    "RANKINGS",
    "compute_masks",
    "prunable_weights",
    "prune_low_magnitude",
    "prune_once",
    "strip_pruning",
    "get_pruning_state",
    "sparsity_report",
    "sipa_schedule",
    "iterative_pruning",
]
