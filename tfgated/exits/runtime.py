"""Early-exit inference: threshold calibration and a model that really stops early.

A sample whose exit head is confident enough (maximum softmax probability strictly above a
threshold, the reference's ``LogitCond``) is answered by the exit and skips the rest of the
network; the others continue to the main output.

* :func:`combine_predictions` makes that per-sample selection from both outputs' probabilities.
* :func:`calibrate_threshold` picks the threshold on validation data, either for a maximum
  accuracy drop against the full network or for a target exit ratio.
* :class:`EarlyExitModel` / :func:`early_exit_predict` really stop early: the functional graph
  is split (:func:`tfgated.exits.exit_structure`) into part A (input -> exit head, plus every
  tensor the rest of the network needs) and part B (those tensors -> main output). Tensors that
  cross the split besides the exit point (skip connections, gate tensors read by the
  activation-loss layer, ...) are carried over, so any topology works. Part B runs only on the
  samples that did not exit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from tfgated.exits.heads import exit_structure
from tfgated.gates import check_unit_interval
from tfgated.sparse import (
    SparseModel,
    check_functional_model,
    register_exit_runner,
    residual_branches,
    sparse_exit_call,
)

__all__ = [
    "EarlyExitModel",
    "EarlyExitResult",
    "SparseExitModel",
    "ThresholdCalibration",
    "calibrate_threshold",
    "check_probabilities",
    "check_threshold",
    "class_indices",
    "combine_predictions",
    "early_exit_predict",
]


# ----------------------------------------------------------------------------- calibration


def class_indices(labels):
    """Class indices (int64, shape ``(N,)``) from indices ``(N,)`` / ``(N, 1)`` or one-hot ``(N, C)``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    return labels.reshape(-1).astype("int64")


def check_probabilities(probs, what):
    """``probs`` as a float64 array of shape ``(N, classes)``; a ValueError naming ``what`` otherwise."""
    probs = np.asarray(probs, dtype="float64")
    if probs.ndim != 2:
        raise ValueError(f"Expected {what} of shape (N, classes). Received: shape={probs.shape}")
    return probs


def combine_predictions(exit_probs, main_probs, threshold):
    """Per-sample selection: the exit where ``max(exit_probs) > threshold``, else the main output.

    Returns ``(probs, exited)`` (numpy arrays).
    """
    exit_probs = check_probabilities(exit_probs, "exit_probs")
    main_probs = check_probabilities(main_probs, "main_probs")
    if exit_probs.shape != main_probs.shape:
        raise ValueError(
            f"Expected exit_probs and main_probs of one shape. Received: {exit_probs.shape} and {main_probs.shape}"
        )
    exited = exit_probs.max(axis=1) > float(threshold)
    return np.where(exited[:, None], exit_probs, main_probs), exited


@dataclasses.dataclass
class ThresholdCalibration:
    """A calibrated threshold and what it gives on the calibration data (accuracies in [0, 1])."""

    threshold: float
    exit_ratio: float
    accuracy: float
    full_accuracy: float
    exit_accuracy: float
    criterion: str

    @property
    def accuracy_drop(self):
        return self.full_accuracy - self.accuracy

    def to_dict(self):
        return {**dataclasses.asdict(self), "accuracy_drop": self.accuracy_drop}


