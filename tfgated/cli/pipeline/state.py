"""The run folder of one pipeline run: stage folders, finished-stage state, data, the run's model builder.

Layout of a run folder::

    .lock                the run's lock (:mod:`tfgated.runlock`): one process writes the folder
    run.json             dataset, budget, seed (a folder holds one configuration)
    NN_<stage>/          one folder per stage (01_search ... 07_export): its files,
                         model.keras (where the stage makes one) and state.json,
                         written atomically when the stage is finished (a killed
                         stage has no state.json and is redone on the next launch)
    plots/               the figures
    summary.json, summary.md
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfgated.io import json_default, load_model, write_json

__all__ = [
    "MODEL_NAME",
    "RUN_CONFIG_NAME",
    "STAGES",
    "STATE_NAME",
    "Run",
    "accuracy",
    "batched_arrays",
    "check_run_config",
    "load_stage_model",
    "read_json",
    "save_json",
]

#: The stages, in order.
STAGES = ("search", "improve", "train", "prune", "accelerate", "quantize", "export")
STATE_NAME = "state.json"
MODEL_NAME = "model.keras"
RUN_CONFIG_NAME = "run.json"


def save_json(path, data):
    """Write ``data`` as JSON atomically (NumPy values and tuples as JSON values)."""
    write_json(path, data, default=json_default)


def read_json(path):
    """A run's JSON file; a corrupt one is a clear ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"Corrupt state file {os.fspath(path)!r}: {error}. Delete it to redo that stage.") from error


def load_stage_model(path):
    """The ``model.keras`` of a finished stage (:func:`tfgated.io.load_model`); a missing file names the fix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Model file {path!r} of a finished stage is missing. Delete that stage's state.json to redo it."
        )
    return load_model(path)


def batched_arrays(dataset):
    """``(x, labels)`` numpy arrays of a batched dataset (one-hot labels turned into indices)."""
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return x, y.reshape(-1).astype("int64")


def accuracy(probs, labels):
    """Top-1 accuracy of class probabilities against integer labels."""
    return float((np.asarray(probs).argmax(axis=1) == labels).mean())


class Run:
    """Shared state of one pipeline run: arguments, budget, folders, data, the SIPA builder."""

    def __init__(self, dataset, budget, run_dir, data_dir=None, seed=0, verbose=2, log=print):
        self.dataset = dataset
        self.budget = budget
        self.run_dir = os.fspath(run_dir)
        self.data_dir = data_dir
        self.seed = int(seed)
        self.verbose = verbose
        self.log = log
        self._splits = None
        self._search_splits = None
        self._test = None
        self._validation = None

    # folders and state
    def locked(self):
        """A context holding the run folder's exclusive lock (:func:`tfgated.runlock.run_folder_lock`):
        a second ``python -m tfgated run`` into the same folder is refused with the holder's PID."""
        from tfgated.runlock import run_folder_lock

        return run_folder_lock(self.run_dir)

    def stage_dir(self, stage):
        path = os.path.join(self.run_dir, f"{STAGES.index(stage) + 1:02d}_{stage}")
        os.makedirs(path, exist_ok=True)
        return path

    def state_path(self, stage):
        return os.path.join(self.run_dir, f"{STAGES.index(stage) + 1:02d}_{stage}", STATE_NAME)

    def state(self, stage):
        """The state of a finished stage, or None."""
        path = self.state_path(stage)
        if not os.path.exists(path):
            return None
        state = read_json(path)
        return state if state.get("status") == "done" else None

    def need(self, stage):
        """The state of a stage that must have finished."""
        state = self.state(stage)
        if state is None:
            raise ValueError(
                f"Stage {stage!r} has not finished in {self.run_dir!r}; run the pipeline from the start."
            )
        return state

    def model_path(self, stage):
        return os.path.join(self.stage_dir(stage), MODEL_NAME)

    def load_model(self, stage):
        return load_stage_model(self.model_path(stage))

    @property
    def plots_dir(self):
        path = os.path.join(self.run_dir, "plots")
        os.makedirs(path, exist_ok=True)
        return path

    # data
    def data_kwargs(self):
        return {
            "data_dir": self.data_dir,
            "limit": self.budget.limit,
            "validation_split": self.budget.validation_split,
        }

    def search_data_kwargs(self):
        """:meth:`data_kwargs` of the search and Improving stages (``search_limit`` examples)."""
        limit = self.budget.search_limit
        return {**self.data_kwargs(), "limit": self.budget.limit if limit is None else limit}

    def search_splits(self):
        """Integer-label splits of the search stage's trials (:meth:`search_data_kwargs`)."""
        if self.budget.search_limit is None:
            return self.splits()
        if self._search_splits is None:
            from tfgated.data import load_dataset

            self._search_splits = load_dataset(
                self.dataset, batch_size=self.budget.batch_size, seed=self.seed, **self.search_data_kwargs()
            )
        return self._search_splits

    def splits(self):
        """Integer-label splits of the run (search, evaluation, exit training)."""
        if self._splits is None:
            from tfgated.data import load_dataset

            self._splits = load_dataset(
                self.dataset, batch_size=self.budget.batch_size, seed=self.seed, **self.data_kwargs()
            )
            if self._splits.validation is None:
                raise ValueError("The pipeline needs a validation split. Received: validation_split=0")
        return self._splits

    def test_arrays(self):
        if self._test is None:
            self._test = batched_arrays(self.splits().test)
        return self._test

    def validation_arrays(self):
        if self._validation is None:
            self._validation = batched_arrays(self.splits().validation)
        return self._validation

    def test_accuracy(self, model):
        x, y = self.test_arrays()
        return accuracy(model.predict(x, batch_size=256, verbose=0), y)

    # architecture
    def build(self, arch, overrides=None):
        """The SIPA network of ``arch`` (builder arguments) for the run's dataset."""
        from tfgated.zoo.sipa import build_sipa

        info = self.splits().info
        return build_sipa(num_classes=info.num_classes, input_shape=info.input_shape, **{**arch, **(overrides or {})})


def check_run_config(run):
    """Write ``run.json`` on the first run; refuse a folder holding another configuration."""
    config = {"dataset": run.dataset, "budget": run.budget.name, "seed": run.seed,
              "budget_settings": json.loads(json.dumps(run.budget.to_dict(), default=json_default))}
    path = os.path.join(run.run_dir, RUN_CONFIG_NAME)
    if os.path.exists(path):
        old = read_json(path)
        for key in ("dataset", "budget", "seed"):
            if old.get(key) != config[key]:
                raise ValueError(
                    f"Run folder {run.run_dir!r} holds a run with {key}={old.get(key)!r}; this command asks for "
                    f"{key}={config[key]!r}. Use another --run-dir (or delete that folder to start afresh)."
                )
        return
    os.makedirs(run.run_dir, exist_ok=True)
    save_json(path, config)
