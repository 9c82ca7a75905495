"""Reports of a SIPA search: the trial table (text, JSON, CSV) and the best trial as preset data."""

from __future__ import annotations

import csv
import io

from tfgated.io import write_atomic, write_json
from tfgated.search.hypermodel import arch_summary
from tfgated.search.options import OBJECTIVE_NAME

SIPA_PAPER = {
    "source": "Lee, Bae, Oh, Yun: SIPA: A Simple Framework for Efficient Networks (MicroNet Challenge 2019, "
    "CIFAR-100 track), section 2.1 Searching",
    "table": "architecture found by tfgated.search on this machine",
    "numbers": {},
}

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
    """The best trial's architecture as preset data (the zoo's preset schema, family ``"sipa"``).

    Plain data: ``python -m tfgated search`` writes it as a JSON file, which
    ``tfgated.zoo.load(path)`` builds.
    """
    hypermodel = hypermodel or tuner.hypermodel
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise ValueError(f"No completed trial in {tuner.project_dir!r}: nothing to write.")
    trial = best[0]
    arch = hypermodel.architecture(trial.hyperparameters.copy())
    metrics = {name: _metric(trial, name) for name in ("fitness", "val_accuracy", "macs", "params", "cost")}
    fitness = hypermodel.fitness
    budget = "no budget" if fitness.budget is None else f"budget {fitness.budget:g} {fitness.measure}"
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
