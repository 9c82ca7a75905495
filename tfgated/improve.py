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
from typing import Callable, Dict, List, Sequence, Tuple

from tfgated.io import write_atomic, write_json
from tfgated.recipes import Recipe

__all__ = ["Candidate", "ImproveResult", "SIPA_GROUPS", "Trial", "improve", "keras_trainer", "read_trials"]

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
#: data, architecture, fine-tune.
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
        Candidate("mixup", {"mixup": 0.2}),
    ]),
    ("augmentation", [Candidate("randaugment", {"augment": "randaugment"})]),
    ("activation", [Candidate("swish", {"activation": "swish"})]),
    ("stabilization", [Candidate("distribution stabilization", {"stabilize_epochs": 2})]),
]


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

    Returns:
        An :class:`ImproveResult`.

    Raises:
        ValueError: unknown switch names; a table in ``out_dir`` from a
            different run; a trainer returning a non-finite accuracy.
    """
    if not isinstance(base, Recipe):
        raise ValueError(f"Expected base to be a Recipe. Received: {type(base).__name__}")
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
            accuracy, seconds = _recorded_accuracy(recorded[index], index, group, name, candidate, out_dir)
        else:
            accuracy, seconds = _train_trial(train_and_evaluate, candidate, name)
        is_better = best_acc is None or accuracy > best_acc + min_improvement
        if is_better:
            best, best_acc = candidate, accuracy
            if changes:
                adopted.append(name)
        trials.append(Trial(index=index, group=group, candidate=name, changes=dict(changes),
                            recipe=candidate.to_dict(), accuracy=accuracy, adopted=bool(is_better),
                            best_accuracy=best_acc, seconds=seconds))
        if index >= len(recorded):
            _write_table(out_dir, trials)
        if verbose:
            _print_trial(trials[-1], len(plan), resumed=index < len(recorded))
    _write_table(out_dir, trials)
    write_json(os.path.join(out_dir, "best_recipe.json"),
               {"accuracy": best_acc, "adopted": adopted, "recipe": best.to_dict()}, sort_keys=True)
    return ImproveResult(recipe=best, accuracy=best_acc, adopted=adopted, trials=trials)


def _recorded_accuracy(row, index, group, name, candidate, out_dir):
    """``(accuracy, seconds)`` of a finished trial read back from the table, checked to be this run's."""
    if (row.group, row.candidate, row.recipe) != (group, name, candidate.to_dict()):
        raise ValueError(
            f"The trial table in {out_dir!r} is from a different run (trial {index}: recorded "
            f"{row.group!r}/{row.candidate!r}, now {group!r}/{name!r}). "
            "Use another out_dir or delete the table."
        )
    return row.accuracy, row.seconds


def _train_trial(train_and_evaluate, candidate, name):
    """``(accuracy, seconds)`` of training ``candidate``; a non-finite accuracy is an error."""
    start = time.time()
    accuracy = float(train_and_evaluate(candidate))
    if not math.isfinite(accuracy):
        raise ValueError(f"train_and_evaluate returned a non-finite accuracy for {name!r}: {accuracy}")
    return accuracy, time.time() - start


def _print_trial(trial, total, resumed):
    changed = bool(trial.changes)
    mark = "adopted" if trial.adopted and changed else ("baseline" if not changed else "rejected")
    origin = " (from table)" if resumed else ""
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
        seed: seeds Keras before every trial so trials differ only by recipe.

    The stabilization fine-tune (if the recipe has one) runs after the main
    phase; the accuracy returned is the final epoch's ``val_accuracy``.
    """
    import keras

    from tfgated.recipes import fit_recipe

    def train_and_evaluate(recipe):
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
