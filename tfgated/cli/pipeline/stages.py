"""Stages 1-4 of the pipeline: search, improve, train, prune.

Each stage is ``stage(run, out) -> dict``: ``run`` a :class:`tfgated.cli.pipeline.state.Run`,
``out`` the stage's folder; the dict (with its table ``row`` where the stage makes one)
becomes the stage's ``state.json``.
"""

from __future__ import annotations

import os

from tfgated.cli.pipeline.budgets import SIPA_PRESETS
from tfgated.cli.pipeline.state import save_json
from tfgated.cli.pipeline.summary import micronet, score_row
from tfgated.io import save_model
from tfgated.quantization import quantize_model, round_weights

__all__ = ["stage_improve", "stage_prune", "stage_search", "stage_train"]


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


def _tuner_search(run, out, hypermodel, threshold, num_initial_points):
    """Stage 1 with trials: KerasTuner's Bayesian search; returns ``(model, preset, trial rows)``."""
    from tfgated.plots import plot_search_trials
    from tfgated.search import best_preset, make_tuner, trial_table, write_table

    budget, splits = run.budget, run.search_splits()
    run.log(
        f"[1/7] search: {budget.search_trials} trials x {budget.search_epochs} epochs on "
        f"{splits.info.num_train:,} images, MAC budget {threshold:,.0f}"
    )
    tuner = make_tuner(
        hypermodel, algorithm="bayesian", max_trials=budget.search_trials,
        directory=os.path.join(out, "tuner"), project_name="sipa", seed=run.seed,
        num_initial_points=num_initial_points,
    )
    tuner.search(splits.train, validation_data=splits.validation, epochs=budget.search_epochs, verbose=run.verbose)
    rows = trial_table(tuner, hypermodel)
    write_table(rows, json_path=os.path.join(out, "trials.json"), csv_path=os.path.join(out, "trials.csv"))
    preset = best_preset(
        tuner, hypermodel, dataset=run.dataset, recipe=budget.base_recipe,
        search_info={"budget": threshold, "measure": "macs", "trials": len(rows), "epochs": budget.search_epochs},
    )
    plot_search_trials(rows, threshold, os.path.join(run.plots_dir, "search_trials.png"))
    return tuner.get_best_models(1)[0], preset, rows


def _preset_search(run, hypermodel, base_arch):
    """Stage 1 without trials: the base architecture trained ``search_epochs``; returns ``(model, preset)``."""
    import keras

    budget, splits = run.budget, run.search_splits()
    run.log(f"[1/7] search: the searched SIPA architecture, trained {budget.search_epochs} epochs")
    keras.utils.set_random_seed(run.seed)
    model = hypermodel.compile_model(run.build(base_arch))
    history = model.fit(splits.train, validation_data=splits.validation, epochs=budget.search_epochs,
                        verbose=run.verbose)
    preset = {
        "family": "sipa", "arch": base_arch, "gates": None, "dataset": run.dataset,
        "input_shape": list(splits.info.input_shape), "num_classes": splits.info.num_classes,
        "recipe": budget.base_recipe, "weights": None,
        "description": f"SIPA's searched architecture (preset), trained {budget.search_epochs} epochs.",
        "search": {"trial": None, "val_accuracy": float(history.history["val_accuracy"][-1])},
    }
    return model, preset


