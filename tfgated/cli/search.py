"""``python -m tfgated search``: SIPA architecture search with KerasTuner (:mod:`tfgated.search`).

Runs (or resumes) a search whose hypermodel builds ``tfgated.zoo.sipa.build_sipa``
networks around a zoo preset's architecture, prints the trial table, writes the best
architecture as a preset JSON file (``--output``, loadable with ``tfgated.zoo.load(path)``
or :func:`load_preset_file`) and the table beside it (``OUTPUT.trials.json`` and ``.csv``).

In KerasTuner's distributed mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``) a worker only runs trials; the chief serves the oracle and
then writes the reports.
"""

from __future__ import annotations

import argparse
import os
import sys

from tfgated.cli.common import add_debug_flag, run_command
from tfgated.io import parse_json_object

__all__ = ["load_preset_file", "main"]


def load_preset_file(path, weights=None, num_classes=None, input_shape=None, compile=True, **overrides):
    """Build (and compile per its recipe) the model of a preset JSON file.

    The same as ``tfgated.zoo.load(path, ...)``, which accepts preset files:
    the file holds one preset in the zoo's schema, as written by
    ``python -m tfgated search --output``; it is not added to ``list_models()``.
    """
    from tfgated.zoo import registry

    return registry.load(
        os.fspath(path), weights=weights, num_classes=num_classes, input_shape=input_shape,
        compile=compile, **overrides,
    )


