"""``python -m tfgated run``: the whole SIPA workflow, end to end, resumable.

SIPA (Lee, Bae, Oh, Yun, MicroNet Challenge 2019) in seven stages on one
dataset (Fashion-MNIST from the local IDX files by default, offline):

=====  ============  ==============================================================
stage  name          what it does (module)
=====  ============  ==============================================================
1      search        SIPA architecture search with KerasTuner: block arguments and
                     scaling under a MAC budget (:mod:`tfgated.search`)
2      improve       greedy Improving: each training trick is kept only if it
                     raises validation accuracy (:mod:`tfgated.improve`)
3      train         the searched architecture trained with the improved recipe
                     (:mod:`tfgated.recipes`)
4      prune         iterative global magnitude pruning with layer-wise
                     normalization, fine-tuning between rounds (:mod:`tfgated.pruning`)
5      accelerate    an early-exit head trained with soft smoothing on the frozen
                     network, confidence threshold calibrated on validation data
                     (:mod:`tfgated.exits`)
6      quantize      weights rounded to 16 bits; MicroNet score at 16 bits
                     (:mod:`tfgated.micronet`)
7      export        the 16-bit main network written to TFLite (float16) and ONNX,
                     each checked against Keras in its runtime (``tfgated.export``)
=====  ============  ==============================================================

Each stage prints ``[k/7] name: ...`` lines. At the end the per-stage table of
SIPA's Table 1 is printed (stage, accuracy, parameters and their storage,
MicroNet math operations, normalized storage and operation scores, total score)
and written to ``summary.md`` and ``summary.json`` in the run folder, with the
plots (``plots/``) and the exported files (``export/``).

Accuracy is measured on the test split. Stages 1-4 are scored at 32 bits,
stage 5 with the exit head counted in storage and the *expected* operations
(part before the exit and the head always, the rest of the network for the
examples that do not exit), stage 6 like stage 5 at 16 bits (16-bit
parameters and multiplications, 32-bit additions).

Resuming: the run folder (``--run-dir``, default ``runs/sipa_<dataset>_<budget>``)
holds one folder per stage, ``NN_<stage>/``, with the stage's files, its model
(``model.keras``, where the stage makes one) and ``state.json`` written
atomically when the stage is finished. Run the same command again after an
interruption: finished stages print ``skipped (done)``, the interrupted stage
resumes where its own checkpoints allow (finished search trials, Improving
trials, training epochs and pruning rounds are kept) and the rest runs.
``--stop-after STAGE`` stops after a stage.

Budgets (``--budget``):

* ``small`` (default): sized to finish well within half an hour on two CPU
  cores: five SIPA blocks at native resolution (search space of about 2-9M
  MACs per example, fitness budget 4M), the first 20,000 training images
  (18,000 for training, 2,000 for validation), four search trials of two
  epochs, three Improving candidates of two epochs, twelve training epochs,
  three pruning rounds (30%, 50%, 60%) with one fine-tuning epoch each, two
  epochs for the exit head. Measured: 655 s (about 11 minutes) on two CPU
  cores shared with other jobs (load average 4-5); test accuracy 0.898 after
  training, 0.886 after pruning, early exit and 16 bits.
* ``tiny``: a few hundred images and a minimal network; seconds per stage
  (tests and smoke runs).
* ``paper``: SIPA's searched preset (``sipa_fashion_mnist`` or ``sipa_cifar100``)
  as the search result, SIPA's Improving groups and full-length training,
  SIPA's pruning schedule up to 64% sparsity. Hours to days: not for two cores.

``--dataset cifar100 --data-dir DIR`` runs on CIFAR-100 prepared with TFDS in
``DIR`` (a clear error otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np

from tfgated.io import save_figure, save_model, write_atomic, write_json

__all__ = [
    "BUDGETS",
    "STAGES",
    "Budget",
    "format_table",
    "main_run",
    "run_pipeline",
]

#: The stages, in order.
STAGES = ("search", "improve", "train", "prune", "accelerate", "quantize", "export")
STATE_NAME = "state.json"
MODEL_NAME = "model.keras"
RUN_CONFIG_NAME = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# -- budgets ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each stage does.

    Attributes:
        name: ``"tiny"``, ``"small"`` or ``"paper"``.
        limit: use only the first ``limit`` training (and test) examples; None = all.
        validation_split: fraction of the training examples held out for validation.
        batch_size: batch size of every stage.
        base_arch: SIPA builder arguments of the base architecture of the search,
            or None for the dataset's SIPA preset.
        search_trials: KerasTuner trials (0: take the base architecture as the
            search result and train it ``search_epochs``).
        search_epochs: training epochs per trial.
        budget_macs: the SIPA fitness threshold (MACs per example); None = the
            base architecture's MACs.
        search_space: extra :class:`tfgated.search.SIPAHyperModel` arguments.
        base_recipe: :class:`tfgated.recipes.Recipe` switches of the Improving
            baseline (``epochs`` is ``improve_epochs``).
        improve_groups: ``[(group, [(candidate, changes), ...]), ...]`` or
            ``"sipa"`` for :data:`tfgated.improve.SIPA_GROUPS`.
        improve_epochs: epochs per Improving trial.
        train_epochs: epochs of the final training with the improved recipe.
        prune_schedule: target sparsities of the pruning rounds.
        prune_epochs: fine-tuning epochs per pruning round.
        prune_lr_factor: fine-tuning learning rate as a fraction of the recipe's.
        exit_epochs: training epochs of the exit head.
        exit_max_drop: the calibrated threshold keeps validation accuracy within
            this of the network without exit.
        exit_channels: channels of the exit head's 1x1 convolution (None: the
            network's head channels).
        parity_examples: test images used by the export parity checks.
    """

    name: str
    limit: Optional[int]
    validation_split: float
    batch_size: int
    base_arch: Optional[dict]
    search_trials: int
    search_epochs: int
    budget_macs: Optional[float]
    search_space: dict
    base_recipe: dict
    improve_groups: object
    improve_epochs: int
    train_epochs: int
    prune_schedule: tuple
    prune_epochs: int
    prune_lr_factor: float
    exit_epochs: int
    exit_max_drop: float
    exit_channels: Optional[int]
    parity_examples: int

    def to_dict(self):
        return dataclasses.asdict(self)


