"""Stages 5-7 of the pipeline: accelerate (early exit), quantize (16 bits), export (TFLite, ONNX, with the exit).

Each stage is ``stage(run, out) -> dict`` as in :mod:`tfgated.cli.pipeline.stages`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from tfgated.cli.pipeline.summary import micronet, score_row
from tfgated.io import save_model
from tfgated.quantization import round_weights

__all__ = ["exit_position", "round_to_float16", "stage_accelerate", "stage_export", "stage_quantize"]


def exit_position(model):
    """SIPA's exit position scaled to the network: block ``int(0.45 * blocks)`` (block 4 of 10)."""
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
    """Early-exit test accuracy and the MicroNet numbers with expected operations."""
    from tfgated.exits import EarlyExitModel

    x, y = run.test_arrays()
    split = EarlyExitModel(model_with_exit, threshold)
    result = split.predict(x, labels=y)
    report = micronet(model_with_exit, bits)
    extra = {
        "ops": split.expected_ops(report, result.exit_ratio),
        "ops_every_layer": float(report.ops),
        "exit_ratio": result.exit_ratio,
        "threshold": float(threshold),
        "mean_macs": result.mean_macs,
        "mac_saving": result.mac_saving,
    }
    return result, extra, report


def _plot_risk_coverage(run, with_exit):
    from tfgated.exits import plot_risk_coverage, risk_coverage

    x, y = run.test_arrays()
    test_main, test_exit = (np.asarray(p) for p in with_exit.predict(x, batch_size=256, verbose=0))
    plot_risk_coverage(
        {"exit head": risk_coverage(test_exit, y), "full network": risk_coverage(test_main, y)},
        os.path.join(run.plots_dir, "risk_coverage.png"),
    )


def stage_accelerate(run, out):
    """Stage 5: an exit head trained with soft smoothing on the frozen network (its batch norm
    updating its statistics, as the reference), optionally its path pruned and re-stabilized
    (``budget.exit_prune``), its threshold calibrated on validation data."""
    import keras

    from tfgated.exits import attach_exit, calibrate_threshold, prune_exit, train_exit

    budget = run.budget
    keras.utils.set_random_seed(run.seed)
    model = run.load_model("prune")
    after = exit_position(model)
    channels = _head_channels(model, budget)
    run.log(f"[5/7] accelerate: exit head after block {after} ({channels} channels), {budget.exit_epochs} epoch(s)")
    with_exit = attach_exit(model, after=after, channels=channels)
    splits = run.splits()
    bits = budget.precision_bits
    train_exit(with_exit, splits.train, splits.validation, epochs=budget.exit_epochs, loss="softsmoothing",
               verbose=run.verbose, bits=bits)
    exit_rounds = []
    if budget.exit_prune:
        schedule, epochs = budget.exit_prune["schedule"], budget.exit_prune["epochs"]
        run.log(f"[5/7] accelerate: exit path pruned to {', '.join(f'{s:.0%}' for s in schedule)}, "
                f"re-stabilized {epochs} epoch(s) per round")
        exit_rounds = prune_exit(with_exit, schedule, splits.train, splits.validation, epochs=epochs,
                                 loss="softsmoothing", verbose=run.verbose)
    round_weights(with_exit, bits)  # the head trained with float16 fake quantization: its weights at float16
    vx, vy = run.validation_arrays()
    main_probs, exit_probs = (np.asarray(p) for p in with_exit.predict(vx, batch_size=256, verbose=0))
    calibration = calibrate_threshold(exit_probs, main_probs, vy, max_accuracy_drop=budget.exit_max_drop)
    save_model(with_exit, run.model_path("accelerate"))
    result, extra, report = _exit_evaluation(run, with_exit, calibration.threshold, bits)
    _plot_risk_coverage(run, with_exit)
    row = score_row("accelerate", result.accuracy, report, bits, extra)
    run.log(
        f"[5/7] accelerate: threshold {calibration.threshold:.4f}, {result.exit_ratio:.1%} of test images exit, "
        f"mean MACs {result.mean_macs:,.0f} ({1 - result.mac_saving:.1%} of the network without exit), "
        f"test accuracy {result.accuracy:.4f}"
    )
    return {"row": row, "after": after, "channels": channels, "calibration": calibration.to_dict(),
            "early_exit": result.to_dict(), "exit_prune_rounds": exit_rounds}


