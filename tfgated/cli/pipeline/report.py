"""The end of a pipeline run: the shipped presets to compare with, and the next steps with real paths."""

from __future__ import annotations

import math
import os

__all__ = ["file_size", "next_steps", "nearest_reference", "shipped_references"]


def shipped_references(dataset):
    """The zoo presets of ``dataset`` with shipped weights and a measured test accuracy.

    Returns a list of ``{"name", "accuracy", "score", "macs"}`` read from the zoo's weights
    index (``zoo/weights/index.json``, the numbers of the model cards): ``score`` is the
    measured 16-bit MicroNet score, or None where the card has none.
    """
    from tfgated.zoo import registry

    references = []
    for name, entry in sorted(registry.weights_index().items()):
        measured = entry.get("measured") or {}
        if "top1" not in measured:
            continue
        try:
            if registry.get_preset(name).get("dataset") != dataset:
                continue
        except ValueError:
            continue  # weights of a preset this checkout does not define
        references.append({
            "name": name,
            "accuracy": float(measured["top1"]),
            "score": float(measured["micronet_score_16bit"]) if "micronet_score_16bit" in measured else None,
            "macs": float(measured["macs"]) if "macs" in measured else None,
        })
    return references


def nearest_reference(row, references):
    """The reference preset nearest to ``row``: by MicroNet score (log scale) among those with a
    score, else by MACs; None when there is none."""
    scored = [r for r in references if r["score"]]
    if scored and row.get("score"):
        return min(scored, key=lambda r: abs(math.log(r["score"] / row["score"])))
    with_macs = [r for r in references if r["macs"]]
    if with_macs and row.get("mean_macs"):
        return min(with_macs, key=lambda r: abs(math.log(r["macs"] / row["mean_macs"])))
    return None


def file_size(path):
    """``path``'s size as text (``"123.4 KB"``), or ``"missing"``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024.0
    return f"{size:.1f} GB"


def _comparison(final, reference, anchor):
    """One line: the final row against the nearest shipped preset and the anchor."""
    macs = final.get("mean_macs")
    ours = f"this run {final['accuracy']:.4f} top-1, score {final['score']:.6f}" + (
        f", {macs / 1e6:.2f}M mean MACs" if macs else "")
    parts = [ours]
    if reference is not None:
        score = f", score {reference['score']:.6f}" if reference["score"] else ", score unknown"
        ref_macs = f", {reference['macs'] / 1e6:.2f}M MACs" if reference["macs"] else ""
        parts.append(f"nearest shipped preset {reference['name']} {reference['accuracy']:.4f}{score}{ref_macs}")
    if anchor is not None:
        verdict = "above" if final["accuracy"] >= anchor["accuracy"] else "below"
        parts.append(f"anchor {anchor['accuracy']:.3f} ({anchor['what']}): {verdict} by "
                     f"{abs(final['accuracy'] - anchor['accuracy']):.4f}")
    return "; ".join(parts)


def next_steps(summary, final_model, threshold, reference, anchor):
    """The closing lines of a run: load, run with exits, export again, files and sizes, comparison."""
    lines = ["Next steps:"]
    if final_model is not None:
        lines += [
            f"  Load the final model (16-bit, with its exit): {final_model}",
            f"    import tfgated.io; model = tfgated.io.load_model({final_model!r})",
            f"    (or: import keras, tfgated; keras.saving.load_model({final_model!r}, safe_mode=True))",
        ]
        if threshold is not None:
            lines.append(f"    early exit: tfgated.exits.EarlyExitModel(model, threshold={threshold:.4f}).predict(images)")
            lines.append(
                f"  Export again: python -m tfgated.export --tflite {final_model} --exit-threshold {threshold:.4f} "
                f"--fp16 -o model.tflite")
    lines.append("  Files written:")
    files = [path for path in summary["exported"].values()]
    files += [p for p in (final_model,) if p] + [summary.get("accuracy_plot")]
    for path in [p for p in files if p]:
        lines.append(f"    {path}  ({file_size(path)})")
    final = summary["rows"][-1] if summary["rows"] else None
    if final is not None:
        lines.append("  Compared: " + _comparison(final, reference, anchor))
    return lines
