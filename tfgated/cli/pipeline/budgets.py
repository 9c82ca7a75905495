"""The pipeline's budgets: how much work each stage does, as data (``budgets.json``).

``budgets.json`` maps a budget name (``tiny``, ``small``, ``paper``) to plain values,
one per :class:`Budget` field except ``name``; :data:`BUDGETS` holds them as
:class:`Budget` objects. See :mod:`tfgated.cli.run` for what each budget is for.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

__all__ = ["BUDGETS", "BUDGETS_FILE", "SIPA_PRESETS", "Budget", "get_budget", "read_budgets"]

#: The budgets' data file, next to this module.
BUDGETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "budgets.json")

#: The zoo preset whose architecture is the "searched" SIPA network of a dataset (budgets without base_arch).
SIPA_PRESETS = {"fashion_mnist": "sipa_fashion_mnist", "cifar100": "sipa_cifar100"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each stage does.

    Attributes:
        name: ``"tiny"``, ``"small"`` or ``"paper"`` (or any name of a budget made by hand).
        limit: use only the first ``limit`` training (and test) examples; None = all.
        search_limit: the search and Improving stages use only the first ``search_limit``
            training examples (their trials compare candidates; the train, prune and
            accelerate stages use ``limit``); None = ``limit``.
        validation_split: fraction of the training examples held out for validation.
        batch_size: batch size of every stage.
        base_arch: SIPA builder arguments of the base architecture of the search,
            or None for the dataset's SIPA preset (:data:`SIPA_PRESETS`).
        search_trials: KerasTuner trials (0: take the base architecture as the
            search result and train it ``search_epochs``).
        search_epochs: training epochs per trial.
        budget_macs: the SIPA fitness threshold (MACs per example); None = the
            base architecture's MACs.
        search_space: extra :class:`tfgated.search.SIPAHyperModel` arguments
            (and ``num_initial_points`` of the Bayesian tuner).
        base_recipe: :class:`tfgated.recipes.Recipe` switches of the Improving
            baseline (``epochs`` is ``improve_epochs``).
        improve_groups: ``[[group, [[candidate, changes], ...]], ...]`` or
            ``"sipa"`` for :data:`tfgated.improve.SIPA_GROUPS`.
        improve_epochs: epochs per Improving trial.
        improve_seeds: runs per Improving trial (seeds ``seed``, ``seed + 1``, ...);
            above 1 a candidate is adopted on the difference of mean accuracies.
        train_epochs: epochs of the final training with the improved recipe.
        train_on_validation: SIPA's "no validation data": the final training (after
            Improving chose with validation data) trains on train + validation.
        prune_schedule: target sparsities of the pruning rounds.
        prune_epochs: fine-tuning epochs per pruning round.
        prune_lr_factor: fine-tuning learning rate as a fraction of the recipe's.
        exit_epochs: training epochs of the exit head.
        exit_max_drop: the calibrated threshold keeps validation accuracy within
            this of the network without exit.
        exit_channels: channels of the exit head's 1x1 convolution (None: the
            network's head channels).
        exit_prune: SIPA's "further pruning" of the exit path, None for none, or
            ``{"schedule": [sparsities of the exit head's weights], "epochs": e}``:
            each round prunes the head and re-stabilizes it for ``e`` epochs
            (backbone frozen, its batch norm updating its statistics).
        parity_examples: test images used by the export parity checks.
        precision_bits: 16: train, prune and accelerate with 16-bit quantization-aware
            training (:mod:`tfgated.quantization`) and score every table row at 16 bits;
            32: float32 training, rows 1-4 scored at 32 bits.
    """

    name: str
    limit: Optional[int]
    search_limit: Optional[int]
    validation_split: float
    batch_size: int
    base_arch: Optional[dict]
    search_trials: int
    search_epochs: int
    budget_macs: Optional[float]
    search_space: dict
    base_recipe: dict
    improve_groups: object
    improve_epochs: int
    improve_seeds: int
    train_epochs: int
    train_on_validation: bool
    prune_schedule: tuple
    prune_epochs: int
    prune_lr_factor: float
    exit_epochs: int
    exit_max_drop: float
    exit_channels: Optional[int]
    exit_prune: Optional[dict]
    parity_examples: int
    precision_bits: int

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, name, values):
        """A budget from ``values`` (every field but ``name``, as in ``budgets.json``)."""
        expected = {field.name for field in dataclasses.fields(cls)} - {"name"}
        missing, unknown = sorted(expected - set(values)), sorted(set(values) - expected)
        if missing or unknown:
            raise ValueError(
                f"Budget {name!r}: expected exactly the fields {sorted(expected)}. "
                f"Received: missing={missing}, unknown={unknown}"
            )
        schedule = tuple(float(s) for s in values["prune_schedule"])
        return cls(name=name, **{**values, "prune_schedule": schedule})


def read_budgets(path=BUDGETS_FILE):
    """``{name: Budget}`` from a budgets JSON file (default: the shipped ``budgets.json``)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {name: Budget.from_dict(name, values) for name, values in data.items()}


BUDGETS: Dict[str, Budget] = read_budgets()


def get_budget(budget):
    """``budget`` as a :class:`Budget`: a key of :data:`BUDGETS` or a :class:`Budget` itself."""
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"Unknown budget {budget!r}. Expected one of {list(BUDGETS)}.")
        return BUDGETS[budget]
    if not isinstance(budget, Budget):
        raise ValueError(f"Expected budget to be a name or a Budget. Received: {budget!r}")
    return budget