_SGD_BASE = {
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "cosine_decay": True,
    "batch_size": 128,
}

BUDGETS: Dict[str, Budget] = {
    "tiny": Budget(
        name="tiny",
        limit=1000,
        validation_split=0.25,
        batch_size=64,
        base_arch={
            "blocks": ["r1_k3_s1_e1_i8_o8_se0.25", "r1_k3_s2_e3_i8_o16_se0.25", "r1_k3_s1_e3_i16_o16_se0.25"],
            "stem_filters": 8,
            "head_filters": 32,
            "width": 1.0,
            "depth": 1.0,
            "resolution": 1.0,
            "resource": 1,
            "dropout": 0.1,
            "drop_connect": 0.0,
        },
        search_trials=2,
        search_epochs=1,
        budget_macs=400_000,
        search_space={
            "kernel_sizes": (3,),
            "expand_ratios": (1, 3),
            "se_ratios": (0.25,),
            "channel_multipliers": (1.0, 1.5),
            "search_strides": False,
            "depth_range": (1.0, 1.0),
            "width_range": (1.0, 1.0),
            "resolution_range": (1.0, 1.0),
            "constraint": "none",
            "learning_rate": 0.01,
        },
        base_recipe={"optimizer": "adam", "learning_rate": 0.01, "cosine_decay": True, "batch_size": 64},
        improve_groups=[("regularization", [("label smoothing", {"label_smoothing": 0.1})])],
        improve_epochs=1,
        train_epochs=1,
        prune_schedule=(0.3, 0.5),
        prune_epochs=1,
        prune_lr_factor=0.1,
        exit_epochs=1,
        exit_max_drop=0.01,
        exit_channels=None,
        parity_examples=64,
    ),
    "small": Budget(
        name="small",
        limit=20_000,
        validation_split=0.1,
        batch_size=128,
        base_arch={
            "blocks": [
                "r1_k3_s1_e1_i16_o16_se0.25",
                "r1_k3_s1_e4_i16_o24_se0.25",
                "r1_k3_s2_e4_i24_o40_se0.25",
                "r1_k3_s1_e4_i40_o48_se0.25",
                "r1_k3_s1_e4_i48_o64_se0.25",
            ],
            "stem_filters": 16,
            "head_filters": 128,
            "width": 1.0,
            "depth": 1.0,
            "resolution": 1.0,
            "resource": 1,
            "dropout": 0.1,
            "drop_connect": 0.1,
        },
        search_trials=4,
        search_epochs=2,
        budget_macs=4_000_000,
        search_space={
            "kernel_sizes": (3, 5),
            "expand_ratios": (3, 4),
            "se_ratios": (0.0, 0.25),
            "channel_multipliers": (0.75, 1.0, 1.25),
            "search_strides": False,
            "depth_range": (1.0, 1.0),
            "width_range": (0.8, 1.1),
            "resolution_range": (1.0, 1.0),
            "constraint": "none",
            "num_initial_points": 2,
        },
        base_recipe=dict(_SGD_BASE),
        improve_groups=[
            ("learning rate", [("initial lr 0.1", {"learning_rate": 0.1})]),
            ("regularization", [("label smoothing", {"label_smoothing": 0.1})]),
            ("weight decay", [("weight decay", {"weight_decay": 5e-5})]),
        ],
        improve_epochs=2,
        train_epochs=12,
        prune_schedule=(0.3, 0.5, 0.6),
        prune_epochs=1,
        prune_lr_factor=0.1,
        exit_epochs=2,
        exit_max_drop=0.005,
        exit_channels=None,
        parity_examples=256,
    ),
    "paper": Budget(
        name="paper",
        limit=None,
        validation_split=0.1,
        batch_size=128,
        base_arch=None,
        search_trials=0,
        search_epochs=30,
        budget_macs=None,
        search_space={},
        base_recipe={**_SGD_BASE, "learning_rate": 0.1},
        improve_groups="sipa",
        improve_epochs=30,
        train_epochs=200,
        prune_schedule=tuple(float(s) for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.525, 0.55, 0.575, 0.6, 0.62, 0.64)),
        prune_epochs=20,
        prune_lr_factor=0.1,
        exit_epochs=50,
        exit_max_drop=0.005,
        exit_channels=136,
        parity_examples=1000,
    ),
}

