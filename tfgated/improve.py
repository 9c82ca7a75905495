"""SIPA "Improving": greedy adoption of training tricks (SIPA Figure 2).

Candidate methods come in ordered groups. Starting from a base
:class:`~tfgated.recipes.Recipe`, every candidate is tried on top of the
current best recipe; it is adopted only if its validation accuracy beats the
best so far. Groups are visited in order, candidates in order within a group,
so the result is a deterministic function of the accuracies.

Every trial is appended to a table in ``out_dir`` (``trials.csv`` and
``trials.json``, each rewritten atomically after each trial). If the run is
killed, calling :func:`improve` again with the same arguments reads the table
back and skips the finished trials, so no training is repeated.

The trainer is any callable ``train_and_evaluate(recipe) -> validation
accuracy``: a cheap fake in tests, or :func:`keras_trainer` for real runs.
With ``seeds`` (SIPA compares methods by accuracies averaged over runs), every
recipe is trained once per seed (``train_and_evaluate(recipe, seed=s)``), its
accuracy is the mean, and a candidate is adopted when the difference of the
means exceeds ``min_improvement``.

SIPA's own candidates are :data:`SIPA_GROUPS`, tried from :data:`SIPA_BASE`
(a plain baseline on which each of them changes something; see
:func:`noop_candidates`).

Example::

    groups = [
        ("learning rate", [Candidate("lr 0.05", {"learning_rate": 0.05}),
                           Candidate("lr 0.2", {"learning_rate": 0.2})]),
        ("regularization", [Candidate("label smoothing", {"label_smoothing": 0.3}),
                            Candidate("mixup", {"mixup": 0.2})]),
    ]
    result = improve(Recipe(epochs=5), groups, keras_trainer(build_model), "runs/improve")
    result.recipe, result.accuracy
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tfgated.io import write_atomic, write_json
from tfgated.recipes import Recipe

__all__ = ["Candidate", "ImproveResult", "SIPA_BASE", "SIPA_GROUPS", "Trial", "improve", "keras_trainer",
           "noop_candidates", "read_trials"]

CSV_NAME = "trials.csv"
JSON_NAME = "trials.json"
BASELINE = "baseline"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One improving method: a name and the switches it changes."""

    name: str
    changes: Dict[str, object]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Expected a non-empty candidate name. Received: name={self.name!r}")
        if not isinstance(self.changes, dict) or not self.changes:
            raise ValueError(f"Candidate {self.name!r}: expected a non-empty dict of switch changes.")
        Recipe.check_switches(self.changes)


@dataclasses.dataclass
class Trial:
    """One row of the trial table."""

    index: int
    group: str
    candidate: str
    changes: dict
    recipe: dict
    accuracy: float
    adopted: bool
    best_accuracy: float
    seconds: float
    accuracies: list = dataclasses.field(default_factory=list)

    def to_row(self):
        return {
            "index": self.index,
            "group": self.group,
            "candidate": self.candidate,
            "changes": json.dumps(self.changes, sort_keys=True),
            "recipe": json.dumps(self.recipe, sort_keys=True),
            "accuracy": repr(float(self.accuracy)),
            "adopted": str(bool(self.adopted)),
            "best_accuracy": repr(float(self.best_accuracy)),
            "seconds": f"{self.seconds:.1f}",
            "accuracies": json.dumps([float(a) for a in self.accuracies]),
        }


@dataclasses.dataclass
class ImproveResult:
    """The outcome: the best recipe, its accuracy, the adopted methods and every trial."""

    recipe: Recipe
    accuracy: float
    adopted: List[str]
    trials: List[Trial]