def stage_search(run, out):
    """Stage 1: SIPA architecture search under a MAC budget (or the dataset's searched preset)."""
    import keras

    from tfgated import complexity
    from tfgated.search import SIPAHyperModel, arch_summary

    budget, info = run.budget, run.splits().info
    base_arch = _base_arch(run)
    keras.utils.set_random_seed(run.seed)  # trial initialisations in a fresh process follow the seed
    space = dict(budget.search_space)
    num_initial_points = space.pop("num_initial_points", None)
    threshold = budget.budget_macs
    if threshold is None:
        threshold = float(complexity.count(run.build(base_arch)).macs)
    hypermodel = SIPAHyperModel.from_options(
        lambda num_classes, input_shape, **arch: run.build(arch),
        num_classes=info.num_classes, input_shape=info.input_shape, base_arch=base_arch,
        budget=threshold, measure="macs", **space,
    )
    if budget.search_trials > 0:
        model, preset, rows = _tuner_search(run, out, hypermodel, threshold, num_initial_points)
    else:
        (model, preset), rows = _preset_search(run, hypermodel, base_arch), []
    save_json(os.path.join(out, "searched.json"), preset)
    bits = budget.precision_bits
    round_weights(model, bits)  # the search trains at float32; its row is scored at the run's precision
    save_model(model, run.model_path("search"))
    accuracy = run.test_accuracy(model)
    macs = float(complexity.count(model).macs)
    row = score_row("search", accuracy, micronet(model, bits), bits, {"macs": macs})
    run.log(f"[1/7] search: best {arch_summary(preset['arch'])}; {macs:,.0f} MACs, test accuracy {accuracy:.4f}")
    return {"row": row, "arch": preset["arch"], "trials": len(rows), "budget_macs": threshold,
            "preset": os.path.join(out, "searched.json")}


def _groups(spec):
    """Improving groups of a budget: ``"sipa"`` or ``[[group, [[candidate, changes], ...]], ...]``."""
    from tfgated.improve import SIPA_GROUPS, Candidate

    if spec == "sipa":
        return SIPA_GROUPS
    return [(name, [Candidate(c, dict(changes)) for c, changes in candidates]) for name, candidates in spec]


def stage_improve(run, out):
    """Stage 2: greedy Improving; each training trick is kept only if it raises validation accuracy."""
    from tfgated.improve import improve, keras_trainer, noop_candidates
    from tfgated.plots import plot_improve_trials
    from tfgated.recipes import Recipe

    budget = run.budget
    arch = run.need("search")["arch"]
    groups = _groups(budget.improve_groups)
    base = Recipe.from_dict(budget.base_recipe, epochs=budget.improve_epochs, batch_size=budget.batch_size,
                            precision_bits=budget.precision_bits)
    count = sum(len(c) for _, c in groups)
    seeds = [run.seed + i for i in range(budget.improve_seeds)] if budget.improve_seeds > 1 else None
    run.log(f"[2/7] improve: baseline + {count} candidate(s), {budget.improve_epochs} epoch(s) each"
            + (f", mean of {len(seeds)} seeds" if seeds else ""))
    if noop_candidates(base, groups):
        run.log(f"[2/7] improve: warning: no-op against the baseline: {', '.join(noop_candidates(base, groups))}")
    trainer = keras_trainer(
        lambda recipe: run.build(arch, recipe.model_overrides()),
        dataset=run.dataset, verbose=run.verbose, seed=run.seed, **run.search_data_kwargs(),
    )
    result = improve(base, groups, trainer, os.path.join(out, "trials"), seeds=seeds)
    plot_improve_trials(result.trials, os.path.join(run.plots_dir, "improve_trials.png"))
    run.log(
        f"[2/7] improve: best validation accuracy {result.accuracy:.4f}; adopted: "
        f"{', '.join(result.adopted) or 'none'}"
    )
    return {"recipe": result.recipe.to_dict(), "val_accuracy": result.accuracy, "adopted": result.adopted,
            "trials": len(result.trials)}