#: The zoo preset whose architecture is the "searched" SIPA network of a dataset (paper budget).
SIPA_PRESETS = {"fashion_mnist": "sipa_fashion_mnist", "cifar100": "sipa_cifar100"}

# -- small helpers ------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (np.ndarray, tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _write_json(path, data):
    write_json(path, data, default=_json_default)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"Corrupt state file {os.fspath(path)!r}: {error}. Delete it to redo that stage.") from error


def _load_model(path):
    import keras

    import tfgated  # noqa: F401  (registers the custom objects)
    import tfgated.exits  # noqa: F401  (SoftSmoothingLoss)
    import tfgated.recipes  # noqa: F401  (GhostBatchNormalization)

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Model file {path!r} of a finished stage is missing. Delete that stage's state.json to redo it."
        )
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def _micronet(model, bits):
    """:func:`tfgated.micronet.micronet_score` of ``model`` at ``bits``."""
    from tfgated.micronet import micronet_score

    return micronet_score(model, bits=bits)


def _arrays(dataset):
    """``(x, labels)`` numpy arrays of a batched dataset (one-hot labels turned into indices)."""
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return x, y.reshape(-1).astype("int64")


def _accuracy(probs, labels):
    return float((np.asarray(probs).argmax(axis=1) == labels).mean())


def _predict(model, x, batch_size=256):
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    return outputs


def _score_row(stage, accuracy, report, bits, extra=None):
    """One table row from a MicroNet report (``ops`` may be replaced by expected ops in ``extra``)."""
    from tfgated.micronet import WRN_OPS, WRN_PARAMS

    ops = float(report.ops) if not extra or "ops" not in extra else float(extra["ops"])
    row = {
        "stage": stage,
        "accuracy": float(accuracy),
        "params": int(report.params),
        "nonzero_params": int(report.nonzero),
        "storage": float(report.params_storage),
        "ops": ops,
        "bits": int(bits),
        "storage_score": float(report.params_storage) / WRN_PARAMS,
        "ops_score": ops / WRN_OPS,
    }
    row["score"] = row["storage_score"] + row["ops_score"]
    for key, value in (extra or {}).items():
        if key != "ops":
            row[key] = value
    return row


def format_table(rows):
    """SIPA Table 1 style markdown table of the per-stage rows."""
    lines = [
        "| stage | bits | accuracy | parameters | storage (32-bit eq.) | MicroNet ops | storage score "
        "| ops score | total score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['bits']} | {r['accuracy']:.4f} | {r['nonzero_params']:,} / {r['params']:,} | "
            f"{r['storage']:,.0f} | {r['ops']:,.0f} | {r['storage_score']:.6f} | {r['ops_score']:.6f} | "
            f"{r['score']:.6f} |"
        )
    return "\n".join(lines)


def _plot(path, draw, size=(6.5, 4.5)):
    """Render one matplotlib figure (Agg canvas) and save it atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    draw(figure)
    return save_figure(figure, path, format="png", dpi=110, bbox_inches="tight")


# -- the run --------------------------------------------------------------------------


class _Run:
    """Shared state of one pipeline run: arguments, budget, folders, data."""

    def __init__(self, dataset, budget, run_dir, data_dir=None, seed=0, verbose=2, log=print):
        self.dataset = dataset
        self.budget = budget
        self.run_dir = os.fspath(run_dir)
        self.data_dir = data_dir
        self.seed = int(seed)
        self.verbose = verbose
        self.log = log
        self._splits = None
        self._test = None
        self._validation = None

    # folders and state
    def stage_dir(self, stage):
        path = os.path.join(self.run_dir, f"{STAGES.index(stage) + 1:02d}_{stage}")
        os.makedirs(path, exist_ok=True)
        return path

    def state_path(self, stage):
        return os.path.join(self.run_dir, f"{STAGES.index(stage) + 1:02d}_{stage}", STATE_NAME)

    def state(self, stage):
        path = self.state_path(stage)
        if not os.path.exists(path):
            return None
        state = _read_json(path)
        return state if state.get("status") == "done" else None

    def need(self, stage):
        state = self.state(stage)
        if state is None:
            raise ValueError(
                f"Stage {stage!r} has not finished in {self.run_dir!r}; run the pipeline from the start."
            )
        return state

    def model_path(self, stage):
        return os.path.join(self.stage_dir(stage), MODEL_NAME)

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
            self._test = _arrays(self.splits().test)
        return self._test

    def validation_arrays(self):
        if self._validation is None:
            self._validation = _arrays(self.splits().validation)
        return self._validation

    def test_accuracy(self, model):
        x, y = self.test_arrays()
        return _accuracy(_predict(model, x), y)

    def fit_verbose(self):
        return self.verbose

    # architecture
    def build(self, arch, overrides=None):
        from tfgated.zoo.sipa import build_sipa  # lazily: the CLI may import the zoo

        info = self.splits().info
        return build_sipa(num_classes=info.num_classes, input_shape=info.input_shape, **{**arch, **(overrides or {})})


def _base_arch(run):
    """The search's base architecture (builder arguments, blocks included)."""
    if run.budget.base_arch is not None:
        return dict(run.budget.base_arch)
    import tfgated.zoo
    from tfgated.search import REFERENCE_BLOCKS

    name = SIPA_PRESETS.get(run.dataset)
    if name is None:
        raise ValueError(
            f"No SIPA preset for dataset {run.dataset!r} (budget {run.budget.name!r}). "
            f"Expected one of {sorted(SIPA_PRESETS)}."
        )
    return {"blocks": list(REFERENCE_BLOCKS), **tfgated.zoo.get_preset(name)["arch"]}