def calibrate_threshold(exit_probs, main_probs, labels, max_accuracy_drop=None, target_exit_ratio=None):
    """Choose the confidence threshold on calibration (validation) data.

    A sample exits when its exit confidence (max probability) is strictly above the threshold.
    Only thresholds that change the exited set are considered; the returned one lies midway
    between the confidences of the last exiting and the first continuing sample.

    Exactly one criterion:
        max_accuracy_drop: the largest exit ratio whose accuracy is at least
            ``full_accuracy - max_accuracy_drop`` (a fraction: 0.003 = 0.3 points).
        target_exit_ratio: the highest threshold whose exit ratio is at least this (in [0, 1]).

    Returns:
        :class:`ThresholdCalibration` (exit_accuracy is NaN when nothing exits).
    """
    if (max_accuracy_drop is None) == (target_exit_ratio is None):
        raise ValueError(
            "Expected exactly one of max_accuracy_drop and target_exit_ratio. "
            f"Received: max_accuracy_drop={max_accuracy_drop}, target_exit_ratio={target_exit_ratio}"
        )
    exit_probs = check_probabilities(exit_probs, "exit_probs")
    main_probs = check_probabilities(main_probs, "main_probs")
    labels = class_indices(labels)
    n = len(labels)
    if exit_probs.shape != main_probs.shape or exit_probs.shape[0] != n or n == 0:
        raise ValueError(
            "Expected exit_probs, main_probs (N, classes) and N labels, N > 0. "
            f"Received: {exit_probs.shape}, {main_probs.shape}, {labels.shape}"
        )
    confidence = exit_probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    exit_correct = (exit_probs.argmax(axis=1) == labels)[order].astype("int64")
    main_correct = (main_probs.argmax(axis=1) == labels)[order].astype("int64")
    cum_exit = np.concatenate([[0], np.cumsum(exit_correct)])
    cum_main = np.concatenate([[0], np.cumsum(main_correct)])
    full_correct = cum_main[-1]
    # k = number of exited samples; valid where the top-k set is separable by a threshold.
    ks = np.arange(n + 1)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = conf_sorted[:-1] > conf_sorted[1:]
    accuracy = (cum_exit + (full_correct - cum_main)) / n
    full_accuracy = full_correct / n

    if max_accuracy_drop is not None:
        if not 0.0 <= float(max_accuracy_drop) <= 1.0:
            raise ValueError(f"Expected max_accuracy_drop in [0, 1]. Received: max_accuracy_drop={max_accuracy_drop}")
        ok = valid & (accuracy >= full_accuracy - float(max_accuracy_drop) - 1e-12)
        k = int(ks[ok].max())  # k = 0 is always feasible
        criterion = f"max_accuracy_drop={float(max_accuracy_drop)}"
    else:
        if not 0.0 <= float(target_exit_ratio) <= 1.0:
            raise ValueError(f"Expected target_exit_ratio in [0, 1]. Received: target_exit_ratio={target_exit_ratio}")
        ok = valid & (ks >= float(target_exit_ratio) * n - 1e-9)
        k = int(ks[ok].min())  # k = n is always feasible
        criterion = f"target_exit_ratio={float(target_exit_ratio)}"
    if k == 0:
        threshold = max(1.0, float(conf_sorted[0]))
    elif k == n:
        threshold = 0.0
    else:
        threshold = 0.5 * (float(conf_sorted[k - 1]) + float(conf_sorted[k]))
    return ThresholdCalibration(
        threshold=threshold,
        exit_ratio=k / n,
        accuracy=float(accuracy[k]),
        full_accuracy=float(full_accuracy),
        exit_accuracy=float(cum_exit[k] / k) if k else float("nan"),
        criterion=criterion,
    )


# ----------------------------------------------------------------------------- inference


@dataclasses.dataclass
class EarlyExitResult:
    """What early-exit inference did on a set of examples.

    ``probabilities`` (N, C) and ``exited`` (N,) are numpy arrays; ``mean_macs`` is the
    measured mean MACs per example: part A + head for every sample, + part B for those that
    continued. ``mac_saving`` is ``1 - mean_macs / main_macs`` (main network alone, no exit).
    Accuracies are None without labels.
    """

    probabilities: np.ndarray
    exited: np.ndarray
    threshold: float
    exit_ratio: float
    mean_macs: float
    macs: dict
    mac_saving: float
    accuracy: Optional[float] = None
    exit_accuracy: Optional[float] = None
    continued_accuracy: Optional[float] = None

    @property
    def predictions(self):
        return self.probabilities.argmax(axis=1)

    def to_dict(self):
        """JSON-ready summary (no per-example arrays)."""
        return {
            "threshold": self.threshold,
            "exit_ratio": self.exit_ratio,
            "accuracy": self.accuracy,
            "exit_accuracy": self.exit_accuracy,
            "continued_accuracy": self.continued_accuracy,
            "mean_macs": self.mean_macs,
            "mac_saving": self.mac_saving,
            "macs": dict(self.macs),
            "examples": int(len(self.exited)),
        }


def check_threshold(threshold):
    """``threshold`` as a float in ``[0, 1]``; a ValueError naming the value otherwise."""
    return check_unit_interval("threshold", threshold)


def _batches(x, batch_size):
    """Yield ``(x_batch, y_batch or None)`` from an array or a dataset of x or (x, y)."""
    if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not hasattr(x, "element_spec")):
        x = np.asarray(x)
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], None
        return
    for item in x:
        if isinstance(item, (tuple, list)):
            yield np.asarray(item[0]), np.asarray(item[1])
        else:
            yield np.asarray(item), None


