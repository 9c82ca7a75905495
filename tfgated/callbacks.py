"""Keras callbacks for gated training: history and gate-rate logs, target annealing.

Both logs number epochs as Keras does (``epoch`` 0 is the first epoch, as in
``keras.callbacks.CSVLogger``), are crash-safe (a kill leaves complete rows only; see
:mod:`tfgated.checkpoints`) and, when a run resumes at epoch ``e``, first drop their rows
of epochs ``>= e``, so every epoch appears exactly once.

* :class:`HistoryLogger` appends the epoch logs (loss, metrics, ...) to a CSV file, one
  row per epoch, flushed to disk.
* :class:`GateRateLogger` measures every gate's activation rate on a fixed
  probe set at the end of each epoch (in the model's current inference style,
  threshold by default) and appends it to a CSV file and to TensorBoard.
  The CSV (one row per epoch) feeds :func:`tfgated.plots.plot_gate_rates`.
* :class:`TargetAnnealing` moves the target rate of every
  :class:`~tfgated.losses.GateActivationLoss` from ``start`` to ``end`` over
  a number of epochs or optimizer steps, linearly or on a cosine.
* :class:`RecalibrateBatchNorm` re-estimates the batch-norm statistics at the
  end of training (:func:`tfgated.recalibrate_batch_norm`), which matters
  after short training (a few hundred steps or fewer).
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from tfgated.batch_norm import recalibrate_batch_norm
from tfgated.inference import activation_loss_layers, gate_layers
from tfgated.checkpoints import append_csv_row, keep_csv_rows, read_csv_rows

__all__ = ["GateRateLogger", "HistoryLogger", "RecalibrateBatchNorm", "TargetAnnealing", "probe_inputs", "read_gate_csv"]

SCHEDULES = ("linear", "cosine")


def probe_inputs(probe, max_examples):
    """Images of ``probe`` (an array, or a dataset of ``(x, y)`` / ``x`` batches), at most ``max_examples``."""
    if isinstance(probe, np.ndarray):
        return probe[:max_examples]
    if hasattr(probe, "take") and hasattr(probe, "element_spec"):  # tf.data
        pieces, count = [], 0
        for element in probe:
            x = element[0] if isinstance(element, (tuple, list)) else element
            x = np.asarray(x)
            pieces.append(x)
            count += len(x)
            if count >= max_examples:
                break
        if not pieces:
            raise ValueError("The probe dataset is empty.")
        return np.concatenate(pieces)[:max_examples]
    raise ValueError(
        "Expected the probe to be a numpy array of images or a tf.data.Dataset. "
        f"Received: {type(probe).__name__}"
    )


def _scalar_summary(tag, value, step):
    """A TensorBoard scalar written with TF core ops (works without the tensorboard package)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


def read_gate_csv(path):
    """Read a :class:`GateRateLogger` CSV: ``(epochs, {column: array})`` (a damaged last line dropped)."""
    _, rows = read_csv_rows(path)
    if not rows:
        raise ValueError(f"No epochs recorded in {path!r}.")
    epochs = np.array([int(r["epoch"]) for r in rows])
    columns = {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "epoch"}
    return epochs, columns


class _EpochCSV(keras.callbacks.Callback):
    """A CSV log with one row per epoch that, at the first epoch of a ``fit``, drops the rows
    of that epoch and later ones (left by a run that was killed and now resumes)."""

    def __init__(self, csv_path):
        super().__init__()
        self.csv_path = os.fspath(csv_path)
        self._trimmed = False

    def on_train_begin(self, logs=None):
        self._trimmed = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._trimmed:
            keep_csv_rows(self.csv_path, lambda row: _epoch_of(row) < epoch)
            self._trimmed = True

    def append(self, row):
        os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
        append_csv_row(self.csv_path, row)


def _epoch_of(row):
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return -1


def _cell(value):
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