# -- stage 1: search --------------------------------------------------------------------


def _stage_search(run, out):
    import keras

    from tfgated import complexity
    from tfgated.search import SIPAHyperModel, arch_summary, best_preset, make_tuner, trial_table, write_table

    budget = run.budget
    splits = run.splits()
    info = splits.info
    base_arch = _base_arch(run)
    keras.utils.set_random_seed(run.seed)  # trial initialisations in a fresh process follow the seed
    space = dict(budget.search_space)
    num_initial_points = space.pop("num_initial_points", None)
    threshold = budget.budget_macs
    if threshold is None:
        threshold = float(complexity.count(run.build(base_arch)).macs)
    hypermodel = SIPAHyperModel.from_options(
        lambda num_classes, input_shape, **arch: run.build(arch),
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        base_arch=base_arch,
        budget=threshold,
        measure="macs",
        **space,
    )
    if budget.search_trials > 0:
        run.log(
            f"[1/7] search: {budget.search_trials} trials x {budget.search_epochs} epochs on "
            f"{info.num_train:,} images, MAC budget {threshold:,.0f}"
        )
        tuner = make_tuner(
            hypermodel, algorithm="bayesian", max_trials=budget.search_trials,
            directory=os.path.join(out, "tuner"), project_name="sipa", seed=run.seed,
            num_initial_points=num_initial_points,
        )
        tuner.search(splits.train, validation_data=splits.validation, epochs=budget.search_epochs,
                     verbose=run.fit_verbose())
        rows = trial_table(tuner, hypermodel)
        write_table(rows, json_path=os.path.join(out, "trials.json"), csv_path=os.path.join(out, "trials.csv"))
        preset = best_preset(
            tuner, hypermodel, dataset=run.dataset, recipe=budget.base_recipe,
            search_info={"budget": threshold, "measure": "macs", "trials": len(rows), "epochs": budget.search_epochs},
        )
        model = tuner.get_best_models(1)[0]
        _plot_search(rows, threshold, os.path.join(run.plots_dir, "search_trials.png"))
    else:
        run.log(f"[1/7] search: the searched SIPA architecture, trained {budget.search_epochs} epochs")
        keras.utils.set_random_seed(run.seed)
        model = hypermodel.compile_model(run.build(base_arch))
        history = model.fit(splits.train, validation_data=splits.validation, epochs=budget.search_epochs,
                            verbose=run.fit_verbose())
        rows = []
        preset = {
            "family": "sipa", "arch": base_arch, "gates": None, "dataset": run.dataset,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "recipe": budget.base_recipe, "weights": None,
            "description": f"SIPA's searched architecture (preset), trained {budget.search_epochs} epochs.",
            "search": {"trial": None, "val_accuracy": float(history.history["val_accuracy"][-1])},
        }
    _write_json(os.path.join(out, "searched.json"), preset)
    save_model(model, run.model_path("search"))
    report = _micronet(model, 32)
    accuracy = run.test_accuracy(model)
    macs = float(complexity.count(model).macs)
    row = _score_row("search", accuracy, report, 32, {"macs": macs})
    run.log(f"[1/7] search: best {arch_summary(preset['arch'])}; {macs:,.0f} MACs, test accuracy {accuracy:.4f}")
    return {"row": row, "arch": preset["arch"], "trials": len(rows), "budget_macs": threshold,
            "preset": os.path.join(out, "searched.json")}


def _plot_search(rows, threshold, path):
    done = [r for r in rows if r.get("macs") is not None and r.get("val_accuracy") is not None]
    if not done:
        return None

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.scatter([r["macs"] / 1e6 for r in done], [r["val_accuracy"] for r in done])
        for r in done:
            axes.annotate(str(r["trial"]), (r["macs"] / 1e6, r["val_accuracy"]), fontsize=7)
        axes.axvline(threshold / 1e6, color="red", linestyle="--", label="MAC budget")
        axes.set_xlabel("MACs per example (millions)")
        axes.set_ylabel("validation accuracy")
        axes.set_title("SIPA search trials")
        axes.grid(True, alpha=0.3)
        axes.legend()

    return _plot(path, draw)


# -- stage 2: improve ----------------------------------------------------------------------


def _groups(spec):
    from tfgated.improve import SIPA_GROUPS, Candidate

    if spec == "sipa":
        return SIPA_GROUPS
    return [(name, [Candidate(c, dict(changes)) for c, changes in candidates]) for name, candidates in spec]


