"""Figures of gate behaviour, saved as PNG (matplotlib, Agg backend).

* :func:`plot_polarization` — histogram of learned gate open probabilities
  (Gumbel paper supplement, Fig. 1: they polarize towards 0 and 1).
* :func:`plot_gate_rates` — activation rate of every gated layer over the
  epochs of training, from a :class:`tfgated.callbacks.GateRateLogger` CSV
  (supplement, Figs. 10-13).
* :func:`plot_history` — loss/accuracy curves from a Keras ``CSVLogger`` file.
* :func:`plot_search_trials` — validation accuracy against MACs of SIPA search
  trials (:func:`tfgated.search.trial_table` rows).
* :func:`plot_improve_trials` — validation accuracy of greedy Improving trials
  (:func:`tfgated.improve.improve`), adopted candidates in green.
* :func:`plot_pruning_rounds` — validation accuracy against sparsity of
  iterative pruning rounds (:func:`tfgated.pruning.iterative_pruning` rows).
* :func:`draw_figure` — any figure drawn by a function, saved as PNG without
  pyplot's global state.
"""

from __future__ import annotations

import numpy as np

from tfgated.io import save_figure

__all__ = [
    "draw_figure",
    "gate_probability_values",
    "plot_gate_rates",
    "plot_history",
    "plot_improve_trials",
    "plot_polarization",
    "plot_pruning_rounds",
    "plot_search_trials",
]


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
    epochs = epochs + 1  # the file counts as Keras does (0 = first epoch); plot_history shows 1 first too
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
    """Loss and accuracy curves from a Keras ``CSVLogger`` or :class:`~tfgated.callbacks.HistoryLogger` file."""
    from tfgated.checkpoints import read_csv_rows

    _, rows = read_csv_rows(csv_path)
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


def draw_figure(path, draw, size=(6.5, 4.5)):
    """Call ``draw(figure)`` on a new matplotlib ``Figure`` (Agg canvas, no pyplot state) and
    save it atomically as PNG; returns ``path`` as a string."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    draw(figure)
    return save_figure(figure, path, format="png", dpi=110, bbox_inches="tight")


def plot_search_trials(rows, budget, path):
    """Validation accuracy against MACs per example of search trials (dicts with ``trial``,
    ``macs`` and ``val_accuracy``), the MAC budget as a red line. Returns ``path``, or None
    when no trial has both numbers (nothing is written)."""
    done = [r for r in rows if r.get("macs") is not None and r.get("val_accuracy") is not None]
    if not done:
        return None

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.scatter([r["macs"] / 1e6 for r in done], [r["val_accuracy"] for r in done])
        for r in done:
            axes.annotate(str(r["trial"]), (r["macs"] / 1e6, r["val_accuracy"]), fontsize=7)
        axes.axvline(budget / 1e6, color="red", linestyle="--", label="MAC budget")
        axes.set_xlabel("MACs per example (millions)")
        axes.set_ylabel("validation accuracy")
        axes.set_title("SIPA search trials")
        axes.grid(True, alpha=0.3)
        axes.legend()

    return draw_figure(path, draw)


def plot_improve_trials(trials, path):
    """Validation accuracy of each Improving trial (objects with ``candidate``, ``accuracy``
    and ``adopted``), adopted candidates in green. Returns ``path``."""
    if not trials:
        raise ValueError("No Improving trials to plot.")

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        colors = ["tab:green" if t.adopted else "tab:gray" for t in trials]
        axes.bar(range(len(trials)), [t.accuracy for t in trials], color=colors)
        axes.set_xticks(range(len(trials)))
        axes.set_xticklabels([t.candidate for t in trials], rotation=30, ha="right", fontsize=8)
        low, high = min(t.accuracy for t in trials), max(t.accuracy for t in trials)
        axes.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.02))
        axes.set_ylabel("validation accuracy")
        axes.set_title("Greedy Improving (green: adopted)")

    return draw_figure(path, draw)


def plot_pruning_rounds(rows, path):
    """Validation accuracy against sparsity of pruning rounds (dicts with ``sparsity`` and
    ``val_accuracy``). Returns ``path``, or None when no round has a validation accuracy."""
    done = [r for r in rows if r.get("val_accuracy") is not None]
    if not done:
        return None

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.plot([r["sparsity"] for r in done], [r["val_accuracy"] for r in done], marker="o")
        axes.set_xlabel("sparsity of prunable weights")
        axes.set_ylabel("validation accuracy")
        axes.set_title("Iterative global magnitude pruning (layer-wise normalized)")
        axes.grid(True, alpha=0.3)

    return draw_figure(path, draw)
