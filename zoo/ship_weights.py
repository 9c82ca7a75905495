"""Ship a trained model's weights with a zoo preset: ``python -m tfgated.zoo.ship_weights``.

    python -m tfgated.zoo.ship_weights gumbel_resnet_fashion_mnist runs/train_fashion_mnist/model.keras \\
        --trained-by "python benchmarks/train_fashion_mnist.py --epochs 12 --budget-min 45"

1. copies the weights of ``MODEL.keras`` into a freshly built preset (so the file loads into
   what ``tfgated.zoo.load(NAME)`` builds) and writes ``zoo/weights/NAME.weights.h5``;
2. loads them back through ``tfgated.zoo.load(NAME, weights="default")`` (sha256 checked) and
   evaluates on the preset's full test split (threshold inference for gated presets);
3. records file, sha256, the training command and the measured numbers in
   ``zoo/weights/index.json``, which fills the preset's ``weights`` entry: ``measured`` on the
   full test split, and ``check``, the same numbers on its first ``CHECK_EXAMPLES`` images.

``python -m tfgated.zoo.ship_weights NAME --verify`` re-evaluates the shipped file of ``NAME``
on the full test split, fails unless the numbers equal the recorded ones, and (re)writes its
``check`` entry. ``tests/zoo/test_weights.py`` re-evaluates every shipped preset on the check
slice only (the full split costs minutes a preset on two CPU cores).

Every file is written atomically; run ``python -m tfgated.zoo.make_golden`` afterwards so the
model cards show the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CHECK_EXAMPLES = 1000
"""Test images (the first ones of the test split) on which ``check`` numbers are recorded."""


def evaluate_preset(name, path=None, limit=None):
    """Test-split numbers of preset ``name`` with its shipped weights (or the file ``path``).

    An early-exit preset (outputs ``[main, exit]``, a threshold in its recipe) is scored with
    real early-exit inference at that threshold: ``top1``/``top5`` of the path each image took,
    ``exit_ratio``, the mean ``macs`` per image, and ``top1_no_exit`` of the main output alone."""
    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.train import evaluate_model

    preset = zoo.get_preset(name)
    model = zoo.load(name, weights=path or "default", compile=False)
    # raw pixels: the model normalizes inside its graph with the full training split's statistics
    test = load_dataset(preset["dataset"], batch_size=256, shuffle_buffer=0, limit=limit, pixels="raw").test
    threshold = zoo.registry.exit_threshold(name)
    if threshold is not None:
        measured = early_exit_numbers(model, test, threshold)

        def top1(m):
            return early_exit_numbers(m, test, threshold)["top1"]
    else:
        style = "threshold" if preset["gates"] else None
        result = evaluate_model(model, test, style=style, runs=1)
        keys = ("top1", "top5", "gate_activation", "macs", "dense_macs", "examples")
        measured = {k: result[k] for k in keys if k in result}

        def top1(m):
            return evaluate_model(m, test, style=style, runs=1)["top1"]
    if preset.get("recipe", {}).get("precision_bits") == 16:
        measured.update(sixteen_bit_numbers(model, top1))
    return measured


def early_exit_numbers(model, test, threshold):
    """Early-exit inference of the two-output ``model`` on the batches ``test`` at ``threshold``."""
    import keras
    import numpy as np

    from tfgated.exits import EarlyExitModel
    from tfgated.micronet import WRN_OPS, micronet_score
    from tfgated.train import evaluate_model

    x, y = (np.concatenate(parts) for parts in zip(*((np.asarray(a), np.asarray(b)) for a, b in test)))
    split = EarlyExitModel(model, threshold)
    result = split.predict(x, labels=y)
    report = micronet_score(model, bits=16)  # SIPA's early-exit score: part B's operations where images stay
    ops = split.expected_ops(report, result.exit_ratio)
    top5 = np.argsort(-result.probabilities, axis=1)[:, :5]
    main = keras.Model(model.inputs, model.outputs[0])  # scored as a single-output preset is
    return {
        "top1": result.accuracy,
        "top5": float(np.mean(np.any(top5 == y[:, None], axis=1))),
        "top1_no_exit": evaluate_model(main, test, style=None, runs=1)["top1"],
        "exit_threshold": float(threshold),
        "exit_ratio": result.exit_ratio,
        "micronet_ops_16bit_with_exit": round(ops, 1),
        "micronet_score_16bit_with_exit": round(report.storage_score + ops / WRN_OPS, 8),
        "macs": result.mean_macs,
        "dense_macs": int(result.macs["main"]),
        "examples": int(len(y)),
    }


def sixteen_bit_numbers(model, top1):
    """For presets made for 16-bit deployment (recipe ``precision_bits: 16``, SIPA's workflow):
    the sparsity of the prunable weights, the 16-bit MicroNet score, and the test accuracy
    ``top1(model)`` with every weight rounded to float16 (activations stay float32, as in a
    float16 TFLite file run on a CPU). ``model`` is left with its float32 weights."""
    import numpy as np

    from tfgated.micronet import micronet_score
    from tfgated.pruning import sparsity_report

    report = micronet_score(model, bits=16)
    numbers = {
        "sparsity": round(float(sparsity_report(model)["total"]["sparsity"]), 6),
        "micronet_score_16bit": round(float(report.score), 8),
        "micronet_storage_16bit": float(report.params_storage),
        "micronet_ops_16bit": float(report.ops),
    }
    weights = model.get_weights()
    try:
        model.set_weights([np.asarray(w).astype(np.float16).astype(w.dtype) for w in weights])
        numbers["top1_float16_weights"] = top1(model)
    finally:
        model.set_weights(weights)
    return numbers


def ship(name, model_path, trained_by, note=None):
    """Write ``zoo/weights/NAME.weights.h5`` from ``model_path`` and its index entry; returns the entry."""
    from tfgated.io import load_model, write_json
    from tfgated.zoo import registry

    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No trained model at {model_path!r}.")
    trained = load_model(model_path)
    fresh = registry.build(name)
    ours, theirs = fresh.weights, trained.weights
    if [w.shape for w in ours] != [w.shape for w in theirs]:
        raise ValueError(
            f"Model {model_path!r} does not have the architecture of preset {name!r}: "
            f"{len(theirs)} weights against {len(ours)} (or different shapes)."
        )
    for target, source in zip(ours, theirs):
        target.assign(source)
    os.makedirs(registry.WEIGHTS_DIR, exist_ok=True)
    filename = f"{name}.weights.h5"
    final = os.path.join(registry.WEIGHTS_DIR, filename)
    tmp = os.path.join(registry.WEIGHTS_DIR, f".{filename}.tmp.weights.h5")
    try:
        fresh.save_weights(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    measured = evaluate_preset(name, path=final)
    entry = {
        "file": filename,
        "sha256": registry.sha256_file(final),
        "trained_by": trained_by,
        "measured": {**measured, "split": "test", "inference_style": _style(name)},
    }
    if note:
        entry["note"] = note
    entry["check"] = evaluate_preset(name, path=final, limit=CHECK_EXAMPLES)
    index = registry.weights_index()
    index[name] = entry
    write_json(registry.WEIGHTS_INDEX, index, sort_keys=True)
    return entry


def _style(name):
    from tfgated.zoo import registry

    if registry.exit_threshold(name) is not None:
        return "early_exit"
    return "threshold" if registry.get_preset(name)["gates"] else None


def matches(measured, recorded):
    """Descriptions of the numbers in ``measured`` that differ from ``recorded`` beyond float
    reordering: accuracies by two images or 5e-4, whichever is more (``recorded["examples"]``
    images); gate activation by 5e-3; mean MACs by 0.1% (data-dependent gates); other counts
    and scores by one part in a million."""
    examples = recorded.get("examples") or 10000
    accuracy = max(5e-4, 2.5 / examples)  # the half image absorbs float error in k / examples
    tolerances = {"top1": accuracy, "top5": accuracy, "top1_float16_weights": accuracy, "top1_no_exit": accuracy,
                  "gate_activation": 5e-3, "exit_ratio": 5e-3,
                  # data-dependent gates and exits: a decision flipped on one image moves the mean MACs
                  "macs": 1e-3 * abs(recorded.get("macs") or 0.0),
                  "micronet_ops_16bit_with_exit": 1e-3 * abs(recorded.get("micronet_ops_16bit_with_exit") or 0.0),
                  "micronet_score_16bit_with_exit": 1e-3 * abs(recorded.get("micronet_score_16bit_with_exit") or 0.0)}
    differ = []
    for key, value in measured.items():
        if key not in recorded or value is None or recorded[key] is None:
            continue
        tol = tolerances.get(key, 1e-6 * max(1.0, abs(recorded[key])))
        if abs(value - recorded[key]) > tol:
            differ.append(f"{key}: measured {value}, recorded {recorded[key]}")
    return differ


def verify(name):
    """Re-evaluate the shipped weights of ``name`` on the full test split; raise ``ValueError``
    unless they reproduce the recorded numbers; then (re)write the entry's ``check`` numbers."""
    from tfgated.io import write_json
    from tfgated.zoo import registry

    index = registry.weights_index()
    if name not in index:
        raise ValueError(f"Preset {name!r} has no shipped weights in {registry.WEIGHTS_INDEX}.")
    entry = dict(index[name])
    differ = matches(evaluate_preset(name), entry["measured"])
    if differ:
        raise ValueError(f"The shipped weights of {name!r} do not reproduce their card: " + "; ".join(differ))
    entry["check"] = evaluate_preset(name, limit=CHECK_EXAMPLES)
    index[name] = entry
    write_json(registry.WEIGHTS_INDEX, index, sort_keys=True)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tfgated.zoo.ship_weights", description=__doc__.splitlines()[0])
    p.add_argument("name", help="zoo preset name")
    p.add_argument("model", nargs="?", help="trained .keras model of that preset (not with --verify)")
    p.add_argument("--trained-by", help="the command that trained it (recorded in the index)")
    p.add_argument("--note", default=None)
    p.add_argument("--verify", action="store_true",
                   help="re-evaluate the shipped weights of NAME on the full test split against the "
                        "recorded numbers and rewrite its check-slice numbers")
    args = p.parse_args(argv)
    if args.verify == (args.model is not None) or (args.model is not None and not args.trained_by):
        p.error("give either MODEL and --trained-by (ship) or --verify (check what is shipped)")
    try:
        entry = verify(args.name) if args.verify else ship(args.name, args.model, args.trained_by, args.note)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({args.name: entry}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