def _stage_improve(run, out):
    from tfgated.improve import improve, keras_trainer
    from tfgated.recipes import Recipe

    budget = run.budget
    arch = run.need("search")["arch"]
    groups = _groups(budget.improve_groups)
    base = Recipe.from_dict(budget.base_recipe, epochs=budget.improve_epochs, batch_size=budget.batch_size)
    count = sum(len(c) for _, c in groups)
    run.log(f"[2/7] improve: baseline + {count} candidate(s), {budget.improve_epochs} epoch(s) each")
    trainer = keras_trainer(
        lambda recipe: run.build(arch, recipe.model_overrides()),
        dataset=run.dataset, verbose=run.fit_verbose(), seed=run.seed, **run.data_kwargs(),
    )
    result = improve(base, groups, trainer, os.path.join(out, "trials"))
    _plot_improve(result.trials, os.path.join(run.plots_dir, "improve_trials.png"))
    run.log(
        f"[2/7] improve: best validation accuracy {result.accuracy:.4f}; adopted: "
        f"{', '.join(result.adopted) or 'none'}"
    )
    return {"recipe": result.recipe.to_dict(), "val_accuracy": result.accuracy, "adopted": result.adopted,
            "trials": len(result.trials)}


def _plot_improve(trials, path):
    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        names = [t.candidate for t in trials]
        colors = ["tab:green" if t.adopted else "tab:gray" for t in trials]
        axes.bar(range(len(trials)), [t.accuracy for t in trials], color=colors)
        axes.set_xticks(range(len(trials)))
        axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        low = min(t.accuracy for t in trials)
        axes.set_ylim(max(0.0, low - 0.05), min(1.0, max(t.accuracy for t in trials) + 0.02))
        axes.set_ylabel("validation accuracy")
        axes.set_title("Greedy Improving (green: adopted)")

    return _plot(path, draw)


# -- stage 3: train --------------------------------------------------------------------------


def _plain_batch_norm(model):
    """A clone with every ``GhostBatchNormalization`` back to ``BatchNormalization`` (same weights).

    Ghost batch norm only differs in training; exporters take built-in layers only.
    """
    import keras

    from tfgated.recipes import GhostBatchNormalization

    if not any(isinstance(layer, GhostBatchNormalization) for layer in model.layers):
        return model
    pairs = []

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, GhostBatchNormalization):
            config.pop("virtual_batch_size", None)
            new = keras.layers.BatchNormalization(**config)
        else:
            new = layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    cloned = keras.models.clone_model(model, clone_function=clone)
    for old, new in pairs:
        if old.weights:
            new.set_weights(old.get_weights())
    return cloned


def _stage_train(run, out):
    import keras

    from tfgated import plots
    from tfgated.recipes import Recipe, fit_recipe

    budget = run.budget
    arch = run.need("search")["arch"]
    improved = Recipe.from_dict(run.need("improve")["recipe"])
    recipe = improved.replace(epochs=budget.train_epochs)
    run.log(f"[3/7] train: {budget.train_epochs} epoch(s) with the improved recipe")
    keras.utils.set_random_seed(run.seed)
    model = recipe.prepare_model(run.build(arch, recipe.model_overrides()))
    splits = recipe.datasets(run.dataset, seed=run.seed, **run.data_kwargs())
    history_csv = os.path.join(out, "history.csv")
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup")),
        keras.callbacks.CSVLogger(history_csv, append=True),
    ]
    fit_recipe(model, recipe, splits, callbacks=callbacks, verbose=run.fit_verbose())
    stabilization = recipe.stabilization()
    if stabilization is not None:
        fit_recipe(model, stabilization, stabilization.datasets(run.dataset, seed=run.seed, **run.data_kwargs()),
                   verbose=run.fit_verbose())
    model = _plain_batch_norm(model)
    save_model(model, run.model_path("train"))
    if os.path.exists(history_csv):
        plots.plot_history(history_csv, os.path.join(run.plots_dir, "train_history.png"))
    report = _micronet(model, 32)
    accuracy = run.test_accuracy(model)
    run.log(f"[3/7] train: test accuracy {accuracy:.4f}")
    return {"row": _score_row("improve", accuracy, report, 32), "recipe": recipe.to_dict()}


# -- stage 4: prune ----------------------------------------------------------------------------


def _stage_prune(run, out):
    import keras

    from tfgated.pruning import IterativePruningOptions, iterative_pruning, sparsity_report, strip_pruning
    from tfgated.recipes import Recipe, steps_per_epoch

    budget = run.budget
    recipe = Recipe.from_dict(run.need("train")["recipe"])
    # constant small learning rate: the optimizer lives across rounds
    tune = recipe.replace(
        epochs=max(1, budget.prune_epochs), learning_rate=recipe.learning_rate * budget.prune_lr_factor,
        cosine_decay=False, lr_boundaries=(), warmup_epochs=0.0, stabilize_epochs=0,
    )
    run.log(
        f"[4/7] prune: {len(budget.prune_schedule)} round(s) to "
        f"{', '.join(f'{s:.0%}' for s in budget.prune_schedule)} sparsity, {budget.prune_epochs} fine-tuning "
        "epoch(s) each"
    )
    keras.utils.set_random_seed(run.seed)
    model = _load_model(run.model_path("train"))
    splits = tune.datasets(run.dataset, seed=run.seed, **run.data_kwargs())
    tune.compile(model, steps_per_epoch=steps_per_epoch(splits.train))
    rows = iterative_pruning(model, splits.train, splits.validation, IterativePruningOptions(
        schedule=list(budget.prune_schedule), fine_tune_epochs=budget.prune_epochs, ranking="global_normalized",
        checkpoint_dir=os.path.join(out, "rounds"), fit_kwargs={"verbose": run.fit_verbose()}, verbose=1,
    ))
    strip_pruning(model)
    save_model(model, run.model_path("prune"))
    sparsity = sparsity_report(model)["total"]["sparsity"]
    _plot_pruning(rows, os.path.join(run.plots_dir, "pruning.png"))
    report = _micronet(model, 32)
    accuracy = run.test_accuracy(model)
    run.log(f"[4/7] prune: sparsity {sparsity:.1%}, test accuracy {accuracy:.4f}")
    return {"row": _score_row("prune", accuracy, report, 32, {"sparsity": sparsity}), "rounds": rows}


