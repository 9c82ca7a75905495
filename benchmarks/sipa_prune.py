"""SIPA pruning table on Fashion-MNIST: global-normalized vs layer-wise magnitude pruning.

Trains (or loads) the zoo's SIPA-style Fashion-MNIST model, then prunes copies of it
iteratively with SIPA's schedule (10% a round to 50%, then 2.5%, then 2% steps; see
``tfgated.pruning.sipa_schedule``), fine-tuning between rounds, once per ranking.
Every round is checkpointed, so a killed run resumes where it stopped.

    python benchmarks/sipa_prune.py                      # full run (hours on 2 CPU cores)
    python benchmarks/sipa_prune.py --quick              # smoke run: 600 images, 1 epoch
    python benchmarks/sipa_prune.py --model-file m.keras # start from a saved model

    python benchmarks/sipa_prune.py --model-file runs/train_sipa_fashion_mnist/model.keras \
        --fine-tune-lr 0.005 --fine-tune-epochs 1 --fine-tune-images 16000 --schedule 0.3 0.5 0.6 0.7

    # longer fine-tuning with the training recipe's augmentation and label smoothing,
    # from the shipped weights (seed 42: the split their training run held out)
    python benchmarks/sipa_prune.py --weights default --split-seed 42 --augment pad2_crop_flip \
        --label-smoothing 0.1 --fine-tune-lr 0.01 --fine-tune-epochs 3 1 --schedule 0.3 0.5 \
        --rankings global_normalized --checkpoint-dir runs/sipa_prune_long \
        --output benchmarks/results/sipa_prune_long.json

Writes ``benchmarks/results/sipa_prune.json`` (one table per ranking: round, target and
measured sparsity, validation accuracy, then each round's checkpoint evaluated on the
test split with its 16-bit MicroNet score; and the issue's two goals) and
``sipa_prune.png`` (accuracy against sparsity). ``--quick`` writes under ``runs/``
instead, so a smoke run never overwrites the real results.

Goals: at 50% sparsity the global-normalized model is within 0.3 points of the unpruned
one; at 60% global-normalized is no worse than layer-wise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")
RANKINGS = ("global_normalized", "layerwise")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sipa_fashion_mnist", help="zoo preset to prune")
    p.add_argument("--weights", default=None,
                   help="weights for zoo.load: 'default' (the preset's file) or a path; "
                        "default: fresh initialization, trained here for --epochs")
    p.add_argument("--model-file", default=None,
                   help="start from this saved .keras model instead of the zoo preset")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train the base model before pruning (default 10; 0 with "
                        "--weights default or --model-file)")
    p.add_argument("--fine-tune-epochs", type=int, nargs="+", default=None,
                   help="epochs per round (default 2), or one count per round of --schedule")
    p.add_argument("--fine-tune-images", type=int, default=None,
                   help="training images per fine-tuning epoch, drawn afresh from the shuffled "
                        "training split each epoch (default: all of them)")
    p.add_argument("--fine-tune-lr", type=float, default=None,
                   help="recompile each copy with SGD (momentum 0.9) starting each round at this "
                        "learning rate, cosine-decayed to 0 within the round; default: keep the "
                        "model's own optimizer (a model "
                        "trained with a decayed schedule ends near learning rate 0, so pass this "
                        "for a trained --model-file)")
    p.add_argument("--augment", default="none",
                   help="augmentation policy of the fine-tuning data (tfgated.recipes.AUGMENT_POLICIES, "
                        "e.g. pad2_crop_flip, the shipped sipa_fashion_mnist's); default: none")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the fine-tuning loss (the SIPA Fashion-MNIST recipe's is 0.1); "
                        "needs --fine-tune-lr, which recompiles the copies")
    p.add_argument("--reinitialize", action="store_true",
                   help="after each round's pruning, give the surviving weights a fresh random initialization "
                        "(the preset built anew with --seed; pruned weights stay zero) and train from there, "
                        "instead of fine-tuning the trained weights")
    p.add_argument("--no-test", action="store_true",
                   help="skip evaluating every round's checkpoint on the test split")
    p.add_argument("--final", type=float, default=0.7, help="final sparsity (default 0.7)")
    p.add_argument("--schedule", nargs="+", type=float, default=None,
                   help="explicit sparsity per round (default: tfgated.pruning.sipa_schedule(--final))")
    p.add_argument("--rankings", nargs="+", default=list(RANKINGS),
                   choices=["global_normalized", "global", "layerwise"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the validation carve-out; default: the training run's (config.json "
                        "beside --model-file), else --seed, so validation never holds training images")
    p.add_argument("--checkpoint-dir", default=None,
                   help="round checkpoints (default runs/sipa_prune[_quick])")
    p.add_argument("--output", default=None,
                   help="JSON path; the PNG goes next to it (default benchmarks/results/sipa_prune.json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 600 images, 1 epoch, schedule [0.3, 0.5, 0.7], output under runs/")
    args = p.parse_args(argv)
    if args.fine_tune_images is not None and args.fine_tune_images < 1:
        p.error(f"--fine-tune-images must be >= 1. Received: {args.fine_tune_images}")
    if args.fine_tune_lr is not None and not args.fine_tune_lr > 0:
        p.error(f"--fine-tune-lr must be > 0. Received: {args.fine_tune_lr}")
    if not 0.0 <= args.label_smoothing < 1.0:
        p.error(f"--label-smoothing must be in [0, 1). Received: {args.label_smoothing}")
    if args.label_smoothing and not args.fine_tune_lr:
        p.error("--label-smoothing changes the loss, so it needs --fine-tune-lr (the copies are recompiled).")
    if not 0.0 < args.final < 1.0:
        p.error(f"--final must be in (0, 1). Received: {args.final}")
    pretrained = args.weights is not None or args.model_file is not None
    if args.quick:
        args.limit = args.limit or 600
        args.epochs = (0 if pretrained else 1) if args.epochs is None else args.epochs
        args.fine_tune_epochs = [1] if args.fine_tune_epochs is None else args.fine_tune_epochs
        args.checkpoint_dir = args.checkpoint_dir or os.path.join(RUNS, "sipa_prune_quick")
        args.output = args.output or os.path.join(RUNS, "sipa_prune_quick", "sipa_prune.json")
    args.epochs = (0 if pretrained else 10) if args.epochs is None else args.epochs
    args.fine_tune_epochs = [2] if args.fine_tune_epochs is None else args.fine_tune_epochs
    if any(e < 0 for e in args.fine_tune_epochs):
        p.error(f"--fine-tune-epochs must be >= 0. Received: {args.fine_tune_epochs}")
    args.checkpoint_dir = args.checkpoint_dir or os.path.join(RUNS, "sipa_prune")
    args.output = args.output or os.path.join(RESULTS, "sipa_prune.json")
    return args


def build_model(args, keras):
    """The model to prune: a saved file, or the zoo preset (imported lazily)."""
    from tfgated.io import load_model
    if args.model_file:
        if not os.path.exists(args.model_file):
            raise FileNotFoundError(f"No model file at {args.model_file!r}")
        model = load_model(args.model_file, compile=True)
    else:
        try:
            from tfgated import zoo

            names = zoo.list_models()
        except (ImportError, AttributeError) as e:
            raise SystemExit(
                f"sipa_prune: the model zoo is not available ({e}). Build tfgated.zoo "
                "first, or pass --model-file path/to/model.keras."
            ) from e
        if args.preset not in names:
            raise SystemExit(
                f"sipa_prune: zoo preset {args.preset!r} does not exist (yet). Available: "
                f"{', '.join(names) or 'none'}. Pass --preset NAME or --model-file model.keras."
            )
        model = zoo.load(args.preset, weights=args.weights)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model


def fresh_weights(args, keras):
    """The weights of the model to prune built anew, randomly initialized with ``args.seed``."""
    from tfgated import zoo
    from tfgated.io import load_model

    keras.utils.set_random_seed(args.seed)
    if args.model_file:
        fresh = keras.models.clone_model(load_model(args.model_file, compile=False))
    else:
        fresh = zoo.build(args.preset)
    return fresh.get_weights()


def round_cosine(keras, learning_rate):
    """A callback: every ``fit`` (one pruning round) decays the learning rate from
    ``learning_rate`` to 0 over that fit's batches (cosine), so each round ends settled."""

    class RoundCosine(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.step = 0
            self.total = (self.params.get("epochs") or 1) * (self.params.get("steps") or 0)
            if self.total < 1:
                raise ValueError("sipa_prune: the fine-tuning dataset has no known length.")

        def on_train_batch_begin(self, batch, logs=None):
            fraction = min(self.step / self.total, 1.0)
            self.model.optimizer.learning_rate.assign(0.5 * learning_rate * (1.0 + math.cos(math.pi * fraction)))
            self.step += 1

    return RoundCosine()


def round_path(args, ranking, r, base_path):
    """The saved model of round ``r`` of a ranking (round 0: the unpruned base)."""
    if r == 0:
        return base_path
    return os.path.join(args.checkpoint_dir, ranking, f"round_{r:03d}.keras")


def evaluate_checkpoints(tables, args, test_data, keras, base_path):
    """Add ``test_accuracy`` and the 16-bit MicroNet score to every row, from its checkpoint.

    The whole test split (10,000 images) gives the headline numbers; the validation
    accuracy the rounds report comes from 6,000. The base model is evaluated once.
    """
    from tfgated.io import load_model
    import numpy as np

    from tfgated.micronet import micronet_score
    from tfgated.train import class_labels

    labels = class_labels(test_data)
    cache = {}
    for ranking, rows in tables.items():
        for row in rows:
            path = round_path(args, ranking, int(row["round"]), base_path)
            if path not in cache:
                model = load_model(path)
                probs = np.asarray(model.predict(test_data, verbose=0))
                accuracy = float((probs.argmax(axis=-1) == labels).mean())
                cache[path] = (accuracy, micronet_score(model, bits=16).score)
                print(f"test {ranking} round {row['round']}: accuracy {cache[path][0]:.4f}, "
                      f"16-bit MicroNet score {cache[path][1]:.6f}", flush=True)
            row["test_accuracy"], row["micronet_score_16bit"] = cache[path]


def _row_at(rows, sparsity):
    for row in rows:
        if math.isclose(float(row["target_sparsity"]), sparsity, abs_tol=1e-9):
            return row
    return None


def goals(tables, split_keys=("test_accuracy", "val_accuracy")):
    """Issue 5's two goals, on every split measured: at 50% sparsity (SIPA's global ranking)
    accuracy within 0.3 points of the unpruned model; at 60% global-normalized no worse than
    layer-wise. ``None`` where a needed round was not run."""
    out = {}
    main = tables.get("global_normalized")
    other = tables.get("layerwise")
    for key in split_keys:
        entry = {}
        base, half = (_row_at(main, 0.0), _row_at(main, 0.5)) if main else (None, None)
        if base and half and base.get(key) is not None and half.get(key) is not None:
            drop = base[key] - half[key]
            entry["drop_at_50pct_points"] = round(100 * drop, 3)
            entry["at_50pct_within_0.3_points"] = bool(drop <= 0.003 + 1e-12)
        else:
            entry["at_50pct_within_0.3_points"] = None
        g60, l60 = (_row_at(main, 0.6), _row_at(other, 0.6)) if main and other else (None, None)
        if g60 and l60 and g60.get(key) is not None and l60.get(key) is not None:
            entry["global_normalized_at_60pct"] = g60[key]
            entry["layerwise_at_60pct"] = l60[key]
            entry["global_normalized_no_worse_at_60pct"] = bool(g60[key] >= l60[key])
        else:
            entry["global_normalized_no_worse_at_60pct"] = None
        out[key.replace("_accuracy", "")] = entry
    return out


def plot(tables, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (ranking, rows) in enumerate(tables.items()):
        color = f"C{i}"
        for key, style, split in (("val_accuracy", "-", "validation"), ("test_accuracy", "--", "test")):
            pts = [(r["sparsity"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot([100 * x for x in xs], ys, style, color=color, marker="o", label=f"{ranking} ({split})")
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None):
    from tfgated.io import load_model
    args = parse_args(argv)
    import keras

    from tfgated import pruning
    from tfgated.io import machine_info, save_model, write_json
    from tfgated.recipes import Recipe

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    base_path = os.path.join(args.checkpoint_dir, "base.keras")

    model = build_model(args, keras)  # also imports the zoo, registering its custom objects
    height, width = (int(d) for d in model.input_shape[1:3])
    from tfgated.train import held_out_split

    args.split_seed, validation_split = held_out_split(args.model_file, args.split_seed, default_seed=args.seed)
    # the fine-tuning pipeline: the same split, with the recipe's augmentation and labels
    recipe = Recipe(batch_size=args.batch_size, augment=args.augment, label_smoothing=args.label_smoothing)
    splits = recipe.datasets(
        "fashion_mnist", seed=args.split_seed, limit=args.limit, validation_split=validation_split, pixels="raw",
        image_size=None if (height, width) == (28, 28) else (height, width),
    )
    if model.input_shape[-1] != 1:
        raise SystemExit(
            f"sipa_prune: expected a 1-channel (grayscale) model for Fashion-MNIST. "
            f"Received input shape {model.input_shape}"
        )

    started = time.time()
    if os.path.exists(base_path):
        print(f"Loading trained base model from {base_path}", flush=True)
        model = load_model(base_path, compile=True)
    else:
        if args.epochs > 0:
            print(f"Training the base model for {args.epochs} epoch(s)", flush=True)
            if recipe.one_hot:  # the pipeline's labels are one-hot: the loss must match
                loss, metrics = recipe.loss_and_metrics()
                model.compile(optimizer=model.optimizer, loss=loss, metrics=metrics)
            model.fit(splits.train, validation_data=splits.validation, epochs=args.epochs)
        save_model(model, base_path)

    if args.schedule:
        schedule = sorted(args.schedule)
    else:
        schedule = [0.3, 0.5, args.final] if args.quick else pruning.sipa_schedule(args.final)
    fine_tune_data = splits.train
    if args.fine_tune_images:
        fine_tune_data = splits.train.take(math.ceil(args.fine_tune_images / args.batch_size))
    if len(args.fine_tune_epochs) not in (1, len(schedule)):
        raise SystemExit(f"sipa_prune: --fine-tune-epochs takes one count, or one per round of the "
                         f"schedule {schedule}. Received: {args.fine_tune_epochs}")
    epochs_per_round = args.fine_tune_epochs * (len(schedule) if len(args.fine_tune_epochs) == 1 else 1)
    tables = {}
    for ranking in args.rankings:
        print(f"=== {ranking}: schedule {schedule}", flush=True)
        copy = load_model(base_path, compile=True)
        if args.fine_tune_lr:
            loss, metrics = recipe.loss_and_metrics()
            copy.compile(optimizer=keras.optimizers.SGD(args.fine_tune_lr, momentum=0.9),
                         loss=loss, metrics=metrics)
        callbacks = []
        if args.fine_tune_lr:
            callbacks.append(round_cosine(keras, args.fine_tune_lr))
        tables[ranking] = pruning.iterative_pruning(
            copy, fine_tune_data, splits.validation, pruning.IterativePruningOptions(
                schedule=schedule, fine_tune_epochs=epochs_per_round, ranking=ranking,
                reinitialize=args.reinitialize,
                initial_weights=fresh_weights(args, keras) if args.reinitialize else None,
                checkpoint_dir=os.path.join(args.checkpoint_dir, ranking),
                fit_kwargs={"verbose": 2, "callbacks": callbacks},
            ),
        )
        pruning.strip_pruning(copy)

    if not args.no_test:
        evaluate_checkpoints(tables, args, splits.test, keras, base_path)
    payload = {
        "benchmark": "sipa_prune",
        "reinitialize": args.reinitialize,
        "description": "Iterative magnitude pruning (SIPA) on Fashion-MNIST: validation "
                       "accuracy per round, global ranking with layer-wise L2 normalization "
                       "vs the same sparsity in every layer.",
        "command": "python benchmarks/sipa_prune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items()},
        "schedule": schedule,
        "dataset": {"name": "fashion_mnist", "train_examples": splits.info.num_train,
                    "validation_examples": splits.info.num_validation},
        "model": {"name": model.name, "params": int(model.count_params()),
                  "prunable": pruning.sparsity_report(model)["total"]["total"]},
        "tables": tables,
        "goals": goals(tables),
        "machine": machine_info(),
        "seconds": round(time.time() - started, 1),
    }
    write_json(args.output, payload, indent=2)
    png = os.path.splitext(args.output)[0] + ".png"
    plot(tables, png, f"SIPA pruning, {model.name} on Fashion-MNIST")
    print(f"Wrote {args.output} and {png}")
    for ranking, rows in tables.items():
        print(f"{ranking}:")
        for r in rows:
            acc = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
            test = f"  test_acc {r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
            score = f"  score16 {r['micronet_score_16bit']:.6f}" if "micronet_score_16bit" in r else ""
            print(f"  round {r['round']:2d}  sparsity {r['sparsity']:6.1%}  val_acc {acc}{test}{score}")
    print(json.dumps(payload["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