class EarlyExitModel:
    """Inference that really stops early.

    Part A computes the exit probabilities and every tensor that the rest of the network needs
    (:attr:`ExitStructure.crossing`); part B computes the main output from those tensors and
    runs only on the samples whose exit confidence is not above ``threshold``.
    Both parts share weights with ``model_with_exit``.
    """

    def __init__(self, model_with_exit, threshold=0.85):
        self.threshold = check_threshold(threshold)
        self.structure = exit_structure(model_with_exit)
        s = self.structure
        self.part_a = keras.Model(s.inputs, [s.exit_output, *s.crossing], name="early_exit_part_a")
        main_in_a = any(t is s.main_output for t in s.crossing)
        crossing = s.crossing[0] if len(s.crossing) == 1 else s.crossing
        self.part_b = None if main_in_a else keras.Model(crossing, s.main_output, name="early_exit_part_b")

    @property
    def macs(self):
        return dict(self.structure.macs)

    def expected_ops(self, report, exit_ratio):
        """Operations per example of a MicroNet ``report`` (:func:`tfgated.micronet.micronet_score`
        of the two-output model) when a share ``exit_ratio`` of the examples stops at the exit:
        part B's operations count only for the others (SIPA's "after early exiting" score)."""
        part_b = {layer.name for layer in self.part_b.layers} if self.part_b is not None else set()
        ops_b = float(sum(r.ops for r in report.rows if r.name in part_b))
        return float(report.ops) - float(exit_ratio) * ops_b

    def predict_batch(self, x):
        """``(probs, exited)`` numpy arrays for one batch."""
        outs = self.part_a(x, training=False)
        outs = [keras.ops.convert_to_numpy(o) for o in outs]
        exit_probs, crossing = outs[0], outs[1:]
        exited = exit_probs.max(axis=1).astype("float64") > self.threshold
        probs = exit_probs.copy()
        rest = ~exited
        if rest.any():
            if self.part_b is None:
                main = crossing[0][rest]
            else:
                inputs = [c[rest] for c in crossing]
                main = self.part_b(inputs if len(inputs) > 1 else inputs[0], training=False)
                main = keras.ops.convert_to_numpy(main)
            probs[rest] = main
        return probs, exited

    def predict(self, x, labels=None, batch_size=256):
        """Early-exit predictions for an array, or a dataset of ``x`` or ``(x, labels)``.

        Returns:
            :class:`EarlyExitResult`.
        """
        if int(batch_size) < 1:
            raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")
        all_probs, all_exited, all_labels = [], [], []
        for xb, yb in _batches(x, int(batch_size)):
            probs, exited = self.predict_batch(xb)
            all_probs.append(probs)
            all_exited.append(exited)
            if yb is not None:
                all_labels.append(yb)
        if not all_probs:
            raise ValueError("Expected at least one example. Received: empty input")
        probs = np.concatenate(all_probs)
        exited = np.concatenate(all_exited)
        if labels is None and all_labels:
            labels = np.concatenate(all_labels)
        macs = self.structure.macs
        n = len(exited)
        exit_ratio = float(exited.mean())
        mean_macs = macs["part_a"] + macs["head"] + (1.0 - exit_ratio) * macs["part_b"]
        result = EarlyExitResult(
            probabilities=probs,
            exited=exited,
            threshold=self.threshold,
            exit_ratio=exit_ratio,
            mean_macs=float(mean_macs),
            macs=dict(macs),
            mac_saving=float(1.0 - mean_macs / macs["main"]) if macs["main"] else 0.0,
        )
        if labels is not None:
            labels = class_indices(labels)
            if len(labels) != n:
                raise ValueError(f"Expected {n} labels. Received: {len(labels)}")
            correct = probs.argmax(axis=1) == labels
            result.accuracy = float(correct.mean())
            result.exit_accuracy = float(correct[exited].mean()) if exited.any() else None
            result.continued_accuracy = float(correct[~exited].mean()) if (~exited).any() else None
        return result


def early_exit_predict(model_with_exit, x, threshold, batch_size=256, labels=None):
    """One-shot :meth:`EarlyExitModel.predict` (builds the split each call)."""
    return EarlyExitModel(model_with_exit, threshold).predict(x, labels=labels, batch_size=batch_size)


@keras.saving.register_keras_serializable(package="tfgated")
class SparseExitModel(SparseModel):
    """An early-exit model ``[main_probs, exit_probs]`` run by gather-run-scatter.

    The output is one tensor, the probabilities of the path each example took: the examples
    whose maximum exit probability is not above ``threshold`` are gathered, the rest of the
    network runs on them (its data-dependent residual gates gathered too,
    :func:`tfgated.sparse.sparse_exit_call`) and both outputs are stitched in order. Shares the
    weights of ``model_with_exit``; loadable with ``safe_mode=True``. ``stitch`` as for
    :class:`~tfgated.sparse.SparseModel`.
    """

    def __init__(self, model_with_exit, threshold=0.85, stitch="gather", **kwargs):
        kwargs.setdefault("name", f"{getattr(model_with_exit, 'name', 'model')}_sparse_exit")
        keras.Model.__init__(self, **kwargs)  # not SparseModel's: the split decides what is gathered
        check_functional_model(model_with_exit)
        self.model = model_with_exit
        self.threshold = check_threshold(threshold)
        self.stitch = stitch
        split = EarlyExitModel(model_with_exit, self.threshold)
        self.branches = residual_branches(split.part_b) if split.part_b is not None else []
        self._call = sparse_exit_call(split.part_a, split.part_b, self.threshold, stitch=stitch)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


register_exit_runner(SparseExitModel)  # tfgated.predict(..., exit_threshold=..., execution="sparse")