def _plot_pruning(rows, path):
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

    return _plot(path, draw)


# -- stage 5: accelerate -----------------------------------------------------------------------


def _exit_position(model):
    """SIPA's exit position scaled to the network: block ``int(0.45 * blocks)`` (block 4 of 10)."""
    import re

    indices = sorted({int(m.group(1)) for layer in model.layers if (m := re.match(r"^block(\d+)_", layer.name))})
    if len(indices) < 2:
        raise ValueError(f"Expected at least two MBConv blocks to attach an exit. Received: {len(indices)}")
    return min(int(0.45 * len(indices)), len(indices) - 2)


def _head_channels(model, budget):
    if budget.exit_channels is not None:
        return int(budget.exit_channels)
    try:
        return int(model.get_layer("top_conv").filters)
    except ValueError:
        return 136


def _exit_evaluation(run, model_with_exit, threshold, bits):
    """Early-exit test accuracy and the MicroNet row with expected operations."""
    from tfgated.exits import EarlyExitModel

    x, y = run.test_arrays()
    split = EarlyExitModel(model_with_exit, threshold)
    result = split.predict(x, labels=y)
    report = _micronet(model_with_exit, bits)
    part_b = {layer.name for layer in split.part_b.layers} if split.part_b is not None else set()
    ops_b = float(sum(r.ops for r in report.rows if r.name in part_b))
    expected_ops = float(report.ops) - result.exit_ratio * ops_b
    extra = {
        "ops": expected_ops,
        "ops_every_layer": float(report.ops),
        "exit_ratio": result.exit_ratio,
        "threshold": float(threshold),
        "mean_macs": result.mean_macs,
        "mac_saving": result.mac_saving,
    }
    return result, extra, report


def _stage_accelerate(run, out):
    import keras

    from tfgated.exits import attach_exit, calibrate_threshold, plot_risk_coverage, risk_coverage, train_exit

    budget = run.budget
    keras.utils.set_random_seed(run.seed)
    model = _load_model(run.model_path("prune"))
    after = _exit_position(model)
    channels = _head_channels(model, budget)
    run.log(f"[5/7] accelerate: exit head after block {after} ({channels} channels), {budget.exit_epochs} epoch(s)")
    with_exit = attach_exit(model, after=after, channels=channels)
    splits = run.splits()
    train_exit(with_exit, splits.train, splits.validation, epochs=budget.exit_epochs, loss="softsmoothing",
               verbose=run.fit_verbose())
    vx, vy = run.validation_arrays()
    main_probs, exit_probs = (np.asarray(p) for p in _predict(with_exit, vx))
    calibration = calibrate_threshold(exit_probs, main_probs, vy, max_accuracy_drop=budget.exit_max_drop)
    save_model(with_exit, run.model_path("accelerate"))
    result, extra, report = _exit_evaluation(run, with_exit, calibration.threshold, 32)
    x, y = run.test_arrays()
    test_main, test_exit = (np.asarray(p) for p in _predict(with_exit, x))
    plot_risk_coverage(
        {"exit head": risk_coverage(test_exit, y), "full network": risk_coverage(test_main, y)},
        os.path.join(run.plots_dir, "risk_coverage.png"),
    )
    row = _score_row("accelerate", result.accuracy, report, 32, extra)
    run.log(
        f"[5/7] accelerate: threshold {calibration.threshold:.4f}, {result.exit_ratio:.1%} of test images exit, "
        f"mean MACs {result.mean_macs:,.0f} ({1 - result.mac_saving:.1%} of the network without exit), "
        f"test accuracy {result.accuracy:.4f}"
    )
    return {"row": row, "after": after, "channels": channels, "calibration": calibration.to_dict(),
            "early_exit": result.to_dict()}


# -- stage 6: quantize -------------------------------------------------------------------------


def _round_to_float16(model):
    """Round every float weight of ``model`` to the nearest float16 value (in place)."""
    for variable in model.weights:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind == "f":
            variable.assign(value.astype(np.float16).astype(value.dtype))
    return model