#: SIPA's Improving groups (Appendix A.2), as switches of :class:`~tfgated.recipes.Recipe`,
#: in the order the paper adopts them: schedule, regularization, normalization,
#: data, architecture, fine-tune. Mixup's alpha is the authors' 1.0; label smoothing
#: spreads its 0.3 over the other classes (the Recipe default). AutoAugment is the
#: authors' own policy, searched on CIFAR-100 (:data:`tfgated.autoaugment.AUTOAUGMENT_MICRONET`).
SIPA_GROUPS: List[Tuple[str, List[Candidate]]] = [
    ("learning rate", [
        Candidate("cosine decay", {"cosine_decay": True}),
        Candidate("warmup", {"warmup_epochs": 1.0}),
        Candidate("initial lr 0.2", {"learning_rate": 0.2}),
    ]),
    ("weight decay", [
        Candidate("weight decay", {"weight_decay": 5e-4}),
        Candidate("no bias decay", {"bias_decay": False}),
        Candidate("no bn decay", {"bn_decay": False}),
    ]),
    ("normalization", [Candidate("ghost batch norm", {"ghost_batch_norm": 32})]),
    ("regularization", [
        Candidate("label smoothing", {"label_smoothing": 0.3}),
        Candidate("mixup", {"mixup": 1.0}),
    ]),
    ("augmentation", [Candidate("autoaugment (authors' policy)", {"augment": "autoaugment_micronet"})]),
    ("activation", [Candidate("swish", {"activation": "swish"})]),
    ("stabilization", [Candidate("distribution stabilization", {"stabilize_epochs": 2})]),
]

#: The baseline :data:`SIPA_GROUPS` start from (``Recipe`` switches): SGD with plain momentum (the
#: reference's ``torch.optim.SGD(momentum=0.9)``, no Nesterov) at a
#: constant learning rate 0.1, the authors' weight decay 1e-5 on every weight (biases and batch
#: norm included), ReLU, plain batch norm, no smoothing, mixup or augmentation. Against it every
#: SIPA candidate changes the training (:func:`noop_candidates` is empty at batch size > 32).
SIPA_BASE: Dict[str, object] = {
    "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False,
    "cosine_decay": False, "warmup_epochs": 0.0, "weight_decay": 1e-5, "bias_decay": True,
    "bn_decay": True, "ghost_batch_norm": 0, "label_smoothing": 0.0, "mixup": 0.0,
    "augment": "none", "activation": "relu", "stabilize_epochs": 0,
}

#: Switches that only matter when weight decay is on.
_DECAY_EXCLUSIONS = ("bias_decay", "bn_decay", "gate_decay")


def noop_candidates(base: Recipe, groups: Sequence) -> List[str]:
    """Names of the candidates of ``groups`` that change nothing in training ``base``.

    A candidate is a no-op if ``base`` already has its switches, if it only moves weight-decay
    exclusions while ``base`` has no weight decay, or if its ghost batch size is not smaller
    than ``base``'s batch size (one virtual batch is plain batch norm).
    """
    noops = []
    for _, candidates in _normalize_groups(groups):
        for candidate in candidates:
            changed = {k: v for k, v in candidate.changes.items() if getattr(base, k) != v}
            if set(changed) <= set(_DECAY_EXCLUSIONS) and not base.weight_decay:
                changed = {}
            if changed.get("ghost_batch_norm", 0) >= base.batch_size:
                changed.pop("ghost_batch_norm")
            if not changed:
                noops.append(candidate.name)
    return noops


def _normalize_groups(groups):
    """``[(group name, [Candidate, ...]), ...]`` from the accepted spellings."""
    normalized = []
    if not groups:
        raise ValueError("Expected at least one group of candidates.")
    for gi, group in enumerate(groups):
        if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], str):
            name, candidates = group
        else:
            name, candidates = f"group {gi + 1}", group
        items = []
        for c in candidates:
            if isinstance(c, Candidate):
                items.append(c)
            elif isinstance(c, tuple) and len(c) == 2:
                items.append(Candidate(c[0], dict(c[1])))
            else:
                raise ValueError(
                    f"Expected candidates as Candidate(name, changes) or (name, changes). Received: {c!r}"
                )
        if not items:
            raise ValueError(f"Group {name!r} has no candidates.")
        normalized.append((name, items))
    return normalized


