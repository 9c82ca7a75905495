"""``python -m tfgated run``: the whole SIPA workflow, end to end, resumable.

SIPA (Lee, Bae, Oh, Yun, MicroNet Challenge 2019) in seven stages on one dataset
(Fashion-MNIST from the local IDX files by default, offline):

  1 search      SIPA architecture search with KerasTuner: block arguments and scaling
                under a MAC budget (tfgated.search)
  2 improve     greedy Improving: each training trick is kept only if it raises
                validation accuracy (tfgated.improve); it makes no model of its own
  3 train       the searched architecture trained with the improved recipe (tfgated.recipes)
  4 prune       iterative global magnitude pruning with layer-wise normalization,
                fine-tuning between rounds (tfgated.pruning)
  5 accelerate  an early-exit head trained with soft smoothing on the frozen network,
                confidence threshold calibrated on validation data (tfgated.exits)
  6 quantize    weights rounded to 16 bits (after 16-bit training already so); MicroNet
                score at 16 bits (tfgated.micronet)
  7 export      the 16-bit network WITH its exit written to TFLite (float16, conditional
                at batch size 1: confident images stop after the exit head) and ONNX (masked
                form), each checked against Keras in its runtime (tfgated.export); the TFLite
                file's own test accuracy is the export row

The console stays quiet: TensorFlow's own log lines are hidden (``--verbose`` shows them),
each stage prints a few lines (on a terminal one live line with the elapsed time and an
estimate, :mod:`tfgated.cli.pipeline.progress`). At the end the per-stage table of SIPA's
Table 1 (one row per stage that makes a model: search, train, prune, accelerate, 16-bit,
export) is printed with a legend and written to ``summary.md`` and ``summary.json`` in the
run folder, beside ``accuracy_vs_score.png`` (every stage against the shipped presets and
the anchor); the run ends with the next steps: how to load the final model, the export
command, the files written with their sizes and a comparison with the nearest shipped
preset and the anchor (0.925, the Fashion-MNIST benchmark's 2-conv network).

Accuracy is measured on the test split. Every budget sets ``precision_bits`` 16, as SIPA:
train, prune and the exit head's training run with 16-bit quantization-aware training
(weights and activations fake-quantized to float16, :mod:`tfgated.quantization`), the
searched network is rounded to float16, and every row is scored at 16 bits (16-bit
parameters and multiplications, 32-bit additions); a budget with ``precision_bits`` 32
trains in float32 and scores stages 1-4 at 32 bits. Stage 5 counts the exit head in storage
and the *expected* operations (part before the exit and the head always, the rest of the
network for the examples that do not exit), stage 6 likewise.

Resuming: the run folder (``--run-dir``, default ``runs/sipa_<dataset>_<budget>``) holds one
folder per stage, ``NN_<stage>/``, with the stage's files, its model (``model.keras``, where
the stage makes one) and ``state.json`` written atomically when the stage is finished. Run
the same command again after an interruption: finished stages print ``skipped (done)``, the
interrupted stage resumes where its own checkpoints allow and the rest runs.
``--stop-after STAGE`` stops after a stage.

Budgets (``--budget``; their numbers are data, ``tfgated/cli/pipeline/budgets.json``):

* ``small`` (default): the full training split (54,000 images, 10% held out), five SIPA
  blocks at native resolution (search space of about 2-9M MACs per example, fitness budget
  4M); four search trials of one epoch and three Improving trials of two epochs on 10,800
  images (``search_limit``), 14 training epochs, one pruning round to 20% with two
  fine-tuning epochs, two epochs for the exit head, all at 16 bits. The committed run took
  1,570 s of stages alone on two cores (26.5 min with the install): test accuracy 0.9235 after
  training, 0.9213 after pruning, 0.9232 with early exit and 16 bits, score 0.00090
  (``benchmarks/results/pipeline_small_summary.json``); the 0.925 anchor is 0.18 points away.
* ``tiny``: a few hundred images and a minimal network; seconds per stage (tests and smoke
  runs).
* ``paper``: SIPA's searched preset (``sipa_fashion_mnist`` or ``sipa_cifar100``) as the
  search result, SIPA's Improving groups and full-length training, SIPA's pruning schedule
  up to 64% sparsity. Hours to days: not for two cores.

``--dataset cifar100 --data-dir DIR`` runs on CIFAR-100 prepared with TFDS in ``DIR`` (a
clear error otherwise).
"""

from __future__ import annotations

import argparse
import os

from tfgated.cli.common import add_debug_flag, run_command
from tfgated.cli.pipeline.budgets import BUDGETS, get_budget
from tfgated.cli.pipeline.deploy import stage_accelerate, stage_export, stage_quantize
from tfgated.cli.pipeline.machine import CpuMeter
from tfgated.cli.pipeline.progress import StageProgress, estimate_seconds, format_duration
from tfgated.cli.pipeline.stages import stage_improve, stage_prune, stage_search, stage_train
from tfgated.cli.pipeline.state import STAGES, Run, check_run_config, save_json
from tfgated.cli.pipeline.summary import write_summary

__all__ = ["STAGE_FUNCTIONS", "main", "run_pipeline"]

#: ``stage name -> stage(run, out) -> state dict``, in the order of :data:`STAGES`.
STAGE_FUNCTIONS = {
    "search": stage_search,
    "improve": stage_improve,
    "train": stage_train,
    "prune": stage_prune,
    "accelerate": stage_accelerate,
    "quantize": stage_quantize,
    "export": stage_export,
}