def round_to_float16(model):
    """Round every float weight of ``model`` to the nearest float16 value (in place); returns ``model``."""
    return round_weights(model, 16)


def stage_quantize(run, out):
    """Stage 6: weights rounded to 16 bits; the early-exit row scored at 16 bits."""
    state = run.need("accelerate")
    threshold = float(state["calibration"]["threshold"])
    run.log("[6/7] quantize: weights rounded to 16 bits, MicroNet score at 16 bits")
    with_exit = round_to_float16(run.load_model("accelerate"))
    save_model(with_exit, run.model_path("quantize"))
    result, extra, report = _exit_evaluation(run, with_exit, threshold, 16)
    row = score_row("16-bit", result.accuracy, report, 16, extra)
    run.log(f"[6/7] quantize: test accuracy {result.accuracy:.4f}, MicroNet score {row['score']:.6f}")
    return {"row": row, "early_exit": result.to_dict()}


def _log_parity(run, filename, parity):
    agreement = parity.get("top1_agreement")
    run.log(
        f"[7/7] export: {filename}: parity {'passed' if parity['passed'] else 'FAILED'} "
        f"(max |diff| {parity['max_abs_diff']:.2e}"
        + (f", top-1 agreement {agreement:.4f}" if agreement is not None else "")
        + f", {parity['runtime']})"
    )


def _exported_accuracy(run, path):
    """Top-1 accuracy of the exported TFLite file on the run's test images, in LiteRT."""
    from tfgated.export import run_tflite

    x, y = run.test_arrays()
    return float((run_tflite(path, x).argmax(axis=1) == y).mean())


def stage_export(run, out):
    """Stage 7: the 16-bit network WITH its exit, as scored in the 16-bit row: TFLite (float16,
    conditional at batch size 1: images leave after the exit head) and ONNX (masked form: both
    paths computed, the taken one returned), each checked against Keras in its runtime; the
    TFLite file's own test accuracy makes the export row."""
    import contextlib
    import io

    from tfgated.export import export_early_exit

    quantized = run.need("quantize")
    threshold = float(run.need("accelerate")["calibration"]["threshold"])
    with_exit = run.load_model("quantize")
    x, _ = run.test_arrays()
    parity_x = x[: run.budget.parity_examples]
    info = run.splits().info
    preprocessing = {"mean": list(info.mean), "std": list(info.std), "input_shape": list(info.input_shape)}
    files, results = {}, {}
    for key, filename, quantization in (("tflite", "model_fp16.tflite", "float16"), ("onnx", "model.onnx", "float32")):
        path = os.path.join(out, filename)
        run.log(f"[7/7] export: {filename} ({quantization}, with the exit at threshold {threshold:.4f}), "
                f"parity on {len(parity_x)} test images")
        with contextlib.redirect_stdout(io.StringIO()):  # the converters print their temporary folders
            result = export_early_exit(with_exit, path, threshold, quantization=quantization, parity_data=parity_x,
                                       class_names=info.class_names, preprocessing=preprocessing,
                                       allow_mismatch=getattr(run, "allow_mismatch", False))
        files[key] = path
        results[key] = result.parity
        _log_parity(run, filename, result.parity)
    accuracy = _exported_accuracy(run, files["tflite"])
    row = {**quantized["row"], "stage": "export", "accuracy": accuracy}
    run.log(f"[7/7] export: {os.path.basename(files['tflite'])} in LiteRT: test accuracy {accuracy:.4f}")
    return {"row": row, "files": files, "parity": results, "threshold": threshold}