def _stage_quantize(run, out):
    state = run.need("accelerate")
    threshold = float(state["calibration"]["threshold"])
    run.log("[6/7] quantize: weights rounded to 16 bits, MicroNet score at 16 bits")
    with_exit = _round_to_float16(_load_model(run.model_path("accelerate")))
    save_model(with_exit, run.model_path("quantize"))
    result, extra, report = _exit_evaluation(run, with_exit, threshold, 16)
    row = _score_row("16-bit", result.accuracy, report, 16, extra)
    run.log(f"[6/7] quantize: test accuracy {result.accuracy:.4f}, MicroNet score {row['score']:.6f}")
    return {"row": row, "early_exit": result.to_dict()}


# -- stage 7: export ---------------------------------------------------------------------------


def _stage_export(run, out):
    import keras

    from tfgated.export import export  # lazily: the CLI may import the export package

    budget = run.budget
    with_exit = _load_model(run.model_path("quantize"))
    main = keras.Model(with_exit.inputs, with_exit.outputs[0], name="sipa_main")
    x, _ = run.test_arrays()
    parity_x = x[: budget.parity_examples]
    info = run.splits().info
    preprocessing = {"mean": list(info.mean), "std": list(info.std), "input_shape": list(info.input_shape)}
    files = {}
    results = {}
    for key, filename, quantization in (("tflite", "model_fp16.tflite", "float16"), ("onnx", "model.onnx", "float32")):
        path = os.path.join(out, filename)
        run.log(f"[7/7] export: {filename} ({quantization}), parity on {len(parity_x)} test images")
        result = export(main, path, quantization=quantization, parity_data=parity_x,
                        class_names=info.class_names, preprocessing=preprocessing)
        files[key] = path
        results[key] = result.parity
        agreement = result.parity.get("top1_agreement")
        run.log(
            f"[7/7] export: {filename}: parity {'passed' if result.parity['passed'] else 'FAILED'} "
            f"(max |diff| {result.parity['max_abs_diff']:.2e}"
            + (f", top-1 agreement {agreement:.4f}" if agreement is not None else "")
            + f", {result.parity['runtime']})"
        )
    return {"files": files, "parity": results}


# -- driver ------------------------------------------------------------------------------------

_STAGE_FUNCTIONS: Dict[str, Callable] = {
    "search": _stage_search,
    "improve": _stage_improve,
    "train": _stage_train,
    "prune": _stage_prune,
    "accelerate": _stage_accelerate,
    "quantize": _stage_quantize,
    "export": _stage_export,
}


def _check_run_config(run):
    """Write ``run.json`` on the first run; refuse a folder holding another configuration."""
    config = {"dataset": run.dataset, "budget": run.budget.name, "seed": run.seed,
              "budget_settings": json.loads(json.dumps(run.budget.to_dict(), default=_json_default))}
    path = os.path.join(run.run_dir, RUN_CONFIG_NAME)
    if os.path.exists(path):
        old = _read_json(path)
        for key in ("dataset", "budget", "seed"):
            if old.get(key) != config[key]:
                raise ValueError(
                    f"Run folder {run.run_dir!r} holds a run with {key}={old.get(key)!r}; this command asks for "
                    f"{key}={config[key]!r}. Use another --run-dir (or delete that folder to start afresh)."
                )
        return
    os.makedirs(run.run_dir, exist_ok=True)
    _write_json(path, config)


def _summary_plot(rows, path):
    def draw(figure):
        left = figure.add_subplot(1, 2, 1)
        right = figure.add_subplot(1, 2, 2)
        names = [r["stage"] for r in rows]
        left.bar(range(len(rows)), [r["accuracy"] for r in rows], color="tab:blue")
        left.set_xticks(range(len(rows)))
        left.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        left.set_ylim(max(0.0, min(r["accuracy"] for r in rows) - 0.1), 1.0)
        left.set_title("test accuracy")
        right.bar(range(len(rows)), [r["storage_score"] for r in rows], label="storage")
        right.bar(range(len(rows)), [r["ops_score"] for r in rows],
                  bottom=[r["storage_score"] for r in rows], label="math ops")
        right.set_xticks(range(len(rows)))
        right.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        right.set_title("MicroNet score (WRN-28-10 = 2)")
        right.legend(fontsize=8)

    return _plot(path, draw, size=(10, 4.5))


def _summary(run, states, times):
    rows = [states[s]["row"] for s in STAGES if s in states and states[s].get("row")]
    table = format_table(rows)
    plots = sorted(
        os.path.join(run.plots_dir, name) for name in os.listdir(run.plots_dir) if name.endswith(".png")
    )
    export_state = states.get("export") or {}
    summary = {
        "dataset": run.dataset,
        "budget": run.budget.name,
        "run_dir": run.run_dir,
        "rows": rows,
        "stage_seconds": times,
        "total_seconds": float(sum(times.values())),
        "plots": plots,
        "exported": export_state.get("files", {}),
        "parity": export_state.get("parity", {}),
        "stages": {s: {k: v for k, v in states[s].items() if k != "row"} for s in states},
    }
    return summary, table


