"""The settings of a SIPA search: its space (:class:`SearchSpace`), its objective
(:class:`FitnessOptions`) and SIPA's fitness function (:func:`sipa_fitness`)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

MEASURES = ("macs", "micronet")
INDICATORS = ("step", "hinge")
CONSTRAINTS = ("approximate", "enforce", "penalize", "none")
ALGORITHMS = ("bayesian", "random")
OBJECTIVE_NAME = "fitness"


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Expected {name} in {list(allowed)}. Received: {name}={value!r}")
    return value


def _check_choices(name, values, cast, low):
    values = tuple(values)
    if not values:
        raise ValueError(f"Expected at least one value for {name}. Received: {name}={values!r}")
    if any(v < low for v in values):
        raise ValueError(f"Expected every {name} value >= {low}. Received: {name}={values!r}")
    return tuple(cast(v) for v in values)


def _check_range(name, value):
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"Expected {name} = (low, high) with 0 < low <= high. Received: {name}={value!r}")
    return low, high


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
    return value


def _check_tolerance(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"Expected constraint_tolerance in [0, 1). Received: constraint_tolerance={value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a SIPA search varies: block arguments and compound scaling (see :mod:`tfgated.search`).

    Attributes:
        kernel_sizes, expand_ratios, se_ratios, channel_multipliers: per-block
            choices (the base block's own value is always among them).
        search_strides: let base stride-2 blocks choose stride 1.
        depth_range, width_range, resolution_range: ``(low, high)`` of the
            scaling coefficients (equal ends fix the value), searched in steps
            of ``scaling_step``.
        divisor: channel rounding of searched channels (the builder's, 8).
        constraint: ``"approximate"`` (the default: resolution searched, then
            moved into the band where the product is within ``constraint_tolerance``
            of the target), ``"enforce"`` (resolution derived from depth and width),
            ``"penalize"`` (a fitness term) or ``"none"``.
        compound_target: target of ``depth * width**2 * resolution**2``.
        constraint_weight: weight of the ``"penalize"`` term.
        constraint_tolerance: relative tolerance of ``"approximate"``: the product
            may lie in ``target * [1 - tol, 1 + tol]``. The default 0.25 admits SIPA's
            own coefficients (depth 1, width 0.9, resolution 1.4: product 1.588, 21%
            under the target 2; the authors lowered the width from their search's
            ``sqrt(2) / 1.4 = 1.01`` "to lighten this model").
    """

    kernel_sizes: Tuple[int, ...] = (3, 5)
    expand_ratios: Tuple[int, ...] = (1, 3, 6)
    se_ratios: Tuple[float, ...] = (0.0, 0.1, 0.2, 0.25)
    channel_multipliers: Tuple[float, ...] = (0.75, 1.0, 1.25)
    search_strides: bool = True
    depth_range: Tuple[float, float] = (0.8, 1.2)
    width_range: Tuple[float, float] = (0.7, 1.1)
    resolution_range: Tuple[float, float] = (1.0, 1.6)
    scaling_step: float = 0.1
    divisor: int = 8
    constraint: str = "approximate"
    compound_target: float = 2.0
    constraint_weight: float = 1.0
    constraint_tolerance: float = 0.25

    def __post_init__(self):
        checked = {
            "kernel_sizes": _check_choices("kernel_sizes", self.kernel_sizes, int, 1),
            "expand_ratios": _check_choices("expand_ratios", self.expand_ratios, int, 1),
            "se_ratios": _check_choices("se_ratios", self.se_ratios, float, 0),
            "channel_multipliers": _check_choices("channel_multipliers", self.channel_multipliers, float, 1e-6),
            "search_strides": bool(self.search_strides),
            "depth_range": _check_range("depth_range", self.depth_range),
            "width_range": _check_range("width_range", self.width_range),
            "resolution_range": _check_range("resolution_range", self.resolution_range),
            "scaling_step": float(_check_positive("scaling_step", self.scaling_step)),
            "divisor": int(_check_positive("divisor", self.divisor)),
            "constraint": _check_choice("constraint", self.constraint, CONSTRAINTS),
            "compound_target": float(_check_positive("compound_target", self.compound_target)),
            "constraint_weight": float(self.constraint_weight),
            "constraint_tolerance": _check_tolerance(self.constraint_tolerance),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class FitnessOptions:
    """SIPA's objective ``R = A - [alpha * I(F - thres)] ** w`` (:func:`sipa_fitness`).

    Attributes:
        budget: ``thres`` in the unit of ``measure`` (``None``: no budget).
        measure: ``"macs"`` (MACs per example) or ``"micronet"`` (MicroNet score at ``bits``).
        bits: 16 or 32, the MicroNet scoring precision.
        penalty, exponent, indicator: ``alpha``, ``w`` and ``I``.
        accuracy_key: the logged validation accuracy used as ``A``.
    """

    budget: Optional[float] = None
    measure: str = "macs"
    bits: int = 16
    penalty: float = 1.0
    exponent: float = 1.0
    indicator: str = "step"
    accuracy_key: str = "val_accuracy"

    def __post_init__(self):
        _check_choice("measure", self.measure, MEASURES)
        _check_choice("indicator", self.indicator, INDICATORS)
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"Expected a positive budget or None. Received: budget={self.budget!r}")
        if self.bits not in (16, 32):
            raise ValueError(f"Expected bits to be 16 or 32. Received: bits={self.bits!r}")
        object.__setattr__(self, "budget", None if self.budget is None else float(self.budget))
        object.__setattr__(self, "penalty", float(self.penalty))
        object.__setattr__(self, "exponent", float(self.exponent))


def split_options(options):
    """Sorts flat keyword options (a JSON object, a budget's ``search_space``) into
    ``(SearchSpace, FitnessOptions, rest)``; ``rest`` holds the other keys."""
    groups = {cls: {} for cls in (SearchSpace, FitnessOptions)}
    rest = {}
    for key, value in options.items():
        for cls, found in groups.items():
            if key in cls.__dataclass_fields__:
                found[key] = value
                break
        else:
            rest[key] = value
    return SearchSpace(**groups[SearchSpace]), FitnessOptions(**groups[FitnessOptions]), rest


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
    _check_choice("indicator", indicator, INDICATORS)
    if threshold is None:
        return float(accuracy), 0.0
    if threshold <= 0:
        raise ValueError(f"Expected a positive budget. Received: threshold={threshold!r}")
    excess = float(cost) - float(threshold)
    value = (1.0 if excess > 0 else 0.0) if indicator == "step" else max(excess, 0.0) / float(threshold)
    penalty = float((alpha * value) ** w) if value > 0 else 0.0
    return float(accuracy) - penalty, penalty