def _write_table(out_dir, trials):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(Trial.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(t.to_row() for t in trials)
    write_atomic(os.path.join(out_dir, CSV_NAME), buffer.getvalue())
    write_json(os.path.join(out_dir, JSON_NAME), [dataclasses.asdict(t) for t in trials], sort_keys=True)


def read_trials(out_dir):
    """The finished trials recorded in ``out_dir`` (``[]`` if there is no table)."""
    path = os.path.join(os.fspath(out_dir), JSON_NAME)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return [Trial(**row) for row in json.load(f)]
    except (ValueError, TypeError) as error:
        raise ValueError(f"Corrupt trial table {path!r}: {error}. Delete it or use another out_dir.") from error


def improve(
    base: Recipe,
    groups: Sequence,
    train_and_evaluate: Callable[[Recipe], float],
    out_dir,
    verbose: bool = True,
    min_improvement: float = 0.0,
    seeds: Optional[Sequence[int]] = None,
) -> ImproveResult:
    """Greedy Improving: adopt each candidate only if it beats the best accuracy.

    Args:
        base: the starting recipe (trained once first: the baseline trial).
        groups: ordered groups; each ``(name, [Candidate | (name, changes), ...])``
            or a plain list of candidates.
        train_and_evaluate: ``recipe -> validation accuracy`` (a float).
        out_dir: folder of the trial table; finished trials found there are
            reused (resume), provided they match this run.
        verbose: print one line per trial.
        min_improvement: a candidate is adopted if its accuracy exceeds the
            best by more than this.
        seeds: None: one run per recipe, ``train_and_evaluate(recipe)``. A list
            of seeds: one run per seed, ``train_and_evaluate(recipe, seed=s)``;
            the trial's accuracy is the mean (each run's in ``accuracies``), so
            adoption compares means.

    Returns:
        An :class:`ImproveResult`.

    Raises:
        ValueError: unknown switch names; a table in ``out_dir`` from a
            different run; a trainer returning a non-finite accuracy.
    """
    if not isinstance(base, Recipe):
        raise ValueError(f"Expected base to be a Recipe. Received: {type(base).__name__}")
    seeds = _check_seeds(seeds)
    plan = [(BASELINE, BASELINE, {})] + [(g, c.name, c.changes) for g, cs in _normalize_groups(groups) for c in cs]
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    recorded = read_trials(out_dir)
    if len(recorded) > len(plan):
        raise ValueError(
            f"The trial table in {out_dir!r} has {len(recorded)} trials but this run plans {len(plan)}: "
            "it is from a different run."
        )
    trials: List[Trial] = []
    best, best_acc, adopted = base, None, []
    for index, (group, name, changes) in enumerate(plan):
        candidate = best.replace(**changes) if changes else best
        if index < len(recorded):
            accuracy, runs, seconds = _recorded_accuracy(recorded[index], index, (group, name, candidate, seeds), out_dir)
        else:
            accuracy, runs, seconds = _train_trial(train_and_evaluate, candidate, name, seeds)
        is_better = best_acc is None or accuracy > best_acc + min_improvement
        if is_better:
            best, best_acc = candidate, accuracy
            if changes:
                adopted.append(name)
        trials.append(Trial(index=index, group=group, candidate=name, changes=dict(changes),
                            recipe=candidate.to_dict(), accuracy=accuracy, adopted=bool(is_better),
                            best_accuracy=best_acc, seconds=seconds, accuracies=runs))
        if index >= len(recorded):
            _write_table(out_dir, trials)
        if verbose:
            _print_trial(trials[-1], len(plan), resumed=index < len(recorded))
    _write_table(out_dir, trials)
    write_json(os.path.join(out_dir, "best_recipe.json"),
               {"accuracy": best_acc, "adopted": adopted, "recipe": best.to_dict()}, sort_keys=True)
    return ImproveResult(recipe=best, accuracy=best_acc, adopted=adopted, trials=trials)


def _check_seeds(seeds):
    """``None`` or a non-empty list of distinct integer seeds."""
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes, int)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"Expected seeds to be None or a list of integers. Received: seeds={seeds!r}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise ValueError(f"Expected seeds to be None or a non-empty list of distinct integers. Received: seeds={seeds!r}")
    return seeds


