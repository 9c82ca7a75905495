"""Studying exits: risk-coverage curves (SIPA Figure 9) and the exit-position table (SIPA Table 2).

* :func:`risk_coverage` / :class:`RiskCoverage` / :func:`plot_risk_coverage`: how the error
  among the covered samples grows as a max-softmax confidence threshold covers more of them.
* :func:`exit_position_study` trains an exit head at each candidate position
  (:func:`tfgated.exits.attach_exit`, :func:`tfgated.exits.train_exit`) and tabulates exit
  ratio, accuracy and MAC saving per threshold (:func:`study_table`: SIPA README's table).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import keras
import numpy as np

from tfgated.exits.heads import attach_exit, check_functional, exit_structure, resolve_exit_layer
from tfgated.exits.runtime import (
    calibrate_threshold,
    check_probabilities,
    check_threshold,
    class_indices,
    combine_predictions,
)
from tfgated.exits.training import train_exit
from tfgated.io import save_figure

__all__ = [
    "ExitStudy",
    "RiskCoverage",
    "exit_position_study",
    "plot_risk_coverage",
    "risk_coverage",
    "study_table",
]


# ----------------------------------------------------------------------------- risk-coverage


@dataclasses.dataclass
class RiskCoverage:
    """A risk-coverage curve (Geifman & El-Yaniv; SIPA Figure 9).

    Points are taken where the covered set changes: covering the samples with confidence
    ``>= confidence[i]`` gives ``coverage[i]`` (fraction covered) and ``risk[i]`` (error rate
    among the covered). ``aurc`` is the area under the step curve, ``sum(risk_i * dcov_i)``.
    """

    coverage: np.ndarray
    risk: np.ndarray
    confidence: np.ndarray

    @property
    def aurc(self):
        widths = np.diff(np.concatenate([[0.0], self.coverage]))
        return float(np.sum(self.risk * widths))

    def risk_at(self, coverage):
        """Risk at the smallest achievable coverage ``>= coverage``."""
        if not 0.0 <= float(coverage) <= 1.0:
            raise ValueError(f"Expected coverage in [0, 1]. Received: coverage={coverage}")
        index = int(np.searchsorted(self.coverage, float(coverage) - 1e-12, side="left"))
        return float(self.risk[min(index, len(self.risk) - 1)])

    def mean_risk(self, min_coverage=0.0):
        """Mean risk over the points with coverage ``>= min_coverage``, weighted by coverage step."""
        widths = np.diff(np.concatenate([[0.0], self.coverage]))
        keep = self.coverage >= float(min_coverage) - 1e-12
        return float(np.sum(self.risk[keep] * widths[keep]) / np.sum(widths[keep]))

    def to_dict(self):
        return {
            "coverage": self.coverage.tolist(),
            "risk": self.risk.tolist(),
            "confidence": self.confidence.tolist(),
            "aurc": self.aurc,
        }


def risk_coverage(probs, labels):
    """Risk-coverage curve of max-softmax confidence; see :class:`RiskCoverage`."""
    probs = check_probabilities(probs, "probs")
    labels = class_indices(labels)
    if len(labels) != len(probs) or len(labels) == 0:
        raise ValueError(f"Expected as many labels as probs (> 0). Received: {len(labels)} and {len(probs)}")
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    errors = np.cumsum((probs.argmax(axis=1) != labels)[order])
    n = len(labels)
    ends = np.flatnonzero(np.concatenate([conf_sorted[:-1] > conf_sorted[1:], [True]]))  # last index of groups
    counts = ends + 1
    return RiskCoverage(coverage=counts / n, risk=errors[ends] / counts, confidence=conf_sorted[ends])


def plot_risk_coverage(curves: Mapping[str, RiskCoverage], path, title="Risk-coverage of the exit head"):
    """Write a PNG with one risk-coverage curve per entry of ``curves`` (label -> curve).

    Uses matplotlib's Agg canvas (no global backend change). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("Expected at least one curve. Received: curves={}")
    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        axes.plot(curve.coverage, curve.risk, label=f"{label} (AURC {curve.aurc:.4f})")
    axes.set_xlabel("coverage")
    axes.set_ylabel("risk (error rate among covered)")
    axes.set_title(title)
    axes.set_xlim(0.0, 1.0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    save_figure(figure, path, format="png", dpi=120, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- exit-position study


@dataclasses.dataclass
class ExitStudy:
    """Result of :func:`exit_position_study`: JSON-ready ``rows``, a markdown ``table``, the
    trained two-output ``models`` (by position), and the no-exit network's test accuracy/MACs."""

    rows: list
    table: str
    models: dict
    full_accuracy: float
    main_macs: int


def _splits(data):
    if isinstance(data, Mapping):
        get = data.get
    elif isinstance(data, (tuple, list)):
        if len(data) != 3:
            raise ValueError(f"Expected data as (train, validation, test). Received: {len(data)} items")
        get = dict(zip(("train", "validation", "test"), data)).get
    else:
        def get(key):
            return getattr(data, key, None)
    train, validation, test = get("train"), get("validation"), get("test")
    if train is None or test is None:
        raise ValueError("Expected data with train and test datasets (e.g. tfgated.data.DatasetSplits).")
    return train, validation, test


def _exit_name(position):
    if isinstance(position, (int, np.integer)):
        return f"exit{int(position)}"
    return "exit_" + re.sub(r"\W", "_", str(position))


def _threshold_entry(exit_probs, main_probs, labels, threshold, structure):
    probs, exited = combine_predictions(exit_probs, main_probs, threshold)
    ratio = float(exited.mean())
    macs = structure.macs
    mean_macs = macs["part_a"] + macs["head"] + (1.0 - ratio) * macs["part_b"]
    return {
        "threshold": float(threshold),
        "exit_ratio": ratio,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "mean_macs": float(mean_macs),
        "mac_saving": float(1.0 - mean_macs / macs["main"]) if macs["main"] else 0.0,
    }


def exit_position_study(
    model,
    positions,
    data,
    thresholds=(0.85, 0.88, 0.92),
    epochs=1,
    loss="softsmoothing",
    head=None,
    max_accuracy_drop=None,
    optimizer_fn=None,
    verbose=0,
):
    """Train an exit head at each candidate position and tabulate the trade-off (SIPA Table 2).

    Args:
        model: a trained single-output functional model (its layers get frozen).
        positions: candidate exit positions (see :func:`resolve_exit_layer`).
        data: ``tfgated.data.DatasetSplits`` (or dict / ``(train, validation, test)``); heads
            train on ``train``, results are on ``test``, calibration (if asked) on ``validation``.
        thresholds: confidence thresholds to report.
        epochs, loss, head: for :func:`attach_exit` / :func:`train_exit`.
        max_accuracy_drop: if given (and ``validation`` exists), also calibrate a threshold on
            validation (:func:`calibrate_threshold`) and report its test results.
        optimizer_fn: None or a zero-argument callable returning a fresh optimizer per head.
        verbose: ``fit`` verbosity.

    Returns:
        :class:`ExitStudy`. Each row: ``position``, ``exit_layer``, ``exit_path_macs`` (part A +
        head), ``main_macs``, ``exit_path_share`` (exit path / (main + head), SIPA's "Exiting Path
        FLOPs" ratio), ``added_params``, ``exit_accuracy`` (every sample exits), ``thresholds``
        (list of ``threshold, exit_ratio, accuracy, mean_macs, mac_saving``) and optionally
        ``calibrated`` (the calibration on validation, with its MAC saving there, and the
        calibrated threshold's results on test).
    """
    check_functional(model)
    positions = list(positions)
    if not positions:
        raise ValueError("Expected at least one exit position. Received: positions=[]")
    thresholds = [check_threshold(t) for t in thresholds]
    train, validation, test = _splits(data)
    labels = class_indices(np.concatenate([np.asarray(y) for _, y in test]))
    main_probs = np.asarray(model.predict(test, verbose=0))
    full_accuracy = float((main_probs.argmax(1) == labels).mean())
    if max_accuracy_drop is not None and validation is not None:
        val_labels = class_indices(np.concatenate([np.asarray(y) for _, y in validation]))
        val_main = np.asarray(model.predict(validation, verbose=0))
    rows, models, main_macs = [], {}, None
    for position in positions:
        layer_name = resolve_exit_layer(model, position)
        with_exit = attach_exit(model, position, head=head, name=_exit_name(position))
        train_exit(
            with_exit,
            train,
            epochs=epochs,
            loss=loss,
            optimizer=optimizer_fn() if optimizer_fn else None,
            verbose=verbose,
            update_main_statistics=False,  # every position is compared on the same, unchanged network
        )
        structure = exit_structure(with_exit)
        main_macs = structure.main_macs
        exit_model = keras.Model(structure.inputs, structure.exit_output)
        exit_probs = np.asarray(exit_model.predict(test, verbose=0))
        row = {
            "position": position if isinstance(position, str) else int(position),
            "exit_layer": layer_name,
            "exit_path_macs": int(structure.exit_path_macs),
            "main_macs": int(structure.main_macs),
            "exit_path_share": float(structure.exit_path_macs / (structure.main_macs + structure.macs["head"])),
            "added_params": int(structure.head_params),
            "exit_accuracy": float((exit_probs.argmax(1) == labels).mean()),
            "thresholds": [_threshold_entry(exit_probs, main_probs, labels, t, structure) for t in thresholds],
        }
        if max_accuracy_drop is not None and validation is not None:
            val_exit = np.asarray(exit_model.predict(validation, verbose=0))
            calibration = calibrate_threshold(val_exit, val_main, val_labels, max_accuracy_drop=max_accuracy_drop)
            on_validation = _threshold_entry(val_exit, val_main, val_labels, calibration.threshold, structure)
            row["calibrated"] = {
                "validation": {**calibration.to_dict(), "mac_saving": on_validation["mac_saving"]},
                "test": _threshold_entry(exit_probs, main_probs, labels, calibration.threshold, structure),
            }
        rows.append(row)
        models[row["position"]] = with_exit
    return ExitStudy(rows=rows, table=study_table(rows, full_accuracy), models=models,
                     full_accuracy=full_accuracy, main_macs=int(main_macs))


def study_table(rows: Sequence[dict], full_accuracy=None):
    """A markdown table of :func:`exit_position_study` rows (accuracies in %)."""
    thresholds = [e["threshold"] for e in rows[0]["thresholds"]] if rows else []
    ts = ", ".join(f"{t:g}" for t in thresholds)
    header = (
        f"| Exit position | Exit layer | Exit path MACs (share) | Added params | Exit ratio @ {ts} "
        f"| Accuracy @ {ts} (exit only) | MAC saving @ {ts} |"
    )
    lines = [header, "| :---: | :---: | :---: | :---: | :---: | :---: | :---: |"]
    for r in rows:
        entries = r["thresholds"]
        ratios = ", ".join(f"{100 * e['exit_ratio']:.2f}%" for e in entries)
        accuracies = ", ".join(f"{100 * e['accuracy']:.2f}%" for e in entries)
        savings = ", ".join(f"{100 * e['mac_saving']:.1f}%" for e in entries)
        lines.append(
            f"| {r['position']} | {r['exit_layer']} | {r['exit_path_macs']:,} ({100 * r['exit_path_share']:.2f}%) "
            f"| {r['added_params']:,} | {ratios} | {accuracies} ({100 * r['exit_accuracy']:.2f}%) | {savings} |"
        )
    if full_accuracy is not None:
        lines.append("")
        lines.append(f"No-exit network accuracy: {100 * full_accuracy:.2f}%.")
    return "\n".join(lines)