class HistoryLogger(_EpochCSV):
    """Append each epoch's logs to a CSV file (``epoch`` first, then the log keys, sorted).

    Like ``keras.callbacks.CSVLogger(path, append=True)``, but every row is flushed to disk
    whole, a resumed run replaces the rows of the epochs it redoes, and a key that appears
    later (a metric added in a later phase) widens the header instead of corrupting the file.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self.append({"epoch": str(epoch), **{k: _cell(logs[k]) for k in sorted(logs)}})


class GateRateLogger(_EpochCSV):
    """Log every gate's activation rate per epoch to CSV and TensorBoard.

    Args:
        probe: images to measure on (numpy array) or a ``tf.data`` dataset of
            ``(images, labels)`` batches; the first ``max_examples`` are used.
        log_dir: folder for ``gate_rates.csv`` and the TensorBoard event files
            (``log_dir/gates``).
        max_examples: probe size.
        tensorboard: also write ``tf.summary`` scalars ``gate_rate/<gate>`` and
            ``gate_rate/mean``.

        filename: the CSV file's name inside ``log_dir``.

    The CSV has columns ``epoch``, ``mean`` (mean over all gate elements) and
    one per gate (mean over the gate's units). Epochs are numbered as Keras does
    (0 is the first), like the history CSV. When training resumes, the rows of
    epochs being redone are replaced.
    """

    def __init__(self, probe, log_dir, max_examples=512, tensorboard=True, filename="gate_rates.csv"):
        if not isinstance(max_examples, int) or max_examples < 1:
            raise ValueError(f"Expected max_examples to be a positive integer. Received: max_examples={max_examples!r}")
        super().__init__(os.path.join(os.fspath(log_dir), filename))
        self.probe = probe_inputs(probe, max_examples)
        self.log_dir = os.fspath(log_dir)
        self.tensorboard = tensorboard
        self._writer = None
        self._gate_model = None

    def _measure(self):
        if self._gate_model is None:
            gates = gate_layers(self.model)
            if not gates:
                raise ValueError(f"Model {self.model.name!r} has no tfgated gates to monitor.")
            self._names = [g.name for g in gates]
            self._gate_model = keras.Model(self.model.inputs, [g.output for g in gates])
        outputs = self._gate_model.predict(self.probe, batch_size=256, verbose=0)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        values = [np.asarray(v, dtype="float64") for v in outputs]
        rates = {name: float(v.mean()) for name, v in zip(self._names, values)}
        total = sum(v.mean(axis=0).sum() for v in values)
        units = sum(v.shape[-1] for v in values)
        return float(total / units), rates

    def measure(self):
        """``(mean rate, {gate name: rate})`` of the model on the probe now."""
        return self._measure()

    def on_epoch_end(self, epoch, logs=None):
        mean, rates = self._measure()
        self.append({"epoch": str(epoch), "mean": repr(mean), **{k: repr(v) for k, v in rates.items()}})
        if logs is not None:
            logs["gate_rate"] = mean
        if self.tensorboard:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "gates"))
            with self._writer.as_default():
                _scalar_summary("gate_rate/mean", mean, epoch)
                for name, value in rates.items():
                    _scalar_summary(f"gate_rate/{name}", value, epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def annealed_value(start, end, fraction, schedule="linear"):
    """The target at ``fraction`` in [0, 1] of the annealing (clipped)."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * fraction
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class TargetAnnealing(keras.callbacks.Callback):
    """Move the activation-loss target from ``start`` to ``end``.

    Give exactly one of ``epochs`` (the target is set at the start of each
    epoch: ``start`` at epoch 0, ``end`` from epoch ``epochs`` on) or
    ``steps`` (set before each batch from the optimizer's iteration count,
    so a resumed run continues where it stopped).

    Args:
        start, end: targets in [0, 1] (typically high to low).
        epochs: annealing length in epochs.
        steps: annealing length in optimizer steps.
        schedule: ``"linear"`` or ``"cosine"``.

    The current target is added to the epoch logs as ``gate_target``.
    """

    def __init__(self, start, end, epochs=None, steps=None, schedule="linear"):
        super().__init__()
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Expected {name} in [0, 1]. Received: {name}={value}")
        if (epochs is None) == (steps is None):
            raise ValueError(f"Expected exactly one of epochs or steps. Received: epochs={epochs}, steps={steps}")
        length = epochs if epochs is not None else steps
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            which = "epochs" if epochs is not None else "steps"
            raise ValueError(f"Expected {which} to be a positive integer. Received: {which}={length!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"Expected schedule to be one of {list(SCHEDULES)}. Received: schedule={schedule!r}")
        self.start = float(start)
        self.end = float(end)
        self.epochs = epochs
        self.steps = steps
        self.schedule = schedule
        self.current = self.start

    def _set(self, fraction):
        target = annealed_value(self.start, self.end, fraction, self.schedule)
        layers = activation_loss_layers(self.model)
        if not layers:
            raise ValueError(f"Model {self.model.name!r} has no GateActivationLoss layer to anneal.")
        for layer in layers:
            layer.set_target(target)
        self.current = target

    def on_epoch_begin(self, epoch, logs=None):
        if self.epochs is not None:
            self._set(epoch / self.epochs)

    def on_train_batch_begin(self, batch, logs=None):
        if self.steps is not None:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self._set(step / self.steps)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["gate_target"] = self.current


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Re-estimates the batch-norm moving statistics when ``fit`` ends.

    After short training (a few hundred steps or fewer) the moving mean and
    variance lag the weights, and a gated model that scores well during
    training can score far lower at test time under threshold inference. At
    the end of training this callback calls
    :func:`tfgated.recalibrate_batch_norm` on ``data``, so the fitted model
    comes out with statistics that match its weights and its gates.

    Args:
      data: training images: a ``tf.data`` dataset of ``(x, y)`` or ``x``
        batches, or an array of images (batched by ``batch_size``).
      style: inference style the gates follow while statistics are gathered
        (``"threshold"``, ...); ``None``: the model's current style.
      batches: batches of ``data`` used.
      batch_size: batch size for array ``data``.
    """

    def __init__(self, data, style=None, batches=20, batch_size=128):
        super().__init__()
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"Expected batches to be a positive integer. Received: batches={batches!r}")
        self.data = data
        self.style = style
        self.batches = batches
        self.batch_size = batch_size
        self.batches_used = 0

    def on_train_end(self, logs=None):
        self.batches_used = recalibrate_batch_norm(
            self.model, self.data, style=self.style, batches=self.batches, batch_size=self.batch_size
        )
