"""Run folders: what a training run records, how a rerun finds its state, and its data.

:func:`open_run` prepares a run folder for a run's ``config`` (refusing a folder of another
run, returning a finished run's metrics); :func:`finished_run` does the same check without
writing anything, so a command can refuse or skip before it creates a folder. Hold the
folder's lock (:func:`tfgated.runlock.run_folder_lock`) while a run writes it.
:class:`RunData` is a run's dataset and split settings; :func:`training_split` and
:func:`held_out_split` give later tools the validation split a model was trained with.
:mod:`tfgated.train` re-exports every name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional

from tfgated.io import json_default

__all__ = [
    "CONFIG_FILE",
    "MAIN_MODEL_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "RunData",
    "check_dataset",
    "finished_run",
    "held_out_split",
    "main_phase_done",
    "open_run",
    "run_config",
    "training_split",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MAIN_MODEL_FILE = "main.keras"
MODEL_FILE = "model.keras"


def check_dataset(name):
    """Raise ``ValueError`` unless ``name`` is a dataset :func:`tfgated.data.load_dataset` knows."""
    from tfgated.data import KNOWN_DATASETS

    if name not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(KNOWN_DATASETS)}.")


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data of a training run: the dataset and how its validation split is carved out.

    Attributes:
        dataset: a name :func:`tfgated.data.load_dataset` knows.
        data_dir: the dataset's folder (required for TFDS datasets).
        limit: use only the first ``limit`` examples (smoke runs), or None for all.
        validation_split: the fraction of the training images held out for validation.
        seed: the seed of the validation carve-out and of the shuffling.
        pixels: what the model takes (:func:`tfgated.data.load_dataset`'s ``pixels``):
            ``"raw"`` for a ``tfgated.zoo`` model, which normalizes inside its graph.
    """

    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    validation_split: float = 0.1
    seed: int = 42
    pixels: str = "normalized"

    def __post_init__(self):
        check_dataset(self.dataset)

    def as_config(self):
        """The settings as the plain dict a run's ``config.json`` records."""
        return dataclasses.asdict(self)

    def _load_kwargs(self):
        return dict(data_dir=self.data_dir, limit=self.limit, validation_split=self.validation_split,
                    pixels=self.pixels)

    def splits(self, recipe):
        """The train/validation/test batches under ``recipe`` (its batch size, labels, augmentation)."""
        return recipe.datasets(self.dataset, seed=self.seed, **self._load_kwargs())

    def test_split(self, batch_size=256):
        """The test batches in a fixed order, as :func:`evaluate_model` wants them."""
        from tfgated.data import load_dataset

        return load_dataset(self.dataset, batch_size=batch_size, seed=self.seed, **self._load_kwargs()).test


def run_config(folder):
    """The ``config.json`` of the run folder ``folder`` as a dict; ``{}`` when it has none."""
    path = os.path.join(os.fspath(folder), CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_split(model_path):
    """The data split a model was trained on, or None when nobody recorded it.

    A model saved by :func:`train_model` sits in a run folder whose ``config.json`` records the
    seed and ``validation_split`` of its validation carve-out. A benchmark that evaluates or
    calibrates on "validation" must use the same split, or its validation images include
    the model's own training images.

    Returns:
        ``{"seed": int, "validation_split": float, "limit": int | None}`` or None.
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    config = run_config(folder)
    if "seed" not in config or "validation_split" not in config:
        return None
    limit = config.get("limit")
    return {"seed": int(config["seed"]), "validation_split": float(config["validation_split"]),
            "limit": None if limit is None else int(limit)}


def held_out_split(model_path, split_seed=None, default_seed=0, default_fraction=0.1):
    """``(seed, validation_split)`` for evaluating or calibrating ``model_path`` on "validation".

    The explicit ``split_seed`` wins (with the recorded fraction, if any); else the split its
    training run recorded (:func:`training_split`), so the validation images really are held
    out; else ``default_seed``. Prints which one it uses when it comes from the run.
    """
    recorded = training_split(model_path) if model_path else None
    if split_seed is not None:
        return int(split_seed), float(recorded["validation_split"] if recorded else default_fraction)
    if recorded is not None:
        print(f"Validation split of the model's training run: seed {recorded['seed']}, "
              f"fraction {recorded['validation_split']}", flush=True)
        return recorded["seed"], recorded["validation_split"]
    return int(default_seed), float(default_fraction)



def finished_run(run_dir, config):
    """The metrics of the run ``config`` if ``run_dir`` holds it finished, else None; writes nothing.

    Raises:
        ValueError: ``run_dir`` holds a run with another ``config``.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        return None
    previous = run_config(run_dir)
    previous.pop("recipe", None)
    if previous != json.loads(json.dumps(config, default=json_default)):
        raise ValueError(
            f"Run folder {run_dir!r} holds a different run ({previous}). Use another --run-dir or --overwrite."
        )
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    print(f"Run {run_dir!r} already finished: {json.dumps(metrics.get('test', metrics))}")
    return metrics


def _clear_folder(folder):
    """Remove everything in ``folder`` but its lock file (held by this run)."""
    from tfgated.runlock import LOCK_NAME

    for name in os.listdir(folder):
        if name == LOCK_NAME:
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def open_run(run_dir, config, overwrite=False):
    """Make ``run_dir`` ready for the run that ``config`` describes; the metrics if it already finished.

    Hold the folder's lock (:func:`tfgated.runlock.run_folder_lock`) around this call and
    the training, so no second process writes the folder meanwhile.

    Args:
        run_dir: the run folder (created when missing).
        config: the run's settings as plain data (JSON-serializable with
            :func:`tfgated.io.json_default`); a folder holding another run is refused.
        overwrite: empty a folder that holds a run (any run; its lock file stays) and start over.

    Returns:
        The finished run's ``metrics.json`` as a dict, or None when it still has to be trained.

    Raises:
        ValueError: ``run_dir`` holds a run with another ``config``.
    """
    run_dir = os.fspath(run_dir)
    if overwrite and os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        _clear_folder(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    return finished_run(run_dir, config)


def main_phase_done(run_dir):
    """Whether the run in ``run_dir`` finished its main phase (``main.keras`` exists): a warm
    start then has nothing left to initialize."""
    return os.path.exists(os.path.join(os.fspath(run_dir), MAIN_MODEL_FILE))
