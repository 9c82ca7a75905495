"""SIPA "Searching" (Lee et al., MicroNet Challenge 2019, section 2.1) with KerasTuner.

The search space is an EfficientNet-style network (the SIPA family of
``tfgated.zoo.sipa``) described by *block arguments* and *compound scaling
coefficients*:

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
  ``"enforce"`` derives ``gamma = sqrt(target / (alpha * beta**2))`` (rounded
  to 2 decimals and clipped to ``resolution_range``; then the product can
  deviate, it is reported as ``compound_product``); ``"penalize"`` searches
  ``gamma`` too and subtracts ``constraint_weight * |product - target| / target``
  from the fitness; ``"none"`` searches ``gamma`` freely. The builder's
  ``resource`` (phi) is kept from the base architecture and, as in the SIPA
  reference code, exponentiates only the resolution (``gamma ** resource``);
  the constraint is stated for the coefficients themselves (phi = 1).

Objective: SIPA's fitness ``R(x) = A(x) - [alpha * I(F(x) - thres)] ** w``
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
(:func:`main_search`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys

import keras
import keras_tuner
import numpy as np

from tfgated.blocks import SIPA_REFERENCE_BLOCKS as REFERENCE_BLOCKS
from tfgated.blocks import decode_block, encode_block
from tfgated.io import write_atomic, write_json

__all__ = [
    "CONSTRAINTS",
    "INDICATORS",
    "MEASURES",
    "NumpyBayesianOracle",
    "SIPATuner",
    "SIPAHyperModel",
    "arch_summary",
    "best_preset",
    "decode_block",
    "encode_block",
    "load_preset_file",
    "main_search",
    "make_tuner",
    "sipa_fitness",
    "trial_table",
    "write_table",
]

MEASURES = ("macs", "micronet")
INDICATORS = ("step", "hinge")
CONSTRAINTS = ("enforce", "penalize", "none")
ALGORITHMS = ("bayesian", "random")
OBJECTIVE_NAME = "fitness"

#: The base architecture when none is given: the preset ``sipa_fashion_mnist``.
DEFAULT_BASE_ARCH = {"blocks": list(REFERENCE_BLOCKS), "resolution": 1.4, "resource": 1, "width": 0.9, "depth": 1.0}
SIPA_PAPER = {
    "source": "Lee, Bae, Oh, Yun: SIPA: A Simple Framework for Efficient Networks (MicroNet Challenge 2019, "
    "CIFAR-100 track), section 2.1 Searching",
    "table": "architecture found by tfgated.search on this machine",
    "numbers": {},
}


# -- block arguments -------------------------------------------------------------------


def _round_channels(channels, divisor):
    """``channels`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return int(max(divisor, int(channels + divisor / 2) // divisor * divisor))


def arch_summary(arch):
    """A one-line summary: ``"d1.0 w0.9 r1.4 | k3s1e1o16se0.2 k5s1e6o24se0 ..."``."""
    blocks = " ".join(
        f"k{b['kernel']}s{b['stride']}e{b['expand']}o{b['filters_out']}se{b['se_ratio'] or 0:g}"
        for b in (decode_block(block) for block in arch.get("blocks", ()))
    )
    return f"d{arch.get('depth', 1.0):g} w{arch.get('width', 1.0):g} r{arch.get('resolution', 1.0):g} | {blocks}"


# -- fitness -------------------------------------------------------------------------


def sipa_fitness(accuracy, cost, threshold, alpha=1.0, w=1.0, indicator="step"):
    """SIPA's fitness ``R = A - [alpha * I(F - thres)] ** w``.

    Args:
        accuracy: ``A``, the validation accuracy.
        cost: ``F``, the model's MACs or MicroNet score.
        threshold: ``thres``, the budget in the unit of ``cost``; ``None``
            means no budget (``R = A``).
        alpha, w: penalty coefficient and exponent.
        indicator: ``"step"`` (``I(v) = 1`` if ``v > 0`` else 0, the literal
            reading) or ``"hinge"`` (``I(v) = max(v, 0) / thres``).

    Returns:
        ``(fitness, penalty)`` as floats.
    """
    if indicator not in INDICATORS:
        raise ValueError(f"Expected indicator in {list(INDICATORS)}. Received: indicator={indicator!r}")
    if threshold is None:
        return float(accuracy), 0.0
    if threshold <= 0:
        raise ValueError(f"Expected a positive budget. Received: threshold={threshold!r}")
    excess = float(cost) - float(threshold)
    value = (1.0 if excess > 0 else 0.0) if indicator == "step" else max(excess, 0.0) / float(threshold)
    penalty = float((alpha * value) ** w) if value > 0 else 0.0
    return float(accuracy) - penalty, penalty


class _FitnessLogger(keras.callbacks.Callback):
    """Adds ``fitness`` and the cost metrics to the epoch logs, and keeps them per epoch."""

    def __init__(self, hypermodel, arch, costs):
        super().__init__()
        self.hypermodel = hypermodel
        self.arch = arch
        self.costs = costs
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        key = self.hypermodel.accuracy_key
        if key not in logs:
            raise ValueError(
                f"Expected the metric {key!r} in the epoch logs to compute the SIPA fitness "
                f"(pass validation data and an accuracy metric). Received logs: {sorted(logs)}"
            )
        metrics = self.hypermodel.fitness_metrics(float(logs[key]), self.arch, self.costs)
        logs.update(metrics)
        self.epochs.append({k: float(v) for k, v in logs.items()})


# -- the hypermodel ------------------------------------------------------------------


def _check_choices(name, values, low=None):
    values = tuple(values)
    if not values:
        raise ValueError(f"Expected at least one value for {name}. Received: {name}={values!r}")
    if low is not None and any(v < low for v in values):
        raise ValueError(f"Expected every {name} value >= {low}. Received: {name}={values!r}")
    return values


def _check_range(name, value):
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"Expected {name} = (low, high) with 0 < low <= high. Received: {name}={value!r}")
    return low, high


class SIPAHyperModel(keras_tuner.HyperModel):
    """KerasTuner hypermodel over SIPA's block arguments and compound scaling.

    Args:
        num_classes, input_shape: of the dataset (input before upsampling).
        base_arch: builder keyword arguments of the base network (default
            :data:`DEFAULT_BASE_ARCH`, the ``sipa_fashion_mnist`` preset's);
            ``blocks`` are the base blocks, ``depth``/``width``/``resolution``
            the default scaling values; other keys (``resource``,
            ``stem_filters``, ``head_filters``, ``dropout`` ...) pass through.
        build_fn: ``build_fn(arch) -> keras.Model``; default builds
            ``tfgated.zoo.sipa.build_sipa(num_classes, input_shape, **arch)``
            (imported when first used).
        budget: the fitness threshold in the unit of ``measure`` (None: no budget).
        measure: ``"macs"`` (MACs per example) or ``"micronet"`` (MicroNet score at ``bits``).
        penalty, exponent, indicator: ``alpha``, ``w`` and ``I`` of :func:`sipa_fitness`.
        constraint: ``"enforce"``, ``"penalize"`` or ``"none"`` (module docstring).
        compound_target: target of ``depth * width**2 * resolution**2``.
        constraint_weight: weight of the ``"penalize"`` term.
        kernel_sizes, expand_ratios, se_ratios, channel_multipliers: per-block choices.
        search_strides: let base stride-2 blocks choose stride 1.
        depth_range, width_range, resolution_range: ``(low, high)`` of the
            scaling coefficients (equal ends fix the value), searched in steps
            of ``scaling_step``.
        divisor: channel rounding of searched channels (the builder's, 8).
        learning_rate: Adam learning rate of the default compile.
        compile_fn: optional ``compile_fn(model)``; the default compiles with
            Adam, sparse categorical cross-entropy and ``accuracy``.
        accuracy_key: the logged validation accuracy used as ``A``.
    """

    def __init__(
        self,
        num_classes=10,
        input_shape=(28, 28, 1),
        base_arch=None,
        build_fn=None,
        budget=None,
        measure="macs",
        bits=16,
        penalty=1.0,
        exponent=1.0,
        indicator="step",
        constraint="enforce",
        compound_target=2.0,
        constraint_weight=1.0,
        kernel_sizes=(3, 5),
        expand_ratios=(1, 3, 6),
        se_ratios=(0.0, 0.1, 0.2, 0.25),
        channel_multipliers=(0.75, 1.0, 1.25),
        search_strides=True,
        depth_range=(0.8, 1.2),
        width_range=(0.7, 1.1),
        resolution_range=(1.0, 1.6),
        scaling_step=0.1,
        divisor=8,
        learning_rate=1e-3,
        compile_fn=None,
        accuracy_key="val_accuracy",
        name="sipa_search",
    ):
        super().__init__(name=name, tunable=True)
        if measure not in MEASURES:
            raise ValueError(f"Expected measure in {list(MEASURES)}. Received: measure={measure!r}")
        if indicator not in INDICATORS:
            raise ValueError(f"Expected indicator in {list(INDICATORS)}. Received: indicator={indicator!r}")
        if constraint not in CONSTRAINTS:
            raise ValueError(f"Expected constraint in {list(CONSTRAINTS)}. Received: constraint={constraint!r}")
        if budget is not None and not budget > 0:
            raise ValueError(f"Expected a positive budget or None. Received: budget={budget!r}")
        if bits not in (16, 32):
            raise ValueError(f"Expected bits to be 16 or 32. Received: bits={bits!r}")
        if not scaling_step > 0:
            raise ValueError(f"Expected scaling_step > 0. Received: scaling_step={scaling_step!r}")
        if build_fn is not None and not callable(build_fn):
            raise ValueError(f"Expected build_fn to be callable. Received: build_fn={build_fn!r}")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.base_arch = dict(DEFAULT_BASE_ARCH if base_arch is None else base_arch)
        self.base_arch.setdefault("blocks", list(REFERENCE_BLOCKS))
        self.base_blocks = [decode_block(b) for b in self.base_arch["blocks"]]
        if not self.base_blocks:
            raise ValueError("Expected at least one base block. Received: blocks=[]")
        self.build_fn = build_fn
        self.budget = None if budget is None else float(budget)
        self.measure = measure
        self.bits = bits
        self.penalty = float(penalty)
        self.exponent = float(exponent)
        self.indicator = indicator
        self.constraint = constraint
        self.compound_target = float(compound_target)
        self.constraint_weight = float(constraint_weight)
        self.kernel_sizes = tuple(int(v) for v in _check_choices("kernel_sizes", kernel_sizes, low=1))
        self.expand_ratios = tuple(int(v) for v in _check_choices("expand_ratios", expand_ratios, low=1))
        self.se_ratios = tuple(float(v) for v in _check_choices("se_ratios", se_ratios, low=0))
        self.channel_multipliers = tuple(
            float(v) for v in _check_choices("channel_multipliers", channel_multipliers, low=1e-6)
        )
        self.search_strides = bool(search_strides)
        self.depth_range = _check_range("depth_range", depth_range)
        self.width_range = _check_range("width_range", width_range)
        self.resolution_range = _check_range("resolution_range", resolution_range)
        self.scaling_step = float(scaling_step)
        self.divisor = int(divisor)
        self.learning_rate = float(learning_rate)
        self.compile_fn = compile_fn
        self.accuracy_key = accuracy_key

    # -- search space ------------------------------------------------------------

    @staticmethod
    def _choice(hp, name, values, default):
        values = list(dict.fromkeys(values))
        if len(values) == 1:
            return hp.Fixed(name, values[0])
        return hp.Choice(name, values, default=default if default in values else values[0])

    def _scale(self, hp, name, value_range, default):
        low, high = value_range
        if high - low < 1e-9:
            return float(hp.Fixed(name, round(low, 4)))
        steps = int(math.floor((high - low) / self.scaling_step + 1e-9))
        high = round(low + steps * self.scaling_step, 4)
        default = min(max(float(default), low), high)
        default = round(low + round((default - low) / self.scaling_step) * self.scaling_step, 4)
        # Rounded: KerasTuner's stepped floats carry binary noise (0.8999999999999999).
        return round(float(hp.Float(name, low, high, step=self.scaling_step, default=default)), 4)

    def architecture(self, hp):
        """The builder keyword arguments chosen by ``hp`` (registers the
        hyperparameters on first use). ``blocks`` are block strings."""
        blocks = []
        filters_in = self.base_blocks[0]["filters_in"]
        for index, base in enumerate(self.base_blocks):
            prefix = f"b{index}"
            kernel = self._choice(hp, f"{prefix}_kernel", (*self.kernel_sizes, base["kernel"]), base["kernel"])
            if base["stride"] == 2 and self.search_strides:
                stride = self._choice(hp, f"{prefix}_stride", (1, 2), 2)
            else:
                stride = int(hp.Fixed(f"{prefix}_stride", int(base["stride"])))
            multiplier = self._choice(hp, f"{prefix}_channels", self.channel_multipliers, 1.0)
            expand = self._choice(hp, f"{prefix}_expand", (*self.expand_ratios, base["expand"]), base["expand"])
            base_se = float(base["se_ratio"] or 0.0)
            se_ratio = self._choice(hp, f"{prefix}_se", (*self.se_ratios, base_se), base_se)
            filters_out = _round_channels(base["filters_out"] * float(multiplier), self.divisor)
            blocks.append(
                encode_block(
                    {
                        "repeats": base["repeats"],
                        "kernel": int(kernel),
                        "stride": int(stride),
                        "expand": int(expand),
                        "filters_in": filters_in,
                        "filters_out": filters_out,
                        "se_ratio": float(se_ratio),
                        "id_skip": base["id_skip"],
                    }
                )
            )
            filters_in = filters_out
        depth = self._scale(hp, "depth", self.depth_range, self.base_arch.get("depth", 1.0))
        width = self._scale(hp, "width", self.width_range, self.base_arch.get("width", 1.0))
        if self.constraint == "enforce":
            gamma = math.sqrt(self.compound_target / (depth * width**2))
            resolution = round(min(max(gamma, self.resolution_range[0]), self.resolution_range[1]), 2)
        else:
            resolution = self._scale(hp, "resolution", self.resolution_range, self.base_arch.get("resolution", 1.0))
        return {**self.base_arch, "blocks": blocks, "depth": depth, "width": width, "resolution": resolution}

    def compound_product(self, arch):
        """``depth * width**2 * resolution**2`` of ``arch``."""
        return float(arch["depth"]) * float(arch["width"]) ** 2 * float(arch["resolution"]) ** 2

    # -- building --------------------------------------------------------------

    def build_model(self, arch):
        """The (uncompiled unless ``build_fn`` compiles) model of ``arch``."""
        if self.build_fn is not None:
            return self.build_fn(dict(arch))
        from tfgated.zoo.sipa import build_sipa  # lazily: tfgated does not import the zoo

        return build_sipa(num_classes=self.num_classes, input_shape=self.input_shape, **arch)

    def compile_model(self, model):
        if self.compile_fn is not None:
            self.compile_fn(model)
            return model
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        return model

    def build(self, hp):
        model = self.build_model(self.architecture(hp))
        if not getattr(model, "compiled", False):
            self.compile_model(model)
        return model

    # -- fitness ---------------------------------------------------------------

    def costs(self, model):
        """``{"macs", "params", "cost"}`` of ``model``; ``cost`` is ``F`` (MACs or MicroNet score)."""
        from tfgated.complexity import count

        report = count(model)
        costs = {"macs": float(report.macs), "params": float(report.params)}
        if self.measure == "macs":
            costs["cost"] = costs["macs"]
        else:
            from tfgated.micronet import micronet_score

            costs["cost"] = float(micronet_score(model, bits=self.bits).score)
        return costs

    def fitness_metrics(self, accuracy, arch, costs):
        """The metrics logged per epoch: ``fitness``, ``penalty``, ``compound_product`` and ``costs``."""
        fitness, penalty = sipa_fitness(
            accuracy, costs["cost"], self.budget, self.penalty, self.exponent, self.indicator
        )
        product = self.compound_product(arch)
        if self.constraint == "penalize":
            constraint_penalty = self.constraint_weight * abs(product - self.compound_target) / self.compound_target
            fitness -= constraint_penalty
            penalty += constraint_penalty
        return {"fitness": fitness, "penalty": penalty, "compound_product": product, **costs}

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """Train ``model`` (``model.fit(*args, **kwargs)``, validation data
        required) and return the metrics of its best-fitness epoch."""
        arch = self.architecture(hp)
        logger = _FitnessLogger(self, arch, self.costs(model))
        model.fit(*args, callbacks=[logger, *(callbacks or [])], **kwargs)
        if not logger.epochs:
            raise ValueError("Expected at least one training epoch. Received: epochs=0")
        return max(logger.epochs, key=lambda metrics: metrics[OBJECTIVE_NAME])


# -- Bayesian optimization without scikit-learn ------------------------------------


class _NumpyGaussianProcess:
    """GP regression, Matern 5/2 kernel, normalized targets; the length scale
    is picked from a grid by marginal likelihood. The ``fit`` /
    ``predict(x, return_std=True)`` interface of scikit-learn's regressor."""

    LENGTH_SCALES = (0.1, 0.2, 0.35, 0.5, 1.0, 2.0)

    def __init__(self, alpha=1e-4):
        self.alpha = alpha
        self.x = None

    @staticmethod
    def _kernel(a, b, length):
        d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0)) / length
        return (1.0 + math.sqrt(5) * d + 5.0 / 3.0 * d**2) * np.exp(-math.sqrt(5) * d)

    def fit(self, x, y):
        self.x = np.asarray(x, dtype="float64")
        y = np.asarray(y, dtype="float64")
        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        target = (y - self.mean) / self.std
        best = None
        for length in self.LENGTH_SCALES:
            k = self._kernel(self.x, self.x, length) + self.alpha * np.eye(len(self.x))
            try:
                chol = np.linalg.cholesky(k)
            except np.linalg.LinAlgError:
                continue
            weights = np.linalg.solve(chol.T, np.linalg.solve(chol, target))
            likelihood = -0.5 * target @ weights - np.log(np.diag(chol)).sum()
            if best is None or likelihood > best[0]:
                best = (likelihood, length, chol, weights)
        if best is None:
            raise ValueError("Could not fit the Gaussian process: the kernel matrix is singular.")
        _, self.length, self.chol, self.weights = best
        return self

    def predict(self, x, return_std=False):
        x = np.asarray(x, dtype="float64")
        ks = self._kernel(x, self.x, self.length)
        mean = ks @ self.weights * self.std + self.mean
        if not return_std:
            return mean
        v = np.linalg.solve(self.chol, ks.T)
        variance = np.maximum(1.0 - (v**2).sum(0), 1e-12)
        return mean, np.sqrt(variance) * self.std


class BaselineFirst:
    """Oracle mixin: the first trial of a search runs the hyperparameters' default
    values, i.e. the base architecture, so the trial table starts with the
    fitness the search has to beat."""

    def populate_space(self, trial_id):
        if not self.trials:
            space = self.hyperparameters
            values = {hp.name: hp.default for hp in space.space if space.is_active(hp)}
            return {"status": "RUNNING", "values": values}
        return super().populate_space(trial_id)


class BaselineRandomSearchOracle(BaselineFirst, keras_tuner.oracles.RandomSearchOracle):
    """``keras_tuner.oracles.RandomSearchOracle`` whose first trial is the base architecture."""


class BaselineBayesianOptimizationOracle(BaselineFirst, keras_tuner.oracles.BayesianOptimizationOracle):
    """``keras_tuner.oracles.BayesianOptimizationOracle`` (scikit-learn) whose first trial is the base architecture."""


class _NumpyGaussianProcessOracle(keras_tuner.oracles.BayesianOptimizationOracle):
    """KerasTuner's Bayesian optimization oracle with a numpy Gaussian process.

    The same algorithm as ``keras_tuner.oracles.BayesianOptimizationOracle``
    (random initial points, then the UCB ``mean + beta * std`` maximised), for
    machines without scikit-learn/scipy: the acquisition is maximised over
    ``candidates`` random points of the encoded space (snapped to valid
    values) instead of L-BFGS restarts, skipping already tried values.
    """

    def __init__(
        self,
        objective=None,
        max_trials=10,
        num_initial_points=None,
        alpha=1e-4,
        beta=2.6,
        seed=None,
        hyperparameters=None,
        allow_new_entries=True,
        tune_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        candidates=2000,
    ):
        keras_tuner.Oracle.__init__(
            self,
            objective=objective,
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        self.num_initial_points = num_initial_points
        self.alpha = alpha
        self.beta = beta
        self.candidates = int(candidates)
        self._random_state = np.random.RandomState(self.seed)
        self.gpr = self._make_gpr()

    def _make_gpr(self):
        return _NumpyGaussianProcess(alpha=self.alpha)

    def populate_space(self, trial_id):
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        dimensions = len(self._nonfixed_space())
        num_initial_points = self.num_initial_points or max(3 * dimensions, 3)
        if len(completed) < num_initial_points or dimensions == 0:
            return self._random_populate_space()
        # Ongoing trials are scored with the previous fit (KerasTuner's rule),
        # so fit once on the completed trials first.
        x, y = self._vectorize_completed()
        self.gpr.fit(x, y)
        x, y = self._vectorize_trials()
        self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
        candidates = self._random_state.uniform(size=(self.candidates, dimensions))
        candidates = np.array([self._snap(c) for c in candidates])
        mean, std = self.gpr.predict(candidates, return_std=True)
        for index in np.argsort(mean - self.beta * std):  # minimizing the negated score
            values = self._vector_to_values(candidates[index])
            if not self._duplicate(values):
                return {"status": "RUNNING", "values": values}
        return self._random_populate_space()

    def _snap(self, vector):
        return np.array([hp.value_to_prob(hp.prob_to_value(p)) for hp, p in zip(self._nonfixed_space(), vector)])

    def _vectorize_completed(self):
        x, y = [], []
        for trial in self.trials.values():
            if trial.status != "COMPLETED":
                continue
            values = trial.hyperparameters.values
            x.append([hp.value_to_prob(values.get(hp.name, hp.default)) for hp in self._nonfixed_space()])
            score = trial.score
            y.append(-score if self.objective.direction == "max" else score)
        return np.nan_to_num(np.array(x)), np.nan_to_num(np.array(y), posinf=0, neginf=0)

    def get_state(self):
        return {**super().get_state(), "candidates": self.candidates}

    def set_state(self, state):
        super().set_state(state)
        self.candidates = int(state.get("candidates", self.candidates))


class NumpyBayesianOracle(BaselineFirst, _NumpyGaussianProcessOracle):
    """Bayesian optimization with a numpy Gaussian process (no scikit-learn
    needed) whose first trial is the base architecture."""


def _tensorboard_available():
    try:
        import tensorboard.plugins.hparams.api  # noqa: F401
    except ImportError:
        return False
    return True


class _OptionalTensorBoard:
    """KerasTuner's TensorFlow-backend tuners import ``tensorboard`` at every
    trial to patch TensorBoard callbacks, and TensorFlow 2.21 no longer
    installs it: skip that step when no TensorBoard callback is used."""

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        if not _tensorboard_available():
            if any(isinstance(cb, keras.callbacks.TensorBoard) for cb in callbacks):
                raise ValueError(
                    "A TensorBoard callback in a search needs the package tensorboard: pip install tensorboard"
                )
            return
        super()._configure_tensorboard_dir(callbacks, trial, execution)


class SIPATuner(_OptionalTensorBoard, keras_tuner.Tuner):
    """``keras_tuner.Tuner`` that works without tensorboard installed."""


def _has_sklearn():
    try:
        import scipy.optimize  # noqa: F401
        import sklearn.gaussian_process  # noqa: F401
    except ImportError:
        return False
    return True


def make_tuner(
    hypermodel,
    algorithm="bayesian",
    max_trials=10,
    directory="sipa_search",
    project_name="sipa",
    overwrite=False,
    seed=None,
    num_initial_points=None,
    executions_per_trial=1,
):
    """A KerasTuner tuner maximizing ``fitness`` for ``hypermodel``.

    A :class:`SIPATuner` (runs without the ``tensorboard`` package) on an
    oracle whose first trial is the base architecture: ``algorithm="bayesian"``
    uses KerasTuner's Bayesian optimization oracle when scikit-learn is
    installed, else :class:`NumpyBayesianOracle`; ``"random"`` uses KerasTuner's
    random search oracle. ``num_initial_points`` random trials precede the Gaussian-process ones;
    default ``max(2, max_trials // 3)`` (KerasTuner's own default, three per
    searched hyperparameter, would be about 100 here: a short search would
    stay random).
    With ``overwrite=False`` an existing ``directory/project_name`` is resumed.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Expected algorithm in {list(ALGORITHMS)}. Received: algorithm={algorithm!r}")
    if not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"Expected max_trials to be a positive integer. Received: max_trials={max_trials!r}")
    objective = keras_tuner.Objective(OBJECTIVE_NAME, "max")
    if num_initial_points is None:
        num_initial_points = max(2, max_trials // 3)
    common = dict(
        directory=os.fspath(directory),
        project_name=project_name,
        overwrite=overwrite,
        executions_per_trial=executions_per_trial,
    )
    if algorithm == "random":
        oracle = BaselineRandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed)
    elif _has_sklearn():
        oracle = BaselineBayesianOptimizationOracle(
            objective=objective, max_trials=max_trials, num_initial_points=num_initial_points, seed=seed
        )
    else:
        oracle = NumpyBayesianOracle(
            objective=objective, max_trials=max_trials, num_initial_points=num_initial_points, seed=seed
        )
    return SIPATuner(oracle=oracle, hypermodel=hypermodel, **common)


# -- reports ---------------------------------------------------------------------


def _metric(trial, name):
    if trial.metrics.exists(name):
        value = trial.metrics.get_best_value(name) if name == OBJECTIVE_NAME else trial.metrics.get_last_value(name)
        return None if value is None else float(value)
    return None


def trial_table(tuner, hypermodel=None):
    """One row per trial (start order): ``trial``, ``status``, ``fitness``,
    ``val_accuracy``, ``macs``, ``params``, ``cost``, ``penalty``,
    ``compound_product``, ``arch`` (summary) and ``hyperparameters``."""
    hypermodel = hypermodel or tuner.hypermodel
    rows = []
    oracle = tuner.oracle
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        hp = trial.hyperparameters.copy()
        row = {"trial": trial_id, "status": str(trial.status)}
        for name in ("fitness", "val_accuracy", "macs", "params", "cost", "penalty", "compound_product"):
            row[name] = _metric(trial, name)
        row["arch"] = arch_summary(hypermodel.architecture(hp))
        row["hyperparameters"] = dict(trial.hyperparameters.values)
        rows.append(row)
    return rows


def format_table(rows):
    """Fixed-width text table of :func:`trial_table` rows."""
    header = f"{'trial':>5} {'status':<10} {'fitness':>8} {'val acc':>8} {'MACs':>14}  arch"
    lines = [header, "-" * len(header)]

    def number(value, spec):
        return format(value, spec) if value is not None else "-"

    for r in rows:
        lines.append(
            f"{r['trial']:>5} {r['status']:<10} {number(r['fitness'], '8.4f'):>8} "
            f"{number(r['val_accuracy'], '8.4f'):>8} {number(r['macs'], '14,.0f'):>14}  {r['arch']}"
        )
    return "\n".join(lines)


def write_table(rows, json_path=None, csv_path=None):
    """Write the trial table as JSON and/or CSV (atomically)."""
    if json_path:
        write_json(json_path, rows)
    if csv_path:
        buffer = io.StringIO()
        columns = ["trial", "status", "fitness", "val_accuracy", "macs", "params", "cost", "penalty",
                   "compound_product", "arch"]
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
        write_atomic(csv_path, buffer.getvalue())


def best_preset(tuner, hypermodel=None, dataset=None, recipe=None, description=None, search_info=None):
    """The best trial's architecture as preset data (the zoo's schema, family ``"sipa"``)."""
    hypermodel = hypermodel or tuner.hypermodel
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise ValueError(f"No completed trial in {tuner.project_dir!r}: nothing to write.")
    trial = best[0]
    arch = hypermodel.architecture(trial.hyperparameters.copy())
    metrics = {name: _metric(trial, name) for name in ("fitness", "val_accuracy", "macs", "params", "cost")}
    budget = "no budget" if hypermodel.budget is None else f"budget {hypermodel.budget:g} {hypermodel.measure}"
    return {
        "family": "sipa",
        "arch": arch,
        "gates": None,
        "dataset": dataset,
        "input_shape": list(hypermodel.input_shape),
        "num_classes": hypermodel.num_classes,
        "recipe": dict(recipe or {"optimizer": "adam", "learning_rate": hypermodel.learning_rate}),
        "weights": None,
        "paper": {**SIPA_PAPER, "numbers": {k: v for k, v in metrics.items() if v is not None}},
        "description": description
        or (
            f"SIPA architecture found by tfgated.search (trial {trial.trial_id}, {budget}, fitness "
            f"{metrics['fitness']}, validation accuracy {metrics['val_accuracy']}, MACs {metrics['macs']}): "
            f"{arch_summary(arch)}."
        ),
        "search": {"trial": trial.trial_id, **(search_info or {}), **metrics},
    }


def load_preset_file(path, weights=None, num_classes=None, input_shape=None, compile=True, **overrides):
    """Build (and compile per its recipe) the model of a preset JSON file.

    The same as ``tfgated.zoo.load(path, ...)``, which accepts preset files:
    the file holds one preset in the zoo's schema, as written by
    ``python -m tfgated search --output``; it is not added to ``list_models()``.
    """
    from tfgated.zoo import registry  # lazily: tfgated does not import the zoo

    return registry.load(
        os.fspath(path), weights=weights, num_classes=num_classes, input_shape=input_shape,
        compile=compile, **overrides,
    )


# -- command line -----------------------------------------------------------------


def _is_worker():
    """True in KerasTuner's distributed mode on a worker (not the chief)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")


def _json_arg(text, what):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Expected {what} to be a JSON object. Received: {text!r} ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"Expected {what} to be a JSON object. Received: {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfgated search",
        description="SIPA architecture search (EfficientNet blocks + compound scaling) with KerasTuner. "
        "Re-running the same command resumes the search in DIRECTORY/PROJECT.",
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="tfgated.data dataset name")
    parser.add_argument("--data-dir", default=None, help="dataset folder (TFDS data_dir)")
    parser.add_argument("--base", default=None, help="zoo preset of the base architecture (default sipa_fashion_mnist "
                        "for fashion_mnist, sipa_cifar100 otherwise)")
    parser.add_argument("--arch-json", default=None, help="JSON object updating the base arch, e.g. "
                        "'{\"blocks\": [\"r1_k3_s2_e1_i24_o16_se0.2\"], \"head_filters\": 32}'")
    parser.add_argument("--space-json", default=None, help="JSON object of extra SIPAHyperModel arguments, e.g. "
                        "'{\"depth_range\": [1, 1], \"channel_multipliers\": [0.5, 1]}'")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-macs", type=float, default=None, help="MACs per example budget (thres)")
    budget.add_argument("--budget-score", type=float, default=None, help="MicroNet score budget (thres)")
    parser.add_argument("--bits", type=int, choices=(16, 32), default=16, help="MicroNet scoring precision")
    parser.add_argument("--indicator", choices=INDICATORS, default="step")
    parser.add_argument("--penalty", type=float, default=1.0, help="alpha of R = A - [alpha I(F - thres)]^w")
    parser.add_argument("--exponent", type=float, default=1.0, help="w of R = A - [alpha I(F - thres)]^w")
    parser.add_argument("--constraint", choices=CONSTRAINTS, default="enforce")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="bayesian")
    parser.add_argument("--trials", type=int, default=10, help="max_trials (total, including resumed ones)")
    parser.add_argument("--initial-points", type=int, default=None,
                        help="random trials before Bayesian ones (default max(2, trials // 3))")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per trial")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training/test examples")
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directory", default="sipa_search", help="tuner folder (resumable)")
    parser.add_argument("--project-name", default="sipa")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    parser.add_argument("--output", default="sipa_searched.json", help="preset JSON file of the best architecture")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity")
    return parser


def main_search(argv=None):
    """``python -m tfgated search ...``: run (or resume) a SIPA search, print the
    trial table, write the best architecture as a preset JSON file (``--output``)
    and the table beside it (``OUTPUT.trials.json`` and ``.csv``). Returns 0.

    In KerasTuner's distributed mode a worker only runs trials; the chief
    serves the oracle and then writes the reports.
    """
    args = _parser().parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        raise ValueError(f"Expected --trials and --epochs >= 1. Received: {args.trials}, {args.epochs}")
    from tfgated.data import load_dataset

    data = load_dataset(
        args.dataset, data_dir=args.data_dir, batch_size=args.batch_size, limit=args.limit,
        validation_split=args.validation_split, seed=args.seed,
    )
    if data.validation is None:
        raise ValueError("The SIPA fitness needs validation data. Received: --validation-split 0")
    import tfgated.zoo  # the CLI may import the zoo

    base_name = args.base or ("sipa_fashion_mnist" if args.dataset == "fashion_mnist" else "sipa_cifar100")
    base = tfgated.zoo.get_preset(base_name)
    base_arch = {"blocks": list(REFERENCE_BLOCKS), **base["arch"]}
    if args.arch_json:
        base_arch.update(_json_arg(args.arch_json, "--arch-json"))
    space = _json_arg(args.space_json, "--space-json") if args.space_json else {}
    measure = "micronet" if args.budget_score is not None else "macs"
    hypermodel = SIPAHyperModel(
        num_classes=data.info.num_classes,
        input_shape=data.info.input_shape,
        base_arch=base_arch,
        budget=args.budget_score if measure == "micronet" else args.budget_macs,
        measure=measure,
        bits=args.bits,
        penalty=args.penalty,
        exponent=args.exponent,
        indicator=args.indicator,
        constraint=args.constraint,
        learning_rate=args.learning_rate,
        **space,
    )
    tuner = make_tuner(
        hypermodel, algorithm=args.algorithm, max_trials=args.trials, directory=args.directory,
        project_name=args.project_name, overwrite=args.overwrite, seed=args.seed,
        num_initial_points=args.initial_points,
    )
    tuner.search(data.train, validation_data=data.validation, epochs=args.epochs, verbose=args.verbose)
    if _is_worker():
        print(f"Worker {os.environ.get('KERASTUNER_TUNER_ID')} finished: no more trials from the chief.")
        sys.stdout.flush()
        return 0
    rows = trial_table(tuner, hypermodel)
    print(format_table(rows))
    recipe = {**base.get("recipe", {}), "search_epochs": args.epochs}
    preset = best_preset(
        tuner, hypermodel, dataset=args.dataset, recipe=recipe,
        search_info={
            "budget": hypermodel.budget, "measure": measure, "indicator": args.indicator,
            "constraint": args.constraint, "algorithm": args.algorithm, "trials": len(rows),
            "epochs": args.epochs, "limit": args.limit, "base": base_name,
        },
    )
    stem = args.output[: -len(".json")] if args.output.endswith(".json") else args.output
    write_json(args.output, preset)
    write_table(rows, json_path=f"{stem}.trials.json", csv_path=f"{stem}.trials.csv")
    print(f"Best trial {preset['search']['trial']}: fitness {preset['search']['fitness']}; preset written to "
          f"{args.output} (trials: {stem}.trials.json, {stem}.trials.csv)")
    sys.stdout.flush()
    return 0