def _is_worker():
    """True in KerasTuner's distributed mode on a worker (not the chief)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")


def _parser():
    from tfgated.search import ALGORITHMS, CONSTRAINTS, INDICATORS

    parser = argparse.ArgumentParser(
        prog="python -m tfgated search",
        description="SIPA architecture search (EfficientNet blocks + compound scaling) with KerasTuner. "
        "Re-running the same command resumes the search in DIRECTORY/PROJECT.",
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="tfgated.data dataset name")
    parser.add_argument("--data-dir", default=None, help="dataset folder (TFDS data_dir)")
    parser.add_argument("--base", default=None, help="zoo preset of the base architecture (default sipa_fashion_mnist "
                        "for fashion_mnist, sipa_cifar100 otherwise)")
    parser.add_argument("--arch-json", default=None, help="JSON object updating the base arch, e.g. "
                        "'{\"blocks\": [\"r1_k3_s2_e1_i24_o16_se0.2\"], \"head_filters\": 32}'")
    parser.add_argument("--space-json", default=None, help="JSON object of SearchSpace / FitnessOptions fields "
                        "(its keys win over the flags), e.g. '{\"depth_range\": [1, 1], \"channel_multipliers\": "
                        "[0.5, 1]}'")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-macs", type=float, default=None, help="MACs per example budget (thres)")
    budget.add_argument("--budget-score", type=float, default=None, help="MicroNet score budget (thres)")
    parser.add_argument("--bits", type=int, choices=(16, 32), default=16, help="MicroNet scoring precision")
    parser.add_argument("--indicator", choices=INDICATORS, default="step")
    parser.add_argument("--penalty", type=float, default=1.0, help="alpha of R = A - [alpha I(F - thres)]^w")
    parser.add_argument("--exponent", type=float, default=1.0, help="w of R = A - [alpha I(F - thres)]^w")
    parser.add_argument("--constraint", choices=CONSTRAINTS, default="approximate",
                        help="compound scaling constraint: approximate (default: product within "
                             "--constraint-tolerance of the target; admits SIPA's 1, 0.9, 1.4), enforce, penalize, none")
    parser.add_argument("--constraint-tolerance", type=float, default=0.25)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="bayesian")
    parser.add_argument("--trials", type=int, default=10, help="max_trials (total, including resumed ones)")
    parser.add_argument("--initial-points", type=int, default=None,
                        help="random trials before Bayesian ones (default max(2, trials // 3))")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per trial")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training/test examples")
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directory", default="sipa_search", help="tuner folder (resumable)")
    parser.add_argument("--project-name", default="sipa")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    parser.add_argument("--output", default="sipa_searched.json", help="preset JSON file of the best architecture")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity")
    return add_debug_flag(parser)


def _base(args):
    """``(preset name, preset, base arch)`` of ``--base`` / ``--dataset``, updated by ``--arch-json``."""
    import tfgated.zoo
    from tfgated.search import REFERENCE_BLOCKS

    name = args.base or ("sipa_fashion_mnist" if args.dataset == "fashion_mnist" else "sipa_cifar100")
    preset = tfgated.zoo.get_preset(name)
    arch = {"blocks": list(REFERENCE_BLOCKS), **preset["arch"]}
    if args.arch_json:
        arch.update(parse_json_object(args.arch_json, "--arch-json"))
    return name, preset, arch


def _hypermodel(args, base_arch, info=None):
    """The :class:`tfgated.search.SIPAHyperModel` of the flags, building ``build_sipa`` networks
    (for the dataset ``info``; without it, only to check the options)."""
    from tfgated.search import SIPAHyperModel
    from tfgated.zoo.sipa import build_sipa

    measure = "micronet" if args.budget_score is not None else "macs"
    options = {
        "budget": args.budget_score if measure == "micronet" else args.budget_macs,
        "measure": measure,
        "bits": args.bits,
        "penalty": args.penalty,
        "exponent": args.exponent,
        "indicator": args.indicator,
        "constraint": args.constraint,
        "constraint_tolerance": args.constraint_tolerance,
        "learning_rate": args.learning_rate,
    }
    if args.space_json:
        options.update(parse_json_object(args.space_json, "--space-json"))
    shape = {} if info is None else {"num_classes": info.num_classes, "input_shape": info.input_shape}
    return SIPAHyperModel.from_options(build_sipa, base_arch=base_arch, **shape, **options)


def _write_reports(args, tuner, hypermodel, base_name, base):
    """Print the trial table; write the best preset and the table files."""
    from tfgated.io import write_json
    from tfgated.search import best_preset, format_table, trial_table, write_table

    rows = trial_table(tuner, hypermodel)
    print(format_table(rows))
    fitness, space = hypermodel.fitness, hypermodel.space
    recipe = {**base.get("recipe", {}), "search_epochs": args.epochs}
    preset = best_preset(
        tuner, hypermodel, dataset=args.dataset, recipe=recipe,
        search_info={
            "budget": fitness.budget, "measure": fitness.measure, "indicator": fitness.indicator,
            "constraint": space.constraint, "algorithm": args.algorithm, "trials": len(rows),
            "epochs": args.epochs, "limit": args.limit, "base": base_name,
        },
    )
    stem = args.output[: -len(".json")] if args.output.endswith(".json") else args.output
    write_json(args.output, preset)
    write_table(rows, json_path=f"{stem}.trials.json", csv_path=f"{stem}.trials.csv")
    print(f"Best trial {preset['search']['trial']}: fitness {preset['search']['fitness']}; preset written to "
          f"{args.output} (trials: {stem}.trials.json, {stem}.trials.csv)")


def _project_lock(args):
    """The search project's lock for the chief (workers share the chief's project)."""
    import contextlib

    from tfgated.runlock import run_folder_lock

    if _is_worker():
        return contextlib.nullcontext()
    return run_folder_lock(args.directory, "search project", name=f".{args.project_name}.lock")


def _search(args):
    from tfgated.data import load_dataset
    from tfgated.search import make_tuner

    if args.trials < 1 or args.epochs < 1:
        raise ValueError(f"Expected --trials and --epochs >= 1. Received: {args.trials}, {args.epochs}")
    base_name, base, base_arch = _base(args)
    _hypermodel(args, base_arch)  # checks the options before the data is read
    data = load_dataset(
        args.dataset, data_dir=args.data_dir, batch_size=args.batch_size, limit=args.limit,
        validation_split=args.validation_split, seed=args.seed,
    )
    if data.validation is None:
        raise ValueError("The SIPA fitness needs validation data. Received: --validation-split 0")
    hypermodel = _hypermodel(args, base_arch, data.info)
    # one chief per search project (tfgated.runlock); the lock file sits beside the project folder
    with _project_lock(args):
        tuner = make_tuner(
            hypermodel, algorithm=args.algorithm, max_trials=args.trials, directory=args.directory,
            project_name=args.project_name, overwrite=args.overwrite, seed=args.seed,
            num_initial_points=args.initial_points,
        )
        tuner.search(data.train, validation_data=data.validation, epochs=args.epochs, verbose=args.verbose)
        if _is_worker():
            print(f"Worker {os.environ.get('KERASTUNER_TUNER_ID')} finished: no more trials from the chief.")
        else:
            _write_reports(args, tuner, hypermodel, base_name, base)
    sys.stdout.flush()
    return 0


def main(argv=None):
    """``python -m tfgated search ...``; returns the exit status (2 for a user error, one line on stderr)."""
    args = _parser().parse_args(argv)
    return run_command(lambda: _search(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
