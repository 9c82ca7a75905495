"""Oracles and tuner of a SIPA search: the base architecture first, Bayesian optimization
with or without scikit-learn, a tuner that runs without ``tensorboard``; :func:`make_tuner`."""

from __future__ import annotations

import json
import math
import os

import keras
import keras_tuner
import numpy as np

from tfgated.io import write_atomic
from tfgated.search.options import ALGORITHMS, OBJECTIVE_NAME


def _save_state(obj, fname):
    """``Stateful.save`` written atomically: a search killed at any instant leaves every
    ``trial.json``, ``oracle.json`` and ``tuner0.json`` complete (the old or the new one)."""
    fname = os.fspath(fname)
    if "://" in fname:  # a remote file system: KerasTuner's own writer
        from keras_tuner.src.engine.stateful import Stateful

        return Stateful.save(obj, fname)
    text = json.dumps(obj.get_state())
    write_atomic(fname, text)
    return text


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


class AtomicState:
    """Oracle mixin: ``oracle.json`` and each trial's ``trial.json`` are replaced atomically."""

    def save(self):
        _save_state(self, self._get_oracle_fname())

    def _save_trial(self, trial):
        _save_state(trial, os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"))


class BaselineFirst(AtomicState):
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

    def __init__(self, objective=None, max_trials=10, num_initial_points=None, alpha=1e-4, beta=2.6, seed=None,
                 candidates=2000, **oracle_kwargs):
        # oracle_kwargs: the other keras_tuner.Oracle arguments (hyperparameters, allow_new_entries, ...)
        keras_tuner.Oracle.__init__(self, objective=objective, max_trials=max_trials, seed=seed, **oracle_kwargs)
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
    """``keras_tuner.Tuner`` that works without tensorboard installed and saves its state atomically."""

    def save(self):
        """The oracle's state (the chief) and ``tuner0.json``, each replaced atomically."""
        if not self._is_worker():
            self.oracle.save()
        _save_state(self, self._get_tuner_fname())


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