def _recorded_accuracy(row, index, planned, out_dir):
    """``(accuracy, accuracies, seconds)`` of a finished trial read back from the table, checked to be this run's."""
    group, name, candidate, seeds = planned
    same_runs = len(row.accuracies or []) == len(seeds or [])
    if (row.group, row.candidate, row.recipe) != (group, name, candidate.to_dict()) or not same_runs:
        raise ValueError(
            f"The trial table in {out_dir!r} is from a different run (trial {index}: recorded "
            f"{row.group!r}/{row.candidate!r} with {len(row.accuracies or [])} seeded run(s), now {group!r}/{name!r} "
            f"with {len(seeds or [])}). Use another out_dir or delete the table."
        )
    return row.accuracy, list(row.accuracies or []), row.seconds


def _train_trial(train_and_evaluate, candidate, name, seeds):
    """``(mean accuracy, accuracy of each seed, seconds)`` of training ``candidate``; a non-finite accuracy is an error."""
    start = time.time()
    if seeds is None:
        runs = [float(train_and_evaluate(candidate))]
    else:
        runs = [float(train_and_evaluate(candidate, seed=seed)) for seed in seeds]
    if not all(math.isfinite(a) for a in runs):
        raise ValueError(f"train_and_evaluate returned a non-finite accuracy for {name!r}: {runs}")
    return sum(runs) / len(runs), (runs if seeds is not None else []), time.time() - start


def _print_trial(trial, total, resumed):
    changed = bool(trial.changes)
    mark = "adopted" if trial.adopted and changed else ("baseline" if not changed else "rejected")
    origin = " (from table)" if resumed else ""
    if trial.accuracies:
        origin = f" (mean of {len(trial.accuracies)} seeds)" + origin
    print(
        f"[improve {trial.index + 1}/{total}] {trial.group} / {trial.candidate}: val_acc={trial.accuracy:.4f} "
        f"{mark}; best={trial.best_accuracy:.4f}{origin}",
        flush=True,
    )


def keras_trainer(
    build_model: Callable[[Recipe], "object"],
    dataset: str = "fashion_mnist",
    verbose=0,
    seed: int = 42,
    **load_kwargs,
) -> Callable[[Recipe], float]:
    """A real ``train_and_evaluate``: build, prepare, compile, fit, return the best val accuracy.

    Args:
        build_model: ``recipe -> fresh keras.Model``; it should honour
            ``recipe.model_overrides()`` (e.g. ``lambda r: zoo.load(name,
            compile=False, **r.model_overrides())``).
        dataset, load_kwargs: passed to :meth:`Recipe.datasets` (``data_dir``,
            ``limit``, ``validation_split``, ...). A validation split is needed.
        seed: seeds Keras before every trial so trials differ only by recipe;
            ``train_and_evaluate(recipe, seed=s)`` uses ``s`` instead (the
            weights' initialization, the shuffle and the validation carve-out).

    The stabilization fine-tune (if the recipe has one) runs after the main
    phase; the accuracy returned is the final epoch's ``val_accuracy``.
    """
    import keras

    from tfgated.recipes import fit_recipe

    default_seed = seed

    def train_and_evaluate(recipe, seed=None):
        seed = default_seed if seed is None else seed
        keras.utils.set_random_seed(seed)
        model = recipe.prepare_model(build_model(recipe))
        splits = recipe.datasets(dataset, seed=seed, **load_kwargs)
        if splits.validation is None:
            raise ValueError("keras_trainer needs a validation split (validation_split > 0).")
        history = fit_recipe(model, recipe, splits, verbose=verbose)
        stab = recipe.stabilization()
        if stab is not None:
            history = fit_recipe(model, stab, stab.datasets(dataset, seed=seed, **load_kwargs), verbose=verbose)
        return float(history.history["val_accuracy"][-1])

    return train_and_evaluate
