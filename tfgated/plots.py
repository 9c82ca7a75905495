"""Figures of gate behaviour, saved as PNG (matplotlib, Agg backend).

* :func:`plot_polarization` — histogram of learned gate open probabilities
  (Gumbel paper supplement, Fig. 1: they polarize towards 0 and 1).
* :func:`plot_gate_rates` — activation rate of every gated layer over the
  epochs of training, from a :class:`tfgated.callbacks.GateRateLogger` CSV
  (supplement, Figs. 10-13).
* :func:`plot_history` — loss/accuracy curves from a Keras ``CSVLogger`` file.
"""

from __future__ import annotations

import csv

import numpy as np

from tfgated.io import save_figure

__all__ = ["gate_probability_values", "plot_gate_rates", "plot_history", "plot_polarization"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    """Save as PNG atomically (:func:`tfgated.io.save_figure`); returns ``path`` as a string."""
    return save_figure(fig, path, format="png", dpi=120, bbox_inches="tight")


def gate_probability_values(model, x=None, batch_size=256):
    """All learned gate open probabilities of ``model`` as one flat array.

    Data-independent gates contribute ``sigmoid(logits)``; data-dependent
    gates contribute their per-example probabilities on ``x`` (skipped when
    ``x`` is ``None``).
    """
    import keras

    from tfgated.inference import gate_layers

    values = []
    dependent = []
    for gate in gate_layers(model):
        if gate.kind == "independent":
            values.append(np.asarray(keras.ops.convert_to_numpy(gate.probabilities())).ravel())
        else:
            dependent.append(gate)
    if dependent and x is not None:
        contexts = keras.Model(model.inputs, [g.input for g in dependent]).predict(x, batch_size=batch_size, verbose=0)
        if not isinstance(contexts, (list, tuple)):
            contexts = [contexts]
        for gate, context in zip(dependent, contexts):
            values.append(np.asarray(keras.ops.convert_to_numpy(gate.probabilities(context))).ravel())
    if not values:
        raise ValueError("No gate probabilities: the model has no independent gates and no x was given.")
    return np.concatenate(values)


def plot_polarization(probabilities, path, bins=20, title="Gate probabilities"):
    """Histogram of gate open probabilities, saved to ``path`` (PNG).

    Args:
        probabilities: a flat array, or a dict ``{gate name: array}`` (as from
            :func:`tfgated.gate_probabilities`), or a model (then
            :func:`gate_probability_values` without data).
    """
    if hasattr(probabilities, "layers"):
        probabilities = gate_probability_values(probabilities)
    if isinstance(probabilities, dict):
        probabilities = np.concatenate([np.ravel(v) for v in probabilities.values()]) if probabilities else []
    values = np.asarray(probabilities, dtype="float64").ravel()
    if values.size == 0:
        raise ValueError("No gate probabilities to plot.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values, bins=bins, range=(0.0, 1.0), color="tab:blue", edgecolor="white")
    ax.set_xlabel("open probability")
    ax.set_ylabel("gates")
    polarized = np.mean((values < 0.1) | (values > 0.9))
    ax.set_title(f"{title} ({values.size} gates, {polarized:.0%} < 0.1 or > 0.9)")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_gate_rates(csv_path, path, title="Gate activation rate during training", max_legend=12):
    """Activation rate per gated layer over epochs from a ``GateRateLogger`` CSV."""
    from tfgated.callbacks import read_gate_csv

    epochs, columns = read_gate_csv(csv_path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [k for k in columns if k != "mean"]
    for name in names:
        ax.plot(epochs, columns[name], linewidth=1, alpha=0.8, label=name if len(names) <= max_legend else None)
    if "mean" in columns:
        ax.plot(epochs, columns["mean"], color="black", linewidth=2.5, label="mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("activation rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=6, loc="best")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):  # CSVLogger writes "NA" for missing values
        return float("nan")


def plot_history(csv_path, path, title="Training"):
    """Loss and accuracy curves from a Keras ``CSVLogger`` file."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"No epochs recorded in {csv_path!r}.")
    epochs = [int(r["epoch"]) + 1 for r in rows]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix in ("", "val_"):
            name = prefix + key
            if name in rows[0]:
                ax.plot(epochs, [_number(r[name]) for r in rows], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