def run_pipeline(dataset="fashion_mnist", budget="small", run_dir=None, data_dir=None, seed=0,
                 stop_after=None, verbose=2, log=print):
    """Run (or resume) the SIPA pipeline; see the module docstring.

    Args:
        dataset: ``"fashion_mnist"`` (offline default) or a prepared TFDS dataset
            such as ``"cifar100"`` (with ``data_dir``).
        budget: a key of :data:`BUDGETS` or a :class:`Budget`.
        run_dir: the run folder (default ``runs/sipa_<dataset>_<budget>``).
        data_dir: dataset folder (TFDS ``data_dir``; optional for Fashion-MNIST).
        seed: seeds the data split, shuffling and initialisation.
        stop_after: a stage name: stop after it (no summary written).
        verbose: Keras ``fit`` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
        log: the function printing the progress lines.

    Returns:
        The summary dict (also written to ``summary.json``), or ``None`` when
        stopped early.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"Unknown budget {budget!r}. Expected one of {list(BUDGETS)}.")
        budget = BUDGETS[budget]
    if not isinstance(budget, Budget):
        raise ValueError(f"Expected budget to be a name or a Budget. Received: {budget!r}")
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"Unknown stage {stop_after!r}. Expected one of {list(STAGES)}.")
    from tfgated.data import KNOWN_DATASETS

    if dataset not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}. Expected one of {list(KNOWN_DATASETS)}.")
    run_dir = run_dir or os.path.join("runs", f"sipa_{dataset}_{budget.name}")
    run = _Run(dataset, budget, run_dir, data_dir=data_dir, seed=seed, verbose=verbose, log=log)
    run.splits()  # fail early (and clearly) when the data is missing, before creating the folder
    _check_run_config(run)
    log(f"SIPA pipeline: dataset {dataset}, budget {budget.name}, run folder {run.run_dir}")
    states, times = {}, {}
    for index, stage in enumerate(STAGES):
        label = f"[{index + 1}/{len(STAGES)}] {stage}"
        state = run.state(stage)
        if state is not None:
            log(f"{label}: skipped (done)")
        else:
            start = time.time()
            result = _STAGE_FUNCTIONS[stage](run, run.stage_dir(stage))
            seconds = time.time() - start
            state = {"stage": stage, "status": "done", "seconds": seconds, **result}
            _write_json(run.state_path(stage), state)
            log(f"{label}: done in {seconds:.1f}s")
        states[stage] = state
        times[stage] = float(state.get("seconds", 0.0))
        if stage == stop_after:
            log(f"Stopped after stage {stage!r} (--stop-after); run again without it to continue.")
            return None
    summary, table = _summary(run, states, times)
    if summary["rows"]:
        summary["plots"].append(_summary_plot(summary["rows"], os.path.join(run.plots_dir, "stages.png")))
        summary["plots"] = sorted(set(summary["plots"]))
    _write_json(os.path.join(run.run_dir, SUMMARY_JSON), summary)
    timing = "\n".join(f"| {s} | {times[s]:.1f} |" for s in STAGES)
    markdown = (
        f"# SIPA pipeline: {dataset}, budget {budget.name}\n\n"
        "Per-stage results (SIPA Table 1). Accuracy on the test split; storage in 32-bit parameter "
        "equivalents and math operations per example under the MicroNet rules, normalized to "
        "WideResNet-28-10 (36.5M parameters, 10.49B operations). The accelerate and 16-bit rows count "
        "the exit head and the expected operations with early exit.\n\n"
        f"{table}\n\n| stage | seconds |\n|---|---:|\n{timing}\n| total | {summary['total_seconds']:.1f} |\n\n"
        f"Plots: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['plots'])}\n\n"
        f"Exported: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['exported'].values())}\n"
    )
    write_atomic(os.path.join(run.run_dir, SUMMARY_MD), markdown)
    log("")
    log(table)
    log("")
    log("Stage times: " + ", ".join(f"{s} {times[s]:.1f}s" for s in STAGES)
        + f"; total {summary['total_seconds']:.1f}s")
    for key, parity in summary["parity"].items():
        log(f"Parity {key}: {'passed' if parity.get('passed') else 'FAILED'} "
            f"(max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, {parity.get('runtime')})")
    log(f"Plots: {run.plots_dir}")
    log(f"Exported: {', '.join(summary['exported'].values())}")
    log(f"Summary: {os.path.join(run.run_dir, SUMMARY_MD)} and {os.path.join(run.run_dir, SUMMARY_JSON)}")
    return summary


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfgated run",
        description="The SIPA workflow end to end: search -> improve -> train -> prune -> accelerate "
        "(early exit) -> 16-bit -> export (TFLite, ONNX). Re-run the same command to resume.",
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (default, offline) or cifar100 "
                        "(TFDS, prepared in --data-dir)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (TFDS data_dir)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="small",
                        help="tiny (smoke test), small (default, ~30 min on 2 CPU cores), paper (SIPA-sized)")
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/sipa_<dataset>_<budget>)")
    parser.add_argument("--stop-after", choices=list(STAGES), default=None, help="stop after this stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="Keras fit verbosity (default: 1 on a terminal, else 2)")
    return parser


def main_run(argv=None):
    """``python -m tfgated run ...``; returns the exit status (2 for user errors)."""
    args = _parser().parse_args(argv)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)

    def log(message):
        print(message, flush=True)

    try:
        run_pipeline(
            dataset=args.dataset, budget=args.budget, run_dir=args.run_dir, data_dir=args.data_dir,
            seed=args.seed, stop_after=args.stop_after, verbose=verbose, log=log,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
