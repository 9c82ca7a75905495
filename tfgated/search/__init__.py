"""SIPA "Searching" (Lee et al., MicroNet Challenge 2019, section 2.1) with KerasTuner.

The search space is an EfficientNet-style network described by *block
arguments* and *compound scaling coefficients* (:class:`SearchSpace`). The
hypermodel (:class:`SIPAHyperModel`) takes its model builder as an argument:
any callable with the signature of ``tfgated.zoo.sipa.build_sipa``
(``builder(num_classes=, input_shape=, **arch)``); this package imports no model
family.

* per base block ``i`` (hyperparameter names ``b{i}_kernel``, ``b{i}_stride``,
  ``b{i}_channels``, ``b{i}_expand``, ``b{i}_se``): depthwise kernel size
  (``kernel_sizes``, default {3, 5}); stride -- a base block with stride 2 may
  become stride 1 or stay 2 ({1, 2}, default 2), a base block with stride 1
  keeps stride 1 (a fixed value), so the search never adds a downsampling
  step the base network does not have and the spatial schedule cannot shrink
  below the base one; output channels as a multiplier of the base block's
  output channels (``channel_multipliers``, rounded to a multiple of
  ``divisor``; each block's input channels follow the previous block's
  output); expansion ratio {1, 3, 6}; squeeze-and-excitation ratio
  {0, 0.1, 0.2, 0.25} (0 = no SE). The repeats of a block are not searched:
  the depth coefficient scales them.
* compound scaling (EfficientNet): depth ``alpha`` (``"depth"``), width
  ``beta`` (``"width"``), resolution ``gamma`` (``"resolution"``) with
  ``alpha * beta**2 * gamma**2 ~ compound_target`` (2). ``constraint``:
  ``"approximate"`` (the default) searches ``gamma`` and moves it into the band
  where the product is within ``constraint_tolerance`` (0.25) of the target
  (:func:`approximate_resolution`), which admits SIPA's own coefficients (1, 0.9,
  1.4: product 1.588); ``"enforce"`` derives ``gamma = sqrt(target / (alpha * beta**2))`` (rounded
  to 2 decimals and clipped to ``resolution_range``; then the product can
  deviate, it is reported as ``compound_product``); ``"penalize"`` searches
  ``gamma`` too and subtracts ``constraint_weight * |product - target| / target``
  from the fitness; ``"none"`` searches ``gamma`` freely. The builder's
  ``resource`` (phi) is kept from the base architecture and, as in the SIPA
  reference code, exponentiates only the resolution (``gamma ** resource``);
  the constraint is stated for the coefficients themselves (phi = 1). The
  "resolution 1.4" of the SIPA README is this ``gamma``; its ``main.py`` scales
  the input side by ``round(1.4 ** 2, 2) = 1.96`` ("available resource" 2:
  32 -> 63, the 63x63 input of the README's table), not by 1.4 and not by an
  area factor: :func:`tfgated.zoo.sipa.upsampled_size`.

Objective (:class:`FitnessOptions`): SIPA's fitness ``R(x) = A(x) - [alpha * I(F(x) - thres)] ** w``
(:func:`sipa_fitness`), with ``A`` the validation accuracy, ``F`` the model's
MACs per example (``measure="macs"``, :func:`tfgated.complexity.count`) or
MicroNet score (``measure="micronet"``, :func:`tfgated.micronet.micronet_score`
at ``bits``), ``thres`` the budget in the same unit. The literal reading takes
``I`` as the indicator of exceeding the budget (``indicator="step"``:
``I(v) = 1 if v > 0 else 0``), so every over-budget model loses ``alpha ** w``
(with the defaults 1 and 1, an over-budget model scores ``A - 1 <= 0`` and
ranks below every model within budget); ``indicator="hinge"`` uses
``I(v) = max(v, 0) / thres``, the relative excess, so a slightly larger model
loses little. The per-epoch value is added to the Keras logs as ``"fitness"``
(KerasTuner keeps the best epoch's weights), and :meth:`SIPAHyperModel.fit`
returns the metrics of the best epoch: ``fitness``, ``val_accuracy``,
``macs``, ``params``, ``cost``, ``penalty``, ``compound_product`` and the
other logged metrics. The tuner objective is
``keras_tuner.Objective("fitness", "max")``.

Search algorithms (:func:`make_tuner`): ``"bayesian"`` (default) is
``keras_tuner.BayesianOptimization`` when scikit-learn is installed (KerasTuner
needs it for its Gaussian process); without scikit-learn the same method --
Gaussian-process regression (Matern 5/2) on the hyperparameters encoded in
[0, 1], upper-confidence-bound acquisition after random initial points -- runs
on :class:`NumpyBayesianOracle` (numpy only). ``"random"`` is
``keras_tuner.RandomSearch``.

Resuming: the tuner lives in ``directory/project_name`` with
``overwrite=False``; re-running the same command after a kill continues from
the finished trials (an unfinished trial is run again) up to ``max_trials``.

Distributed search: KerasTuner's chief/worker mode. Start the same command
once with ``KERASTUNER_TUNER_ID=chief`` and once per worker with
``KERASTUNER_TUNER_ID=worker0, worker1, ...``, all with
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` naming the chief's
address. The chief only serves the oracle and, when all trials are done,
writes the reports; workers train the trials.

Command line: ``python -m tfgated search --budget-macs N --trials 10 ...``
(:mod:`tfgated.cli.search`, which passes ``tfgated.zoo.sipa.build_sipa``).

Modules: :mod:`~tfgated.search.options` (space, fitness settings,
:func:`sipa_fitness`), :mod:`~tfgated.search.hypermodel`,
:mod:`~tfgated.search.oracles` (:func:`make_tuner`), :mod:`~tfgated.search.tables`
(trial table, :func:`best_preset`).
"""


from tfgated.blocks import decode_block, encode_block
from tfgated.search.hypermodel import (
    DEFAULT_BASE_ARCH,
    REFERENCE_BLOCKS,
    SIPAHyperModel,
    approximate_resolution,
    arch_summary,
)
from tfgated.search.options import (
    ALGORITHMS,
    CONSTRAINTS,
    INDICATORS,
    MEASURES,
    OBJECTIVE_NAME,
    FitnessOptions,
    SearchSpace,
    sipa_fitness,
    split_options,
)
from tfgated.search.oracles import (
    BaselineBayesianOptimizationOracle,
    BaselineRandomSearchOracle,
    NumpyBayesianOracle,
    SIPATuner,
    make_tuner,
)
from tfgated.search.tables import SIPA_PAPER, best_preset, format_table, trial_table, write_table

__all__ = [
    "ALGORITHMS",
    "CONSTRAINTS",
    "DEFAULT_BASE_ARCH",
    "INDICATORS",
    "MEASURES",
    "OBJECTIVE_NAME",
    "REFERENCE_BLOCKS",
    "SIPA_PAPER",
    "BaselineBayesianOptimizationOracle",
    "BaselineRandomSearchOracle",
    "FitnessOptions",
    "NumpyBayesianOracle",
    "SIPATuner",
    "SIPAHyperModel",
    "SearchSpace",
    "approximate_resolution",
    "arch_summary",
    "best_preset",
    "decode_block",
    "encode_block",
    "format_table",
    "make_tuner",
    "sipa_fitness",
    "split_options",
    "trial_table",
    "write_table",
]