def stage_train(run, out):
    """Stage 3: the searched architecture trained with the improved recipe (resumable epochs)."""
    import keras

    from tfgated import plots
    from tfgated.callbacks import HistoryLogger
    from tfgated.checkpoints import CrashSafeBackup
    from tfgated.recipes import Recipe, fit_recipe

    budget = run.budget
    arch = run.need("search")["arch"]
    recipe = Recipe.from_dict(run.need("improve")["recipe"]).replace(
        epochs=budget.train_epochs, train_on_validation=budget.train_on_validation,
        precision_bits=budget.precision_bits)
    run.log(f"[3/7] train: {budget.train_epochs} epoch(s) with the improved recipe at {budget.precision_bits} bits"
            + (" on train + validation (no validation data)" if budget.train_on_validation else ""))
    keras.utils.set_random_seed(run.seed)
    model = recipe.prepare_model(run.build(arch, recipe.model_overrides()))
    splits = recipe.datasets(run.dataset, seed=run.seed, **run.data_kwargs())
    history_csv = os.path.join(out, "history.csv")
    callbacks = [HistoryLogger(history_csv), CrashSafeBackup(os.path.join(out, "backup"))]  # crash-safe
    fit_recipe(model, recipe, splits, callbacks=callbacks, verbose=run.verbose)
    stabilization = recipe.stabilization()
    if stabilization is not None:
        fit_recipe(model, stabilization, stabilization.datasets(run.dataset, seed=run.seed, **run.data_kwargs()),
                   verbose=run.verbose)
    model = recipe.finish_model(model)
    save_model(model, run.model_path("train"))
    if os.path.exists(history_csv):
        plots.plot_history(history_csv, os.path.join(run.plots_dir, "train_history.png"))
    accuracy = run.test_accuracy(model)
    run.log(f"[3/7] train: test accuracy {accuracy:.4f}")
    bits = budget.precision_bits
    return {"row": score_row("train", accuracy, micronet(model, bits), bits), "recipe": recipe.to_dict()}


def stage_prune(run, out):
    """Stage 4: iterative global magnitude pruning (layer-wise normalized), fine-tuning between rounds."""
    import keras

    from tfgated.fused_norm import use_fused_batch_norm
    from tfgated.plots import plot_pruning_rounds
    from tfgated.pruning import IterativePruningOptions, iterative_pruning, sparsity_report, strip_pruning
    from tfgated.recipes import Recipe, steps_per_epoch

    budget = run.budget
    recipe = Recipe.from_dict(run.need("train")["recipe"])
    # constant small learning rate: the optimizer lives across rounds
    tune = recipe.replace(
        epochs=max(1, budget.prune_epochs), learning_rate=recipe.learning_rate * budget.prune_lr_factor,
        cosine_decay=False, lr_boundaries=(), warmup_epochs=0.0, stabilize_epochs=0, train_on_validation=False,
    )
    run.log(
        f"[4/7] prune: {len(budget.prune_schedule)} round(s) to "
        f"{', '.join(f'{s:.0%}' for s in budget.prune_schedule)} sparsity, {budget.prune_epochs} fine-tuning "
        "epoch(s) each"
    )
    keras.utils.set_random_seed(run.seed)
    model = quantize_model(use_fused_batch_norm(run.load_model("train")), bits=budget.precision_bits)
    splits = tune.datasets(run.dataset, seed=run.seed, **run.data_kwargs())
    tune.compile(model, steps_per_epoch=steps_per_epoch(splits.train))
    rows = iterative_pruning(model, splits.train, splits.validation, IterativePruningOptions(
        schedule=list(budget.prune_schedule), fine_tune_epochs=budget.prune_epochs, ranking="global_normalized",
        checkpoint_dir=os.path.join(out, "rounds"), fit_kwargs={"verbose": run.verbose}, verbose=1 if run.verbose else 0,
    ))
    strip_pruning(model)
    model = Recipe.finish_model(model)
    save_model(model, run.model_path("prune"))
    sparsity = sparsity_report(model)["total"]["sparsity"]
    plot_pruning_rounds(rows, os.path.join(run.plots_dir, "pruning.png"))
    accuracy = run.test_accuracy(model)
    run.log(f"[4/7] prune: sparsity {sparsity:.1%}, test accuracy {accuracy:.4f}")
    bits = budget.precision_bits
    return {"row": score_row("prune", accuracy, micronet(model, bits), bits, {"sparsity": sparsity}), "rounds": rows}
