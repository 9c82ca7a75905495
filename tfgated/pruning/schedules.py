"""Pruning schedules with tfmot's semantics, and SIPA's list of round targets.

A schedule is called with a training step and returns ``(should_prune, sparsity)``:
:class:`ConstantSparsity` and :class:`PolynomialDecay` (Zhu & Gupta 2017) as in
``tensorflow-model-optimization``; :func:`sipa_schedule` gives the increasing
target sparsities of SIPA's iterative pruning rounds.
"""

from __future__ import annotations

import keras
import numpy as np

def _check_sparsity(name, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(value) < 1.0
    ):
        raise ValueError(
            f"Expected {name} to be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def _check_steps(begin_step, end_step, frequency, allow_end_minus_one):
    if not isinstance(begin_step, (int, np.integer)) or begin_step < 0:
        raise ValueError(
            f"Expected begin_step to be an integer >= 0. Received: begin_step={begin_step!r}"
        )
    if not isinstance(end_step, (int, np.integer)):
        raise ValueError(f"Expected end_step to be an integer. Received: end_step={end_step!r}")
    if end_step == -1 and not allow_end_minus_one:
        raise ValueError(
            "Expected end_step to be an integer >= begin_step; -1 (prune forever) is "
            f"only allowed for ConstantSparsity. Received: end_step={end_step!r}"
        )
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "Expected end_step to be -1 or >= begin_step. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )
    if not isinstance(frequency, (int, np.integer)) or frequency < 1:
        raise ValueError(
            f"Expected frequency to be an integer >= 1. Received: frequency={frequency!r}"
        )


class PruningSchedule:
    """Base class: ``schedule(step) -> (should_prune, sparsity)`` (as in tfmot)."""

    def _should_prune(self, step):
        """True when ``step`` is inside [begin_step, end_step] and on a frequency tick."""
        step = int(step)
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return bool(in_range and (step - self.begin_step) % self.frequency == 0)

    def __call__(self, step):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfgated")
class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` every ``frequency`` steps in [begin_step, end_step].

    ``end_step=-1`` prunes until training ends.
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_end_minus_one=True)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def __call__(self, step):
        """Returns ``(should_prune, target_sparsity)`` for training step ``step``."""
        return self._should_prune(step), self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfgated")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` (Zhu & Gupta 2017).

    ``sparsity(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``; masks are
    updated every ``frequency`` steps in [begin_step, end_step].
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_end_minus_one=False)
        if not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"Expected power to be a number > 0. Received: power={power!r}")
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = power
        self.frequency = int(frequency)

    def sparsity(self, step):
        """The schedule's sparsity at ``step`` (whether or not it is a pruning step)."""
        span = max(self.end_step - self.begin_step, 1)
        p = min(1.0, max(0.0, (int(step) - self.begin_step) / span))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - p
        ) ** self.power

    def __call__(self, step):
        """Returns ``(should_prune, sparsity)`` for training step ``step``."""
        return self._should_prune(step), self.sparsity(step)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def sipa_schedule(final=0.7, coarse_step=0.1, coarse_until=0.5, mid_step=0.025,
                  mid_until=0.6, fine_step=0.02):
    """SIPA's iterative pruning targets: coarse steps, then finer steps near the end.

    SIPA prunes 10% a round up to 50%, then 2.5% a round, then 2% a round. The
    paper gives the step sizes; the switch from 2.5% to 2% steps at 60% is our
    reading (``mid_until``). Defaults give
    ``[0.1, 0.2, 0.3, 0.4, 0.5, 0.525, 0.55, 0.575, 0.6, 0.62, ..., 0.7]``.
    The last value is always ``final``.
    """
    final = _check_sparsity("final", final)
    for name, value in (("coarse_step", coarse_step), ("mid_step", mid_step),
                        ("fine_step", fine_step)):
        if not value > 0:
            raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
    targets = []
    s = 0.0
    eps = 1e-9
    while True:
        if s + eps < coarse_until:
            step = coarse_step
        elif s + eps < mid_until:
            step = mid_step
        else:
            step = fine_step
        s = round(s + step, 6)
        if s >= final - eps:
            break
        targets.append(s)
    targets.append(round(final, 6))
    return targets