def _run_stage(run, stage, label):
    """Run one stage under a progress line; returns its state (saved as ``state.json``)."""
    estimate = estimate_seconds(stage, run.budget)
    emit = run.log
    progress = StageProgress(label, estimate, emit=emit, live=run.verbose == 0)
    if not progress.live:
        emit(f"{label}: started, ~{format_duration(estimate)} estimated")
    run.log = progress.log
    try:
        with progress:
            meter = CpuMeter().start()
            result = STAGE_FUNCTIONS[stage](run, run.stage_dir(stage))
            machine = meter.stop()
    finally:
        run.log = emit
    seconds = machine["wall_seconds"]
    state = {"stage": stage, "status": "done", "seconds": seconds, "machine": machine, **result}
    save_json(run.state_path(stage), state)
    emit(f"{label}: done in {seconds:.1f}s ({format_duration(seconds)}; estimated ~{format_duration(estimate)})")
    return state


def _run_stages(run, stop_after):
    """Run every unfinished stage in order; return ``(states, seconds)``, or None when stopped."""
    states, times = {}, {}
    for index, stage in enumerate(STAGES):
        label = f"[{index + 1}/{len(STAGES)}] {stage}"
        state = run.state(stage)
        if state is not None:
            run.log(f"{label}: skipped (done)")
        else:
            state = _run_stage(run, stage, label)
        states[stage] = state
        times[stage] = float(state.get("seconds", 0.0))
        if stage == stop_after:
            run.log(f"Stopped after stage {stage!r} (--stop-after); run again without it to continue.")
            return None
    return states, times


def run_pipeline(dataset="fashion_mnist", budget="small", run_dir=None, data_dir=None, seed=0,
                 stop_after=None, verbose=0, log=print, no_check=False):
    """Run (or resume) the SIPA pipeline; see the module docstring.

    Args:
        dataset: ``"fashion_mnist"`` (offline default) or a prepared TFDS dataset
            such as ``"cifar100"`` (with ``data_dir``).
        budget: a key of :data:`tfgated.cli.pipeline.budgets.BUDGETS` or a
            :class:`tfgated.cli.pipeline.budgets.Budget`.
        run_dir: the run folder (default ``runs/sipa_<dataset>_<budget>``).
        data_dir: dataset folder (TFDS ``data_dir``; optional for Fashion-MNIST).
        seed: seeds the data split, shuffling and initialisation.
        stop_after: a stage name: stop after it (no summary written).
        verbose: Keras ``fit`` verbosity (0: silent, one progress line per stage; 1 progress
            bar, 2 one line per epoch).
        log: the function printing the progress lines.
        no_check: write the exported files even when their parity check fails
            (``--no-check``; the parity is still measured and reported).

    Returns:
        The summary dict (also written to ``summary.json``), or ``None`` when
        stopped early.
    """
    budget = get_budget(budget)
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"Unknown stage {stop_after!r}. Expected one of {list(STAGES)}.")
    from tfgated.data import KNOWN_DATASETS

    if dataset not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}. Expected one of {list(KNOWN_DATASETS)}.")
    run_dir = run_dir or os.path.join("runs", f"sipa_{dataset}_{budget.name}")
    run = Run(dataset, budget, run_dir, data_dir=data_dir, seed=seed, verbose=verbose, log=log)
    run.allow_mismatch = bool(no_check)  # the export stage's override (not part of the run's config)
    run.splits()  # fail early (and clearly) when the data is missing, before creating the folder
    with run.locked():  # one process writes the folder (tfgated.runlock)
        check_run_config(run)
        log(f"SIPA pipeline: dataset {dataset}, budget {budget.name}, run folder {run.run_dir}")
        finished = _run_stages(run, stop_after)
        if finished is None:
            return None
        return write_summary(run, *finished)


def build_parser():
    """The argument parser of ``python -m tfgated run``."""
    parser = argparse.ArgumentParser(
        prog="python -m tfgated run",
        description="The SIPA workflow end to end: search -> improve -> train -> prune -> accelerate "
        "(early exit) -> 16-bit -> export (TFLite, ONNX). Re-run the same command to resume.",
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (default, offline) or cifar100 "
                        "(TFDS, prepared in --data-dir)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (TFDS data_dir)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="small",
                        help="tiny (smoke test, minutes), small (default: 54,000 images, 14 epochs; "
                        "26.5 min on 2 CPU cores in the committed run), paper (SIPA-sized, hours to days)")
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/sipa_<dataset>_<budget>)")
    parser.add_argument("--stop-after", choices=list(STAGES), default=None, help="stop after this stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true",
                        help="export stage: write the files even if their parity check against Keras fails")
    parser.add_argument("--verbose", nargs="?", type=int, choices=(0, 1, 2), const=2, default=None,
                        metavar="LEVEL",
                        help="show TensorFlow's own log lines; LEVEL is the Keras fit verbosity (0 silent, "
                        "1 progress bar, 2 a line per epoch; 2 when omitted). Without --verbose: quiet, one "
                        "progress line per stage")
    return add_debug_flag(parser)


def main(argv=None):
    """``python -m tfgated run ...``; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    verbose = args.verbose if args.verbose is not None else 0

    def log(message):
        print(message, flush=True)

    def run():
        run_pipeline(
            dataset=args.dataset, budget=args.budget, run_dir=args.run_dir, data_dir=args.data_dir,
            seed=args.seed, stop_after=args.stop_after, verbose=verbose, log=log, no_check=args.no_check,
        )
        return 0

    return run_command(run, debug=args.debug)
